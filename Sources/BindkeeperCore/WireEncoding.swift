import Foundation

/// Messages written in either form: replies, and the requests a client sends.
extension Wire {
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
        /// `steer`: the candidate's share of new connections.
        public var percent: Int?
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
            try container.encodeIfPresent(percent, forKey: .percent)
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
    public func request(id: RequestID, method: String, binds: [BindRequest] = [], percent: Int? = nil) -> [UInt8] {
        var message: Envelope<Bool> = envelope(id: id)
        message.method = method
        message.percent = percent
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
}
