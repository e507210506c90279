import Foundation

/// What travels in either form: ids, errors, methods, requests.
extension Wire {
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
        /// The group's new connections go to its served generation, a share to a candidate.
        case steer(Steering)
        case list
        case reexec
    }

    /// Which of a group's generations takes its new connections.
    public struct Steering: Equatable, Sendable {
        /// The served generation, then at most one candidate (another generation, same address).
        public var groups: [BindRequest]
        /// The candidate's share of new connections, by the flow's hash; 0 without a candidate.
        public var candidatePercent: UInt8

        public init(groups: [BindRequest], candidatePercent: UInt8) {
            (self.groups, self.candidatePercent) = (groups, candidatePercent)
        }
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
}
