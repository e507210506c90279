import Glibc

/// Small files read whole with plain system calls (no Foundation on the daemons' paths): those of
/// /proc and /proc/sys above all, with the text formats they hold.
public enum ProcFile {
    /// The file's text, up to `limit` bytes; nil when it cannot be opened or read.
    public static func read(_ path: String, limit: Int = 1 << 20) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return bytes(fd: fd, limit: limit).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The first line of a sysctl (`net/ipv4/ip_forward`), without leading blanks.
    public static func sysctl(_ path: String) -> String? {
        read("/proc/sys/" + path, limit: 256)
            .flatMap { $0.trimmingPrefix(while: \.isWhitespace).split(separator: "\n").first.map(String.init) }
    }

    /// The names in a directory (/proc/sys/net/ipv4/conf, a bpffs pin directory), without "." and "..".
    public static func entries(ofDirectory path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The text of a file held open (a /proc file opened inside a namespace, read again on every
    /// refresh); nil when it cannot be read or is empty.
    public static func text(fd: Int32, limit: Int = 1 << 20) -> String? {
        guard let bytes = bytes(fd: fd, limit: limit), !bytes.isEmpty else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Everything from offset 0 up to `limit` bytes (pread: the fd's offset is left alone).
    public static func bytes(fd: Int32, limit: Int = 1 << 20) -> [UInt8]? {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while bytes.count < limit {
            let count = chunk.withUnsafeMutableBytes { buffer in
                retryingOnInterrupt {
                    pread(fd, buffer.baseAddress, min(buffer.count, limit - bytes.count), off_t(bytes.count))
                }
            }
            guard count >= 0 else { return nil }
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }

    /// When this process started, in seconds since the epoch (Prometheus'
    /// process_start_time_seconds): /proc/stat's boot time plus /proc/self/stat's start time.
    /// A re-exec keeps it, as it keeps the process.
    public static func processStartSeconds() -> UInt64? {
        guard let stat = read("/proc/self/stat"), let boot = read("/proc/stat") else { return nil }
        let ticks = sysconf(Int32(_SC_CLK_TCK))
        return processStartSeconds(selfStat: stat, systemStat: boot, ticksPerSecond: UInt64(max(0, ticks)))
    }

    /// The same from the files' text: the 22nd field of `selfStat` (clock ticks after boot; the
    /// command name before it, in parentheses, may hold blanks) and `btime` of `systemStat`.
    public static func processStartSeconds(selfStat: String, systemStat: String, ticksPerSecond: UInt64) -> UInt64? {
        guard ticksPerSecond > 0, let ticks = commandAndStart(stat: selfStat)?.started else { return nil }
        guard
            let line = systemStat.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }),
            let word = line.dropFirst(6).split(separator: " ").first, let boot = UInt64(word)
        else { return nil }
        let (sum, overflow) = boot.addingReportingOverflow(ticks / ticksPerSecond)
        return overflow ? nil : sum
    }

    /// The kernel's counters for every NFQUEUE queue of the calling thread's namespace.
    public static func kernelQueueStatistics() -> [UInt16: KernelQueueStatistics] {
        read("/proc/thread-self/net/netfilter/nfnetlink_queue").map { KernelQueueStatistics.parse($0) } ?? [:]
    }

    /// A counter of /proc/net/netstat or /proc/net/snmp, whose sections are pairs of lines:
    /// `Section: Name1 Name2 ...` then `Section: value1 value2 ...`.
    public static func counter(_ name: String, section: String, in text: String) -> UInt64? {
        counters([name], section: section, in: text)[0]
    }

    /// Several counters of one section, the text split once (the responder reads six of them 20
    /// times a second); nil for each one the section lacks.
    public static func counters(_ names: [String], section: String, in text: String) -> [UInt64?] {
        let prefix = section + ":"
        let lines = text.utf8.split(separator: UInt8(ascii: "\n"))
        for (index, line) in lines.enumerated() where index + 1 < lines.count && line.starts(with: prefix.utf8) {
            let header = line.split(separator: UInt8(ascii: " "))
            let values = lines[index + 1].split(separator: UInt8(ascii: " "))
            guard let first = values.first, first.elementsEqual(prefix.utf8) else { continue }
            return names.map { name in
                guard let position = header.firstIndex(where: { $0.elementsEqual(name.utf8) }), position < values.count
                else { return nil }
                return UInt64(Substring(values[position]))
            }
        }
        return names.map { _ in nil }
    }

    /// The numbers of a sysctl file (`tcp_rmem` holds three); [] when it holds none.
    public static func sysctlNumbers(_ text: String) -> [UInt32] {
        text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { UInt32($0) }
    }

    /// A /proc/PID/stat's command name (the 2nd field, in parentheses: it may hold blanks and
    /// parentheses itself) and start time (the 22nd, clock ticks after boot). Read as bytes: a
    /// name ending in a character that joins the closing parenthesis into one grapheme must not
    /// hide it and shift the fields.
    public static func commandAndStart(stat: String) -> (command: String, started: UInt64)? {
        let bytes = Array(stat.utf8)
        guard let open = bytes.firstIndex(of: UInt8(ascii: "(")), let close = bytes.lastIndex(of: UInt8(ascii: ")")),
            open < close
        else { return nil }
        // Fields from the third (state) on; starttime is the 22nd.
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 19, let ticks = UInt64(String(decoding: fields[19], as: UTF8.self)) else { return nil }
        return (String(decoding: bytes[(open + 1)..<close], as: UTF8.self), ticks)
    }
}
