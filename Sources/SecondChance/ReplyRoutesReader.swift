import CMnl
import Glibc
import LinuxSys
import NetTypes
import SecondChanceCore

/// Reads the main routing table and the links' MTUs (rtnetlink dumps) into `ReplyRoutes`.
/// Policy routing (rules, other tables) and learned path MTUs are not seen: the table is what the
/// kernel's SYN-ACK would advertise along the main table's routes.
public enum ReplyRoutesReader {
    public static func read(namespace: NetworkNamespace? = nil) throws -> ReplyRoutes {
        let socket = try RouteDumpSocket(namespace: namespace)
        var mtus: [UInt32: UInt32] = [:]
        try socket.dump(
            RTM_GETLINK, sequence: 1, name: "RTM_GETLINK", ifinfomsg.self,
            fill: {
                $0.pointee.ifi_family = UInt8(AF_UNSPEC)
            }
        ) { message in
            guard message.pointee.nlmsg_type == UInt16(RTM_NEWLINK),
                Int(mnl_nlmsg_get_payload_len(message)) >= MemoryLayout<ifinfomsg>.size
            else { return }
            let index = UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).loadUnaligned(as: ifinfomsg.self).ifi_index
            let attributes = Netlink.attributes(of: message, after: MemoryLayout<ifinfomsg>.size)
            if let mtu = attributes[UInt16(IFLA_MTU)], mtu.count >= 4, index > 0 {
                mtus[UInt32(index)] = mtu.loadUnaligned(as: UInt32.self)
            }
        }

        var best4: [IPv4Prefix: (priority: UInt32, route: ReplyRoutes.Route)] = [:]
        var best6: [IPv6Prefix: (priority: UInt32, route: ReplyRoutes.Route)] = [:]
        for (sequence, family) in [(UInt32(2), AF_INET), (3, AF_INET6)] {
            try socket.routes(family: family, table: RT_TABLE_MAIN.rawValue, sequence: sequence) { message in
                guard let route = mainRoute(message, mtus: mtus) else { return }
                // Of routes to one prefix the kernel uses the one of lowest priority (metric).
                switch route.destination {
                case .v4(let prefix):
                    if best4[prefix].map({ route.priority < $0.priority }) ?? true {
                        best4[prefix] = (route.priority, route.route)
                    }
                case .v6(let prefix):
                    if best6[prefix].map({ route.priority < $0.priority }) ?? true {
                        best6[prefix] = (route.priority, route.route)
                    }
                }
            }
        }
        return ReplyRoutes(ipv4: best4.map { ($0.key, $0.value.route) }, ipv6: best6.map { ($0.key, $0.value.route) })
    }

    enum Destination { case v4(IPv4Prefix), v6(IPv6Prefix) }

    /// A unicast route of the main table: its prefix, priority, advertised MSS and interface; nil
    /// for any other, one the kernel passes over (dead), one for a single TOS (a SYN-ACK, the
    /// kernel's or the responder's, has TOS 0, which only routes without one carry), or one whose
    /// devices are unknown (a nexthop object): nothing is guessed.
    static func mainRoute(_ message: UnsafePointer<nlmsghdr>, mtus: [UInt32: UInt32]) -> (
        destination: Destination, priority: UInt32, route: ReplyRoutes.Route
    )? {
        guard let route = RouteMessage(message), route.table == RT_TABLE_MAIN.rawValue,
            route.header.rtm_type == UInt8(RTN_UNICAST), route.header.rtm_tos == 0, !route.isDead
        else { return nil }
        let (header, attributes, word) = (route.header, route.attributes, route.word)
        let ipv6 = header.rtm_family == UInt8(AF_INET6)
        // The devices: RTA_OIF, or every live nexthop of a multipath route (the smallest MTU counts).
        let devices = route.liveDevices
        let deviceMTUs = devices.compactMap { mtus[$0] }
        guard !deviceMTUs.isEmpty, deviceMTUs.count == devices.count else { return nil }
        var advmss: UInt32?
        var mtu: UInt32?
        if let metrics = attributes[UInt16(RTA_METRICS.rawValue)] {
            for (type, value) in nested(metrics) where value.count >= 4 {
                let number = value.loadUnaligned(as: UInt32.self)
                if type == RTAX_ADVMSS { advmss = number }
                if type == RTAX_MTU { mtu = number }
            }
        }
        let mss = ReplyRoutes.Route(
            mss: ReplyRoutes.advertisedMSS(
                advmssMetric: advmss, mtuMetric: mtu, deviceMTU: deviceMTUs.min()!, ipv6: ipv6),
            interfaceIndex: devices[0])
        let destination = attributes[UInt16(RTA_DST.rawValue)]
        let priority = word(RTA_PRIORITY.rawValue) ?? 0
        switch (ipv6, destination?.count) {
        case (false, nil) where header.rtm_dst_len == 0:
            return (.v4(IPv4Prefix(network: IPv4Address(0), length: 0)), priority, mss)
        case (false, 4?) where header.rtm_dst_len <= 32:
            return (
                .v4(IPv4Prefix(network: IPv4Address(destination!.be32(0)), length: header.rtm_dst_len)), priority, mss
            )
        case (true, nil) where header.rtm_dst_len == 0:
            return (.v6(IPv6Prefix(network: IPv6Address(high: 0, low: 0), length: 0)), priority, mss)
        case (true, 16?) where header.rtm_dst_len <= 128:
            let network = IPv6Address(high: destination!.be64(0), low: destination!.be64(8))
            return (.v6(IPv6Prefix(network: network, length: header.rtm_dst_len)), priority, mss)
        default: return nil
        }
    }

    /// The attributes nested in `bytes` (type, value), bounds-checked.
    static func nested(_ bytes: UnsafeRawBufferPointer) -> [(Int, UnsafeRawBufferPointer)] {
        var out: [(Int, UnsafeRawBufferPointer)] = []
        var offset = 0
        while offset + 4 <= bytes.count {
            let length = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            // The type without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
            let type = Int(bytes.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self)) & 0x3fff
            guard length >= 4, offset + length <= bytes.count else { break }
            out.append((type, UnsafeRawBufferPointer(rebasing: bytes[(offset + 4)..<(offset + length)])))
            offset += (length + 3) & ~3
        }
        return out
    }
}

/// An RTM_NEWROUTE or RTM_DELROUTE message: its header and attributes, bounds-checked. Valid while
/// the message is (inside a dump's or a notification's callback).
struct RouteMessage {
    let header: rtmsg
    let attributes: [UInt16: UnsafeRawBufferPointer]

    init?(_ message: UnsafePointer<nlmsghdr>) {
        guard Int(mnl_nlmsg_get_payload_len(message)) >= MemoryLayout<rtmsg>.size else { return nil }
        header = UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).loadUnaligned(as: rtmsg.self)
        attributes = Netlink.attributes(of: message, after: MemoryLayout<rtmsg>.size)
    }

    func word(_ type: UInt32) -> UInt32? {
        attributes[UInt16(type)].flatMap { $0.count >= 4 ? $0.loadUnaligned(as: UInt32.self) : nil }
    }

    /// RTA_TABLE where present (tables above 255 have only it), else the header's.
    var table: UInt32 { word(RTA_TABLE.rawValue) ?? UInt32(header.rtm_table) }

    /// RTA_OIF, and every nexthop's interface of a multipath route. (The reverse path counts them
    /// all, dead or not: a dead nexthop's link receives nothing, and a dead route kept as the way
    /// back refuses at least what netfilter's rpfilter rule refuses, whichever way its look-up
    /// treats a link's state.)
    var devices: [UInt32] { nexthops.map(\.device) }

    /// The interfaces of the nexthops the kernel's own output uses: those not dead.
    var liveDevices: [UInt32] { nexthops.filter { !$0.dead }.map(\.device) }

    /// Whether the kernel's output passes over the route: every nexthop is dead (RTNH_F_DEAD: its
    /// device is down, or has no carrier and ignores routes without one,
    /// ignore_routes_with_linkdown, which a routing daemon's hosts often set). The next route to
    /// the prefix, or a shorter prefix's, is the one its packets take.
    var isDead: Bool {
        let hops = nexthops
        return !hops.isEmpty && hops.allSatisfy(\.dead)
    }

    /// linux/rtnetlink.h: a nexthop the kernel does not use (dumped with RTNH_F_LINKDOWN too).
    static let deadNexthop = 1

    /// The route's one nexthop (RTA_OIF, its flags in the header's) or a multipath route's.
    private var nexthops: [(device: UInt32, dead: Bool)] {
        var hops: [(device: UInt32, dead: Bool)] =
            word(RTA_OIF.rawValue).map { [($0, Int(header.rtm_flags) & Self.deadNexthop != 0)] } ?? []
        guard let multipath = attributes[UInt16(RTA_MULTIPATH.rawValue)] else { return hops }
        var offset = 0
        let step = MemoryLayout<rtnexthop>.size
        while offset + step <= multipath.count {
            let hop = multipath.loadUnaligned(fromByteOffset: offset, as: rtnexthop.self)
            guard Int(hop.rtnh_len) >= step else { break }
            hops.append((UInt32(bitPattern: hop.rtnh_ifindex), Int(hop.rtnh_flags) & Self.deadNexthop != 0))
            offset += (Int(hop.rtnh_len) + 3) & ~3
        }
        return hops
    }
}
