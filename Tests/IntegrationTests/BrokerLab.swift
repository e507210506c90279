import Bindkeeper
import Foundation
import Glibc
import LinuxSys
import Telemetry
import XCTest

/// One network namespace with addresses in 198.18.0.0/15 (and 2001:2::/48) on its loopback, for
/// bindkeeper, its clients and HAProxy. Everything started here is killed and the namespace deleted
/// in `tearDown`, also after a failure.
final class BrokerLab {
    static let address = "198.18.2.1"
    static let vip = "198.19.2.10"
    static let address6 = "2001:2:0:2::1"

    let namespace: String
    let directory: URL
    var socketPath: String { directory.appendingPathComponent("bindkeeper.sock").path }
    private(set) var logs: [(name: String, url: URL)] = []
    private var processes: [Process] = []
    /// The broker `startBroker` started last.
    private(set) var broker: Process?

    init(_ name: String) throws {
        guard geteuid() == 0 else { throw LabError("needs root for network namespaces (scripts/test.sh runs as root)") }
        namespace = "psbk-\(name)-\(getpid())"
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("bindkeeper-\(name)-\(getpid())")
        try? FileManager.default.removeItem(at: directory)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        _ = try? Lab.shell("ip netns del \(namespace) 2>/dev/null")
        try Lab.shell(
            """
            ip netns add \(namespace) && ip -n \(namespace) link set lo up && \
            ip -n \(namespace) addr add \(Self.address)/32 dev lo && \
            ip -n \(namespace) addr add \(Self.vip)/32 dev lo && \
            ip -n \(namespace) addr add \(Self.address6)/128 dev lo nodad
            """)
    }

    /// Root without CAP_SYS_ADMIN and CAP_SYS_PTRACE, as bindkeeper's unit runs it: no BPF object
    /// is reachable by id, no other user's descriptor table readable.
    static let unitCapabilities = [
        "setpriv", "--bounding-set=-sys_admin,-sys_ptrace", "--inh-caps=-sys_admin,-sys_ptrace",
    ]

    func binary(_ name: String) -> String { Lab.binaries.appendingPathComponent(name).path }

    /// Starts a command inside the namespace, its output in a log file.
    @discardableResult
    /// `bindkeeper haproxy` on `template`, once HAProxy has written its pid file.
    func startSupervisor(_ name: String, template: String, stopTimeoutSeconds: Int = 5, extra: [String] = []) throws
        -> (process: Process, pidFile: String)
    {
        let pidFile = directory.appendingPathComponent("\(name).pid").path
        let process = try start(
            "supervisor-\(name)",
            [
                binary("bindkeeper"), "haproxy", "--socket", socketPath, "-f", template,
                "-p", pidFile, "--stop-timeout", String(stopTimeoutSeconds),
            ] + extra + ["--", "/usr/sbin/haproxy"])
        try waitFor("haproxy \(name) to start") { FileManager.default.fileExists(atPath: pidFile) }
        return (process, pidFile)
    }

    func start(_ name: String, _ command: [String], environment: [String: String]? = nil) throws -> Process {
        let log = directory.appendingPathComponent("\(name)-\(logs.count).log")
        let process = try Lab.launch(inside: namespace, command, log: log, environment: environment)
        processes.append(process)
        logs.append((name, log))
        return process
    }

    /// Runs a command inside the namespace to its end: (status, output).
    func run(_ command: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
        let process = try start(
            command.first.map { URL(fileURLWithPath: $0).lastPathComponent } ?? "run", command, environment: environment
        )
        process.waitUntilExit()
        return (process.terminationStatus, try String(contentsOf: logs.last!.url, encoding: .utf8))
    }

    @discardableResult
    func startBroker(_ extra: [String] = [], environment: [String: String]? = nil, asTheUnit: Bool = false) throws
        -> Process
    {
        let process = try start(
            "broker",
            (asTheUnit ? Self.unitCapabilities : []) + [binary("bindkeeper"), "serve", "--socket", socketPath]
                + extra, environment: environment)
        broker = process
        try waitForBroker()
        return process
    }

    func waitForBroker() throws {
        try waitFor("the broker's control socket") {
            (try? UnixAddress.connect(self.socketPath)).map {
                close($0); return true
            } ?? false
        }
    }

    func client() throws -> BindkeeperClient { try BindkeeperClient(path: socketPath) }

    /// `bindkeeper serve` in the namespace as a service manager restarts it: handed what `manager`
    /// stored (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID) and notifying it.
    func restartBroker(_ manager: ServiceManagerSocket, _ arguments: [String] = [], asTheUnit: Bool = false) throws
        -> pid_t
    {
        try Spawn.run(
            "/usr/bin/env",
            ["ip", "netns", "exec", namespace, "/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""]
                + (asTheUnit ? Self.unitCapabilities : [])
                + [binary("bindkeeper"), "serve", "--socket", socketPath] + arguments,
            environment: ProcessInfo.processInfo.environment.merging(manager.listenEnvironment) { $1 },
            placing: manager.placements)
    }

    /// A connection to the control socket that `uid` and `gid` made (setpriv runs python3 as them,
    /// which connects and hands the connected socket back over SCM_RIGHTS): the broker's peer
    /// credentials are theirs, while the test speaks on it.
    func connection(uid: UInt32, gid: UInt32) throws -> Int32 {
        let handoff = directory.appendingPathComponent("handoff-\(UInt32.random(in: 0...UInt32.max)).sock").path
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(listener); unlink(handoff) }
        try UnixAddress.bind(listener, handoff)
        guard chmod(handoff, 0o777) == 0, listen(listener, 1) == 0 else { throw SystemError("handoff socket") }
        let script = """
            import socket, sys
            c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1])
            h = socket.socket(socket.AF_UNIX); h.connect(sys.argv[2])
            socket.send_fds(h, [b"c"], [c.fileno()])
            """
        let done = try run(
            [
                "setpriv", "--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "/usr/bin/python3", "-c", script,
                socketPath,
                handoff,
            ])
        guard done.status == 0 else { throw LabError("connecting as uid \(uid): \(done.output)") }
        let handed = accept(listener, nil, nil)
        guard handed >= 0 else { throw SystemError("accept handoff") }
        defer { close(handed) }
        guard let fd = try FDPassing.receive(handed).fds.first else { throw LabError("no connection handed over") }
        return fd
    }

    /// Everything logged so far, for failure messages.
    var allLogs: String {
        logs.map { "--- \($0.name)\n" + ((try? String(contentsOf: $0.url, encoding: .utf8)) ?? "") }.joined(
            separator: "\n")
    }

    func inside<T>(_ body: () throws -> T) throws -> T { try NetworkNamespace(nameOrPath: namespace).run(body) }

    func waitFor(_ what: String, seconds: Double = 10, _ condition: () throws -> Bool) throws {
        try Lab.waitFor(what, seconds: seconds, context: { self.allLogs }, condition)
    }

    /// Waits until a socket listens on `port` in the namespace (sock_diag, as the daemons ask): a
    /// pid file can appear before HAProxy binds, and a load started then would count that moment's
    /// refusals against reloads.
    func waitUntilListening(port: UInt16) throws {
        let sockets = try SockDiag(namespace: NetworkNamespace(nameOrPath: namespace))
        try waitFor("a listener on port \(port)") { try sockets.dumpListeners().contains { $0.key.port == port } }
    }

    func tearDown() {
        for process in processes where process.isRunning { process.terminate() }
        let deadline = Lab.deadline(after: 3)
        while processes.contains(where: \.isRunning) && Date() < deadline { usleep(20_000) }
        // Whatever is left in the namespace (HAProxy instances, children of killed supervisors).
        _ = try? Lab.shell("ip netns pids \(namespace) | xargs -r kill -9; ip netns del \(namespace)")
        try? FileManager.default.removeItem(at: directory)
    }
}

extension XCTestCase {
    /// The test method's name, letters only ("-[Class testX]" on Darwin, "Class.testX" on Linux).
    var testName: String {
        String(
            name.split(whereSeparator: { $0 == " " || $0 == "." }).last.map { $0.filter(\.isLetter) }?.prefix(40)
                ?? "test")
    }
}

/// The socket's inode (the same through every fd that refers to it, as SO_COOKIE).
func inode(_ fd: Int32) -> UInt64 {
    var status = stat()
    return fstat(fd, &status) == 0 ? UInt64(status.st_ino) : 0
}

func isListening(_ fd: Int32) -> Bool {
    var value: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) == 0 && value == 1
}

/// A raw connection to the control socket for speaking the wire forms by hand.
final class RawControlClient {
    let fd: Int32
    init(_ path: String) throws {
        fd = try UnixAddress.connect(path)
        SocketOptions.setTimeouts(fd, seconds: 5)
    }
    deinit { close(fd) }

    func send(_ bytes: [UInt8]) { _ = SocketIO.sendAll(fd, bytes) }
    func send(_ text: String) { send(Array(text.utf8)) }

    /// One multibinder reply (a JSON object) and the fds that came with it; nil at EOF or timeout.
    func reply() -> (object: [String: Any], fds: [Int32])? {
        guard let (bytes, fds) = try? FDPassing.receive(fd), !bytes.isEmpty,
            let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
        else { return nil }
        return (object, fds)
    }

    /// True when the broker closed the connection within the receive timeout.
    func isClosedByPeer() -> Bool {
        var byte: UInt8 = 0
        while true {
            let count = recv(fd, &byte, 1, 0)
            if count == 0 { return true }
            if count < 0 { return errno == ECONNRESET }
        }
    }
}

func errorCode(_ reply: [String: Any]?) -> Int? { (reply?["error"] as? [String: Any])?["code"] as? Int }
