import CBPF
import CFastPathABI
import Glibc
import NetTypes
import SecondChanceCore

/// What the daemon tells the tc program about its configuration (`struct fp_config`).
public struct FastPathSettings: Equatable, Sendable {
    public var selfAddress: IPv4Address
    public var peers: PeerPolicy
    public var guePort: UInt16
    /// Cookie ACKs may be recognised (not --no-cookie-check).
    public var checkCookies: Bool
    /// Sockets live in another namespace (--netns): every look-up goes up.
    public var lookupsElsewhere: Bool
    /// The SYN-cookie responder serves some listener (fp_listeners holds them).
    public var responderServing: Bool = false
    /// The responder's: one SYN per listener, CPU and interval goes to the kernel (--cookie-pass-ms).
    public var passIntervalNanoseconds: UInt64 = 1_000_000_000
    /// The host's TCP sysctls, as the monitor last read them.
    public var tcp = TCPHostSettings()
    /// --self is one of this host's addresses now (the watcher follows it).
    public var selfOwned = true

    public init(
        selfAddress: IPv4Address, peers: PeerPolicy, guePort: UInt16, checkCookies: Bool, lookupsElsewhere: Bool
    ) {
        self.selfAddress = selfAddress
        self.peers = peers
        self.guePort = guePort
        self.checkCookies = checkCookies
        self.lookupsElsewhere = lookupsElsewhere
    }

    var configuration: fp_config {
        var flags: UInt8 = 0
        if checkCookies { flags |= UInt8(FP_F_CHECK_COOKIES) }
        if responderServing { flags |= UInt8(FP_F_RESPONDER) }
        if lookupsElsewhere { flags |= UInt8(FP_F_LOOKUPS_UP) }
        if !selfOwned { flags |= UInt8(FP_F_SELF_GONE) }
        var options: UInt8 = 0
        if tcp.timestampsEncodable { options |= UInt8(FP_TCP_TIMESTAMPS_ENCODABLE) }
        if tcp.sack { options |= UInt8(FP_TCP_SACK) }
        if tcp.windowScaling { options |= UInt8(FP_TCP_WINDOW_SCALING) }
        var value = fp_config()
        value.layout = UInt32(FP_LAYOUT)
        value.self_ip4 = selfAddress.value.bigEndian
        value.gue_port = guePort.bigEndian
        value.max_hops = peers.maximumHops
        value.flags = flags
        value.pass_interval_ns = passIntervalNanoseconds
        value.reply_ttl = tcp.defaultTTL
        value.reply_hop_limit = tcp.defaultHopLimit
        value.tcp_options = options
        return value
    }
}

/// The program's maps, written from the daemon's configuration and its address watcher, and its
/// counters read back. Sets are replaced entry by entry, additions first: a packet never meets
/// a map that lacks an entry both the old and the new set have.
public struct FastPathMaps: Sendable {
    let config: Int32, sources: Int32, hops: Int32, local4: Int32, local6: Int32, broadcast4: Int32, counters: Int32
    let listeners: Int32, listenerCounts: Int32, replyRoutes4: Int32, replyRoutes6: Int32, reverse4: Int32

    public init(_ object: FastPathObject) {
        config = object.map("fp_config")
        sources = object.map("fp_sources")
        hops = object.map("fp_hops")
        local4 = object.map("fp_local4")
        local6 = object.map("fp_local6")
        broadcast4 = object.map("fp_broadcast4")
        counters = object.map("fp_counters")
        listeners = object.map("fp_listeners")
        listenerCounts = object.map("fp_listen_count")
        replyRoutes4 = object.map("fp_reply4")
        replyRoutes6 = object.map("fp_reply6")
        reverse4 = object.map("fp_reverse4")
    }

    /// The ways back to the peers (`fp_reverse4`).
    public func write(_ paths: ReversePaths) throws {
        try replace(
            reverse4,
            entries: Dictionary(uniqueKeysWithValues: paths.entries.map { (Self.key($0.prefix), Self.value($0.way)) }))
    }

    static func value(_ way: ReversePaths.Way) -> [UInt8] {
        var slots = [UInt32](repeating: 0, count: Int(FP_REVERSE_WAYS))
        switch way {
        case .unchecked: slots[0] = FP_REVERSE_UNCHECKED
        case .interfaces(let set):
            for (slot, index) in set.sorted().prefix(slots.count).enumerated() { slots[slot] = index }
        }
        var value = fp_reverse_path()
        withUnsafeMutableBytes(of: &value.ifindex) { $0.copyBytes(from: slots.withUnsafeBytes { Array($0) }) }
        return bytes(of: value)
    }

    /// The prefix sets first, the configuration word (its layout tells the program it may decide) last.
    public func write(_ settings: FastPathSettings) throws {
        try replace(sources, keys: Set(settings.peers.sources.prefixes.map(Self.key)))
        try replace(hops, keys: Set(settings.peers.hops.prefixes.map(Self.key)))
        var zero: UInt32 = 0
        var value = settings.configuration
        guard bpf_map_update_elem(config, &zero, &value, UInt64(BPF_ANY)) == 0 else {
            throw FastPathError("writing fp_config", errno: errno)
        }
    }

    public func write(_ local: LocalAddresses) throws {
        // An address routed into the sockets' namespace is never one of the host's (the watcher
        // leaves those out), so no deliverable /32 inside a local range hides the range's kind.
        let own4 = local.ipv4.map { IPv4Prefix(network: $0, length: 32) } + local.ipv4Ranges
        let own6 = local.ipv6.map { IPv6Prefix(network: $0, length: 128) } + local.ipv6Ranges
        let deliverable4 = local.deliverableIPv4.map { IPv4Prefix(network: $0, length: 32) }
        let deliverable6 = local.deliverableIPv6.map { IPv6Prefix(network: $0, length: 128) }
        try replace(local4, entries: Self.kinds(own: own4.map(Self.key), deliverable: deliverable4.map(Self.key)))
        try replace(local6, entries: Self.kinds(own: own6.map(Self.key), deliverable: deliverable6.map(Self.key)))
        try replace(broadcast4, keys: Set(local.broadcast.map { Self.bytes(of: $0.value.bigEndian) }))
    }

    static func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    /// fp_local4/6 entries: FP_LOCAL_OWN wins where a key is both.
    static func kinds(own: [[UInt8]], deliverable: [[UInt8]]) -> [[UInt8]: [UInt8]] {
        var entries = Dictionary(
            deliverable.map { ($0, [UInt8(FP_LOCAL_DELIVERABLE)]) }, uniquingKeysWith: { a, _ in a })
        for key in own { entries[key] = [UInt8(FP_LOCAL_OWN)] }
        return entries
    }

    static func key(_ prefix: IPv4Prefix) -> [UInt8] {
        bytes(of: fp_ip4_prefix(prefix_length: UInt32(prefix.length), address: prefix.network.value.bigEndian))
    }

    static func key(_ prefix: IPv6Prefix) -> [UInt8] {
        bytes(of: UInt32(prefix.length)) + bytes(of: prefix.network.high.bigEndian)
            + bytes(of: prefix.network.low.bigEndian)
    }

    /// Makes the map's keys exactly `keys` (values 1).
    func replace(_ fd: Int32, keys: Set<[UInt8]>) throws {
        try replace(fd, entries: Dictionary(uniqueKeysWithValues: keys.map { ($0, [1]) }))
    }

    /// The keys the map holds now.
    static func keys(of fd: Int32, size: Int) -> Set<[UInt8]> {
        var present: Set<[UInt8]> = []
        var key = [UInt8](repeating: 0, count: size)
        var next = [UInt8](repeating: 0, count: size)
        var first = true
        while true {
            let found =
                first
                ? bpf_map_get_next_key(fd, nil, &next)
                : key.withUnsafeBytes { bpf_map_get_next_key(fd, $0.baseAddress, &next) }
            guard found == 0 else { break }
            present.insert(next)
            key = next
            first = false
        }
        return present
    }

    /// Makes the map hold exactly `entries`: new and changed ones written, then others removed.
    func replace(_ fd: Int32, entries: [[UInt8]: [UInt8]]) throws {
        let info = try FastPathKernel.mapInfo(fd: fd)
        let present = Self.keys(of: fd, size: Int(info.key_size))
        let stale = present.filter { entries[$0] == nil }
        if entries.count + stale.count > Int(info.max_entries) {
            // Old and new together would not fit: the stale entries go first (a packet may meet
            // a set with fewer entries meanwhile, never a write that failed half-way).
            for key in stale { _ = key.withUnsafeBytes { bpf_map_delete_elem(fd, $0.baseAddress) } }
        }
        var current = [UInt8](repeating: 0, count: Int(info.value_size))
        for (key, value) in entries {
            if present.contains(key),
                key.withUnsafeBytes({ bpf_map_lookup_elem(fd, $0.baseAddress, &current) }) == 0, current == value
            {
                continue
            }
            let written = key.withUnsafeBytes { key in
                value.withUnsafeBytes { bpf_map_update_elem(fd, key.baseAddress, $0.baseAddress, UInt64(BPF_ANY)) }
            }
            guard written == 0 else { throw FastPathError("adding a map entry", errno: errno) }
        }
        for key in stale { _ = key.withUnsafeBytes { bpf_map_delete_elem(fd, $0.baseAddress) } }
    }

    static func key(_ listener: ListenerKey) -> [UInt8] {
        var bytes: [UInt8] = [listener.isIPv6 ? 6 : 4, 0] + Self.bytes(of: listener.port.bigEndian)
        if listener.isIPv6 {
            bytes += Self.bytes(of: listener.address.high.bigEndian) + Self.bytes(of: listener.address.low.bigEndian)
        } else {
            bytes += Self.bytes(of: UInt32(truncatingIfNeeded: listener.address.low).bigEndian)
            bytes += [UInt8](repeating: 0, count: 12)
        }
        return bytes
    }

    /// What `write(responder:records:after:)` last wrote: the next call writes only what changed
    /// (the monitor publishes every scan, up to twenty times a second during a flood).
    public struct ResponderState: Sendable {
        var routes = ReplyRoutes()
        var served: [[UInt8]: [UInt8]] = [:]
        var records: Set<[UInt8]> = []
        var complete = false
    }

    /// The responder's maps: the listeners it serves, a counts entry for every listener with a
    /// record (kept while the record is, so counts outlive a pause), the reply routes.
    public func write(
        responder snapshot: ResponderBoard.Snapshot, records: [ListenerKey], after previous: ResponderState
    )
        throws -> ResponderState
    {
        var state = previous
        state.complete = false
        if !previous.complete || snapshot.replyRoutes != previous.routes {
            try replace(
                replyRoutes4,
                entries: Dictionary(
                    uniqueKeysWithValues: snapshot.replyRoutes.ipv4.map { (Self.key($0.prefix), Self.value($0.route)) })
            )
            try replace(
                replyRoutes6,
                entries: Dictionary(
                    uniqueKeysWithValues: snapshot.replyRoutes.ipv6.map { (Self.key($0.prefix), Self.value($0.route)) })
            )
            state.routes = snapshot.replyRoutes
        }
        let wanted = Set(records.map(Self.key))
        var served: [[UInt8]: [UInt8]] = [:]
        for (key, listener) in snapshot.listeners {
            var value = fp_listener()
            value.receive_buffer = listener.receiveBuffer
            value.window_scale = listener.windowScale
            value.flags = listener.acceptQueueFull ? UInt8(FP_L_ACCEPT_QUEUE_FULL) : 0
            served[Self.key(key)] = Self.bytes(of: value)
        }
        guard !previous.complete || wanted != previous.records || served != previous.served else {
            state.complete = true
            return state
        }
        // Counts before the listeners, so a served listener's first SYN finds its entry.
        let present = Self.keys(of: listenerCounts, size: MemoryLayout<fp_listener_key>.size)
        var zero = [UInt8](repeating: 0, count: Self.cpus * MemoryLayout<fp_listener_counts>.stride)
        for key in wanted.subtracting(present) {
            let made = key.withUnsafeBytes {
                bpf_map_update_elem(listenerCounts, $0.baseAddress, &zero, UInt64(BPF_NOEXIST))
            }
            guard made == 0 || errno == EEXIST else { throw FastPathError("adding a listener's counts", errno: errno) }
        }
        try replace(listeners, entries: served)
        for key in present.subtracting(wanted) {
            _ = key.withUnsafeBytes { bpf_map_delete_elem(listenerCounts, $0.baseAddress) }
        }
        state.served = served
        state.records = wanted
        state.complete = true
        return state
    }

    static func value(_ route: ReplyRoutes.Route) -> [UInt8] {
        bytes(of: fp_reply_route(mss: route.mss, reserved: 0, ifindex: route.interfaceIndex))
    }

    static let cpus = max(1, Int(libbpf_num_possible_cpus()))

    /// The program's counts per listener, summed over the CPUs, by `fp_listener_count` slot.
    public func readListenerCounts(_ keys: [ListenerKey]) -> [ListenerKey: [UInt64]] {
        let stride = MemoryLayout<fp_listener_counts>.stride / 8
        var perCPU = [UInt64](repeating: 0, count: Self.cpus * stride)
        var out: [ListenerKey: [UInt64]] = [:]
        for listener in keys {
            let found = Self.key(listener).withUnsafeBytes {
                bpf_map_lookup_elem(listenerCounts, $0.baseAddress, &perCPU)
            }
            guard found == 0 else { continue }
            var sums = [UInt64](repeating: 0, count: Int(FP_L_COUNT.rawValue))
            for cpu in 0..<Self.cpus {
                for slot in sums.indices { sums[slot] &+= perCPU[cpu * stride + 1 + slot] }
            }
            out[listener] = sums
        }
        return out
    }

    /// Every slot summed over the CPUs.
    public func readCounters() -> FastPathCounterValues {
        var perCPU = [UInt64](repeating: 0, count: Self.cpus)
        var slots = [UInt64](repeating: 0, count: FastPathCounters.slotCount)
        for slot in 0..<slots.count {
            var key = UInt32(slot)
            guard bpf_map_lookup_elem(counters, &key, &perCPU) == 0 else { continue }
            slots[slot] = perCPU.reduce(0, &+)
        }
        return FastPathCounterValues(slots: slots)
    }

    /// Makes the program send every packet up (layout 0: not configured), counted as such (it still
    /// knows the GUE port), until `write` again.
    public func suspend(_ settings: FastPathSettings) {
        var zero: UInt32 = 0
        var value = settings.configuration
        value.layout = 0
        _ = bpf_map_update_elem(config, &zero, &value, UInt64(BPF_ANY))
    }

    /// The configuration word as the program reads it.
    public func readConfiguration() -> fp_config? {
        var zero: UInt32 = 0
        var value = fp_config()
        return bpf_map_lookup_elem(config, &zero, &value) == 0 ? value : nil
    }
}
