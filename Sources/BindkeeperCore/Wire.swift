import Foundation

/// bindkeeper's control socket speaks two forms on one Unix stream socket, told apart by a
/// connection's first byte:
///
/// - **multibinder** (JSON-RPC 2.0, unframed): `{"jsonrpc":"2.0","method":"bind","id":..,
///   "params":[{"address":..,"port":..,"backlog":..}]}`, answered by `{"jsonrpc":"2.0","id":..,
///   "result":true}` with the socket in SCM_RIGHTS. Messages are split at the end of each top-level
///   JSON value, so requests that arrive together or in pieces are read as sent.
/// - **framed, version 1**: each message is a 4-byte big-endian length and that many bytes of JSON
///   (at most `Wire.maximumFrame`, so the first byte is always 0):
///   `{"v":1,"id":..,"method":"bind","binds":["tcp://[::]:443?backlog=4096", {...}]}` (up to
///   `Wire.maximumBatch` binds, all or none), `"method":"release"` with `"binds"` likewise (the
///   broker closes its sockets for them), `"method":"list"`, `"method":"reexec"`. Replies are
///   framed the same way: `{"v":1,"id":..,"result":{...}}` or `{"v":1,"id":..,"error":{"code":..,
///   "message":..}}`; a bind result lists one entry per socket, in the order of the fds.
public enum Wire: Sendable {
    case multibinder, framed

    public static let maximumMultibinderMessage = 65536
    public static let maximumFrame = 1 << 20
    /// SCM_RIGHTS carries at most 253 fds (SCM_MAX_FD) per message.
    public static let maximumBatch = 250
    public static let version = 1

    /// A request's id, echoed verbatim (JSON-RPC allows a string, a number or null).
    public enum RequestID: Codable, Equatable, Sendable {
        case number(Int64), string(String), null

        init(json: JSONValue?) {
            switch json {
            case .string(let text): self = .string(text)
            case let value?: self = value.integer.map(RequestID.number) ?? .null
            case nil: self = .null
            }
        }

        public init(from decoder: Decoder) throws { self.init(json: try JSONValue(from: decoder)) }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .number(let value): try container.encode(value)
            case .string(let value): try container.encode(value)
            case .null: try container.encodeNil()
            }
        }
    }

    public struct RPCError: Error, Equatable, Sendable, Codable {
        public var code: Int
        public var message: String
        public init(code: Int, message: String) { self.code = code; self.message = message }
        public static func parse(_ detail: String) -> Self { .init(code: -32700, message: "Parse error: \(detail)") }
        public static func invalidRequest(_ detail: String) -> Self {
            .init(code: -32600, message: "Invalid Request: \(detail)")
        }
        public static let methodNotFound = Self(code: -32601, message: "Method not found")
        public static func invalidParams(_ detail: String) -> Self {
            .init(code: -32602, message: "Invalid params: \(detail)")
        }
        /// multibinder's own code for a failed bind.
        public static func bindFailed(_ detail: String) -> Self {
            .init(code: 10000, message: "Could not bind: \(detail)")
        }
        public static func permissionDenied(_ detail: String) -> Self {
            .init(code: 10001, message: "Permission denied: \(detail)")
        }
        public static func conflict(_ detail: String) -> Self {
            .init(code: 10002, message: "Conflicting options: \(detail)")
        }
        public static func limit(_ detail: String) -> Self { .init(code: 10003, message: "Limit reached: \(detail)") }
        public static func reexecRefused(_ detail: String) -> Self {
            .init(code: 10004, message: "Re-exec refused: \(detail)")
        }
    }

    public enum Method: Equatable, Sendable {
        case bind([BindRequest])
        /// The broker lets go of these sockets: all or none, each by whoever may bind it.
        case release([BindRequest])
        case list
        case reexec
    }

    public struct Request: Equatable, Sendable {
        public var wire: Wire
        public var id: RequestID
        public var method: Method
    }

    /// A request that cannot be served: answered with `error`, with the id when that much was readable.
    public struct Failure: Error, Equatable, Sendable {
        public var wire: Wire
        public var id: RequestID
        public var error: RPCError
    }

    // MARK: Replies

    /// One message of either form. Absent members are not written.
    public struct Envelope<Result: Codable>: Codable {
        /// "2.0" in the multibinder form.
        public var jsonrpc: String?
        /// `Wire.version` in the framed form.
        public var v: Int?
        public var id: RequestID
        public var method: String?
        /// multibinder's bind parameters.
        public var params: [JSONValue]?
        /// The framed form's binds, as URLs.
        public var binds: [String]?
        public var result: Result?
        public var error: RPCError?

        // An id of null is written as null, not left out.
        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encodeIfPresent(jsonrpc, forKey: .jsonrpc)
            try container.encodeIfPresent(v, forKey: .v)
            try container.encode(id, forKey: .id)
            try container.encodeIfPresent(method, forKey: .method)
            try container.encodeIfPresent(params, forKey: .params)
            try container.encodeIfPresent(binds, forKey: .binds)
            try container.encodeIfPresent(result, forKey: .result)
            try container.encodeIfPresent(error, forKey: .error)
        }
    }

    private func envelope<Result: Codable>(id: RequestID, result: Result? = nil, error: RPCError? = nil) -> Envelope<
        Result
    > {
        switch self {
        case .multibinder: Envelope(jsonrpc: "2.0", id: id, result: result, error: error)
        case .framed: Envelope(v: Wire.version, id: id, result: result, error: error)
        }
    }

    /// multibinder's reply to a bind: `true`; the framed form's reply: `result`.
    public func result(id: RequestID, _ result: some Codable) -> [UInt8] {
        switch self {
        case .multibinder: encode(envelope(id: id, result: true))
        case .framed: encode(envelope(id: id, result: result))
        }
    }

    /// An error reply; never a backtrace.
    public func error(id: RequestID, _ error: RPCError) -> [UInt8] {
        encode(envelope(id: id, result: Bool?.none, error: error))
    }

    /// A request in this form (the client side of the framed form, and tests of both).
    public func request(id: RequestID, method: String, binds: [BindRequest] = []) -> [UInt8] {
        var message: Envelope<Bool> = envelope(id: id)
        message.method = method
        switch self {
        case .multibinder: message.params = binds.map { .object(Wire.jsonParams($0)) }
        case .framed: message.binds = binds.map(\.url)
        }
        return encode(message)
    }

    func encode(_ message: some Encodable) -> [UInt8] {
        let body = JSONText.encode(message)
        switch self {
        case .multibinder: return body
        case .framed: return Wire.frameHeader(body.count) + body
        }
    }

    static func frameHeader(_ length: Int) -> [UInt8] {
        [
            UInt8(truncatingIfNeeded: length >> 24), UInt8(truncatingIfNeeded: length >> 16),
            UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length),
        ]
    }

    // MARK: Requests

    /// Parses one message of this form.
    public func parse(_ message: [UInt8]) -> Result<Request, Failure> {
        guard let request = JSONValue.parse(message)?.object else {
            return .failure(Failure(wire: self, id: .null, error: .parse("not a JSON object")))
        }
        let id = RequestID(json: request["id"])
        func fail(_ error: RPCError) -> Result<Request, Failure> { .failure(Failure(wire: self, id: id, error: error)) }
        switch self {
        case .multibinder:
            if let version = request["jsonrpc"], version.string != "2.0" {
                return fail(.invalidRequest("jsonrpc must be \"2.0\""))
            }
        case .framed:
            guard request["v"]?.integer == Int64(Wire.version) else {
                return fail(.invalidRequest("v must be \(Wire.version)"))
            }
        }
        guard let method = request["method"]?.string else { return fail(.invalidRequest("no method")) }
        switch (self, method) {
        case (.multibinder, "bind"):
            guard let params = request["params"]?.array, params.count == 1, let first = params[0].object else {
                return fail(.invalidParams("params must be [{\"address\": ..., \"port\": ...}]"))
            }
            switch Wire.bindRequest(json: first) {
            case .success(let bind): return .success(Request(wire: self, id: id, method: .bind([bind])))
            case .failure(let error): return fail(.invalidParams(error.description))
            }
        case (.framed, "bind"), (.framed, "release"):
            guard let binds = request["binds"]?.array, !binds.isEmpty, binds.count <= Wire.maximumBatch else {
                return fail(.invalidParams("binds must list 1 to \(Wire.maximumBatch) sockets"))
            }
            var requests: [BindRequest] = []
            for (index, item) in binds.enumerated() {
                let parsed: Result<BindRequest, BindError>
                switch item {
                case .string(let url): parsed = BindRequest.parse(url: url)
                case .object(let object): parsed = Wire.bindRequest(json: object)
                default: parsed = .failure(BindError("not a URL or an object"))
                }
                switch parsed {
                case .success(let bind): requests.append(bind)
                case .failure(let error): return fail(.invalidParams("binds[\(index)]: \(error)"))
                }
            }
            return .success(
                Request(wire: self, id: id, method: method == "bind" ? .bind(requests) : .release(requests)))
        case (.framed, "list"): return .success(Request(wire: self, id: id, method: .list))
        case (.framed, "reexec"): return .success(Request(wire: self, id: id, method: .reexec))
        default: return fail(.methodNotFound)
        }
    }

    /// A bind in JSON: multibinder's `address`, `port`, `backlog`, plus `type`, `v6only`,
    /// `freebind`, `mode` (a number, or an octal string), `owner`, `group`.
    static func bindRequest(json params: [String: JSONValue]) -> Result<BindRequest, BindError> {
        let known: Set<String> = ["type", "address", "port", "backlog", "v6only", "freebind", "mode", "owner", "group"]
        if let unknown = params.keys.sorted().first(where: { !known.contains($0) }) {
            return .failure(BindError("unknown option \(unknown)"))
        }
        var kind = BindRequest.Kind.tcp
        if let type = params["type"] {
            guard let name = type.string, let parsed = BindRequest.Kind(rawValue: name) else {
                return .failure(BindError("type is tcp, udp or unix"))
            }
            kind = parsed
        }
        guard let address = params["address"]?.string, !address.isEmpty else {
            return .failure(BindError("address must be a non-empty string"))
        }
        var port: UInt16 = 0
        if kind != .unix {
            guard let number = params["port"]?.integer, let value = UInt16(exactly: number) else {
                return .failure(BindError("port must be 0...65535"))
            }
            port = value
        }
        var request: BindRequest
        switch BindRequest.validated(kind: kind, address: address, port: port) {
        case .success(let valid): request = valid
        case .failure(let error): return .failure(error)
        }
        for name in ["backlog", "v6only", "freebind", "mode", "owner", "group"] {
            guard let value = params[name], value != .null else { continue }
            let flag = name == "v6only" || name == "freebind"
            let text: String
            switch value {
            case .bool(let on) where flag: text = on ? "1" : "0"
            case .integer, .number:
                if name == "mode" {
                    guard let exact = value.integer.flatMap({ UInt32(exactly: $0) }) else {
                        return .failure(BindError("mode must be a permission number"))
                    }
                    text = String(exact, radix: 8)
                } else {
                    guard let exact = value.integer else { return .failure(BindError("\(name) must be an integer")) }
                    text = String(exact)
                }
            case .string(let string): text = string
            default: return .failure(BindError("\(name) has the wrong type"))
            }
            if let error = request.setOption(name, text) { return .failure(BindError(error)) }
        }
        return .success(request)
    }

    static func jsonParams(_ request: BindRequest) -> [String: JSONValue] {
        var params: [String: JSONValue] = ["type": .string(request.kind.rawValue), "address": .string(request.address)]
        if request.kind != .unix { params["port"] = .integer(Int64(request.port)) }
        if let backlog = request.backlog { params["backlog"] = .integer(Int64(backlog)) }
        if let ipv6Only = request.ipv6Only { params["v6only"] = .bool(ipv6Only) }
        if let freebind = request.freebind { params["freebind"] = .bool(freebind) }
        if let mode = request.mode { params["mode"] = .string("0" + String(mode, radix: 8)) }
        if let owner = request.owner { params["owner"] = .string(owner) }
        if let group = request.group { params["group"] = .string(group) }
        return params
    }
}

/// Reads one client connection's byte stream into requests. The first byte picks the form: 0 starts
/// a frame, anything else is multibinder's JSON. Bounded and linear: bytes are consumed by moving a
/// start index (the buffer is compacted once per append, not once per message), blanks and junk
/// between messages are never kept, and a message over the form's limit is answered with an error
/// and ends the connection. So the buffer never holds more than one message plus one read.
public struct RequestReader: Sendable {
    public private(set) var wire: Wire?
    private var buffer: [UInt8] = []
    /// Where the unconsumed bytes start.
    private var head = 0
    /// multibinder form: how far the current value has been scanned, and the scanner's state there.
    private var scanned = 0
    private var depth = 0
    private var inString = false
    private var escaped = false

    public init(wire: Wire? = nil) { self.wire = wire }

    public enum Next: Equatable, Sendable {
        case request(Wire.Request)
        /// Answer with this error; `fatal` ends the connection (the stream cannot be resynchronised).
        case failure(Wire.Failure, fatal: Bool)
    }

    public var bufferedBytes: Int { buffer.count - head }
    /// Bytes read but not yet part of a whole message (handed to a re-executed broker).
    public var pending: [UInt8] { Array(buffer[head...]) }

    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if head > 0 {
            buffer.removeFirst(head)
            scanned -= head
            head = 0
        }
        if wire == nil {
            // Blanks before the first message are not kept; its first byte picks the form.
            guard let start = bytes.firstIndex(where: { !Self.isWhitespace($0) }) else { return }
            wire = bytes[start] == 0 ? .framed : .multibinder
            buffer.append(contentsOf: bytes[start...])
        } else {
            buffer.append(contentsOf: bytes)
        }
    }

    /// The next whole message, or nil until more bytes arrive.
    public mutating func next() -> Next? {
        switch wire {
        case nil: return nil
        case .framed: return nextFrame()
        case .multibinder: return nextMultibinder()
        }
    }

    private mutating func discardAll() {
        buffer.removeAll(keepingCapacity: true)
        (head, scanned, depth, inString, escaped) = (0, 0, 0, false, false)
    }

    private mutating func nextFrame() -> Next? {
        guard bufferedBytes >= 4 else { return nil }
        let length = buffer[head..<(head + 4)].reduce(0) { $0 << 8 | Int($1) }
        guard length <= Wire.maximumFrame else {
            discardAll()
            return .failure(
                Wire.Failure(
                    wire: .framed, id: .null,
                    error: .invalidRequest("frame of \(length) bytes exceeds \(Wire.maximumFrame)")), fatal: true)
        }
        guard bufferedBytes >= 4 + length else { return nil }
        let message = Array(buffer[(head + 4)..<(head + 4 + length)])
        head += 4 + length
        return Self.outcome(Wire.framed.parse(message))
    }

    /// Splits at the end of a top-level JSON object or array; anything else at the top level runs to
    /// the next `{` and is answered as a parse error.
    private mutating func nextMultibinder() -> Next? {
        if scanned <= head {
            while head < buffer.count, Self.isWhitespace(buffer[head]) { head += 1 }
            scanned = head
        }
        guard head < buffer.count else { return nil }
        let first = buffer[head]
        if first != UInt8(ascii: "{") && first != UInt8(ascii: "[") {
            head = buffer[head...].firstIndex(of: UInt8(ascii: "{")) ?? buffer.count
            scanned = head
            return .failure(
                Wire.Failure(wire: .multibinder, id: .null, error: .parse("not a JSON object")), fatal: false)
        }
        var index = scanned
        while index < buffer.count {
            let byte = buffer[index]
            index += 1
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
            } else if byte == UInt8(ascii: "\"") {
                inString = true
            } else if byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") {
                depth += 1
            } else if byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") {
                depth -= 1
                if depth == 0 {
                    let message = Array(buffer[head..<index])
                    head = index
                    scanned = index
                    return Self.outcome(Wire.multibinder.parse(message))
                }
            }
        }
        scanned = index
        guard bufferedBytes <= Wire.maximumMultibinderMessage else {
            discardAll()
            return .failure(
                Wire.Failure(
                    wire: .multibinder, id: .null,
                    error: .invalidRequest("message longer than \(Wire.maximumMultibinderMessage) bytes")), fatal: true)
        }
        return nil
    }

    private static func outcome(_ result: Result<Wire.Request, Wire.Failure>) -> Next {
        switch result {
        case .success(let request): .request(request)
        case .failure(let failure): .failure(failure, fatal: false)
        }
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }
}

/// The client side of a framed exchange: splits replies.
public struct FrameReader: Sendable {
    private var buffer: [UInt8] = []
    public init() {}
    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 { buffer.append(contentsOf: bytes) }

    /// The next whole reply's JSON, nil until more bytes arrive; throws on a bad frame.
    public mutating func next() throws -> [UInt8]? {
        guard buffer.count >= 4 else { return nil }
        let length = buffer[0..<4].reduce(0) { $0 << 8 | Int($1) }
        guard length <= Wire.maximumFrame else { throw BindError("reply frame of \(length) bytes") }
        guard buffer.count >= 4 + length else { return nil }
        defer { buffer.removeFirst(4 + length) }
        return Array(buffer[4..<(4 + length)])
    }
}
