import Glibc

/// The one way this package makes a system call, for both conventions it meets: libc's (-1 and
/// errno) and the C shims' and libbpf's (the negated errno as the result). A call a signal
/// interrupts is made again; what fails ends as a `SystemError` naming the call. (The queue's
/// batch reads and sends keep their own loops: they count ENOBUFS and skip a refused packet.)
public enum Syscall {
    /// libc's convention: a result of -1 and errno.
    @inline(__always)
    public static func errno<T: BinaryInteger>(
        _ call: @autoclosure () -> String, hint: String? = nil, _ body: () -> T
    ) throws(SystemError) -> T {
        try retrying(call, hint: hint, body) { _ in Glibc.errno }
    }

    /// The shims' convention: a negative result is the negated errno.
    @inline(__always)
    public static func negated<T: BinaryInteger>(
        _ call: @autoclosure () -> String, hint: String? = nil, _ body: () -> T
    ) throws(SystemError) -> T {
        try retrying(call, hint: hint, body) { Int32(truncatingIfNeeded: 0 - $0) }
    }

    /// Makes the call until it succeeds or fails with anything but EINTR (`code`: the errno of a
    /// negative result, by the call's convention).
    @inline(__always)
    static func retrying<T: BinaryInteger>(
        _ call: () -> String, hint: String?, _ body: () -> T, code: (T) -> Int32
    ) throws(SystemError) -> T {
        while true {
            let result = body()
            if result >= 0 { return result }
            let error = code(result)
            if error != EINTR { throw SystemError(call(), errno: error, hint: hint) }
        }
    }

    /// poll(2) for an event loop: how many are ready, 0 when a signal came first (the loop comes
    /// round and looks at its events again), a `SystemError` otherwise.
    public static func poll(_ descriptors: inout [pollfd], milliseconds: Int32) throws(SystemError) -> Int32 {
        let ready = Glibc.poll(&descriptors, nfds_t(descriptors.count), milliseconds)
        if ready >= 0 { return ready }
        if Glibc.errno == EINTR { return 0 }
        throw SystemError("poll")
    }
}
