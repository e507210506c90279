/// An IPv4 address in host byte order.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var value: UInt32

    @inlinable public init(_ value: UInt32) { self.value = value }

    /// Dotted-quad text as inet_pton(3) reads it: four decimal octets, no leading zeros (which
    /// other parsers read as octal).
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                part.count == 1 || part.first != "0", let octet = UInt8(part)
            else { return nil }
            value = value << 8 | UInt32(octet)
        }
        self.value = value
    }

    public var octets: [UInt8] {
        [
            UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16),
            UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value),
        ]
    }

    public var description: String { octets.map(String.init).joined(separator: ".") }

    @inlinable public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.value < b.value }
}

/// An IPv6 address as two host-order halves.
public struct IPv6Address: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    @inlinable public static func == (a: IPv6Address, b: IPv6Address) -> Bool { a.high == b.high && a.low == b.low }

    @inlinable public func hash(into hasher: inout Hasher) {
        hasher.combine(high)
        hasher.combine(low)
    }

    @inlinable public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public init(bytes: some Collection<UInt8>) {
        precondition(bytes.count == 16)
        var high: UInt64 = 0, low: UInt64 = 0
        for (index, byte) in bytes.enumerated() {
            if index < 8 { high = high << 8 | UInt64(byte) } else { low = low << 8 | UInt64(byte) }
        }
        self.init(high: high, low: low)
    }

    /// Text as inet_pton(3) reads it: up to eight groups of 1 to 4 hex digits, one `::`, and an
    /// IPv4 address in place of the last two groups (`::ffff:198.18.0.1`).
    public init?(_ text: some StringProtocol) {
        var text = String(text)
        var tail: [UInt16] = []
        if text.contains("."), let colon = text.lastIndex(of: ":") {
            guard let v4 = IPv4Address(text[text.index(after: colon)...]) else { return nil }
            tail = [UInt16(v4.value >> 16), UInt16(truncatingIfNeeded: v4.value)]
            // "::ffff:" leaves "::ffff", "::" stays "::", "1:2:3:4:5:6:" leaves "1:2:3:4:5:6".
            let prefix = text[...colon]
            text = String(prefix.hasSuffix("::") ? prefix : prefix.dropLast())
        }
        // Split at "::" without Foundation.
        var halves: [String] = []
        if let range = text.firstRange(of: "::") {
            halves = [String(text[..<range.lowerBound]), String(text[range.upperBound...])]
            guard !halves[1].contains("::") else { return nil }
        } else {
            halves = [text]
        }
        func groups(_ part: String) -> [UInt16]? {
            if part.isEmpty { return [] }
            var out: [UInt16] = []
            for group in part.split(separator: ":", omittingEmptySubsequences: false) {
                guard (1...4).contains(group.count), let value = UInt16(group, radix: 16) else { return nil }
                out.append(value)
            }
            return out
        }
        guard let head = groups(halves[0]) else { return nil }
        var all = head
        if halves.count == 2 {
            guard let rest = groups(halves[1]).map({ $0 + tail }), head.count + rest.count <= 7 else { return nil }
            all += Array(repeating: 0, count: 8 - head.count - rest.count) + rest
        } else {
            all += tail
        }
        guard all.count == 8 else { return nil }
        var bytes: [UInt8] = []
        for group in all { bytes.appendBE16(group) }
        self.init(bytes: bytes)
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(16)
        for half in [high, low] {
            for shift in stride(from: 56, through: 0, by: -8) {
                out.append(UInt8(truncatingIfNeeded: half >> UInt64(shift)))
            }
        }
        return out
    }

    /// Text as inet_ntop(3) writes it (RFC 5952): lower case, the first longest run of two or more
    /// zero groups compressed, and an IPv4-mapped (`::ffff:198.18.0.1`) or IPv4-compatible
    /// (`::198.18.0.1`) address with its last 32 bits in dotted quads.
    public var description: String {
        let b = bytes
        let groups = (0..<8).map { UInt16(b[2 * $0]) << 8 | UInt16(b[2 * $0 + 1]) }
        var bestStart = -1, bestLength = 1, runStart = -1
        for index in 0...8 {
            if index < 8 && groups[index] == 0 {
                if runStart < 0 { runStart = index }
            } else if runStart >= 0 {
                if index - runStart > bestLength {
                    bestStart = runStart
                    bestLength = index - runStart
                }
                runStart = -1
            }
        }
        let dottedTail = bestStart == 0 && (bestLength == 6 || (bestLength == 5 && groups[5] == 0xffff))
        func hex(_ range: Range<Int>) -> String { range.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        if dottedTail {
            let v4 = IPv4Address(UInt32(groups[6]) << 16 | UInt32(groups[7]))
            return bestLength == 6 ? "::\(v4)" : "::ffff:\(v4)"
        }
        if bestStart < 0 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }
}

/// Either family, as carried inside GUE.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(IPv4Address)
    case v6(IPv6Address)

    public init?(_ text: some StringProtocol) {
        if let v4 = IPv4Address(text) {
            self = .v4(v4)
        } else if let v6 = IPv6Address(text) {
            self = .v6(v6)
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .v4(let a): a.description
        case .v6(let a): a.description
        }
    }

    public var bytes: [UInt8] {
        switch self {
        case .v4(let a): a.octets
        case .v6(let a): a.bytes
        }
    }
}
