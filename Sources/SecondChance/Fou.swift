import CMnl
import Glibc
import LinuxSys
import NetTypes

/// What the kernel's fou module says about a UDP port, asked over generic netlink (as `ip fou show`).
public enum FouStatus: Equatable, CustomStringConvertible {
    /// The kernel has no fou family (CONFIG_NET_FOU off or module not loaded).
    case unavailable
    case portNotConfigured
    case gue
    /// The port is configured, but for plain FOU: GLB packets need GUE.
    case directFou

    public var description: String {
        switch self {
        case .unavailable: "fou is not available in this kernel"
        case .portNotConfigured: "fou is available but the port is not configured"
        case .gue: "fou decapsulates GUE on the port"
        case .directFou: "fou is configured on the port as plain FOU, not GUE"
        }
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
        var status = FouStatus.portNotConfigured
        while true {
            received = mnl_socket_recvfrom(socket, buffer, 16384)
            guard received > 0 else { throw SystemError("recv(fou)") }
            var remaining = Int32(received)
            reply = buffer.assumingMemoryBound(to: nlmsghdr.self)
            while mnl_nlmsg_ok(reply, remaining) {
                if reply.pointee.nlmsg_type == UInt16(NLMSG_DONE) || reply.pointee.nlmsg_type == UInt16(NLMSG_ERROR) {
                    return status
                }
                let attrs = Netlink.attributes(of: reply, after: MemoryLayout<genlmsghdr>.size)
                if let portAttribute = attrs[UInt16(FOU_ATTR_PORT)], portAttribute.count >= 2,
                    portAttribute.be16(0) == port
                {
                    let type = attrs[UInt16(FOU_ATTR_TYPE)].flatMap(\.first) ?? 0
                    status = type == UInt8(FOU_ENCAP_GUE) ? .gue : .directFou
                }
                reply = mnl_nlmsg_next(reply, &remaining)
            }
        }
    }
}
