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
        if let text = Self.readAll(sysctlFD),
            let value = Int(text.trimmingPrefix(while: \.isWhitespace).prefix { $0.isNumber })
        {
            syncookiesSetting = value
        }
        if let text = Self.readAll(netstatFD), let sent = Self.tcpExtCounter("SyncookiesSent", in: text) {
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

    static func readAll(_ fd: Int32) -> String? {
        var bytes = [UInt8](repeating: 0, count: 16384)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        return String(decoding: bytes[0..<count], as: UTF8.self)
    }

    /// Finds `name` in the "TcpExt:" header/value line pair of /proc/net/netstat.
    public static func tcpExtCounter(_ name: String, in text: String) -> UInt64? {
        let lines = text.split(separator: "\n")
        for (index, line) in lines.enumerated() where line.hasPrefix("TcpExt:") && index + 1 < lines.count {
            let names = line.split(separator: " ")
            let values = lines[index + 1].split(separator: " ")
            guard values.first == "TcpExt:", let position = names.firstIndex(where: { $0 == name }),
                position < values.count
            else { continue }
            return UInt64(values[position])
        }
        return nil
    }
}
