/// A listening socket, by the address and port it is bound to (the wildcard address included).
public struct ListenerKey: Hashable, Sendable, CustomStringConvertible {
    public var isIPv6: Bool
    public var address: IPv6Address
    public var port: UInt16

    public init(address: IPAddress, port: UInt16) {
        switch address {
        case .v4(let v4): (isIPv6, self.address) = (false, IPv6Address(high: 0, low: UInt64(v4.value)))
        case .v6(let v6): (isIPv6, self.address) = (true, v6)
        }
        self.port = port
    }

    // Written out so other modules inline them (the responder looks a listener up per SYN), and
    // packed as FlowKey's: the port and family in one word, an IPv4 address in another.
    @inlinable public static func == (a: ListenerKey, b: ListenerKey) -> Bool {
        a.address == b.address && a.port == b.port && a.isIPv6 == b.isIPv6
    }

    @inlinable public func hash(into hasher: inout Hasher) {
        hasher.combine(UInt64(port) << 1 | (isIPv6 ? 1 : 0))
        if isIPv6 { hasher.combine(address.high) }
        hasher.combine(address.low)
    }

    public var ipAddress: IPAddress {
        isIPv6 ? .v6(address) : .v4(IPv4Address(UInt32(truncatingIfNeeded: address.low)))
    }

    /// The same port on the family's wildcard address.
    public var wildcard: ListenerKey {
        ListenerKey(address: isIPv6 ? .v6(IPv6Address(high: 0, low: 0)) : .v4(IPv4Address(0)), port: port)
    }

    /// The listeners a SYN to this address and port reaches, most specific first: the address
    /// itself, then the family's wildcard, then (IPv4) a dual-stack IPv6 wildcard.
    public var lookupOrder: LookupOrder { LookupOrder(self) }

    /// The listeners a flow's SYN reaches, most specific first.
    public static func candidates(for flow: FlowKey) -> LookupOrder {
        ListenerKey(address: flow.destinationAddress, port: flow.destinationPort).lookupOrder
    }

    /// `lookupOrder`'s keys, held inline: it is walked per packet, and an array would be an
    /// allocation each time.
    public struct LookupOrder: Sequence, IteratorProtocol, Sendable {
        private let keys: (ListenerKey, ListenerKey, ListenerKey)
        private let count: Int
        private var position = 0

        init(_ key: ListenerKey) {
            let dualStackWildcard = ListenerKey(address: .v6(IPv6Address(high: 0, low: 0)), port: key.port)
            keys = (key, key.wildcard, dualStackWildcard)
            count = key.isIPv6 ? 2 : 3
        }

        public mutating func next() -> ListenerKey? {
            guard position < count else { return nil }
            defer { position += 1 }
            switch position {
            case 0: return keys.0
            case 1: return keys.1
            default: return keys.2
            }
        }
    }

    public var description: String { isIPv6 ? "[\(ipAddress)]:\(port)" : "\(ipAddress):\(port)" }
}
