/// A configuration template whose listening sockets come from bindkeeper: each `{{bind URL}}`
/// becomes `fd@N`, N being the fd this process received for URL, which HAProxy (and anything else
/// that understands `fd@`) inherits across exec. Everything else is copied as it stands.
///
///     frontend www
///         bind {{bind tcp://198.19.0.10:80?backlog=10240}}
///         bind {{bind tcp://[::]:443?v6only=1}} ssl crt /etc/haproxy/site.pem
///         bind {{bind tcp://198.19.0.10:8080?shards=auto}} alpn h2
///
/// A group's bind (`shards`) makes its line once per member, each bound to its own thread:
/// `bind fd@7 thread 1 alpn h2`, `bind fd@8 thread 2 alpn h2`, and so on; such a line names no
/// other socket.
public struct ConfigTemplate: Equatable, Sendable {
    enum Piece: Equatable, Sendable {
        case text(String), bind(BindRequest)
        /// A line with a group's bind: the text before it on the line and after it (with the newline).
        case groupLine(prefix: String, request: BindRequest, suffix: String)
    }
    let pieces: [Piece]

    /// Every socket the template names, each once, in order of first appearance.
    public var binds: [BindRequest] {
        var seen: Set<String> = []
        return pieces.compactMap { piece in
            switch piece {
            case .bind(let request), .groupLine(_, let request, _):
                seen.insert(request.url).inserted ? request : nil
            case .text: nil
            }
        }
    }

    public static func parse(_ text: String) -> Result<ConfigTemplate, BindError> {
        var pieces: [Piece] = []
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            // By scalars: "\r\n" is one Character, and a line ends at its "\n" either way.
            let line = text.unicodeScalars[..<open.lowerBound].reduce(1) { $1 == "\n" ? $0 + 1 : $0 }
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
            let request: BindRequest
            switch BindRequest.parse(url: String(words[1])) {
            case .success(let parsed): request = parsed
            case .failure(let error): return .failure(BindError("line \(line): \(error)"))
            }
            rest = rest[close.upperBound...]
            guard request.shards != nil else {
                pieces.append(.bind(request))
                continue
            }
            guard let (before, after) = splitLine(&pieces, &rest) else {
                return .failure(BindError("line \(line): a line with a group's bind (shards) names no other socket"))
            }
            pieces.append(.groupLine(prefix: before, request: request, suffix: after))
        }
        pieces.append(.text(String(rest)))
        return .success(ConfigTemplate(pieces: pieces))
    }

    /// Takes the rest of a group's line out of the last text piece and out of `rest`: the text
    /// before the bind on its line, and after it up to and with the newline. nil when the line
    /// names another socket.
    private static func splitLine(_ pieces: inout [Piece], _ rest: inout Substring) -> (String, String)? {
        guard case .text(let text) = pieces.removeLast() else { return nil }
        let scalars = text.unicodeScalars
        let lineStart = scalars.lastIndex(of: "\n").map { scalars.index(after: $0) } ?? scalars.startIndex
        // Without a newline, the text is all of the line before the bind only at the template's
        // start or right after another group's line (which ends with its newline).
        let atLineStart: Bool
        switch pieces.last {
        case nil, .groupLine?: atLineStart = true
        default: atLineStart = false
        }
        guard scalars.contains("\n") || atLineStart else { return nil }
        pieces.append(.text(String(scalars[..<lineStart])))
        let restScalars = rest.unicodeScalars
        let lineEnd = restScalars.firstIndex(of: "\n").map { restScalars.index(after: $0) } ?? restScalars.endIndex
        let after = String(restScalars[..<lineEnd])
        guard !after.contains("{{") else { return nil }
        rest = Substring(restScalars[lineEnd...])
        return (String(scalars[lineStart...]), after)
    }

    /// The configuration with each bind replaced by `fd@N`; `fds` maps a socket's `addressKey` to its
    /// fds (a group's in member order).
    public func render(fds: [String: [Int32]]) -> String {
        pieces.map { piece in
            switch piece {
            case .text(let text): return text
            case .bind(let request): return fds[request.addressKey]?.first.map { "fd@\($0)" } ?? "fd@-1"
            case .groupLine(let prefix, let request, let suffix):
                let members = fds[request.addressKey] ?? [-1]
                // The line's own ending, "\n" or "\r\n", after each copy.
                let scalars = suffix.unicodeScalars
                let ending = scalars.last != "\n" ? "" : scalars.dropLast().last == "\r" ? "\r\n" : "\n"
                let body = String(scalars.dropLast(ending.unicodeScalars.count))
                let lines = members.enumerated().map { "\(prefix)fd@\($1) thread \($0 + 1)\(body)" }
                return lines.joined(separator: ending.isEmpty ? "\n" : ending) + ending
            }
        }.joined()
    }
}
