import CMnl
import Glibc
import LinuxSys

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
        var nlh = mnl_nlmsg_put_header(buffer)!
        nlh.pointee.nlmsg_type = UInt16(GENL_ID_CTRL)
        nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_ACK)
        nlh.pointee.nlmsg_seq = 1
        var genl = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<genlmsghdr>.size)!.assumingMemoryBound(
            to: genlmsghdr.self)
        genl.pointee.cmd = UInt8(CTRL_CMD_GETFAMILY)
        genl.pointee.version = 1
        mnl_attr_put_strz(nlh, UInt16(CTRL_ATTR_FAMILY_NAME), FOU_GENL_NAME)
        guard mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else { throw SystemError("sendto(genl)") }
        var received = mnl_socket_recvfrom(socket, buffer, 16384)
        guard received > 0 else { throw SystemError("recv(genl)") }
        var reply = buffer.assumingMemoryBound(to: nlmsghdr.self)
        if reply.pointee.nlmsg_type == UInt16(NLMSG_ERROR) { return .unavailable }
        guard
            let familyID = attributes(of: reply, headerSize: MemoryLayout<genlmsghdr>.size)[UInt16(CTRL_ATTR_FAMILY_ID)]
                .map({ mnl_attr_get_u16($0) })
        else { return .unavailable }
        // Drain the ACK that follows.
        _ = mnl_socket_recvfrom(socket, buffer, 16384)

        // FOU_CMD_GET dump: one message per configured port.
        nlh = mnl_nlmsg_put_header(buffer)!
        nlh.pointee.nlmsg_type = familyID
        nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_DUMP)
        nlh.pointee.nlmsg_seq = 2
        genl = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<genlmsghdr>.size)!.assumingMemoryBound(to: genlmsghdr.self)
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
                let attrs = attributes(of: reply, headerSize: MemoryLayout<genlmsghdr>.size)
                if let portAttribute = attrs[UInt16(FOU_ATTR_PORT)],
                    UInt16(bigEndian: mnl_attr_get_u16(portAttribute)) == port
                {
                    let type = attrs[UInt16(FOU_ATTR_TYPE)].map { mnl_attr_get_u8($0) } ?? 0
                    status = type == UInt8(FOU_ENCAP_GUE) ? .gue : .directFou
                }
                reply = mnl_nlmsg_next(reply, &remaining)
            }
        }
    }

    static func attributes(of nlh: UnsafeMutablePointer<nlmsghdr>, headerSize: Int) -> [UInt16: UnsafeMutablePointer<
        nlattr
    >] {
        var out: [UInt16: UnsafeMutablePointer<nlattr>] = [:]
        let end = UnsafeRawPointer(nlh) + Int(nlh.pointee.nlmsg_len)
        var attribute = mnl_nlmsg_get_payload_offset(nlh, headerSize)!.assumingMemoryBound(to: nlattr.self)
        while mnl_attr_ok(attribute, Int32(end - UnsafeRawPointer(attribute))) {
            out[mnl_attr_get_type(attribute)] = attribute
            attribute = mnl_attr_next(attribute)
        }
        return out
    }
}
