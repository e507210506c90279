import NetTypes

/// Who is heard and who may be a hop: the operator's list of GLB peers.
public struct PeerPolicy: Sendable, Equatable {
    /// Outer sources whose GUE is read at all: the directors and the proxies.
    public var sources: IPv4PrefixSet
    /// Next hops a packet may be forwarded to: the proxies.
    public var hops: IPv4PrefixSet
    /// More hops than this is no packet a director sends (glb-director sends 1 or 3).
    public var maximumHops: UInt8

    public static let defaultMaximumHops: UInt8 = 4

    public init(sources: [IPv4Prefix], hops: [IPv4Prefix]? = nil, maximumHops: UInt8 = PeerPolicy.defaultMaximumHops) {
        self.sources = IPv4PrefixSet(sources)
        self.hops = IPv4PrefixSet(hops ?? sources)
        self.maximumHops = maximumHops
    }

    /// Addresses no packet is ever forwarded to, whatever the allowed hops say: "this network"
    /// (0/8), loopback (127/8), multicast (224/4) and the reserved range with the limited
    /// broadcast address (240/4).
    @inline(__always)
    public static func isForbiddenHop(_ address: IPv4Address) -> Bool {
        let first = address.value >> 24
        return first == 0 || first == 127 || first >= 224
    }
}

/// The addresses this host answers for: interface addresses and VIPs on `lo`, and the ranges of
/// the local routing table (`ip route add local 198.19.0.0/24 dev lo`, the usual way to serve a
/// VIP range), kept current from rtnetlink. A decapsulated packet is delivered only to one of them.
public struct LocalAddresses: Sendable, Equatable {
    public var ipv4: Set<IPv4Address> { didSet { ipv4Values = Self.sorted(ipv4.map(\.value)) } }
    public var ipv6: Set<IPv6Address> { didSet { ipv6Values = Self.sorted(ipv6.map { Pair($0.high, $0.low) }) } }
    /// Directed broadcast addresses of this host's IPv4 subnets: never a hop.
    public var broadcast: Set<IPv4Address> { didSet { broadcastValues = Self.sorted(broadcast.map(\.value)) } }
    /// Local routes wider than one address (a single address is in `ipv4` and `ipv6`): a handful
    /// at most, scanned after the addresses.
    public var ipv4Ranges: Set<IPv4Prefix> { didSet { ipv4RangeSet = IPv4PrefixSet(Self.ordered(ipv4Ranges)) } }
    public var ipv6Ranges: Set<IPv6Prefix> { didSet { ipv6RangeList = Self.ordered(ipv6Ranges) } }
    /// Addresses of the sockets' namespace (`--netns`) that this host routes into it: a
    /// destination a decapsulated packet may have, nothing more. They are not this host's, so
    /// they neither make a source martian nor a hop this host: root in that namespace decides
    /// what they are, and must not decide what the host refuses or forwards.
    public var deliverableIPv4: Set<IPv4Address> {
        didSet { deliverableIPv4Values = Self.sorted(deliverableIPv4.map(\.value)) }
    }
    public var deliverableIPv6: Set<IPv6Address> {
        didSet { deliverableIPv6Values = Self.sorted(deliverableIPv6.map { Pair($0.high, $0.low) }) }
    }

    /// The same, sorted, for the per-packet look-ups: a host has a handful of addresses, and a scan
    /// of a few words beats hashing them.
    private var ipv4Values: [UInt32] = []
    private var ipv6Values: [Pair] = []
    private var broadcastValues: [UInt32] = []
    private var ipv4RangeSet = IPv4PrefixSet([])
    private var ipv6RangeList: [IPv6Prefix] = []
    private var deliverableIPv4Values: [UInt32] = []
    private var deliverableIPv6Values: [Pair] = []

    struct Pair: Comparable, Sendable {
        var high: UInt64, low: UInt64
        init(_ high: UInt64, _ low: UInt64) { (self.high, self.low) = (high, low) }
        static func < (a: Pair, b: Pair) -> Bool { (a.high, a.low) < (b.high, b.low) }
    }

    public init(
        ipv4: Set<IPv4Address> = [], ipv6: Set<IPv6Address> = [], broadcast: Set<IPv4Address> = [],
        ipv4Ranges: Set<IPv4Prefix> = [], ipv6Ranges: Set<IPv6Prefix> = [],
        deliverableIPv4: Set<IPv4Address> = [], deliverableIPv6: Set<IPv6Address> = []
    ) {
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.broadcast = broadcast
        self.ipv4Ranges = ipv4Ranges
        self.ipv6Ranges = ipv6Ranges
        self.deliverableIPv4 = deliverableIPv4
        self.deliverableIPv6 = deliverableIPv6
        deliverableIPv4Values = Self.sorted(deliverableIPv4.map(\.value))
        deliverableIPv6Values = Self.sorted(deliverableIPv6.map { Pair($0.high, $0.low) })
        ipv4Values = Self.sorted(ipv4.map(\.value))
        ipv6Values = Self.sorted(ipv6.map { Pair($0.high, $0.low) })
        broadcastValues = Self.sorted(broadcast.map(\.value))
        ipv4RangeSet = IPv4PrefixSet(Self.ordered(ipv4Ranges))
        ipv6RangeList = Self.ordered(ipv6Ranges)
    }

    public static let none = LocalAddresses()

    public static func == (a: LocalAddresses, b: LocalAddresses) -> Bool {
        a.ipv4 == b.ipv4 && a.ipv6 == b.ipv6 && a.broadcast == b.broadcast && a.ipv4Ranges == b.ipv4Ranges
            && a.ipv6Ranges == b.ipv6Ranges && a.deliverableIPv4 == b.deliverableIPv4
            && a.deliverableIPv6 == b.deliverableIPv6
    }

    static func sorted<T: Comparable>(_ values: [T]) -> [T] { values.sorted() }

    /// In a fixed order (by their text), so that equal sets scan alike.
    static func ordered<Prefix: CustomStringConvertible>(_ ranges: Set<Prefix>) -> [Prefix] {
        ranges.sorted { $0.description < $1.description }
    }

    /// Binary search over a sorted array; a few compares for any sane number of addresses.
    @inline(__always)
    static func contains<T: Comparable>(_ values: [T], _ value: T) -> Bool {
        var low = 0, high = values.count
        while low < high {
            let middle = (low + high) / 2
            if values[middle] < value { low = middle + 1 } else { high = middle }
        }
        return low < values.count && values[low] == value
    }

    @inline(__always)
    public func owns(_ address: IPv4Address) -> Bool {
        Self.contains(ipv4Values, address.value) || ipv4RangeSet.contains(address)
    }

    @inline(__always)
    public func owns(_ address: IPv6Address) -> Bool {
        Self.contains(ipv6Values, Pair(address.high, address.low)) || ipv6RangeList.contains { $0.contains(address) }
    }

    @inline(__always)
    public func isBroadcast(_ address: IPv4Address) -> Bool { Self.contains(broadcastValues, address.value) }

    /// Whether a packet from outside may be delivered to `address` here. Loopback and IPv6
    /// link-local addresses are this host's too, but nothing from the network may reach them: a
    /// decapsulated packet must not reach services that trust `lo` (the kernel calls such a
    /// destination martian).
    @inline(__always)
    public func accepts(destination address: IPv4Address) -> Bool {
        address.value >> 24 != 127 && (owns(address) || Self.contains(deliverableIPv4Values, address.value))
    }

    @inline(__always)
    public func accepts(destination address: IPv6Address) -> Bool {
        !Self.isLoopbackOrLinkLocal(address)
            && (owns(address) || Self.contains(deliverableIPv6Values, Pair(address.high, address.low)))
    }

    /// Whether `address` may not stand as the source of a packet delivered here: loopback,
    /// multicast or this host's own. The kernel drops such IPv4 sources arriving from outside
    /// (unless accept_local); an inner IPv6 packet reaches the stack through `lo`, where such a
    /// source would look like this host talking to itself. For IPv6 also every address of
    /// ::/96 (unspecified, loopback, IPv4-compatible) and ::ffff:0:0/96 (IPv4-mapped, RFC 4291
    /// 2.5.5.2: never on the wire): a dual-stack socket reads ::ffff:127.0.0.1 as loopback and
    /// ::ffff: plus one of this host's IPv4 addresses as the host itself.
    @inline(__always)
    public func isMartianSource(_ address: IPv4Address) -> Bool {
        let first = address.value >> 24
        // A subnet's directed broadcast address sends nothing: a reply to it would reach every host there.
        return first == 0 || first == 127 || first >= 224 || owns(address) || isBroadcast(address)
    }

    @inline(__always)
    public func isMartianSource(_ address: IPv6Address) -> Bool {
        (address.high == 0 && (address.low >> 32 == 0 || address.low >> 32 == 0xffff)) || address.high >> 56 == 0xff
            || owns(address)
    }

    public static func isLoopbackOrLinkLocal(_ address: IPv6Address) -> Bool {
        (address.high == 0 && address.low == 1) || address.high >> 54 == 0x3fa  // ::1, fe80::/10
    }
}
