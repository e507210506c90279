import NetTypes

/// The routes a SYN-cookie reply leaves by, from the main routing table: for each prefix, the
/// MSS the kernel's own SYN-ACK would advertise along it (dst_metric_advmss, before the
/// listener's TCP_MAXSEG clamps it: tcp_mss_clamp) and the interface it leaves through. Both
/// responders advertise that MSS, so a fleet that lowers it to leave room for GUE (a route's
/// `advmss` or `mtu`, a smaller link MTU) gets the same segments from a cookie handshake as from
/// the kernel's.
public struct ReplyRoutes: Equatable, Sendable {
    public struct Route: Equatable, Sendable {
        public var mss: UInt16
        /// The interface of the route's (first) nexthop.
        public var interfaceIndex: UInt32

        public init(mss: UInt16, interfaceIndex: UInt32) {
            self.mss = mss
            self.interfaceIndex = interfaceIndex
        }
    }

    /// Longest prefix first, so the first match is the route the kernel picks in the main table.
    public private(set) var ipv4: [(prefix: IPv4Prefix, route: Route)]
    public private(set) var ipv6: [(prefix: IPv6Prefix, route: Route)]
    /// Whether a family had more routes than `maximumRoutes`: replies then use none of its routes
    /// (the kernel answers those SYNs itself), rather than guess.
    public private(set) var truncated = false

    /// FP_MAX_ROUTES: the tc program's maps hold this many per family.
    public static let maximumRoutes = 16384

    public init(ipv4: [(IPv4Prefix, Route)] = [], ipv6: [(IPv6Prefix, Route)] = []) {
        self.ipv4 = ipv4.map { (prefix: $0.0, route: $0.1) }.sorted { $0.prefix.length > $1.prefix.length }
        self.ipv6 = ipv6.map { (prefix: $0.0, route: $0.1) }.sorted { $0.prefix.length > $1.prefix.length }
        if ipv4.count > Self.maximumRoutes {
            self.ipv4 = []
            truncated = true
        }
        if ipv6.count > Self.maximumRoutes {
            self.ipv6 = []
            truncated = true
        }
    }

    public static func == (a: ReplyRoutes, b: ReplyRoutes) -> Bool {
        a.truncated == b.truncated && a.ipv4.elementsEqual(b.ipv4) { $0.prefix == $1.prefix && $0.route == $1.route }
            && a.ipv6.elementsEqual(b.ipv6) { $0.prefix == $1.prefix && $0.route == $1.route }
    }

    /// The route towards `destination`; nil when the main table has none.
    public func route(towards destination: IPAddress) -> Route? {
        switch destination {
        case .v4(let address): ipv4.first { $0.prefix.contains(address) }?.route
        case .v6(let address): ipv6.first { $0.prefix.contains(address) }?.route
        }
    }

    /// The kernel's dst_metric_advmss for a route: its `advmss` metric when set, else the path MTU
    /// (its `mtu` metric, else the device's) less the IP and TCP headers, at least ip_rt_min_advmss
    /// (256) for IPv4 and ip6_rt_min_advmss (1220) for IPv6, at most 65535 less the headers.
    public static func advertisedMSS(advmssMetric: UInt32?, mtuMetric: UInt32?, deviceMTU: UInt32, ipv6: Bool)
        -> UInt16
    {
        if let advmss = advmssMetric, advmss > 0 { return UInt16(clamping: advmss) }
        let mtu = mtuMetric.flatMap { $0 > 0 ? $0 : nil } ?? deviceMTU
        let headers: UInt32 = ipv6 ? 60 : 40
        let minimum: UInt32 = ipv6 ? 1220 : 256
        let value = max(mtu > headers ? mtu - headers : 0, minimum)
        return UInt16(min(value, 65535 - headers))
    }

    /// What the SYN-ACK offers: the route's MSS, or the listener's TCP_MAXSEG when that is smaller.
    public static func clamp(_ routeMSS: UInt16, userMSS: UInt16) -> UInt16 {
        userMSS > 0 && userMSS < routeMSS ? userMSS : routeMSS
    }
}
