/// A configuration template whose listening sockets come from bindkeeper: each `{{bind URL}}`
/// becomes `fd@N`, N being the fd this process received for URL, which HAProxy (and anything else
/// that understands `fd@`) inherits across exec. Everything else is copied as it stands.
///
///     frontend www
///         bind {{bind tcp://198.19.0.10:80?backlog=10240}}
///         bind {{bind tcp://[::]:443?v6only=1}} ssl crt /etc/haproxy/site.pem
public struct ConfigTemplate: Equatable, Sendable {
    enum Piece: Equatable, Sendable { case text(String), bind(BindRequest) }
    let pieces: [Piece]

    /// Every socket the template names, each once, in order of first appearance.
    public var binds: [BindRequest] {
        var seen: Set<String> = []
        return pieces.compactMap { piece in
            guard case .bind(let request) = piece, seen.insert(request.url).inserted else { return nil }
            return request
        }
    }

    public static func parse(_ text: String) -> Result<ConfigTemplate, BindError> {
        var pieces: [Piece] = []
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            let line = text[..<open.lowerBound].reduce(1) { $1 == "\n" ? $0 + 1 : $0 }
            pieces.append(.text(String(rest[..<open.lowerBound])))
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                return .failure(BindError("line \(line): '{{' without '}}'"))
            }
            let words = rest[open.upperBound..<close.lowerBound].split(separator: " ", omittingEmptySubsequences: true)
            guard words.count == 2, words[0] == "bind" else {
                return .failure(
                    BindError(
                        "line \(line): expected {{bind URL}}, found {{\(rest[open.upperBound..<close.lowerBound])}}"))
            }
            switch BindRequest.parse(url: String(words[1])) {
            case .success(let request): pieces.append(.bind(request))
            case .failure(let error): return .failure(BindError("line \(line): \(error)"))
            }
            rest = rest[close.upperBound...]
        }
        pieces.append(.text(String(rest)))
        return .success(ConfigTemplate(pieces: pieces))
    }

    /// The configuration with each bind replaced by `fd@N`; `fds` maps a bind's URL to its fd.
    public func render(fds: [String: Int32]) -> String {
        pieces.map { piece in
            switch piece {
            case .text(let text): text
            case .bind(let request): fds[request.url].map { "fd@\($0)" } ?? "fd@-1"
            }
        }.joined()
    }
}
