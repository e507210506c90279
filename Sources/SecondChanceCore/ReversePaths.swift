import NetTypes

/// Strict reverse-path filtering for the GLB peers, as the shipped rules' `rpfilter` match does it:
/// a packet from a peer is heard only on an interface the route back to its source leaves by.
///
/// The table is the `--allow-source` prefixes split along the main routing table: each peer prefix
/// with the way of the longest route that covers it, and each route inside a peer prefix with its
/// own way. A longest-prefix match of a source then gives the way of the route the kernel would
/// pick for it (within the main table), whatever the peers' prefixes and the routes look like.
/// Where the main table is not the whole answer (policy routing rules), or a way has more
/// interfaces than the tc program's slots, the way is `unchecked`: netfilter's rule judges.
public struct ReversePaths: Equatable, Sendable {
    public enum Way: Hashable, Sendable {
        /// The interfaces the route's nexthops leave by; empty: no route back (none, or a
        /// blackhole, unreachable or prohibit route), nothing is heard.
        case interfaces(Set<UInt32>)
        /// Not decided here: netfilter's rpfilter rule judges.
        case unchecked
    }

    public enum Verdict: Equatable, Sendable { case heard, refused, unchecked }

    /// Loopback's interface index in every network namespace (LOOPBACK_IFINDEX): the way back to
    /// this host's own addresses.
    public static let loopbackIndex: UInt32 = 1

    /// Longest prefix first.
    public private(set) var entries: [(prefix: IPv4Prefix, way: Way)]

    /// FP_MAX_ROUTES: the tc program's map holds this many; a larger table is left unchecked.
    public static let maximumEntries = 16384
    /// FP_REVERSE_WAYS: interfaces one entry of the tc program holds.
    public static let maximumInterfaces = 4

    /// `routes`: the main table's routes that cover or lie inside a peer prefix, each with its way
    /// (the kernel's pick among routes to the same prefix). `policyRouting`: rules other than the
    /// default three (local, main, default) exist, so the main table may not be where a reply goes.
    public init(peers: [IPv4Prefix], routes: [IPv4Prefix: Way], policyRouting: Bool = false) {
        // A prefix given twice (--allow-source in the defaults file and on the command line) is one.
        let peers = Set(peers)
        var table: [IPv4Prefix: Way] = [:]
        for peer in peers {
            let covering = routes.filter { $0.key.length <= peer.length && $0.key.contains(peer.network) }
            table[peer] = covering.max { $0.key.length < $1.key.length }?.value ?? .interfaces([])
            for (route, way) in routes where route.length > peer.length && peer.contains(route.network) {
                table[route] = way
            }
        }
        let unchecked = policyRouting || table.count > Self.maximumEntries
        entries = (unchecked ? Dictionary(uniqueKeysWithValues: peers.map { ($0, Way.unchecked) }) : table)
            .map { (prefix: $0.key, way: Self.fitting($0.value)) }
            .sorted { ($0.prefix.length, $0.prefix.network.value) > ($1.prefix.length, $1.prefix.network.value) }
    }

    /// Nothing checked: every source is left to netfilter.
    public static let none = ReversePaths(peers: [], routes: [:])

    /// A way as the tc program can hold it.
    static func fitting(_ way: Way) -> Way {
        if case .interfaces(let set) = way, set.count > maximumInterfaces || set.contains(0) { return .unchecked }
        return way
    }

    /// Whether a packet from `source` that arrived on interface `arrival` is heard.
    public func check(_ source: IPv4Address, arrival: UInt32) -> Verdict {
        guard let way = entries.first(where: { $0.prefix.contains(source) })?.way else { return .unchecked }
        switch way {
        case .unchecked: return .unchecked
        case .interfaces(let set): return set.contains(arrival) ? .heard : .refused
        }
    }

    public static func == (a: ReversePaths, b: ReversePaths) -> Bool {
        a.entries.elementsEqual(b.entries) { $0.prefix == $1.prefix && $0.way == $1.way }
    }
}
