import CMnl
import Glibc
import LinuxSys
import NetTypes

/// The interfaces GUE from the peers arrives on: those this host routes them through, asked over
/// rtnetlink as `ip route get` asks (a look-up that sends nothing), for the first address of each
/// `--allow-source` prefix; for 0.0.0.0/0, every interface of the main table's default route. A
/// prefix routed locally, or not at all, has none. In the order first found.
public enum PeerInterfaces {
    public static func of(_ sources: [IPv4Prefix]) -> [String] {
        guard let socket = try? RouteDumpSocket() else { return [] }
        var indexes: [UInt32] = []
        for (sequence, prefix) in zip(UInt32(1)..., sources) {
            let found: [UInt32]
            if prefix.length == 0 {
                found = defaultRoute(socket, sequence: sequence)
            } else {
                let first = prefix.network.value | (prefix.length < 32 ? 1 : 0)
                found =
                    NamespaceRoutes.outputInterface(
                        socket, family: AF_INET, destination: NamespaceRoutes.bytes(of: first.bigEndian),
                        sequence: sequence
                    ).map { [$0] } ?? []
            }
            for index in found where !indexes.contains(index) { indexes.append(index) }
        }
        return indexes.compactMap(name)
    }

    /// The interfaces of the main table's IPv4 default route (each nexthop's).
    static func defaultRoute(_ socket: RouteDumpSocket, sequence: UInt32) -> [UInt32] {
        var devices: [UInt32] = []
        try? socket.routes(family: AF_INET, table: RT_TABLE_MAIN.rawValue, sequence: sequence) { message in
            guard let route = RouteMessage(message), route.table == RT_TABLE_MAIN.rawValue,
                route.header.rtm_dst_len == 0, route.header.rtm_type == UInt8(RTN_UNICAST), devices.isEmpty
            else { return }
            devices = route.devices
        }
        return devices
    }

    static func name(_ index: UInt32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(index, &buffer) != nil else { return nil }
        return String(cString: buffer)
    }
}
