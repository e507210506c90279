/// An IPv4 prefix, as an operator writes it: `198.18.0.0/24`, or a bare address for a /32.
public struct IPv4Prefix: Hashable, Sendable, CustomStringConvertible {
    public let network: IPv4Address
    public let length: UInt8

    /// Refuses host bits outside the prefix: `198.18.0.5/24` is more likely a typo than a wish.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let address = IPv4Address(parts[0]) else { return nil }
        var length: UInt8 = 32
        if parts.count == 2 {
            guard (1...2).contains(parts[1].count), parts[1].allSatisfy(\.isASCII), let parsed = UInt8(parts[1]),
                parsed <= 32
            else { return nil }
            length = parsed
        }
        guard address.value & ~Self.mask(length) == 0 else { return nil }
        (network, self.length) = (address, length)
    }

    public init(network: IPv4Address, length: UInt8) {
        precondition(length <= 32)
        self.network = IPv4Address(network.value & Self.mask(length))
        self.length = length
    }

    static func mask(_ length: UInt8) -> UInt32 { length == 0 ? 0 : UInt32.max << (32 - UInt32(length)) }

    public var mask: UInt32 { Self.mask(length) }

    @inlinable @inline(__always)
    public func contains(_ address: IPv4Address) -> Bool { address.value & mask == network.value }

    public var description: String { "\(network)/\(length)" }

    public static let everything = IPv4Prefix(network: IPv4Address(0), length: 0)
}

/// A few prefixes, matched in order: operators list a handful of peer ranges, not a routing table.
public struct IPv4PrefixSet: Sendable, Equatable {
    public let prefixes: [IPv4Prefix]
    /// (network, mask) pairs for the per-packet match.
    @usableFromInline let entries: [(UInt32, UInt32)]

    public init(_ prefixes: [IPv4Prefix]) {
        self.prefixes = prefixes
        entries = prefixes.map { ($0.network.value, $0.mask) }
    }

    @inlinable @inline(__always)
    public func contains(_ address: IPv4Address) -> Bool {
        for (network, mask) in entries where address.value & mask == network { return true }
        return false
    }

    public var containsEverything: Bool { prefixes.contains { $0.length == 0 } }

    public static func == (a: IPv4PrefixSet, b: IPv4PrefixSet) -> Bool { a.prefixes == b.prefixes }
}
