import CBPF
import CFastPathABI
import Glibc
import LinuxSys
import NetTypes
import SecondChanceCore
import Synchronization

/// The program's maps, written from the daemon's configuration and its address watcher, and its
/// counters read back. Sets are replaced entry by entry, additions first: a packet never meets
/// a map that lacks an entry both the old and the new set have.
public struct FastPathMaps: Sendable {
    let config: Int32, configSlot: Int32, sources: Int32, hops: Int32, local4: Int32, local6: Int32,
        counters: Int32, hosts4: Int32, hosts6: Int32, localRanges: Int32
    let listeners: Int32, listenerCounts: Int32, listenerPass: Int32
    let replyRoutes4: Int32, replyRoutes6: Int32, reverse4: Int32

    public init(_ object: FastPathObject) {
        (config, configSlot) = (object.map(.config), object.map(.configSlot))
        (sources, hops) = (object.map(.sources), object.map(.hops))
        (local4, local6) = (object.map(.local4), object.map(.local6))
        (hosts4, hosts6, localRanges) = (object.map(.hosts4), object.map(.hosts6), object.map(.localRanges))
        (counters, listeners) = (object.map(.counters), object.map(.listeners))
        (listenerCounts, listenerPass) = (object.map(.listenerCounts), object.map(.listenerPass))
        (replyRoutes4, replyRoutes6, reverse4) = (object.map(.reply4), object.map(.reply6), object.map(.reverse4))
    }

    /// The ways back to the peers (`fp_reverse4`).
    public func write(_ paths: ReversePaths) throws {
        try replace(
            reverse4,
            entries: Dictionary(
                uniqueKeysWithValues: paths.entries.map { (FastPathABI.key($0.prefix), FastPathABI.value($0.way)) }))
    }

    /// The prefix sets first, the configuration word (its layout tells the program it may decide) last.
    public func write(_ settings: FastPathSettings) throws {
        try replace(sources, keys: Set(settings.peers.sources.prefixes.map(FastPathABI.key)))
        try replace(hops, keys: Set(settings.peers.hops.prefixes.map(FastPathABI.key)))
        try writeConfiguration(settings.configuration)
    }

    /// Serializes writers of the configuration (two at once would fill the same free slot), and
    /// waits out the programs still reading the slot just taken out of force, so that the next
    /// write may fill it.
    private final class ConfigurationWriter: Sendable {
        let lock = Mutex<BPFGracePeriod?>(nil)
    }
    private let configurationWriter = ConfigurationWriter()

    /// Writes `value` whole into the slot not in force, puts it in force (fp_config_slot), then
    /// waits until no program still reads the other: a packet meets the old configuration or the
    /// new one, never a mix of the two, however quickly writes follow each other.
    func writeConfiguration(_ value: fp_config) throws {
        try configurationWriter.lock.withLock { grace in
            if grace == nil { grace = try FastPathError.at(.maps) { try BPFGracePeriod() } }
            guard let current = Self.slotInForce(configSlot) else {
                throw FastPathError(.maps, "reading fp_config_slot", errno: errno)
            }
            var (zero, next): (UInt32, UInt32) = (0, current ^ 1)
            var value = value
            guard bpf_map_update_elem(config, &next, &value, UInt64(BPF_ANY)) == 0 else {
                throw FastPathError(.maps, "writing fp_config", errno: errno)
            }
            guard bpf_map_update_elem(configSlot, &zero, &next, UInt64(BPF_ANY)) == 0 else {
                throw FastPathError(.maps, "writing fp_config_slot", errno: errno)
            }
            try FastPathError.at(.maps) { try grace?.wait() }
        }
    }

    /// The host's addresses exactly (fp_hosts4/6) and its local routes (fp_local4/6). While the
    /// sets change, the program consults the routes whatever they hold (fp_local_ranges), and
    /// every map gets its additions before any loses an entry, so an address moving between the
    /// two is never missed; after, the routes are consulted only where there are any.
    public func write(_ local: LocalAddresses) throws {
        try writeLocalRanges(ipv4: true, ipv6: true)
        // An address routed into the sockets' namespace is never one of the host's (the watcher
        // leaves those out), so no deliverable address inside a local range hides the range's kind.
        let hosts4Entries = FastPathABI.localKinds(
            own: local.ipv4.map { FastPathABI.bytes(of: $0.value.bigEndian) },
            deliverable: local.deliverableIPv4.map { FastPathABI.bytes(of: $0.value.bigEndian) },
            broadcast: local.broadcast.map { FastPathABI.bytes(of: $0.value.bigEndian) })
        let hosts6Entries = FastPathABI.localKinds(
            own: local.ipv6.map { FastPathABI.bytes(of: $0) },
            deliverable: local.deliverableIPv6.map { FastPathABI.bytes(of: $0) })
        let own = [UInt8(FP_LOCAL_OWN)]
        let ranges4 = Dictionary(uniqueKeysWithValues: local.ipv4Ranges.map { (FastPathABI.key($0), own) })
        let ranges6 = Dictionary(uniqueKeysWithValues: local.ipv6Ranges.map { (FastPathABI.key($0), own) })
        let stale = [
            (hosts4, try add(hosts4, entries: hosts4Entries)), (hosts6, try add(hosts6, entries: hosts6Entries)),
            (local4, try add(local4, entries: ranges4)), (local6, try add(local6, entries: ranges6)),
        ]
        for (fd, keys) in stale { remove(fd, keys) }
        try writeLocalRanges(ipv4: !local.ipv4Ranges.isEmpty, ipv6: !local.ipv6Ranges.isEmpty)
    }

    private func writeLocalRanges(ipv4: Bool, ipv6: Bool) throws {
        var (zero, value) = (UInt32(0), fp_local_ranges(ipv4: ipv4 ? 1 : 0, ipv6: ipv6 ? 1 : 0))
        guard bpf_map_update_elem(localRanges, &zero, &value, UInt64(BPF_ANY)) == 0 else {
            throw FastPathError(.maps, "writing fp_local_ranges", errno: errno)
        }
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

    /// The index of the configuration slot in force (0 or 1), as the program takes it from
    /// `fp_config_slot`; nil when the map cannot be read.
    static func slotInForce(_ slotMap: Int32) -> UInt32? {
        var (zero, slot): (UInt32, UInt32) = (0, 0)
        return bpf_map_lookup_elem(slotMap, &zero, &slot) == 0 ? slot & 1 : nil
    }

    /// The layout written into a configuration map (0: none yet), or nil when it cannot be read as
    /// one: the slot in force where there are two (`slotMap`), the one entry of a configuration map
    /// of a layout before slots.
    public static func configuredLayout(configMap fd: Int32, slotMap: Int32?) -> UInt32? {
        guard let info = try? BPF.mapInfo(fd: fd),
            info.valueSize == UInt32(MemoryLayout<fp_config>.size), info.keySize == 4,
            info.maxEntries == 1 || info.maxEntries == 2
        else { return nil }
        var key: UInt32 = 0
        if info.maxEntries == 2 {
            guard let slot = slotMap.flatMap(slotInForce) else { return nil }
            key = slot
        }
        var value = fp_config()
        guard bpf_map_lookup_elem(fd, &key, &value) == 0 else { return nil }
        return value.layout
    }

    /// Makes the map hold exactly `entries`: new and changed ones written, then others removed.
    func replace(_ fd: Int32, entries: [[UInt8]: [UInt8]]) throws {
        remove(fd, try add(fd, entries: entries))
    }

    /// Writes `entries` (new and changed ones); returns the keys the map holds besides, for
    /// `remove` once every map of a set has its additions (an entry moving between two maps is
    /// then in one or both throughout, never in neither).
    func add(_ fd: Int32, entries: [[UInt8]: [UInt8]]) throws -> [[UInt8]] {
        let info = try FastPathError.at(.maps) { try BPF.mapInfo(fd: fd) }
        let present = Self.keys(of: fd, size: Int(info.keySize))
        let stale = present.filter { entries[$0] == nil }
        if entries.count + stale.count > Int(info.maxEntries) {
            // Old and new together would not fit: the stale entries go first (a packet may meet
            // a set with fewer entries meanwhile, never a write that failed half-way).
            for key in stale { _ = key.withUnsafeBytes { bpf_map_delete_elem(fd, $0.baseAddress) } }
        }
        var current = [UInt8](repeating: 0, count: Int(info.valueSize))
        for (key, value) in entries {
            if present.contains(key),
                key.withUnsafeBytes({ bpf_map_lookup_elem(fd, $0.baseAddress, &current) }) == 0, current == value
            {
                continue
            }
            let written = key.withUnsafeBytes { key in
                value.withUnsafeBytes { bpf_map_update_elem(fd, key.baseAddress, $0.baseAddress, UInt64(BPF_ANY)) }
            }
            guard written == 0 else { throw FastPathError(.maps, "adding a map entry", errno: errno) }
        }
        return Array(stale)
    }

    func remove(_ fd: Int32, _ keys: [[UInt8]]) {
        for key in keys { _ = key.withUnsafeBytes { bpf_map_delete_elem(fd, $0.baseAddress) } }
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
                    uniqueKeysWithValues: snapshot.replyRoutes.ipv4.map {
                        (FastPathABI.key($0.prefix), FastPathABI.value($0.route))
                    })
            )
            try replace(
                replyRoutes6,
                entries: Dictionary(
                    uniqueKeysWithValues: snapshot.replyRoutes.ipv6.map {
                        (FastPathABI.key($0.prefix), FastPathABI.value($0.route))
                    })
            )
            state.routes = snapshot.replyRoutes
        }
        let wanted = Set(records.map(FastPathABI.key))
        var served: [[UInt8]: [UInt8]] = [:]
        for (key, listener) in snapshot.listeners { served[FastPathABI.key(key)] = FastPathABI.value(listener) }
        guard !previous.complete || wanted != previous.records || served != previous.served else {
            state.complete = true
            return state
        }
        // Counts and pass times before the listeners, so a served listener's first SYN finds its entries.
        let present = Self.keys(of: listenerCounts, size: MemoryLayout<fp_listener_key>.size)
        try make(
            wanted.subtracting(present), in: listenerCounts, size: Self.cpus * MemoryLayout<fp_listener_counts>.stride)
        let passing = Self.keys(of: listenerPass, size: MemoryLayout<fp_listener_key>.size)
        try make(wanted.subtracting(passing), in: listenerPass, size: MemoryLayout<fp_listener_pass>.stride)
        try replace(listeners, entries: served)
        for key in present.union(passing).subtracting(wanted) {
            _ = key.withUnsafeBytes { bpf_map_delete_elem(listenerCounts, $0.baseAddress) }
            _ = key.withUnsafeBytes { bpf_map_delete_elem(listenerPass, $0.baseAddress) }
        }
        state.served = served
        state.records = wanted
        state.complete = true
        return state
    }

    /// A zeroed entry of `size` bytes for each key that has none (one the program made meanwhile is kept).
    private func make(_ keys: Set<[UInt8]>, in map: Int32, size: Int) throws {
        var zero = [UInt8](repeating: 0, count: size)
        for key in keys {
            let made = key.withUnsafeBytes { bpf_map_update_elem(map, $0.baseAddress, &zero, UInt64(BPF_NOEXIST)) }
            guard made == 0 || errno == EEXIST else {
                throw FastPathError(.maps, "adding a listener's entries", errno: errno)
            }
        }
    }

    static let cpus = max(1, Int(libbpf_num_possible_cpus()))

    /// The program's counts per listener, summed over the CPUs, by `fp_listener_count` slot.
    public func readListenerCounts(_ keys: [ListenerKey]) -> [ListenerKey: [UInt64]] {
        let stride = MemoryLayout<fp_listener_counts>.stride / 8
        var perCPU = [UInt64](repeating: 0, count: Self.cpus * stride)
        var out: [ListenerKey: [UInt64]] = [:]
        for listener in keys {
            let found = FastPathABI.key(listener).withUnsafeBytes {
                bpf_map_lookup_elem(listenerCounts, $0.baseAddress, &perCPU)
            }
            guard found == 0 else { continue }
            var sums = [UInt64](repeating: 0, count: Int(FP_L_COUNT.rawValue))
            for cpu in 0..<Self.cpus {
                for slot in sums.indices { sums[slot] &+= perCPU[cpu * stride + slot] }
            }
            out[listener] = sums
        }
        return out
    }

    /// Every slot summed over the CPUs (all 0 when the map cannot be read).
    public func readCounters() -> FastPathCounterValues {
        FastPathCounterValues(slots: readCounterSlots() ?? [])
    }

    /// Every slot summed over the CPUs; nil when the map cannot be read (the kernel allocates its
    /// per-CPU copy, which can fail).
    func readCounterSlots() -> [UInt64]? {
        // One struct fp_counter_block per CPU, whole words each.
        let count = FastPathCounters.slotCount
        var perCPU = [UInt64](repeating: 0, count: Self.cpus * count)
        var slots = [UInt64](repeating: 0, count: count)
        var key: UInt32 = 0
        guard bpf_map_lookup_elem(counters, &key, &perCPU) == 0 else { return nil }
        for cpu in 0..<Self.cpus {
            for slot in 0..<count { slots[slot] &+= perCPU[cpu * count + slot] }
        }
        return slots
    }

    /// Makes the program send every packet up (layout 0: not configured), counted as such (it still
    /// knows the GUE port), until `write` again.
    public func suspend(_ settings: FastPathSettings) {
        var value = settings.configuration
        value.layout = 0
        try? writeConfiguration(value)
    }

    /// The configuration in force, as the program reads it.
    public func readConfiguration() -> fp_config? {
        guard var key = Self.slotInForce(configSlot) else { return nil }
        var value = fp_config()
        return bpf_map_lookup_elem(config, &key, &value) == 0 ? value : nil
    }
}
