import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import LinuxSys
import NetTypes
import XCTest

/// The broker's trust model as a granted local user and an unlucky operator would try it: uid 4242
/// may bind TCP ports 8000-8999 on the lab's address; root uses the same range for its own
/// supervisor. docs/threat-model.md names these tests.
final class BindkeeperTrustTests: XCTestCase {
    var lab: BrokerLab!
    static let grantee: (uid: UInt32, gid: UInt32) = (4242, 4242)
    var range: String { "tcp://\(BrokerLab.address):8000-8999" }

    override func setUpWithError() throws { lab = try BrokerLab(testName) }
    override func tearDown() { lab?.tearDown() }

    @discardableResult
    func writePolicy(_ binds: [String], extra: String = "", name: String = "policy.json") throws -> String {
        let policy = lab.directory.appendingPathComponent(name)
        let patterns = binds.map { "\"\($0)\"" }.joined(separator: ",")
        try #"{"control":{"mode":"0666"},"allow":[{"uid":4242,"binds":[\#(patterns)]\#(extra)}]}"#.write(
            to: policy, atomically: true, encoding: .utf8)
        return policy.path
    }

    func url(_ text: String) -> BindRequest { try! BindRequest.parse(url: text).get() }

    func granteeConnection() throws -> Int32 {
        let fd = try lab.connection(uid: Self.grantee.uid, gid: Self.grantee.gid)
        SocketOptions.setTimeouts(fd, seconds: 5)
        return fd
    }

    /// One framed request on a connection of the grantee's own: its reply, and the fds that came with it.
    func granteeRequest(_ method: String, _ binds: [BindRequest], percent: Int? = nil) throws -> (
        reply: [String: Any], fds: [Int32]
    ) {
        let fd = try granteeConnection()
        defer { close(fd) }
        XCTAssertTrue(
            SocketIO.sendAll(fd, Wire.framed.request(id: .number(1), method: method, binds: binds, percent: percent)))
        let read = try readReplies(fd, count: 1)
        return (try XCTUnwrap(read.replies.first), read.fds)
    }

    /// Every framed reply on `fd` until `count` arrived, with the fds that came with them.
    func readReplies(_ fd: Int32, count: Int) throws -> (replies: [[String: Any]], fds: [Int32]) {
        var reader = FrameReader(), replies: [[String: Any]] = [], fds: [Int32] = []
        while replies.count < count {
            if let body = try reader.next() {
                replies.append(try XCTUnwrap(JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]))
                continue
            }
            let (bytes, received) = try FDPassing.receive(fd)
            fds += received
            guard !bytes.isEmpty else { break }
            reader.append(bytes)
        }
        return (replies, fds)
    }

    /// The attack: a grantee queues hundreds of requests it does not read, then a bind, so that
    /// the bind's reply waits in the broker's outbox; it releases that socket from a second
    /// connection, and root binds a socket of its own, which the broker's lowest free descriptor
    /// number now names. The reply, once read, must carry the socket it named, never root's.
    func testAReplyWaitingForASlowReaderCarriesTheSocketItNamedNotOneMadeSince() throws {
        try lab.startBroker(["--config", try writePolicy([range])])
        let slow = try granteeConnection()
        defer { close(slow) }
        let mine = url("tcp://\(BrokerLab.address):8001")
        let lists = 600
        var burst: [UInt8] = []
        for id in 0..<lists { burst += Wire.framed.request(id: .number(Int64(id)), method: "list") }
        burst += Wire.framed.request(id: .number(Int64(lists)), method: "bind", binds: [mine])
        XCTAssertTrue(SocketIO.sendAll(slow, burst))
        try lab.waitFor("the grantee's bind to be made") {
            try lab.client().list().sockets.contains { $0.key == mine.key }
        }
        let granted = try XCTUnwrap(try lab.client().list().sockets.first { $0.key == mine.key }?.cookie)

        let other = try granteeConnection()
        defer { close(other) }
        XCTAssertTrue(SocketIO.sendAll(other, Wire.framed.request(id: .number(1), method: "release", binds: [mine])))
        let released = try readReplies(other, count: 1)
        XCTAssertNotNil(released.replies.first?["result"], "\(released.replies)")
        let rootSocket = try lab.client().bind([url("tcp://\(BrokerLab.address):443")])
        defer { rootSocket.forEach { close($0.fd) } }
        let rootCookie = try XCTUnwrap(OwnedSocket.cookie(rootSocket[0].fd))

        let drained = try readReplies(slow, count: lists + 1)
        defer { drained.fds.forEach { close($0) } }
        XCTAssertEqual(drained.replies.count, lists + 1, lab.allLogs)
        XCTAssertEqual(drained.fds.count, 1, "one socket, with the bind's reply")
        for fd in drained.fds {
            XCTAssertNotEqual(OwnedSocket.cookie(fd), rootCookie, "root's socket reached the grantee")
            XCTAssertEqual(OwnedSocket.cookie(fd), granted, "the socket the reply named")
            let bound = try XCTUnwrap(SocketAddress.local(of: fd)?.endpoint)
            XCTAssertEqual(bound.port, 8001)
            XCTAssertTrue(isListening(fd))
        }
        XCTAssertTrue(isListening(rootSocket[0].fd), "root's socket still listens")
    }

    /// A grant shared with root's supervisor: the grantee may bind root's socket on a port of its
    /// range (and get it), but not end it for everyone; its own it may release.
    func testAGranteeReleasesOnlyTheSocketsItsRequestsMade() throws {
        try lab.startBroker(["--config", try writePolicy([range])])
        let rootsURL = url("tcp://\(BrokerLab.address):8002")
        let roots = try lab.client().bind([rootsURL])
        defer { roots.forEach { close($0.fd) } }
        let request = { try self.granteeRequest($0, $1) }
        let shared = try request("bind", [rootsURL])
        XCTAssertEqual(shared.fds.map(OwnedSocket.cookie), [OwnedSocket.cookie(roots[0].fd)], "the grant shares it")
        shared.fds.forEach { close($0) }
        let refused = try request("release", [rootsURL])
        XCTAssertNotNil(refused.reply["error"], "\(refused.reply)")
        XCTAssertTrue("\(refused.reply)".contains("only sockets its own requests made"), "\(refused.reply)")
        XCTAssertTrue(try lab.client().list().sockets.contains { $0.key == rootsURL.key }, "root's socket is kept")

        let ownURL = url("tcp://\(BrokerLab.address):8003")
        let own = try request("bind", [ownURL])
        own.fds.forEach { close($0) }
        XCTAssertNotNil(try request("release", [ownURL]).reply["result"])
        XCTAssertFalse(try lab.client().list().sockets.contains { $0.key == ownURL.key })
    }

    /// A grantee may bind root's socket group on a port of its range (and get it), but neither add
    /// a generation to it (which would join its SO_REUSEPORT group) nor steer it; a group outside
    /// its grant it cannot even name. Its own group it may do both with.
    func testAGranteeNeitherJoinsNorSteersAnotherUsersGroup() throws {
        try lab.startBroker(["--config", try writePolicy([range])])
        let roots = url("tcp://\(BrokerLab.address):8010?shards=2"),
            outside = url("tcp://\(BrokerLab.address):9010?shards=2")
        for group in [roots, outside] { try lab.client().bind([group]).forEach { close($0.fd) } }
        let before = try lab.client().list().sockets.map(\.key).sorted()
        let shared = try granteeRequest("bind", [roots])
        XCTAssertEqual(shared.fds.count, 2, "the grant shares root's group: \(shared.reply)")
        shared.fds.forEach { close($0) }
        let attempts: [(String, [BindRequest], Int?, String)] = [
            ("bind", [roots.inGeneration(1)], nil, "may add a generation to only sockets its own requests made"),
            ("steer", [roots], nil, "may steer only sockets its own requests made"),
            ("bind", [outside.inGeneration(1)], nil, "Permission denied"),
            ("steer", [outside], nil, "Permission denied"),
        ]
        for (method, binds, percent, expected) in attempts {
            let refused = try granteeRequest(method, binds, percent: percent)
            XCTAssertTrue("\(refused.reply)".contains(expected), "\(method) \(binds.map(\.url)): \(refused.reply)")
            XCTAssertTrue(refused.fds.isEmpty)
            refused.fds.forEach { close($0) }
        }
        XCTAssertEqual(try lab.client().list().sockets.map(\.key).sorted(), before, "nothing was added")

        let own = url("tcp://\(BrokerLab.address):8011?shards=2")
        for group in [own, own.inGeneration(1)] {
            let made = try granteeRequest("bind", [group])
            XCTAssertEqual(made.fds.count, 2, "\(made.reply)")
            made.fds.forEach { close($0) }
        }
        let steered = try granteeRequest("steer", [own, own.inGeneration(1)], percent: 50)
        XCTAssertEqual(
            (steered.reply["result"] as? [String: Any])?["steered"] as? [String],
            [
                "tcp://\(BrokerLab.address):8011#0", "tcp://\(BrokerLab.address):8011#1",
                "tcp://\(BrokerLab.address):8011~g1#0", "tcp://\(BrokerLab.address):8011~g1#1",
            ], "\(steered.reply)")
    }

    /// Who made a socket is stored with it in the service manager's fd store: after a crash, the
    /// broker that takes the store back lets the grantee release its own socket, and still not
    /// root's.
    func testAfterACrashAGranteeStillReleasesOnlyItsOwnSockets() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let policy = try writePolicy([range])
        let first = try lab.startBroker(["--config", policy], environment: ["NOTIFY_SOCKET": manager.path])
        try manager.collect { $0.isReady }
        let rootsURL = url("tcp://\(BrokerLab.address):8006"), ownURL = url("tcp://\(BrokerLab.address):8007")
        let roots = try lab.client().bind([rootsURL])
        defer { roots.forEach { close($0.fd) } }
        func request(_ method: String, _ binds: [BindRequest]) throws -> [String: Any] {
            let fd = try granteeConnection()
            defer { close(fd) }
            XCTAssertTrue(SocketIO.sendAll(fd, Wire.framed.request(id: .number(1), method: method, binds: binds)))
            let read = try readReplies(fd, count: 1)
            read.fds.forEach { close($0) }
            return try XCTUnwrap(read.replies.first)
        }
        XCTAssertNotNil(try request("bind", [ownURL])["result"])
        try manager.collect { $0.store.count == 3 }
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()

        let second = try lab.restartBroker(manager, ["--config", policy])
        defer { kill(second, SIGTERM); _ = Spawn.wait(second) }
        try lab.waitForBroker()
        XCTAssertEqual(Set(try lab.client().list().sockets.map(\.key)), [rootsURL.key, ownURL.key])
        XCTAssertTrue("\(try request("release", [rootsURL]))".contains("only sockets its own requests made"))
        XCTAssertNotNil(try request("release", [ownURL])["result"], "its own, made before the crash")
        XCTAssertEqual(try lab.client().list().sockets.map(\.key), [rootsURL.key])
        try manager.collect { $0.store.count == 2 }
    }

    /// A port pattern with a wildcard kind (`*://*:8443`) is no grant of a Unix path: not beside
    /// the broker's control socket, not anywhere.
    func testAPortPatternGrantsNoUnixPath() throws {
        try lab.startBroker(["--config", try writePolicy(["*://*:8443"])])
        for path in [lab.socketPath + ".planted", lab.directory.appendingPathComponent("planted.sock").path] {
            let attempt = try lab.run(
                BindkeeperHardeningTests.grantee + [
                    lab.binary("bindkeeper"), "exec", "--socket", lab.socketPath, "--bind", "unix:\(path)", "--",
                    "true",
                ])
            XCTAssertNotEqual(attempt.status, 0, attempt.output)
            XCTAssertTrue(attempt.output.contains("may not bind"), attempt.output)
            XCTAssertFalse(FileManager.default.fileExists(atPath: path), path)
        }
        let tcp = try lab.run(
            BindkeeperHardeningTests.grantee + [
                lab.binary("bindkeeper"), "exec", "--socket", lab.socketPath, "--bind",
                "tcp://\(BrokerLab.address):8443", "--", "true",
            ])
        XCTAssertEqual(tcp.status, 0, tcp.output)
    }

    /// `bindkeeper reexec` runs the installed file against the policy it would read, and refuses
    /// (the running broker serving on, its sockets listening) when that fails; once the policy is
    /// mended it re-executes.
    func testAReexecWhoseNewImageRefusesThePolicyKeepsTheBrokerServing() throws {
        let policy = try writePolicy([range])
        let broker = try lab.startBroker(["--config", policy])
        let kept = try lab.client().bind([url("tcp://\(BrokerLab.address):8100")])
        defer { kept.forEach { close($0.fd) } }
        try #"{"allow":[{"user":"no-such-user-here","binds":["*"]}]}"#.write(
            toFile: policy, atomically: true, encoding: .utf8)
        let refused = try lab.run([lab.binary("bindkeeper"), "reexec", "--socket", lab.socketPath])
        XCTAssertNotEqual(refused.status, 0, refused.output)
        XCTAssertTrue(refused.output.contains("no such user no-such-user-here"), refused.output)
        XCTAssertTrue(broker.isRunning, lab.allLogs)
        XCTAssertEqual(try lab.client().list().pid, broker.processIdentifier, "the same broker answers")
        XCTAssertTrue(isListening(kept[0].fd))
        // SIGUSR1 checks the same way.
        kill(broker.processIdentifier, SIGUSR1)
        try lab.waitFor("the refusal of SIGUSR1's re-exec") { lab.allLogs.contains("re-exec refused") }
        XCTAssertEqual(try lab.client().list().pid, broker.processIdentifier)

        try writePolicy([range], name: "policy.json")
        let done = try lab.run([lab.binary("bindkeeper"), "reexec", "--socket", lab.socketPath])
        XCTAssertEqual(done.status, 0, done.output)
        try lab.waitFor("the re-executed broker") { lab.allLogs.contains("re-executed: kept 1 sockets") }
        XCTAssertEqual(try lab.client().list().sockets.map(\.key), [kept[0].key])
    }

    /// A name the user and group databases cannot answer for (a directory service down; here the
    /// only database, /etc/passwd, unreadable) is not a policy error: the check exits 75, which
    /// the unit restarts, instead of 78, which it does not (a broker gone until someone looks).
    /// A name found missing stays 78.
    func testAPolicyNameTheDatabasesCannotLookUpIsRetriedNotRefused() throws {
        let policy = lab.directory.appendingPathComponent("names.json").path
        try #"{"allow":[{"user":"daemon","binds":["*"]}]}"#.write(toFile: policy, atomically: true, encoding: .utf8)
        let locked = lab.directory.appendingPathComponent("passwd.locked").path
        let nsswitch = lab.directory.appendingPathComponent("nsswitch.conf").path
        try "passwd: files\ngroup: files\n".write(toFile: nsswitch, atomically: true, encoding: .utf8)
        XCTAssertTrue(FileManager.default.createFile(atPath: locked, contents: Data("root:x:0:0::/:/bin/sh\n".utf8)))
        XCTAssertEqual(chmod(locked, 0), 0)
        func check(_ mounts: String) throws -> (status: Int32, output: String) {
            try Lab.run(
                "/usr/bin/unshare",
                [
                    "-m", "/bin/sh", "-c",
                    """
                    \(mounts) mount --bind \(nsswitch) /etc/nsswitch.conf && \
                    exec setpriv --reuid 65534 --regid 65534 --clear-groups \(lab.binary("bindkeeper")) serve \
                    --config \(policy) --socket \(lab.socketPath) --check
                    """,
                ])
        }
        let answered = try check("")
        XCTAssertEqual(answered.status, 0, answered.output)
        let unanswered = try check("mount --bind \(locked) /etc/passwd &&")
        XCTAssertEqual(unanswered.status, 75, unanswered.output)
        XCTAssertTrue(unanswered.output.contains("did not answer for daemon"), unanswered.output)
        try #"{"allow":[{"user":"no-such-user-here","binds":["*"]}]}"#.write(
            toFile: policy, atomically: true, encoding: .utf8)
        let missing = try check("")
        XCTAssertEqual(missing.status, 78, missing.output)
    }

    /// A clean stop under a service manager that keeps the control socket in its store, and a
    /// start with a new control mode: the next broker answers on the path with that mode. A path
    /// an older release removed on its way out is made anew, and what waited in the stored
    /// socket's queue is answered.
    func testARestartThroughTheFDStoreLeavesTheControlSocketAnswering() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let first = try lab.startBroker(environment: ["NOTIFY_SOCKET": manager.path])
        try manager.collect { $0.isReady }
        let socket = try lab.client().bind([url("tcp://\(BrokerLab.address):8200")])
        defer { socket.forEach { close($0.fd) } }
        try manager.collect { $0.store.count == 2 }
        kill(first.processIdentifier, SIGTERM)
        first.waitUntilExit()
        XCTAssertEqual(statMode(lab.socketPath), 0o660)

        func restart(_ extra: [String]) throws -> pid_t { try lab.restartBroker(manager, extra) }
        let second = try restart(["--config", try writePolicy([range])])
        try lab.waitForBroker()
        XCTAssertEqual(try lab.client().list().sockets.map(\.key), [socket[0].key])
        XCTAssertEqual(statMode(lab.socketPath), 0o666, "the new policy's control mode")
        kill(second, SIGKILL)
        _ = Spawn.wait(second)

        // An older release removed the path when it stopped; a client waits in the stored queue.
        let early = try RawControlClient(lab.socketPath)
        early.send(Wire.multibinder.request(id: .number(1), method: "bind", binds: [url(socket[0].url)]))
        unlink(lab.socketPath)
        let third = try restart([])
        try lab.waitForBroker()
        XCTAssertEqual(try lab.client().list().sockets.map(\.key), [socket[0].key])
        let answered = try XCTUnwrap(early.reply(), "the request that waited in the old socket's queue")
        XCTAssertEqual(answered.fds.first.flatMap(OwnedSocket.cookie), OwnedSocket.cookie(socket[0].fd))
        answered.fds.forEach { close($0) }
        try manager.collect { $0.store.filter { $0.name == FDStoreName.control }.count == 1 }
        kill(third, SIGKILL)
        _ = Spawn.wait(third)

        // A dead socket file at the path (another process's, left by a crash): not the stored
        // socket's file, however it is named; the broker makes its own there again.
        let dead = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let deadPath = lab.directory.appendingPathComponent("dead.sock").path
        try UnixAddress.bind(dead, deadPath)
        close(dead)
        XCTAssertEqual(rename(deadPath, lab.socketPath), 0)
        let fourth = try restart([])
        defer { kill(fourth, SIGTERM); _ = Spawn.wait(fourth) }
        try lab.waitForBroker()
        XCTAssertEqual(try lab.client().list().sockets.map(\.key), [socket[0].key])
    }

    /// The control socket's mode and group are set through a handle of the file, reached with no
    /// symlink in any component: a directory swapped for a symlink never turns root's chmod and
    /// chown onto another file.
    func testTheControlSocketsModeIsSetWithNoSymlinkFollowed() throws {
        let real = lab.directory.appendingPathComponent("real").path
        let link = lab.directory.appendingPathComponent("link").path
        XCTAssertEqual(mkdir(real, 0o755), 0)
        XCTAssertEqual(symlink(real, link), 0)
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        try UnixAddress.bind(fd, real + "/control.sock")
        XCTAssertThrowsError(try OwnedSocket.setModeAndGroup(link + "/control.sock", mode: 0o600, group: nil)) {
            XCTAssertTrue("\($0)".contains("symlink"), "\($0)")
        }
        XCTAssertNotEqual(statMode(real + "/control.sock"), 0o600, "nothing changed through the link")
        try OwnedSocket.setModeAndGroup(real + "/control.sock", mode: 0o600, group: nil)
        XCTAssertEqual(statMode(real + "/control.sock"), 0o600)
    }

    /// A broker that never answers (stuck, or its socket kept in a store with nobody serving it)
    /// fails the client within its timeout instead of hanging whoever asked (the HAProxy
    /// supervisor in a reload, `bindkeeper exec` in a unit's start).
    func testAClientOfABrokerThatNeverAnswersGivesUp() throws {
        let path = lab.directory.appendingPathComponent("silent.sock").path
        let silent = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(silent) }
        try UnixAddress.bind(silent, path)
        XCTAssertEqual(listen(silent, 8), 0)
        let client = try BindkeeperClient(path: path, timeoutSeconds: 1)
        let start = MonotonicClock.nanoseconds()
        XCTAssertThrowsError(try client.list()) {
            XCTAssertTrue("\($0)".contains("did not answer within 1 s"), "\($0)")
        }
        XCTAssertLessThan(MonotonicClock.nanoseconds() - start, 10_000_000_000, "bounded by the timeout")
    }

    /// The metrics socket is one kernel socket across a re-exec and a restart from the fd store (no
    /// local user can take its port in between), and moves when --metrics does.
    func testTheMetricsSocketIsKeptAcrossAReexecAndARestart() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let first = try lab.startBroker(
            ["--metrics", "\(BrokerLab.address):9531"], environment: ["NOTIFY_SOCKET": manager.path])
        func inode(_ port: Int) throws -> String? {
            let line = try Lab.shell("ip netns exec \(lab.namespace) ss -Htlne 'sport = :\(port)'")
            return line.split(separator: " ").first { $0.hasPrefix("ino:") }.map(String.init)
        }
        let before = try XCTUnwrap(try inode(9531))
        try manager.collect { $0.store.contains { $0.name == "metrics" } }
        kill(first.processIdentifier, SIGUSR1)
        try lab.waitFor("the re-exec") { lab.allLogs.contains("re-executed: kept") }
        try lab.waitForBroker()
        XCTAssertEqual(try inode(9531), before, "the same socket after the re-exec")
        XCTAssertTrue(
            try lab.inside { try Lab.httpGet(.v4(IPv4Address(BrokerLab.address)!), port: 9531) }.contains("bindkeeper_")
        )

        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        func restart(_ metrics: String) throws -> pid_t { try lab.restartBroker(manager, ["--metrics", metrics]) }
        let second = try restart("\(BrokerLab.address):9531")
        try lab.waitForBroker()
        XCTAssertEqual(try inode(9531), before, "the same socket after a restart from the store")
        kill(second, SIGKILL)
        _ = Spawn.wait(second)

        let third = try restart("\(BrokerLab.address):9532")
        defer { kill(third, SIGTERM); _ = Spawn.wait(third) }
        try lab.waitForBroker()
        try lab.waitFor("the metrics on the new port, and nothing on the old one (the store let it go)") {
            try manager.collect { _ in true }
            return try inode(9532) != nil && inode(9531) == nil
        }
        XCTAssertEqual(manager.store.filter { $0.name == "metrics" }.count, 1)
    }

    func statMode(_ path: String) -> UInt32? {
        var status = stat()
        return lstat(path, &status) == 0 ? UInt32(status.st_mode & 0o7777) : nil
    }
}
