import CMnl
import Glibc

/// libmnl sockets: opened in a network namespace, bound, closed again if binding fails.
enum Netlink {
    /// A bound socket of netlink `family` (NETLINK_ROUTE, NETLINK_SOCK_DIAG, ...) in `namespace`
    /// (the calling thread's when nil), subscribed to multicast `groups`. `name` names it in errors.
    static func open(_ family: Int32, name: String, groups: UInt32 = 0, namespace: NetworkNamespace? = nil) throws -> OpaquePointer {
        guard let socket: OpaquePointer = try namespace.run({ mnl_socket_open(family) }) else { throw SystemError("socket(\(name))") }
        guard mnl_socket_bind(socket, groups, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let error = SystemError("bind(\(name))")
            mnl_socket_close(socket)
            throw error
        }
        return socket
    }
}
