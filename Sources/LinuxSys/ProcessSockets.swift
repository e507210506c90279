import Glibc

/// The sockets in every process's descriptor table, as `ss -p` finds them: /proc's fd links,
/// one readlink each. Reading the table of a process of another user, or of one that changed its
/// uid (HAProxy dropping root), takes CAP_SYS_PTRACE (the kernel's ptrace read check).
public enum ProcessSockets {
    /// One process: its pid and the inode numbers of the sockets it holds (once per descriptor).
    public struct Process {
        public var pid: Int32
        public var sockets: [UInt64]
        /// Its command name and start time, read through the /proc directory its table was read
        /// through (a process that ended and whose pid was used again reads nothing); for the
        /// scan's callback only.
        public let identity: () -> (command: String, started: UInt64)?
    }

    /// More descriptors in all than a scan reads.
    public struct TooMany: Error, CustomStringConvertible {
        public var limit: Int
        public var description: String { "more than \(limit) descriptors on the host" }
    }

    /// Calls `each` with every process of /proc but `excluding` that holds a socket; a process
    /// that ends while it is read is left out. Reads at most `limit` descriptors in all. Returns
    /// how many processes' tables could not be read (without CAP_SYS_PTRACE, or where a security
    /// module says no): what they hold is not known.
    public static func scan(excluding: Int32, limit: Int, _ each: (Process) -> Void) throws(TooMany) -> Int {
        var read = 0, unreadable = 0
        for name in ProcFile.entries(ofDirectory: "/proc") {
            guard let pid = Int32(name), pid > 0, pid != excluding else { continue }
            let directory = open("/proc/\(pid)", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard directory >= 0 else { continue }  // ended
            defer { close(directory) }
            var sockets: [UInt64] = []
            if try !table(in: directory, read: &read, limit: limit, { sockets.append($0) }) { unreadable += 1 }
            if !sockets.isEmpty {
                each(Process(pid: pid, sockets: sockets) { identity(in: directory) })
            }
        }
        return unreadable
    }

    /// Every socket inode in the table of the process whose /proc directory is `process`, counted
    /// into `read`; false when the table cannot be read.
    private static func table(in process: Int32, read: inout Int, limit: Int, _ each: (UInt64) -> Void)
        throws(TooMany) -> Bool
    {
        let directory = openat(process, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else {
            // Gone (ENOENT, ESRCH), or a kernel thread's: nothing held.
            return errno != EACCES && errno != EPERM
        }
        guard let stream = fdopendir(directory) else {
            close(directory)
            return true
        }
        defer { closedir(stream) }
        var link = [CChar](repeating: 0, count: 64)
        while let entry = readdir(stream) {
            guard entry.pointee.d_name.0 != CChar(UInt8(ascii: ".")) else { continue }
            read += 1
            guard read <= limit else { throw TooMany(limit: limit) }
            let length = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { readlinkat(directory, $0, &link, link.count) }
            }
            guard length > 0 else {
                if errno == EACCES || errno == EPERM { return false }
                continue  // closed meanwhile
            }
            if let inode = socketInode(link.prefix(length).map { UInt8(bitPattern: $0) }) { each(inode) }
        }
        return true
    }

    /// `pid`'s command name and start time (with the pid, a process's identity: a pid is used
    /// again); nil once it has ended.
    public static func identity(of pid: Int32) -> (command: String, started: UInt64)? {
        ProcFile.read("/proc/\(pid)/stat", limit: 4096).flatMap { ProcFile.commandAndStart(stat: $0) }
    }

    /// The same through a process's /proc directory.
    static func identity(in process: Int32) -> (command: String, started: UInt64)? {
        let stat = openat(process, "stat", O_RDONLY | O_CLOEXEC)
        guard stat >= 0 else { return nil }
        defer { close(stat) }
        return ProcFile.text(fd: stat, limit: 4096).flatMap { ProcFile.commandAndStart(stat: $0) }
    }

    /// The inode of an fd link's target "socket:[N]"; nil for anything else.
    static func socketInode(_ target: [UInt8]) -> UInt64? {
        let prefix = Array("socket:[".utf8)
        guard target.count > prefix.count + 1, target.starts(with: prefix), target.last == UInt8(ascii: "]") else {
            return nil
        }
        return UInt64(String(decoding: target[prefix.count..<(target.count - 1)], as: UTF8.self))
    }
}
