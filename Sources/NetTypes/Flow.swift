/// The TCP 4-tuple of a flow as seen from the client: source = client, destination = VIP.
/// IPv4 addresses sit in the low 32 bits of `low`.
public struct FlowKey: Hashable, Sendable, CustomStringConvertible {
    public var isIPv6: Bool
    public var source: IPv6Address
    public var destination: IPv6Address
    public var sourcePort: UInt16
    public var destinationPort: UInt16

    @inlinable public init(source: IPv4Address, sourcePort: UInt16, destination: IPv4Address, destinationPort: UInt16) {
        isIPv6 = false
        self.source = IPv6Address(high: 0, low: UInt64(source.value))
        self.destination = IPv6Address(high: 0, low: UInt64(destination.value))
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
    }

    @inlinable public init(source: IPv6Address, sourcePort: UInt16, destination: IPv6Address, destinationPort: UInt16) {
        isIPv6 = true
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
    }

    // Written out (as the compiler would) so that other modules inline them: the flow cache and
    // the flow epochs hash a key per packet.
    @inlinable public static func == (a: FlowKey, b: FlowKey) -> Bool {
        a.source == b.source && a.destination == b.destination && a.sourcePort == b.sourcePort
            && a.destinationPort == b.destinationPort && a.isIPv6 == b.isIPv6
    }

    /// Every bit of the key, packed into as few words as it fits (each `combine` is a SipHash
    /// round): an IPv4 flow is two words, its addresses in one. Nothing is folded together, so
    /// distinct flows stay distinct inputs to the seeded hash and spoofed flows cannot be made to
    /// collide.
    @inlinable public func hash(into hasher: inout Hasher) {
        hasher.combine(UInt64(sourcePort) << 32 | UInt64(destinationPort) << 16 | (isIPv6 ? 1 : 0))
        if isIPv6 {
            hasher.combine(source.high)
            hasher.combine(source.low)
            hasher.combine(destination.high)
            hasher.combine(destination.low)
        } else {
            // An IPv4 key's addresses are 32 bits (the initializer's invariant).
            hasher.combine(source.low << 32 | (destination.low & 0xffff_ffff))
        }
    }

    public var sourceAddress: IPAddress {
        isIPv6 ? .v6(source) : .v4(IPv4Address(UInt32(truncatingIfNeeded: source.low)))
    }

    public var destinationAddress: IPAddress {
        isIPv6 ? .v6(destination) : .v4(IPv4Address(UInt32(truncatingIfNeeded: destination.low)))
    }

    public var description: String {
        isIPv6
            ? "[\(sourceAddress)]:\(sourcePort) -> [\(destinationAddress)]:\(destinationPort)"
            : "\(sourceAddress):\(sourcePort) -> \(destinationAddress):\(destinationPort)"
    }
}

public struct TCPFlags: OptionSet, Sendable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let psh = TCPFlags(rawValue: 0x08)
    public static let ack = TCPFlags(rawValue: 0x10)
}
