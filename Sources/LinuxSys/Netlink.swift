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
}
