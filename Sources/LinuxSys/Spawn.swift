import Glibc

/// posix_spawn(3) with fds placed where the child expects them. Fds without close-on-exec are
/// inherited at their own numbers; signals this program catches or ignores start at their defaults.
/// With `ownGroup` the child leads a process group of its own, so that it can be killed with
/// whatever it started.
public enum Spawn {
    public static func run(
        _ path: String, _ arguments: [String], environment: [String: String]? = nil,
        placing fds: [(from: Int32, to: Int32)] = [], ownGroup: Bool = false
    ) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (from, to) in fds { posix_spawn_file_actions_adddup2(&actions, from, to) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD] { sigaddset(&defaults, signal) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes,
            Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | (ownGroup ? POSIX_SPAWN_SETPGROUP : 0)))
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var envp: [UnsafeMutablePointer<CChar>?] =
            environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] } ?? []
        defer { for pointer in envp { free(pointer) } }
        var pid: pid_t = 0
        let result = envp.withUnsafeMutableBufferPointer { custom in
            let environment = custom.isEmpty ? environ : custom.baseAddress
            return path.contains("/")
                ? posix_spawn(&pid, path, &actions, &attributes, argv, environment)
                : posix_spawnp(&pid, path, &actions, &attributes, argv, environment)
        }
        guard result == 0 else { throw SystemError("spawn \(path)", errno: result) }
        return pid
    }

    /// A tool's standard output (`iptables-save`, `nft list ruleset`), run through the shell with
    /// its standard error discarded; nil when it cannot run or fails. The commands are this
    /// program's own constants, never outside text.
    public static func output(_ command: String) -> String? {
        guard let pipe = popen(command + " 2>/dev/null", "r") else { return nil }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&chunk, 1, chunk.count, pipe)
            if count <= 0 { break }
            out += chunk[0..<count]
        }
        return pclose(pipe) == 0 ? String(decoding: out, as: UTF8.self) : nil
    }

    /// Waits for a child; its exit status, or 128 + the signal that ended it.
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        guard (try? Syscall.errno("waitpid", { waitpid(pid, &status, 0) })) != nil else { return -1 }
        return exitCode(status)
    }

    /// Waits for a child at most `seconds`: its exit status, or nil when it ran longer, in which
    /// case it is killed (SIGKILL), with its process group when it leads one, and reaped.
    public static func wait(_ pid: pid_t, atMostSeconds seconds: Int) -> Int32? {
        wait(pid, until: MonotonicClock.nanoseconds() + UInt64(max(0, seconds)) * 1_000_000_000)
    }

    /// The same, until the monotonic `deadline`.
    public static func wait(_ pid: pid_t, until deadline: UInt64) -> Int32? {
        var status: Int32 = 0
        while MonotonicClock.nanoseconds() < deadline {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { return exitCode(status) }
            if reaped < 0, errno != EINTR { return -1 }
            usleep(10_000)
        }
        if getpgid(pid) == pid { kill(-pid, SIGKILL) }
        kill(pid, SIGKILL)
        _ = wait(pid)
        return nil
    }

    public static func exitCode(_ status: Int32) -> Int32 {
        status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}
