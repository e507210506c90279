import Glibc

/// The running program's file: where it was started from, which build is running, and replacing
/// the process image with whatever is installed at that path now.
public enum ProgramImage {
    /// Where this program was started from (/proc/self/exe's target, read at start: after an
    /// upgrade replaces the file, /proc/self/exe names the deleted old one).
    public static func startPath() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return "/proc/self/exe" }
        let path = String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.hasSuffix(" (deleted)") ? String(path.dropLast(" (deleted)".count)) : path
    }

    /// Identifies the running image: an FNV-1a-style hash (64 bits, hex) of the executable's bytes,
    /// taken a word at a time, read through /proc/self/exe so that it names what runs, not what is
    /// installed now. Computed on first use.
    public static let build: String = {
        let fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "unknown" }
        defer { close(fd) }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            let count = retryingOnInterrupt { read(fd, buffer.baseAddress, buffer.count) }
            if count < 0 { return "unknown" }
            if count == 0 { break }
            var offset = 0
            while offset + 8 <= count {
                hash = (hash ^ buffer.load(fromByteOffset: offset, as: UInt64.self)) &* 0x100_0000_01b3
                offset += 8
            }
            while offset < count {
                hash = (hash ^ UInt64(buffer[offset])) &* 0x100_0000_01b3
                offset += 1
            }
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }()

    /// The process's environment, read from environ(7) (without Foundation, whose loading alone
    /// would add tens of milliseconds to every start and re-exec).
    public static func environment() -> [String: String] {
        var out: [String: String] = [:]
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let equals = text.firstIndex(of: "=") {
                out[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            entry += 1
        }
        return out
    }

    /// "NAME VERSION build HASH", as `NAME version` prints it.
    public static func versionLine(_ name: String) -> String { "\(name) \(ProxysideVersion.number) build \(build)" }

    /// Runs `path arguments` (`version` by default) and returns the first line it prints if it exits
    /// 0 within `seconds`: a file that does not start (wrong architecture, missing library,
    /// truncated copy), or that refuses the configuration it would be given, is found before the
    /// running image is given up. On failure the error carries what it printed first (standard
    /// output and standard error).
    public static func check(_ path: String, arguments: [String] = ["version"], seconds: Int = 5)
        -> Result<String, SystemError>
    {
        let command = ([path] + arguments).joined(separator: " ")
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { return .failure(SystemError("pipe")) }
        pipeFDs.forEach { Descriptors.setCloseOnExec($0, true) }
        let pid: pid_t
        do {
            pid = try Spawn.run(path, arguments, placing: [(pipeFDs[1], 1), (pipeFDs[1], 2)])
        } catch let error as SystemError {
            close(pipeFDs[0]); close(pipeFDs[1])
            return .failure(error)
        } catch {
            close(pipeFDs[0]); close(pipeFDs[1])
            return .failure(SystemError("spawn \(path)", errno: EINVAL))
        }
        close(pipeFDs[1])
        defer { close(pipeFDs[0]) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds) * 1_000_000_000
        while output.count < 4096, Descriptors.waitReady(pipeFDs[0], events: POLLIN, until: deadline) {
            let count = retryingOnInterrupt { read(pipeFDs[0], &chunk, chunk.count) }
            if count <= 0 { break }
            output += chunk[0..<count]
        }
        guard let code = Spawn.wait(pid, until: deadline) else {
            return .failure(SystemError("\(command) did not finish in \(seconds) s", errno: ETIMEDOUT))
        }
        let line = String(decoding: output.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        guard code == 0, !line.isEmpty else {
            return .failure(
                SystemError("\(command) exited with \(code)" + (line.isEmpty ? "" : ": \(line)"), errno: ENOEXEC))
        }
        return .success(line)
    }

    /// Replaces this process with the program at `path`, keeping `fds` open at their numbers (named
    /// in the environment, see `ListenFDs.reexecVariable`). Returns only if exec(2) failed: the
    /// fds are then close-on-exec again and the environment as it was; the errno is returned.
    public static func execute(
        _ path: String, arguments: [String], keeping fds: [(fd: Int32, name: String)],
        extraEnvironment: [String: String] = [:]
    ) -> Int32 {
        for (fd, _) in fds { Descriptors.setCloseOnExec(fd, false) }
        let variables = [ListenFDs.reexecVariable: ListenFDs.reexecValue(fds)].merging(extraEnvironment) { $1 }
        for (name, value) in variables { setenv(name, value, 1) }
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        Signals.setHandledBlocked(true)
        execv(path, &argv)
        let failure = errno
        Signals.setHandledBlocked(false)
        for pointer in argv { free(pointer) }
        for (fd, _) in fds { Descriptors.setCloseOnExec(fd, true) }
        for name in variables.keys { unsetenv(name) }
        return failure
    }
}
