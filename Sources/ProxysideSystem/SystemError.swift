import Glibc
import CLinuxShims

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

public enum MonotonicClock {
    @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// An eventfd that signals shutdown (or reload) to every poll loop.
public final class EventFD: @unchecked Sendable {
    public let fd: Int32

    public init() throws {
        fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw SystemError("eventfd") }
    }

    public func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Clears the event; true when it had been signalled.
    @discardableResult
    public func consume() -> Bool {
        var value: UInt64 = 0
        return read(fd, &value, 8) == 8
    }

    deinit { close(fd) }
}

public enum Signals {
    /// SIGTERM/SIGINT signal `shutdown`; SIGHUP signals `reload` when given.
    public static func install(shutdown: EventFD, reload: EventFD? = nil) throws {
        let result = proxyside_install_signal_eventfds(shutdown.fd, reload?.fd ?? -1)
        guard result == 0 else { throw SystemError("sigaction", errno: -result) }
    }

    /// `signal` signals `event` instead of its default action.
    public static func forward(_ signal: Int32, to event: EventFD) throws {
        guard proxyside_signal_to_eventfd(signal, event.fd) == 0 else { throw SystemError("sigaction \(signal)") }
    }
}
