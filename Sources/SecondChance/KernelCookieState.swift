import Glibc
import LinuxSys

/// Whether the kernel in a network namespace is currently accepting SYN-cookie ACKs.
///
/// The kernel accepts a cookie ACK when tcp_syncookies=2, or when tcp_syncookies=1 and the
/// listener sent cookies within the last two minutes (its SYN queue overflowed). That per-listener
/// stamp is not exported, so this watches the namespace's TcpExt SyncookiesSent counter instead: a
/// cookie that validates for an exact 4-tuple can only have come from this kernel's listener, so
/// the namespace-wide signal only decides when the (costlier) exact check is worth running.
public final class KernelCookieState {
    public static let overflowWindowNanoseconds: UInt64 = 120_000_000_000
    private let sysctlFD: Int32
    private let netstatFD: Int32
    private var lastRead: UInt64 = 0
    private var lastSent: UInt64?
    private var lastIncrease: UInt64?
    public private(set) var syncookiesSetting: Int = 1

    /// Opens the files inside `namespace`; /proc/net and /proc/sys/net keep the namespace they were opened in.
    public init(namespace: NetworkNamespace? = nil) throws {
        let fds: (Int32, Int32) = try namespace.run {
            (
                open("/proc/sys/net/ipv4/tcp_syncookies", O_RDONLY | O_CLOEXEC),
                open("/proc/thread-self/net/netstat", O_RDONLY | O_CLOEXEC)
            )
        }
        guard fds.0 >= 0, fds.1 >= 0 else {
            if fds.0 >= 0 { close(fds.0) }
            if fds.1 >= 0 { close(fds.1) }
            throw SystemError("open /proc/sys/net/ipv4/tcp_syncookies or /proc/net/netstat")
        }
        (sysctlFD, netstatFD) = fds
        refresh(now: MonotonicClock.nanoseconds())
    }

    deinit {
        close(sysctlFD)
        close(netstatFD)
    }

    /// Re-reads the sysctl and counter at most once a second.
    public func refresh(now: UInt64) {
        guard lastRead == 0 || now &- lastRead >= 1_000_000_000 else { return }
        lastRead = now
        if let text = ProcFile.text(fd: sysctlFD), let value = ProcFile.sysctlNumbers(text).first {
            syncookiesSetting = Int(value)
        }
        if let text = ProcFile.text(fd: netstatFD),
            let sent = ProcFile.counter("SyncookiesSent", section: "TcpExt", in: text)
        {
            if let previous = lastSent, sent > previous { lastIncrease = now }
            lastSent = sent
        }
    }

    public func acceptsCookies(now: UInt64) -> Bool {
        refresh(now: now)
        switch syncookiesSetting {
        case 2: return true
        case 1:
            guard let lastIncrease else { return false }
            return now &- lastIncrease < Self.overflowWindowNanoseconds
        default: return false
        }
    }
}
