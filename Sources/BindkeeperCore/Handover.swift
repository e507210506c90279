import Foundation

/// The names `bindkeeper exec` gives the sockets it passes by systemd's convention (LISTEN_FDNAMES).
public enum PassedSocketName {
    /// A name an application can look for: letters, digits, '.', '_' and '-' only
    /// (`tcp://[::]:443` becomes `tcp-__-443`).
    public static func defaultName(for request: BindRequest) -> String {
        let raw = request.kind == .unix ? "unix-" + request.address : "\(request.kind.rawValue)-\(request.address)-\(request.port)"
        return String(raw.map { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) ? $0 : "_" })
    }

    /// Checks a name given with `--bind NAME=URL`: systemd refuses ':' and control characters.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255 && name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
    }
}

/// Names under which sockets go to systemd's fd store (FDNAME=): the socket's URL with ':' and '%'
/// percent-encoded, since systemd refuses ':' in names. Decoding gives back the request, so a broker
/// started after a crash knows every socket systemd hands back.
public enum FDStoreName {
    public static let control = "control"

    public static func encode(_ request: BindRequest) -> String? {
        var out = ""
        for byte in request.url.utf8 {
            if byte == UInt8(ascii: ":") || byte == UInt8(ascii: "%") || byte <= 0x20 || byte >= 0x7F {
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            } else {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return out.utf8.count <= 255 ? out : nil
    }

    public static func decode(_ name: String) -> BindRequest? {
        var bytes: [UInt8] = []
        var iterator = Array(name.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                      let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) else { return nil }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return try? BindRequest.parse(url: String(decoding: bytes, as: UTF8.self)).get()
    }
}

extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}

/// What a broker hands to the program it re-executes: the fds it keeps open across exec(2) and what
/// each one is. Carried in a memfd whose number is in BINDKEEPER_STATE_FD.
public struct BrokerState: Equatable, Sendable {
    public struct Socket: Equatable, Sendable {
        public var fd: Int32
        public var request: BindRequest
        public var handedOut: UInt64
        /// The uid whose request made the socket (counted against its --max-sockets-per-user).
        public var creator: UInt32?
        public init(fd: Int32, request: BindRequest, handedOut: UInt64, creator: UInt32? = nil) {
            self.fd = fd
            self.request = request
            self.handedOut = handedOut
            self.creator = creator
        }
    }

    public struct Client: Equatable, Sendable {
        public var fd: Int32
        public var wire: Wire?
        /// Bytes read but not yet a whole request.
        public var pending: [UInt8]
        public init(fd: Int32, wire: Wire?, pending: [UInt8]) { self.fd = fd; self.wire = wire; self.pending = pending }
    }

    public var control: Int32
    public var sockets: [Socket]
    public var clients: [Client]

    public init(control: Int32, sockets: [Socket], clients: [Client]) {
        self.control = control
        self.sockets = sockets
        self.clients = clients
    }

    public static let environmentName = "BINDKEEPER_STATE_FD"

    public func encoded() -> [UInt8] {
        let object: [String: Any] = [
            "control": Int(control),
            "sockets": sockets.map { socket in
                var entry: [String: Any] = ["fd": Int(socket.fd), "url": socket.request.url, "handed_out": socket.handedOut]
                if let creator = socket.creator { entry["creator"] = Int(creator) }
                return entry
            },
            "clients": clients.map { ["fd": Int($0.fd), "wire": $0.wire.map { $0 == .framed ? "framed" : "multibinder" } ?? "",
                                      "pending": Data($0.pending).base64EncodedString()] as [String: Any] },
        ]
        return Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())
    }

    public static func decode(_ bytes: [UInt8]) -> Result<BrokerState, BindError> {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
              let control = object["control"] as? Int, let sockets = object["sockets"] as? [[String: Any]],
              let clients = object["clients"] as? [[String: Any]] else { return .failure(BindError("state: not a broker state")) }
        var state = BrokerState(control: Int32(control), sockets: [], clients: [])
        for socket in sockets {
            guard let fd = socket["fd"] as? Int, let url = socket["url"] as? String,
                  let request = try? BindRequest.parse(url: url).get() else { return .failure(BindError("state: bad socket entry")) }
            state.sockets.append(Socket(fd: Int32(fd), request: request, handedOut: (socket["handed_out"] as? NSNumber)?.uint64Value ?? 0,
                                        creator: (socket["creator"] as? Int).flatMap { UInt32(exactly: $0) }))
        }
        for client in clients {
            guard let fd = client["fd"] as? Int, let pending = (client["pending"] as? String).flatMap({ Data(base64Encoded: $0) }) else {
                return .failure(BindError("state: bad client entry"))
            }
            let wire: Wire? = switch client["wire"] as? String { case "framed": .framed; case "multibinder": .multibinder; default: nil }
            state.clients.append(Client(fd: Int32(fd), wire: wire, pending: Array(pending)))
        }
        return .success(state)
    }
}
