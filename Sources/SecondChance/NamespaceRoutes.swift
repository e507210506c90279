import CMnl
import Glibc
import LinuxSys
import NetTypes

/// Which addresses of the sockets' namespace (`--netns`) this host routes into it: the host's
/// route to the address (RTM_GETROUTE, what `ip route get` answers) leaves by a link whose other
/// end is in that namespace (a veth pair: the link's IFLA_LINK_NETNSID is the namespace's id).
/// Root in that namespace can add any address to it; only those the host's own routing sends
/// there are destinations a decapsulated packet may have.
enum NamespaceRoutes {
    static func routedInto(
        _ namespace: NetworkNamespace, ipv4: Set<IPv4Address>, ipv6: Set<IPv6Address>,
        from host: NetworkNamespace?
    ) throws -> (ipv4: Set<IPv4Address>, ipv6: Set<IPv6Address>) {
        guard !ipv4.isEmpty || !ipv6.isEmpty else { return ([], []) }
        let socket = try RouteDumpSocket(namespace: host)
        var sequence: UInt32 = 10
        let ask = { (family: Int32, bytes: [UInt8]) -> UInt32? in
            sequence &+= 1
            return outputInterface(socket, family: family, destination: bytes, sequence: sequence)
        }
        let ways4 = Dictionary(uniqueKeysWithValues: ipv4.map { ($0, ask(AF_INET, bytes(of: $0.value.bigEndian))) })
        let ways6 = Dictionary(
            uniqueKeysWithValues: ipv6.map {
                ($0, ask(AF_INET6, bytes(of: $0.high.bigEndian) + bytes(of: $0.low.bigEndian)))
            })
        // The links first: reading a link's peer namespace gives that namespace an id, which the
        // question after them then finds.
        var peers: [UInt32: Int32] = [:]
        for interface in Set(ways4.values.compactMap { $0 } + ways6.values.compactMap { $0 }) {
            sequence &+= 1
            peers[interface] = linkNamespace(socket, interface: interface, sequence: sequence)
        }
        sequence &+= 1
        guard let id = try namespaceID(socket, of: namespace, sequence: sequence), id >= 0 else { return ([], []) }
        let inside = { (interface: UInt32?) in interface.flatMap { peers[$0] } == id }
        return (Set(ways4.filter { inside($0.value) }.keys), Set(ways6.filter { inside($0.value) }.keys))
    }

    static func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    /// The interface the host's route to `destination` leaves by; nil for none (unreachable, a
    /// local or blackhole route, an error).
    static func outputInterface(
        _ socket: RouteDumpSocket, family: Int32, destination: [UInt8], sequence: UInt32
    ) -> UInt32? {
        var answer: UInt32?
        do {
            try socket.request(
                RTM_GETROUTE, sequence: sequence, name: "RTM_GETROUTE", rtmsg.self,
                fill: { message, header in
                    header.pointee.rtm_family = UInt8(family)
                    header.pointee.rtm_dst_len = UInt8(destination.count * 8)
                    destination.withUnsafeBytes {
                        mnl_attr_put(message, UInt16(RTA_DST.rawValue), $0.count, $0.baseAddress)
                    }
                }
            ) { message in
                guard message.pointee.nlmsg_type == UInt16(RTM_NEWROUTE), let route = RouteMessage(message),
                    route.header.rtm_type == UInt8(RTN_UNICAST)
                else { return }
                answer = route.word(RTA_OIF.rawValue)
            }
        } catch {
            return nil
        }
        return answer
    }

    /// The id, in the host's namespace, of the namespace a veth's other end is in; nil for any
    /// other link (a tunnel whose underlay is in another namespace carries nothing into it).
    static func linkNamespace(_ socket: RouteDumpSocket, interface: UInt32, sequence: UInt32) -> Int32? {
        guard let link = socket.link(index: interface, sequence: sequence), link.kind == "veth" else { return nil }
        return link.peerNamespace
    }

    /// The id the host's namespace gives `namespace` (RTM_GETNSID); -1 when it has none.
    static func namespaceID(_ socket: RouteDumpSocket, of namespace: NetworkNamespace, sequence: UInt32) throws
        -> Int32?
    {
        var id: Int32?
        try socket.request(
            RTM_GETNSID, sequence: sequence, name: "RTM_GETNSID", rtgenmsg.self,
            fill: { message, header in
                header.pointee.rtgen_family = UInt8(AF_UNSPEC)
                mnl_attr_put_u32(message, UInt16(NETNSA_FD), UInt32(bitPattern: namespace.fd))
            }
        ) { message in
            guard message.pointee.nlmsg_type == UInt16(RTM_NEWNSID) else { return }
            // rtgenmsg is one byte, padded to four before the attributes.
            let attributes = Netlink.attributes(of: message, after: 4)
            if let value = attributes[UInt16(NETNSA_NSID)], value.count >= 4 {
                id = value.loadUnaligned(as: Int32.self)
            }
        }
        return id
    }
}
