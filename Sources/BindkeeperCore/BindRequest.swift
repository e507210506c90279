import Foundation

/// What a client asks bindkeeper to bind, and the key under which the socket is kept: two requests
/// with the same key get the same kernel socket; a request whose key matches but whose options
/// differ gets an error, never a silently different socket.
public struct BindRequest: Equatable, Sendable {
    public enum Kind: String, Sendable { case tcp, udp, unix }

    public var kind: Kind
    /// An IPv4 or IPv6 literal (IPv6 may carry a %scope), or the path of a Unix socket.
    public var address: String
    public var port: UInt16
    public var backlog: Int32?
    /// IPV6_V6ONLY for IPv6 sockets; nil: the kernel's default (net.ipv6.bindv6only).
    public var ipv6Only: Bool?
    /// Unix sockets: the file's mode.
    public var mode: UInt32?

    public init(kind: Kind, address: String, port: UInt16, backlog: Int32? = nil, ipv6Only: Bool? = nil, mode: UInt32? = nil) {
        self.kind = kind
        self.address = address
        self.port = port
        self.backlog = backlog
        self.ipv6Only = ipv6Only
        self.mode = mode
    }

    /// The socket's identity: family, type, address and port. Options are compared separately.
    public var key: String {
        switch kind {
        case .unix: return "unix:\(address)"
        case .tcp, .udp: return address.contains(":") ? "\(kind.rawValue)://[\(address)]:\(port)" : "\(kind.rawValue)://\(address):\(port)"
        }
    }

    /// Why `other` cannot be served by the socket made for `self` (same key), or nil.
    public func conflict(with other: BindRequest) -> String? {
        if let mine = ipv6Only, let theirs = other.ipv6Only, mine != theirs {
            return "\(key) exists with v6only=\(mine), requested v6only=\(theirs)"
        }
        if let mine = mode, let theirs = other.mode, mine != theirs {
            return "\(key) exists with mode \(String(mine, radix: 8)), requested \(String(theirs, radix: 8))"
        }
        return nil
    }
}

/// multibinder's wire format: JSON-RPC 2.0, one request per message on a Unix stream socket, the
/// bound socket returned with SCM_RIGHTS beside a `true` result.
public enum MultibinderProtocol {
    public static let defaultBacklog: Int32 = 1000

    public struct RPCError: Error, Equatable, Sendable {
        public var code: Int
        public var message: String
        public static func parse(_ detail: String) -> Self { .init(code: -32700, message: "Parse error: \(detail)") }
        public static func invalidRequest(_ detail: String) -> Self { .init(code: -32600, message: "Invalid Request: \(detail)") }
        public static let methodNotFound = Self(code: -32601, message: "Method not found")
        public static func invalidParams(_ detail: String) -> Self { .init(code: -32602, message: "Invalid params: \(detail)") }
        /// multibinder's own code for a failed bind.
        public static func bindFailed(_ detail: String) -> Self { .init(code: 10000, message: "Could not bind: \(detail)") }
    }

    /// A request's id, echoed verbatim (JSON-RPC allows a string, a number or null).
    public enum RequestID: Equatable, Sendable {
        case number(Int64), string(String), null
        var json: Any {
            switch self {
            case .number(let value): value
            case .string(let value): value
            case .null: NSNull()
            }
        }
    }

    public struct Request: Equatable, Sendable {
        public var id: RequestID
        public var bind: BindRequest
    }

    public static let maximumMessage = 65536

    /// A request that cannot be served, with its id when that much was readable.
    public struct Failure: Error, Equatable, Sendable {
        public var id: RequestID
        public var error: RPCError
    }

    /// Parses one message. The error comes with the request's id when that much was readable.
    public static func parse(_ message: [UInt8]) -> Result<Request, Failure> {
        guard message.count <= maximumMessage else { return .failure(Failure(id: .null, error: .invalidRequest("message longer than \(maximumMessage) bytes"))) }
        guard let object = try? JSONSerialization.jsonObject(with: Data(message)), let request = object as? [String: Any] else {
            return .failure(Failure(id: .null, error: .parse("not a JSON object")))
        }
        let id: RequestID
        switch request["id"] {
        case let number as NSNumber where Double(number.int64Value) == number.doubleValue: id = .number(number.int64Value)
        case let text as String: id = .string(text)
        default: id = .null
        }
        if let version = request["jsonrpc"], version as? String != "2.0" { return .failure(Failure(id: id, error: .invalidRequest("jsonrpc must be \"2.0\""))) }
        guard let method = request["method"] as? String else { return .failure(Failure(id: id, error: .invalidRequest("no method"))) }
        guard method == "bind" else { return .failure(Failure(id: id, error: .methodNotFound)) }
        guard let params = request["params"] as? [Any], let first = params.first as? [String: Any] else {
            return .failure(Failure(id: id, error: .invalidParams("params must be [{\"address\": ..., \"port\": ...}]")))
        }
        switch bindRequest(first) {
        case .success(let bind): return .success(Request(id: id, bind: bind))
        case .failure(let error): return .failure(Failure(id: id, error: error))
        }
    }

    static func bindRequest(_ params: [String: Any]) -> Result<BindRequest, RPCError> {
        let kind = (params["type"] as? String).flatMap(BindRequest.Kind.init(rawValue:)) ?? .tcp
        if params["type"] != nil, params["type"] as? String != kind.rawValue { return .failure(.invalidParams("type is tcp, udp or unix")) }
        guard let address = params["address"] as? String, !address.isEmpty, address.utf8.count < 108 else {
            return .failure(.invalidParams("address must be a non-empty string"))
        }
        var port: UInt16 = 0
        if kind != .unix {
            guard let number = params["port"] as? NSNumber, let value = UInt16(exactly: number.doubleValue) else {
                return .failure(.invalidParams("port must be 0...65535"))
            }
            port = value
        }
        var backlog: Int32?
        if let value = params["backlog"] {
            guard let number = value as? NSNumber, let exact = Int32(exactly: number.doubleValue), exact > 0 else {
                return .failure(.invalidParams("backlog must be a positive integer"))
            }
            backlog = exact
        }
        return .success(BindRequest(kind: kind, address: address, port: port, backlog: backlog,
                                    ipv6Only: params["v6only"] as? Bool, mode: (params["mode"] as? NSNumber).map { $0.uint32Value }))
    }

    public static func result(id: RequestID) -> [UInt8] { encode(["jsonrpc": "2.0", "id": id.json, "result": true]) }

    /// An error reply; never a backtrace.
    public static func error(id: RequestID, _ error: RPCError) -> [UInt8] {
        encode(["jsonrpc": "2.0", "id": id.json, "error": ["code": error.code, "message": error.message]])
    }

    static func encode(_ object: [String: Any]) -> [UInt8] {
        Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8))
    }
}
