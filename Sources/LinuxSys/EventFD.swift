import CLinuxShims
import Glibc

/// An eventfd that signals shutdown (or reload) to every poll loop.
public final class EventFD: Sendable {
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
