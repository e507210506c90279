import Glibc

/// Small files under /proc, read whole with plain system calls (no Foundation on the daemon's paths).
public enum ProcFile {
    /// The file's text, up to `limit` bytes; nil when it cannot be opened or read.
    public static func read(_ path: String, limit: Int = 1 << 20) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let count = Glibc.read(fd, &chunk, min(chunk.count, limit - bytes.count))
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { return nil }
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The kernel's counters for every NFQUEUE queue of the calling thread's namespace.
    public static func kernelQueueStatistics() -> [UInt16: KernelQueueStatistics] {
        read("/proc/thread-self/net/netfilter/nfnetlink_queue").map { KernelQueueStatistics.parse($0) } ?? [:]
    }
}
