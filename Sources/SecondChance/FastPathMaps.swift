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
    /// The SYN-cookie responder serves some listener: SYNs and listeners' segments go up to it.
    public var responderServing: Bool = false

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
        return fp_config(
            layout: UInt32(FP_LAYOUT), self_ip4: selfAddress.value.bigEndian, gue_port: guePort.bigEndian,
            max_hops: peers.maximumHops, flags: flags)
    }
}

/// The program's maps, written from the daemon's configuration and its address watcher, and its
/// counters read back. Sets are replaced entry by entry, additions first: a packet never meets
/// a map that lacks an entry both the old and the new set have.
public struct FastPathMaps: Sendable {
    let config: Int32, sources: Int32, hops: Int32, local4: Int32, local6: Int32, broadcast4: Int32, counters: Int32

    public init(_ object: FastPathObject) {
        config = object.map("fp_config")
        sources = object.map("fp_sources")
        hops = object.map("fp_hops")
        local4 = object.map("fp_local4")
        local6 = object.map("fp_local6")
        broadcast4 = object.map("fp_broadcast4")
        counters = object.map("fp_counters")
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
        let addresses4 = local.ipv4.map { IPv4Prefix(network: $0, length: 32) } + local.ipv4Ranges
        let addresses6 = local.ipv6.map { IPv6Prefix(network: $0, length: 128) } + local.ipv6Ranges
        try replace(local4, keys: Set(addresses4.map(Self.key)))
        try replace(local6, keys: Set(addresses6.map(Self.key)))
        try replace(broadcast4, keys: Set(local.broadcast.map { Self.bytes(of: $0.value.bigEndian) }))
    }

    static func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    static func key(_ prefix: IPv4Prefix) -> [UInt8] {
        bytes(of: fp_ip4_prefix(prefix_length: UInt32(prefix.length), address: prefix.network.value.bigEndian))
    }

    static func key(_ prefix: IPv6Prefix) -> [UInt8] {
        bytes(of: UInt32(prefix.length)) + bytes(of: prefix.network.high.bigEndian)
            + bytes(of: prefix.network.low.bigEndian)
    }

    /// Makes the map's keys exactly `keys` (values 1).
    func replace(_ fd: Int32, keys: Set<[UInt8]>) throws {
        var present: Set<[UInt8]> = []
        if let size = keys.first?.count ?? (try? FastPathKernel.mapInfo(fd: fd)).map({ Int($0.key_size) }) {
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
        }
        var one: UInt8 = 1
        for key in keys.subtracting(present) {
            guard key.withUnsafeBytes({ bpf_map_update_elem(fd, $0.baseAddress, &one, UInt64(BPF_ANY)) }) == 0 else {
                throw FastPathError("adding a map entry", errno: errno)
            }
        }
        for key in present.subtracting(keys) {
            _ = key.withUnsafeBytes { bpf_map_delete_elem(fd, $0.baseAddress) }
        }
    }

    /// Every slot summed over the CPUs.
    public func readCounters() -> FastPathCounterValues {
        let cpus = max(1, Int(libbpf_num_possible_cpus()))
        var perCPU = [UInt64](repeating: 0, count: cpus)
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
