import CFastPathABI
import NetTypes
import SecondChanceCore

/// The tc program's maps, named as the C program names them: the one spelling on this side (the
/// loader finds each by it, the pins carry it, adoption checks a program has them all).
public enum FastPathMap: String, CaseIterable, Sendable {
    case config = "fp_config"
    case configSlot = "fp_config_slot"
    case sources = "fp_sources"
    case hops = "fp_hops"
    case hosts4 = "fp_hosts4"
    case hosts6 = "fp_hosts6"
    case localRanges = "fp_local_ranges"
    case local4 = "fp_local4"
    case local6 = "fp_local6"
    case counters = "fp_counters"
    case listeners = "fp_listeners"
    case listenerCounts = "fp_listen_count"
    case listenerPass = "fp_listen_pass"
    case reply4 = "fp_reply4"
    case reply6 = "fp_reply6"
    case reverse4 = "fp_reverse4"

    public static let names = allCases.map(\.rawValue)
}

/// The bytes of the `fp_*` keys and values the program reads, each built from its C struct
/// (fast_path_abi.h is the one definition of the layout).
enum FastPathABI {
    static func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    /// Copies `bytes` into the start of a C array member (a tuple the importer made of it).
    static func fill<T>(_ field: inout T, with bytes: [UInt8]) {
        withUnsafeMutableBytes(of: &field) { $0.copyBytes(from: bytes.prefix($0.count)) }
    }

    static func key(_ prefix: IPv4Prefix) -> [UInt8] {
        bytes(of: fp_ip4_prefix(prefix_length: UInt32(prefix.length), address: prefix.network.value.bigEndian))
    }

    static func key(_ prefix: IPv6Prefix) -> [UInt8] {
        var key = fp_ip6_prefix()
        key.prefix_length = UInt32(prefix.length)
        fill(&key.address, with: bytes(of: prefix.network))
        return bytes(of: key)
    }

    /// An IPv6 address in network order, as the packet carries it.
    static func bytes(of address: IPv6Address) -> [UInt8] {
        bytes(of: address.high.bigEndian) + bytes(of: address.low.bigEndian)
    }

    /// A listener as sock_diag and bpf_sock name it: family 4 or 6, port, its own bound address
    /// (an IPv4 one in the first 4 bytes).
    static func key(_ listener: ListenerKey) -> [UInt8] {
        var key = fp_listener_key()
        key.family = listener.isIPv6 ? 6 : 4
        key.port = listener.port.bigEndian
        fill(
            &key.address,
            with: listener.isIPv6
                ? bytes(of: listener.address.high.bigEndian) + bytes(of: listener.address.low.bigEndian)
                : bytes(of: UInt32(truncatingIfNeeded: listener.address.low).bigEndian))
        return bytes(of: key)
    }

    static func value(_ way: ReversePaths.Way) -> [UInt8] {
        var slots = [UInt32](repeating: 0, count: Int(FP_REVERSE_WAYS))
        switch way {
        case .unchecked: slots[0] = FP_REVERSE_UNCHECKED
        case .interfaces(let set):
            for (slot, index) in set.sorted().prefix(slots.count).enumerated() { slots[slot] = index }
        }
        var value = fp_reverse_path()
        fill(&value.ifindex, with: slots.withUnsafeBytes { Array($0) })
        return bytes(of: value)
    }

    static func value(_ route: ReplyRoutes.Route) -> [UInt8] {
        bytes(of: fp_reply_route(mss: route.mss, reserved: 0, ifindex: route.interfaceIndex))
    }

    static func value(_ listener: ResponderListener) -> [UInt8] {
        var value = fp_listener()
        value.receive_buffer = listener.receiveBuffer
        value.window_scale = listener.windowScale
        value.flags = listener.acceptQueueFull ? UInt8(FP_L_ACCEPT_QUEUE_FULL) : 0
        return bytes(of: value)
    }

    /// fp_hosts4/6 and fp_local4/6 entries: FP_LOCAL_OWN wins where a key is both; a broadcast
    /// address (fp_hosts4 only) adds FP_LOCAL_BROADCAST to whatever else it is.
    static func localKinds(own: [[UInt8]], deliverable: [[UInt8]], broadcast: [[UInt8]] = []) -> [[UInt8]: [UInt8]] {
        var entries = Dictionary(
            deliverable.map { ($0, [UInt8(FP_LOCAL_DELIVERABLE)]) }, uniquingKeysWith: { a, _ in a })
        for key in own { entries[key] = [UInt8(FP_LOCAL_OWN)] }
        for key in broadcast { entries[key] = [(entries[key]?[0] ?? 0) | UInt8(FP_LOCAL_BROADCAST)] }
        return entries
    }
}
