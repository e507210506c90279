import Foundation

/// The names `bindkeeper exec` gives the sockets it passes by systemd's convention (LISTEN_FDNAMES).
public enum PassedSocketName {
    /// A name an application can look for: letters, digits, '.', '_' and '-' only
    /// (`tcp://[::]:443` becomes `tcp-__-443`).
    public static func defaultName(for request: BindRequest) -> String {
        let raw =
            request.kind == .unix
            ? "unix-" + request.address : "\(request.kind.rawValue)-\(request.address)-\(request.port)"
        return String(raw.map { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) ? $0 : "_" })
    }

    /// Checks a name given with `--bind NAME=URL`: systemd refuses ':' and control characters.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255
            && name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
    }
}

/// Names under which sockets go to systemd's fd store (FDNAME=): the uid whose request made the
/// socket and '@', where known, then the socket's URL with ':' and '%' percent-encoded, since
/// systemd refuses ':' in names. Decoding gives back both, so a broker started after a crash knows
/// every socket systemd hands back and who may release it. (A URL never starts with a digit: a
/// name of an older release, the URL alone, decodes with no creator.)
public enum FDStoreName {
    public static let control = "control"

    public static func encode(_ request: BindRequest, creator: UInt32? = nil) -> String? {
        let out = (creator.map { "\($0)@" } ?? "") + escaped(request.url)
        return out.utf8.count <= 255 ? out : nil
    }

    public static func decode(_ name: String) -> BindRequest? { decodeEntry(name)?.request }

    public static func decodeEntry(_ name: String) -> (request: BindRequest, creator: UInt32?)? {
        var rest = Substring(name)
        var creator: UInt32?
        if let at = name.firstIndex(of: "@"), name[..<at].allSatisfy(\.isASCII), let uid = UInt32(name[..<at]) {
            creator = uid
            rest = name[name.index(after: at)...]
        }
        guard let url = unescaped(rest), let request = try? BindRequest.parse(url: url).get() else { return nil }
        return (request, creator)
    }

    /// A socket group's socket array (its reuseport program's map), by the group's address: the
    /// one handle to it a broker without CAP_SYS_ADMIN has.
    public static func array(_ addressKey: String) -> String? {
        let out = arrayPrefix + escaped(addressKey)
        return out.utf8.count <= 255 ? out : nil
    }

    /// The address of the group whose socket array is stored as `name`; nil for any other name.
    public static func decodeArray(_ name: String) -> String? {
        guard name.hasPrefix(arrayPrefix) else { return nil }
        return unescaped(name.dropFirst(arrayPrefix.count))
    }

    static let arrayPrefix = "array@"

    /// systemd's names take no ':' and no control characters: those, '%', spaces and non-ASCII
    /// bytes are written %XX.
    static func escaped(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            if byte == UInt8(ascii: ":") || byte == UInt8(ascii: "%") || byte <= 0x20 || byte >= 0x7F {
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            } else {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return out
    }

    static func unescaped(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                    let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
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
    /// The metrics listening socket, when the broker serves one.
    public var metrics: Int32?
    /// The socket groups' socket arrays, by the groups' addresses.
    public var arrays: [String: Int32] = [:]

    public init(control: Int32, sockets: [Socket], clients: [Client]) {
        self.control = control
        self.sockets = sockets
        self.clients = clients
    }

    public static let environmentName = "BINDKEEPER_STATE_FD"

    /// The JSON form: `{"control": FD, "sockets": [{"fd", "url", "handed_out", "creator"}],
    /// "clients": [{"fd", "wire": "framed"|"multibinder"|"", "pending": BASE64}], "metrics": FD,
    /// "arrays": {ADDRESS: FD}}`. Broker
    /// releases read each other's state across an upgrade, so the form only grows.
    private struct Form: Codable {
        struct Socket: Codable {
            var fd: Int32
            var url: String
            var handedOut: UInt64?
            var creator: UInt32?
            enum CodingKeys: String, CodingKey { case fd, url, handedOut = "handed_out", creator }
        }

        struct Client: Codable {
            var fd: Int32
            var wire: String
            var pending: Data
        }

        var control: Int32
        var sockets: [Socket]
        var clients: [Client]
        var metrics: Int32?
        var arrays: [String: Int32]?
    }

    public func encoded() -> [UInt8] {
        JSONText.encode(
            Form(
                control: control,
                sockets: sockets.map {
                    .init(fd: $0.fd, url: $0.request.url, handedOut: $0.handedOut, creator: $0.creator)
                },
                clients: clients.map {
                    .init(
                        fd: $0.fd, wire: $0.wire.map { $0 == .framed ? "framed" : "multibinder" } ?? "",
                        pending: Data($0.pending))
                }, metrics: metrics, arrays: arrays.isEmpty ? nil : arrays))
    }

    public static func decode(_ bytes: [UInt8]) -> Result<BrokerState, BindError> {
        guard let form = try? JSONText.decode(Form.self, from: bytes) else {
            return .failure(BindError("state: not a broker state"))
        }
        var state = BrokerState(control: form.control, sockets: [], clients: [])
        state.metrics = form.metrics
        state.arrays = form.arrays ?? [:]
        for socket in form.sockets {
            guard let request = try? BindRequest.parse(url: socket.url).get() else {
                return .failure(BindError("state: bad socket entry"))
            }
            state.sockets.append(
                Socket(fd: socket.fd, request: request, handedOut: socket.handedOut ?? 0, creator: socket.creator))
        }
        for client in form.clients {
            let wire: Wire? =
                switch client.wire {
                case "framed": .framed;
                case "multibinder": .multibinder;
                default: nil
                }
            state.clients.append(Client(fd: client.fd, wire: wire, pending: Array(client.pending)))
        }
        return .success(state)
    }
}
