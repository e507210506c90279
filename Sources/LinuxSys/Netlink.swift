import CMnl
import Glibc

/// libmnl sockets: opened in a network namespace, bound, closed again if binding fails.
public enum Netlink {
    /// A bound socket of netlink `family` (NETLINK_ROUTE, NETLINK_SOCK_DIAG, ...) in `namespace`
    /// (the calling thread's when nil), subscribed to multicast `groups`. `name` names it in errors.
    public static func open(_ family: Int32, name: String, groups: UInt32 = 0, namespace: NetworkNamespace? = nil)
        throws -> OpaquePointer
    {
        guard let socket: OpaquePointer = try namespace.run({ mnl_socket_open(family) }) else {
            throw SystemError("socket(\(name))")
        }
        guard mnl_socket_bind(socket, groups, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let error = SystemError("bind(\(name))")
            mnl_socket_close(socket)
            throw error
        }
        return socket
    }

    /// Reads a dump's replies into `buffer` until NLMSG_DONE, handing every other message of
    /// `sequence` to `each`; an NLMSG_ERROR reply throws with its errno.
    public static func receiveDump(
        _ socket: OpaquePointer, buffer: UnsafeMutableRawPointer, size: Int, sequence: UInt32, name: String,
        _ each: (UnsafePointer<nlmsghdr>) -> Void
    ) throws {
        while true {
            let received = retryingOnInterrupt { mnl_socket_recvfrom(socket, buffer, size) }
            guard received > 0 else { throw SystemError(name) }
            var remaining = Int32(received)
            var message: UnsafePointer<nlmsghdr>? = UnsafePointer(buffer.assumingMemoryBound(to: nlmsghdr.self))
            while let current = message, mnl_nlmsg_ok(current, remaining) {
                defer { message = UnsafePointer(mnl_nlmsg_next(current, &remaining)) }
                guard current.pointee.nlmsg_seq == sequence else { continue }
                switch Int32(current.pointee.nlmsg_type) {
                case NLMSG_DONE: return
                case NLMSG_ERROR: throw SystemError(name, errno: -mnl_nlmsg_get_payload(current)!.load(as: Int32.self))
                default: each(current)
                }
            }
        }
    }

    /// Starts a request at `buffer`: the netlink header, then a zeroed `Header` (the family's
    /// fixed header: genlmsghdr, ifaddrmsg, inet_diag_req_v2) for the caller to fill in.
    public static func putRequest<Header>(
        at buffer: UnsafeMutableRawPointer, type: UInt16, flags: Int32, sequence: UInt32, _ header: Header.Type
    ) -> (message: UnsafeMutablePointer<nlmsghdr>, header: UnsafeMutablePointer<Header>) {
        let message = mnl_nlmsg_put_header(buffer)!
        message.pointee.nlmsg_type = type
        message.pointee.nlmsg_flags = UInt16(flags)
        message.pointee.nlmsg_seq = sequence
        // mnl_nlmsg_put_extra_header zeroes what it adds.
        let extra = mnl_nlmsg_put_extra_header(message, MemoryLayout<Header>.size)!
        return (message, extra.bindMemory(to: Header.self, capacity: 1))
    }

    /// The attributes that follow a message's `headerSize`-byte family header, by type (the last
    /// one of a type wins); none when the message is shorter than its header. Each value lies
    /// inside the message.
    public static func attributes(of message: UnsafePointer<nlmsghdr>, after headerSize: Int) -> [UInt16:
        UnsafeRawBufferPointer]
    {
        let payloadLength = Int(mnl_nlmsg_get_payload_len(message))
        guard payloadLength >= headerSize else { return [:] }
        var out: [UInt16: UnsafeRawBufferPointer] = [:]
        var remaining = Int32(payloadLength - headerSize)
        var attribute = UnsafePointer<nlattr>?(
            UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).advanced(by: headerSize).assumingMemoryBound(
                to: nlattr.self))
        while let current = attribute, mnl_attr_ok(current, remaining) {
            out[mnl_attr_get_type(current)] = UnsafeRawBufferPointer(
                start: mnl_attr_get_payload(current), count: Int(mnl_attr_get_payload_len(current)))
            remaining -= Int32(current.pointee.nla_len + 3) & ~3
            attribute = UnsafePointer(mnl_attr_next(current))
        }
        return out
    }
}
