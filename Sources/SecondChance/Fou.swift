import CMnl
import Glibc
import LinuxSys
import NetTypes

/// What the kernel's fou module says about a UDP port, asked over generic netlink (as `ip fou show`).
public enum FouStatus: Equatable, Sendable, CustomStringConvertible {
    /// The kernel has no fou family (CONFIG_NET_FOU off or module not loaded).
    case unavailable
    case portNotConfigured
    case gue
    /// The port is configured, but for plain FOU: GLB packets need GUE.
    case directFou
    /// The port is configured for IPv6 only (`ip -6 fou add`): GLB's outer packets are IPv4.
    case ipv6Only

    public var description: String {
        switch self {
        case .unavailable: "fou is not available in this kernel"
        case .portNotConfigured: "fou is available but the port is not configured"
        case .gue: "fou decapsulates GUE on the port"
        case .directFou: "fou is configured on the port as plain FOU, not GUE"
        case .ipv6Only: "fou is configured on the port for IPv6 only, and GLB's outer packets are IPv4"
        }
    }

    /// One port of the kernel's FOU_CMD_GET dump.
    public struct Entry: Equatable, Sendable {
        public var port: UInt16
        /// FOU_ATTR_AF: AF_INET unless the port was added with `ip -6 fou add`.
        public var family: UInt8
        public var gue: Bool

        public init(port: UInt16, family: UInt8, gue: Bool) {
            (self.port, self.family, self.gue) = (port, family, gue)
        }
    }

    /// What fou does with GLB's GUE on `port`: only an IPv4 entry takes the director's packets
    /// (each family has its own UDP socket).
    public static func of(_ entries: [Entry], port: UInt16) -> FouStatus {
        let onPort = entries.filter { $0.port == port }
        if let ipv4 = onPort.first(where: { $0.family == UInt8(AF_INET) }) { return ipv4.gue ? .gue : .directFou }
        return onPort.isEmpty ? .portNotConfigured : .ipv6Only
    }

    public static func query(port: UInt16, namespace: NetworkNamespace? = nil) throws -> FouStatus {
        let socket = try Netlink.open(NETLINK_GENERIC, name: "NETLINK_GENERIC", namespace: namespace)
        defer { mnl_socket_close(socket) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 16384, alignment: 16)
        defer { buffer.deallocate() }

        // CTRL_CMD_GETFAMILY "fou" -> family id.
        var (nlh, genl) = Netlink.putRequest(
            at: buffer, type: UInt16(GENL_ID_CTRL), flags: NLM_F_REQUEST | NLM_F_ACK, sequence: 1, genlmsghdr.self)
        genl.pointee.cmd = UInt8(CTRL_CMD_GETFAMILY)
        genl.pointee.version = 1
        mnl_attr_put_strz(nlh, UInt16(CTRL_ATTR_FAMILY_NAME), FOU_GENL_NAME)
        guard mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else { throw SystemError("sendto(genl)") }
        var received = mnl_socket_recvfrom(socket, buffer, 16384)
        guard received > 0 else { throw SystemError("recv(genl)") }
        var reply = buffer.assumingMemoryBound(to: nlmsghdr.self)
        if reply.pointee.nlmsg_type == UInt16(NLMSG_ERROR) { return .unavailable }
        guard
            let familyID = Netlink.attributes(of: reply, after: MemoryLayout<genlmsghdr>.size)[
                UInt16(CTRL_ATTR_FAMILY_ID)
            ]
            .flatMap({ $0.count >= 2 ? $0.loadUnaligned(as: UInt16.self) : nil })
        else { return .unavailable }
        // Drain the ACK that follows.
        _ = mnl_socket_recvfrom(socket, buffer, 16384)

        // FOU_CMD_GET dump: one message per configured port.
        (nlh, genl) = Netlink.putRequest(
            at: buffer, type: familyID, flags: NLM_F_REQUEST | NLM_F_DUMP, sequence: 2, genlmsghdr.self)
        genl.pointee.cmd = UInt8(FOU_CMD_GET)
        genl.pointee.version = UInt8(FOU_GENL_VERSION)
        guard mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else { throw SystemError("sendto(fou)") }
        var entries: [Entry] = []
        while true {
            received = mnl_socket_recvfrom(socket, buffer, 16384)
            guard received > 0 else { throw SystemError("recv(fou)") }
            var remaining = Int32(received)
            reply = buffer.assumingMemoryBound(to: nlmsghdr.self)
            while mnl_nlmsg_ok(reply, remaining) {
                if reply.pointee.nlmsg_type == UInt16(NLMSG_DONE) || reply.pointee.nlmsg_type == UInt16(NLMSG_ERROR) {
                    return of(entries, port: port)
                }
                let attrs = Netlink.attributes(of: reply, after: MemoryLayout<genlmsghdr>.size)
                if let portAttribute = attrs[UInt16(FOU_ATTR_PORT)], portAttribute.count >= 2 {
                    entries.append(
                        Entry(
                            port: portAttribute.be16(0),
                            family: attrs[UInt16(FOU_ATTR_AF)].flatMap(\.first) ?? UInt8(AF_INET),
                            gue: attrs[UInt16(FOU_ATTR_TYPE)].flatMap(\.first) == UInt8(FOU_ENCAP_GUE)))
                }
                reply = mnl_nlmsg_next(reply, &remaining)
            }
        }
    }
}
