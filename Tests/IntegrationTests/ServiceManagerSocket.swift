import Foundation
import Glibc
import LinuxSys
import SecondChance

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
                if lines.contains("FDSTOREREMOVE=1"), let name {
                    store.filter { $0.name == name }.forEach { close($0.fd) }
                    store.removeAll { $0.name == name }
                }
                if lines.contains("FDSTORE=1"), let name {
                    store += fds.map { (name, $0) }
                } else {
                    fds.forEach { close($0) }
                }
            }
            return done(self)
        }
    }

    var isReady: Bool { notices.contains { $0.hasPrefix("READY=1") } }

    /// What is stored but the fast path's programs and maps.
    var sockets: [(name: String, fd: Int32)] { store.filter { $0.name != FastPathHandles.storeName } }

    /// The ids of the fast path's programs in the store, by the kernel's name for them.
    var storedPrograms: [String: UInt32] {
        Dictionary(
            store.filter { $0.name == FastPathHandles.storeName }.compactMap { entry in
                (try? BPF.programInfo(fd: entry.fd)).map { ($0.name, $0.id) }
            }, uniquingKeysWith: { first, _ in first })
    }

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
    /// `wrapper`: a command that execs the program in its own process (setpriv).
    func restartService(
        _ binary: String, _ arguments: [String], inside namespace: String, log: String, wrapper: [String] = []
    ) throws -> pid_t {
        try Spawn.run(
            "/usr/bin/env",
            [
                "ip", "netns", "exec", namespace, "/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\" 2>\(log)",
            ] + wrapper + [Lab.binaries.appendingPathComponent(binary).path] + arguments,
            environment: ProcessInfo.processInfo.environment.merging(listenEnvironment) { $1 }, placing: placements)
    }
}
