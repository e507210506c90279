import Glibc

/// setsockopt(2) for the options every socket maker here sets.
public enum SocketOptions {
    /// Receive and send timeouts: a blocking call on `fd` gives up (EAGAIN) after `seconds`.
    public static func setTimeouts(_ fd: Int32, seconds: Int) {
        setTimeout(fd, SO_RCVTIMEO, seconds: seconds)
        setTimeout(fd, SO_SNDTIMEO, seconds: seconds)
    }

    public static func setTimeout(_ fd: Int32, _ option: Int32, seconds: Int) {
        setTimeout(fd, option, milliseconds: seconds * 1000)
    }

    public static func setTimeout(_ fd: Int32, _ option: Int32, milliseconds: Int) {
        var timeout = timeval(tv_sec: milliseconds / 1000, tv_usec: milliseconds % 1000 * 1000)
        setsockopt(fd, SOL_SOCKET, option, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sets an integer option; false when the kernel refuses it (errno says why).
    @discardableResult
    public static func set(_ fd: Int32, _ level: Int32, _ option: Int32, _ value: Int32) -> Bool {
        var value = value
        return setsockopt(fd, level, option, &value, socklen_t(MemoryLayout<Int32>.size)) == 0
    }

    /// Turns a boolean option on.
    @discardableResult
    public static func enable(_ fd: Int32, _ level: Int32, _ option: Int32) -> Bool { set(fd, level, option, 1) }
}
