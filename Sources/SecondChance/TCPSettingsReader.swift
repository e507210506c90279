import Glibc
import LinuxSys
import SecondChanceCore

/// The sysctls of one network namespace that shape a cookie handshake; the files are opened inside
/// the namespace once and re-read on every refresh.
final class TCPSettingsReader {
    private enum Field: CaseIterable {
        case syncookies, timestamps, sack, windowScaling, tcpReceiveMemory, receiveMemoryMaximum, defaultTTL,
            defaultHopLimit

        var path: String {
            switch self {
            case .syncookies: "/proc/sys/net/ipv4/tcp_syncookies"
            case .timestamps: "/proc/sys/net/ipv4/tcp_timestamps"
            case .sack: "/proc/sys/net/ipv4/tcp_sack"
            case .windowScaling: "/proc/sys/net/ipv4/tcp_window_scaling"
            case .tcpReceiveMemory: "/proc/sys/net/ipv4/tcp_rmem"
            case .receiveMemoryMaximum: "/proc/sys/net/core/rmem_max"
            case .defaultTTL: "/proc/sys/net/ipv4/ip_default_ttl"
            case .defaultHopLimit: "/proc/sys/net/ipv6/conf/default/hop_limit"
            }
        }
    }

    private var files: [(Field, Int32)] = []

    init(namespace: NetworkNamespace?) throws {
        files = try namespace.run { Field.allCases.map { ($0, open($0.path, O_RDONLY | O_CLOEXEC)) } }
    }

    deinit { files.forEach { if $0.1 >= 0 { close($0.1) } } }

    /// The files that could not be opened: their settings stay at the kernel's defaults.
    var unreadable: [String] { files.filter { $0.1 < 0 }.map(\.0.path) }

    func read() -> TCPHostSettings {
        var settings = TCPHostSettings()
        for (field, fd) in files where fd >= 0 {
            guard let text = ProcFile.text(fd: fd) else { continue }
            let numbers = ProcFile.sysctlNumbers(text)
            guard let first = numbers.first else { continue }
            switch field {
            case .syncookies: settings.syncookies = Int(first)
            case .timestamps: settings.timestamps = Int(first)
            case .sack: settings.sack = first != 0
            case .windowScaling: settings.windowScaling = first != 0
            case .tcpReceiveMemory:
                if numbers.count == 3 {
                    (settings.tcpReceiveMemoryDefault, settings.tcpReceiveMemoryMaximum) = (numbers[1], numbers[2])
                }
            case .receiveMemoryMaximum: settings.receiveMemoryMaximum = first
            case .defaultTTL: settings.defaultTTL = UInt8(clamping: first)
            case .defaultHopLimit: settings.defaultHopLimit = UInt8(clamping: first)
            }
        }
        return settings
    }
}
