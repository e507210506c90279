import CMnl
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

/// What the kernel counts for one socket, read through the descriptor: exact for that socket
/// alone, where sock_diag's dumps by address and port would mix the members of a SO_REUSEPORT
/// group.
public enum SocketCounters {
    /// Packets the socket dropped (SO_MEMINFO's SK_MEMINFO_DROPS, the socket's `sk_drops`): for a
    /// TCP listener every SYN and handshake it dropped (`tcp_listendrop`, which ListenDrops counts
    /// for the whole namespace). The kernel keeps 32 bits. nil when it cannot be read.
    public static func drops(_ fd: Int32) -> UInt32? {
        var memory = [UInt32](repeating: 0, count: Int(SK_MEMINFO_VARS))
        var length = socklen_t(memory.count * 4)
        let read = memory.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, SO_MEMINFO, $0.baseAddress, &length) }
        let index = Int(SK_MEMINFO_DROPS)
        guard read == 0, Int(length) >= 4 * (index + 1) else { return nil }
        return memory[index]
    }

    /// A TCP listener's accept queue: connections waiting for accept(2) and the most it holds
    /// (TCP_INFO, whose unacked and sacked fields carry them for a socket in LISTEN). nil for a
    /// socket that is not a listening TCP one.
    public static func acceptQueue(_ fd: Int32) -> (waiting: UInt32, limit: UInt32)? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, SOL_TCP, TCP_INFO, &info, &length) == 0,
            length >= socklen_t(MemoryLayout<tcp_info>.offset(of: \.tcpi_sacked)! + 4),
            info.tcpi_state == 10  // TCP_LISTEN (the kernel's tcp_states.h)
        else { return nil }
        return (info.tcpi_unacked, info.tcpi_sacked)
    }
}
