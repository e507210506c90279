/// An IPv6 prefix, such as a VIP range a local route serves: `2001:db8:10::/64`.
public struct IPv6Prefix: Hashable, Sendable, CustomStringConvertible {
    public let network: IPv6Address
    public let length: UInt8

    public init(network: IPv6Address, length: UInt8) {
        precondition(length <= 128)
        let (high, low) = Self.masks(length)
        self.network = IPv6Address(high: network.high & high, low: network.low & low)
        self.length = length
    }

    @usableFromInline static func masks(_ length: UInt8) -> (UInt64, UInt64) {
        switch length {
        case 0: (0, 0)
        case 1...64: (UInt64.max << (64 - UInt64(length)), 0)
        default: (UInt64.max, length == 128 ? UInt64.max : UInt64.max << (128 - UInt64(length)))
        }
    }

    @inlinable
    public func contains(_ address: IPv6Address) -> Bool {
        let (high, low) = Self.masks(length)
        return address.high & high == network.high && address.low & low == network.low
    }

    public var description: String { "\(network)/\(length)" }
}
