import CLinuxShims
import Glibc

/// An eventfd that signals shutdown (or reload) to every poll loop.
public final class EventFD: Sendable {
    public let fd: Int32

    public init() throws {
        fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw SystemError("eventfd") }
    }

    /// An eventfd handed over by an earlier process (its counter kept), checked to be one; closed
    /// when it is not.
    public init(adopting descriptor: consuming OwnedDescriptor) throws {
        let fd = descriptor.raw
        var target = [CChar](repeating: 0, count: 64)
        let length = readlink("/proc/self/fd/\(fd)", &target, target.count - 1)
        guard length > 0, String(cString: target).hasPrefix("anon_inode:[eventfd]") else {
            throw SystemError("adopt fd \(fd): not an eventfd", errno: EINVAL)
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        Descriptors.setCloseOnExec(fd, true)
        self.fd = descriptor.take()
    }

    /// The counter, left as it was (read resets it, so it is written back).
    public var value: UInt64 {
        var value: UInt64 = 0
        guard read(fd, &value, 8) == 8 else { return 0 }
        _ = write(fd, &value, 8)
        return value
    }

    /// Sets the counter to `value` (at most 2^64 - 2, as eventfd holds).
    public func set(_ value: UInt64) {
        var old: UInt64 = 0
        _ = read(fd, &old, 8)
        var new = min(value, UInt64.max - 1)
        if new > 0 { _ = write(fd, &new, 8) }
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
