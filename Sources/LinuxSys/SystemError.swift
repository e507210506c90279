import Glibc

/// A failed system call, with errno and a hint an operator can act on.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    public var call: String
    public var errno: Int32
    public var hint: String?

    public init(_ call: String, errno: Int32 = Glibc.errno, hint: String? = nil) {
        self.call = call
        self.errno = errno
        self.hint = hint
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        return hint.map { "\(call): \(reason) (\($0))" } ?? "\(call): \(reason)"
    }
}

/// File descriptor flags.
public enum Descriptors {
    /// A second descriptor for the same open file, close-on-exec, numbered from `minimum` on;
    /// nil when the process has none left (EMFILE).
    public static func duplicate(_ fd: Int32, minimum: Int32 = 0) -> Int32? {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, minimum)
        return copy >= 0 ? copy : nil
    }

    public static func setCloseOnExec(_ fd: Int32, _ on: Bool) {
        let flags = fcntl(fd, F_GETFD)
        guard flags >= 0 else { return }
        _ = fcntl(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC)
    }
}

/// Retries a call interrupted by a signal, as NIOPosix's syscall wrappers do.
@inline(__always)
public func retryingOnInterrupt<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let result = body()
        if result >= 0 || errno != EINTR { return result }
    }
}
