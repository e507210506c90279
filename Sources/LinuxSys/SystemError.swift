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
    /// A second descriptor for the same open file, close-on-exec; nil when the process has none
    /// left (EMFILE).
    public static func duplicate(_ fd: Int32) -> Int32? {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        return copy >= 0 ? copy : nil
    }

    /// Waits until `fd` is ready for `events` (poll(2)), interrupted calls retried; false once
    /// `deadline` (MonotonicClock) passes first, or poll fails.
    public static func waitReady(_ fd: Int32, events: Int32, until deadline: UInt64) -> Bool {
        var descriptor = pollfd(fd: fd, events: Int16(events), revents: 0)
        while true {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { return false }
            let ready = poll(&descriptor, 1, Int32(min((deadline - now) / 1_000_000 + 1, 60_000)))
            if ready > 0 { return true }
            if ready < 0 && errno != EINTR { return false }
        }
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
