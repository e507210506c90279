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
        guard let length = Wire.frameLength(buffer[head...]) else { return nil }
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
        guard let length = Wire.frameLength(buffer[...]) else { return nil }
        guard length <= Wire.maximumFrame else { throw BindError("reply frame of \(length) bytes") }
        guard buffer.count >= 4 + length else { return nil }
        defer { buffer.removeFirst(4 + length) }
        return Array(buffer[4..<(4 + length)])
    }
}
