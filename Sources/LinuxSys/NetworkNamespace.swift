import CLinuxShims
import Glibc

/// A network namespace, by `ip netns` name or by path (/proc/PID/ns/net, a bind mount).
public final class NetworkNamespace: Sendable {
    public let path: String
    public let fd: Int32

    public init(nameOrPath: String) throws {
        path = nameOrPath.contains("/") ? nameOrPath : "/run/netns/\(nameOrPath)"
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open \(path)", hint: "is it a network namespace? (ip netns list)") }
    }

    /// Runs `body` with the calling thread inside this namespace, then moves the thread back.
    /// Sockets and /proc/net files opened in `body` stay bound to this namespace.
    public func run<T>(_ body: () throws -> T) throws -> T {
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else { throw SystemError("open /proc/thread-self/ns/net") }
        defer { close(original) }
        _ = try Syscall.negated("setns \(path)", hint: "needs CAP_SYS_ADMIN") { proxyside_setns_net(fd) }
        defer { precondition(proxyside_setns_net(original) == 0, "cannot return to the original network namespace") }
        return try body()
    }

    deinit { close(fd) }
}

extension Optional where Wrapped == NetworkNamespace {
    /// Runs `body` inside the namespace if there is one, else where the thread already is.
    public func run<T>(_ body: () throws -> T) throws -> T {
        switch self {
        case .some(let namespace): try namespace.run(body)
        case .none: try body()
        }
    }
}
