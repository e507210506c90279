import CMnl
import Glibc
import LinuxSys
import NetTypes
import SecondChanceCore

/// Reads what `ReversePaths` needs from rtnetlink: the main table's IPv4 routes that cover or lie
/// inside a peer prefix (a proxy may carry a large table: the rest is not kept), and whether any
/// routing rule besides the default three exists.
public enum ReversePathReader {
    public static func read(peers: [IPv4Prefix], namespace: NetworkNamespace? = nil) throws -> ReversePaths {
        guard !peers.isEmpty else { return .none }
        let socket = try RouteDumpSocket(namespace: namespace)
        var best: [IPv4Prefix: (priority: UInt32, way: ReversePaths.Way)] = [:]
        try socket.routes(family: AF_INET, table: RT_TABLE_MAIN.rawValue, sequence: 1) { message in
            guard let route = mainRoute(message), concerns(route.prefix, peers: peers) else { return }
            if best[route.prefix].map({ route.priority < $0.priority }) ?? true {
                best[route.prefix] = (route.priority, route.way)
            }
        }
        // This host's own and broadcast addresses inside a peer prefix, however the main table
        // routes them: the local table comes first. The way back to an own address is loopback,
        // where only this host sends from (a director or health checker on the proxy itself,
        // glb-director #139); from any other interface it is a forgery. No packet is heard from a
        // broadcast address.
        try socket.routes(family: AF_INET, table: RT_TABLE_LOCAL.rawValue, sequence: 3) { message in
            switch LocalAddressWatcher.localRoute(message) {
            case .v4(let prefix) where prefix.length == 32 && peers.contains(where: { $0.contains(prefix.network) }):
                best[prefix] = (0, .interfaces([ReversePaths.loopbackIndex]))
            case .broadcast(let address) where peers.contains(where: { $0.contains(address) }):
                best[IPv4Prefix(network: address, length: 32)] = (0, .interfaces([]))
            default: break
            }
        }
        var policyRouting = false
        try socket.dump(
            RTM_GETRULE, sequence: 2, name: "RTM_GETRULE", rtmsg.self,
            fill: {
                $0.pointee.rtm_family = UInt8(AF_INET)
            }
        ) { message in
            if message.pointee.nlmsg_type == UInt16(RTM_NEWRULE), !isDefaultRule(message) { policyRouting = true }
        }
        return ReversePaths(peers: peers, routes: best.mapValues(\.way), policyRouting: policyRouting)
    }

    /// Whether a route to `prefix` can decide the way back to some peer: it covers a peer prefix,
    /// or lies inside one.
    static func concerns(_ prefix: IPv4Prefix, peers: [IPv4Prefix]) -> Bool {
        peers.contains {
            prefix.length <= $0.length ? prefix.contains($0.network) : $0.contains(prefix.network)
        }
    }

    /// An IPv4 route of the main table: its prefix, priority and way; nil for another table.
    static func mainRoute(_ message: UnsafePointer<nlmsghdr>) -> (
        prefix: IPv4Prefix, priority: UInt32, way: ReversePaths.Way
    )? {
        guard let route = RouteMessage(message), route.table == RT_TABLE_MAIN.rawValue,
            route.header.rtm_family == UInt8(AF_INET), route.header.rtm_dst_len <= 32
        else { return nil }
        let network: UInt32
        switch route.attributes[UInt16(RTA_DST.rawValue)] {
        case nil where route.header.rtm_dst_len == 0: network = 0
        case let destination? where destination.count == 4: network = destination.be32(0)
        default: return nil
        }
        let prefix = IPv4Prefix(network: IPv4Address(network), length: route.header.rtm_dst_len)
        // A route for one TOS only is not the one every packet's reply takes: netfilter judges.
        let way = route.header.rtm_tos != 0 ? .unchecked : way(route)
        return (prefix, route.word(RTA_PRIORITY.rawValue) ?? 0, way)
    }

    /// What rpfilter makes of a route of this type: a unicast route's nexthops' interfaces; no way
    /// back through a blackhole, unreachable, prohibit or local route; anything else (throw: the
    /// next rule's table decides) is netfilter's to judge.
    static func way(_ route: RouteMessage) -> ReversePaths.Way {
        switch Int(route.header.rtm_type) {
        case Int(RTN_UNICAST):
            // A nexthop object (RTA_NH_ID) names no device here: not guessed.
            let devices = Set(route.devices)
            return devices.isEmpty ? .unchecked : .interfaces(devices)
        case Int(RTN_BLACKHOLE), Int(RTN_UNREACHABLE), Int(RTN_PROHIBIT), Int(RTN_LOCAL): return .interfaces([])
        default: return .unchecked
        }
    }

    /// The kernel's own three rules: local at 0, main at 32766, default at 32767.
    static func isDefaultRule(_ message: UnsafePointer<nlmsghdr>) -> Bool {
        guard Int(mnl_nlmsg_get_payload_len(message)) >= MemoryLayout<rtmsg>.size else { return false }
        let header = UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).loadUnaligned(as: rtmsg.self)
        let attributes = Netlink.attributes(of: message, after: MemoryLayout<rtmsg>.size)
        let word = { (type: Int) -> UInt32? in
            attributes[UInt16(type)].flatMap { $0.count >= 4 ? $0.loadUnaligned(as: UInt32.self) : nil }
        }
        // linux/fib_rules.h, whose header has rtmsg's layout: FRA_PRIORITY (6), FRA_TABLE (15) and
        // FRA_PROTOCOL (21) say nothing of which packets the rule takes, nor do FRA_SUPPRESS_IFGROUP
        // (13) and FRA_SUPPRESS_PREFIXLEN (14) at -1 (unset); any other attribute is a selector (a
        // source, a mark, an interface, a VRF).
        let priority = word(6) ?? 0
        let table = word(15) ?? UInt32(header.rtm_table)
        let plain =
            header.rtm_src_len == 0 && header.rtm_dst_len == 0 && header.rtm_type == 1 /* FR_ACT_TO_TBL */
            && attributes.keys.allSatisfy {
                [6, 15, 21].contains($0) || ([13, 14].contains($0) && word(Int($0)) == .max)
            }
        return plain
            && [
                (0, RT_TABLE_LOCAL.rawValue), (32766, RT_TABLE_MAIN.rawValue), (32767, RT_TABLE_DEFAULT.rawValue),
            ].contains { $0.0 == priority && $0.1 == table }
    }
}
