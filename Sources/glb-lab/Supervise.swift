import ArgumentParser
import Glibc
import LinuxSys
import ProxysideArguments

/// Plays systemd for a Type=notify daemon with an fd store, where no systemd runs: the daemon gets
/// NOTIFY_SOCKET, the fds it stores (FDSTORE=1, FDNAME=) are kept until it removes them
/// (FDSTOREREMOVE=1), and when it exits it is started again after --restart-ms with them
/// (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID). SIGTERM stops the daemon and then the supervisor.
struct Supervise: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restart a daemon when it exits, handing back the fds it stored (an fd store without systemd).")

    @Option(help: "Where the daemon's notifications arrive (a datagram socket made here).") var notifySocket: String
    @Option(help: "Pause before a restart, in milliseconds.") var restartMs: UInt32 = 100
    @Option(help: "The running daemon's pid is written here.") var pidFile: String
    @Option(help: "Stop after this many restarts.") var maxRestarts: Int = 1000
    @Argument(parsing: .captureForPassthrough) var program: [String]

    func validate() throws {
        guard maxRestarts >= 0 else { throw ValidationError("--max-restarts is not negative") }
    }

    func run() throws {
        // Passthrough keeps the "--" that ends the options.
        let program = self.program.first == "--" ? Array(self.program.dropFirst()) : self.program
        guard !program.isEmpty, restartMs <= 60_000 else {
            throw CommandFailure("give the daemon's command; --restart-ms is at most 60000")
        }
        let stop = try EventFD()
        try Signals.install(shutdown: stop)
        let notify = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        unlink(notifySocket)
        try UnixAddress.bind(notify, notifySocket)
        var store: [(name: String, fd: Int32)] = []
        var restarts = 0
        while true {
            // The child inherits this environment (the supervisor has no other thread).
            setenv("NOTIFY_SOCKET", notifySocket, 1)
            if store.isEmpty {
                for name in ["LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
            } else {
                setenv("LISTEN_FDS", String(store.count), 1)
                setenv("LISTEN_FDNAMES", store.map(\.name).joined(separator: ":"), 1)
            }
            let pid = try Spawn.run(
                "/bin/sh", ["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""] + program,
                placing: store.enumerated().map { ($0.element.fd, Int32(3 + $0.offset)) })
            let line = Array("\(pid)\n".utf8)
            let file = open(pidFile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard file >= 0 else { throw SystemError("open \(pidFile)") }
            _ = line.withUnsafeBytes { write(file, $0.baseAddress, $0.count) }
            close(file)
            var status: Int32 = 0
            var stopping = false
            while true {
                var fds = [
                    pollfd(fd: notify, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0),
                ]
                _ = poll(&fds, 2, 50)
                while let (bytes, received) = try? FDPassing.receive(notify, flags: Int32(MSG_DONTWAIT)) {
                    let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
                    let name = lines.first(where: { $0.hasPrefix("FDNAME=") }).map { String($0.dropFirst(7)) }
                    if lines.contains("FDSTOREREMOVE=1"), let name {
                        store.filter { $0.name == name }.forEach { close($0.fd) }
                        store.removeAll { $0.name == name }
                    }
                    guard lines.contains("FDSTORE=1"), let name else { received.forEach { close($0) }; continue }
                    // systemd keeps one fd per socket; a daemon that stores again after a restart sends the same ones.
                    if store.contains(where: { $0.name == name }) {
                        received.forEach { close($0) }
                    } else {
                        store += received.map { (name, $0) }
                    }
                }
                if fds[1].revents != 0 && !stopping {
                    stopping = true
                    kill(pid, SIGTERM)
                }
                if waitpid(pid, &status, WNOHANG) == pid { break }
            }
            if stopping || restarts >= maxRestarts { break }
            restarts += 1
            logger.info(
                """
                supervise: daemon \(pid) exited (\(Spawn.exitCode(status))); restart \(restarts) with \(store.count) \
                stored fds
                """
            )
            usleep(restartMs * 1000)
        }
        store.forEach { close($0.fd) }
        unlink(notifySocket)
    }
}
