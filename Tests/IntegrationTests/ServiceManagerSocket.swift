import Foundation
import Glibc
import LinuxSys

/// systemd's side of sd_notify, played by a test: a datagram socket at a path given to a daemon
/// as NOTIFY_SOCKET, keeping the fds it stores (FDSTORE=1, FDNAME=) and closing those it removes
/// (FDSTOREREMOVE=1) as systemd's fd store would.
final class ServiceManagerSocket {
    let path: String
    private let fd: Int32
    private(set) var notices: [String] = []
    private(set) var store: [(name: String, fd: Int32)] = []

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try UnixAddress.bind(fd, path)
    }

    deinit {
        close(fd)
        store.forEach { close($0.fd) }
    }

    /// Reads notifications until `done` holds (or the lab's wait times out).
    func collect(seconds: Double = 5, until done: (ServiceManagerSocket) -> Bool) throws {
        try Lab.waitFor("notifications", seconds: seconds) {
            while let (bytes, fds) = try? FDPassing.receive(fd, flags: Int32(MSG_DONTWAIT)) {
                let text = String(decoding: bytes, as: UTF8.self)
                notices.append(text)
                let lines = text.split(separator: "\n")
                let name = lines.first(where: { $0.hasPrefix("FDNAME=") }).map { String($0.dropFirst(7)) }
                if lines.contains("FDSTORE=1"), let name, let stored = fds.first {
                    store.append((name, stored))
                } else {
                    fds.forEach { close($0) }
                }
                if lines.contains("FDSTOREREMOVE=1"), let name {
                    store.filter { $0.name == name }.forEach { close($0.fd) }
                    store.removeAll { $0.name == name }
                }
            }
            return done(self)
        }
    }

    var isReady: Bool { notices.contains { $0.hasPrefix("READY=1") } }

    /// Puts `fd` in the store under `name`, as if the service had stored it (a stale entry).
    func storeAsTheService(_ fd: Int32, name: String) { store.append((name, dup(fd))) }

    /// The environment that hands the stored fds to a process placed at 3, 4, ... (LISTEN_PID is
    /// set by the shell that execs it).
    var listenEnvironment: [String: String] {
        [
            "LISTEN_FDS": String(store.count), "LISTEN_FDNAMES": store.map(\.name).joined(separator: ":"),
            "NOTIFY_SOCKET": path,
        ]
    }

    var placements: [(from: Int32, to: Int32)] { store.enumerated().map { ($0.element.fd, Int32(3 + $0.offset)) } }

    /// Starts `binary` (from the build) with `arguments` inside `namespace`, handed the stored fds
    /// as systemd hands them to the service it restarts; its stderr goes to `log`.
    func restartService(_ binary: String, _ arguments: [String], inside namespace: String, log: String) throws
        -> pid_t
    {
        try Spawn.run(
            "/usr/bin/env",
            [
                "ip", "netns", "exec", namespace, "/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\" 2>\(log)",
                Lab.binaries.appendingPathComponent(binary).path,
            ] + arguments,
            environment: ProcessInfo.processInfo.environment.merging(listenEnvironment) { $1 }, placing: placements)
    }
}
