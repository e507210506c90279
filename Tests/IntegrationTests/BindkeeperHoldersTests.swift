import BindkeeperCore
import Foundation
import Glibc
import LinuxSys
import NetTypes
import XCTest

/// Who holds the broker's sockets and their established connections through them, in `list`
/// and the metrics: real processes that got the sockets from `bindkeeper exec`, accept and keep
/// connections, and let go of their sockets as HAProxy does after -sf.
final class BindkeeperHoldersTests: XCTestCase {
    var lab: BrokerLab!

    override func setUpWithError() throws { lab = try BrokerLab(testName) }

    override func tearDown() { lab?.tearDown() }

    /// A holder (python3): names itself argv[1] (PR_SET_NAME: any bytes, a newline among them),
    /// accepts on every passed socket whose name is not in argv[2:] and keeps each connection
    /// under three descriptors (dup: still one connection); SIGUSR1 closes its sockets (it lets
    /// go of them) and it goes on holding what it accepted.
    static let holder = """
        import ctypes, os, signal, socket, sys, time
        ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
        names = os.environ["LISTEN_FDNAMES"].split(":")
        listeners = [socket.socket(fileno=3 + i) for i in range(int(os.environ["LISTEN_FDS"]))
                     if names[i] not in sys.argv[2:]]
        held = []
        def let_go(*_):
            for listener in listeners: listener.close()
            listeners.clear()
        signal.signal(signal.SIGUSR1, let_go)
        for listener in listeners: listener.setblocking(False)
        while True:
            for listener in list(listeners):
                try:
                    connection = listener.accept()[0]
                    held += [connection, os.dup(connection.fileno()), os.dup(connection.fileno())]
                except OSError: pass
            time.sleep(0.02)
        """

    /// A holder of `urls` named `command`, run by `runner` (setpriv and its options) when given;
    /// it accepts on none of those whose names `idle` lists (`bindkeeper exec`'s names).
    func startHolder(
        _ name: String, command: String, _ urls: [String], runner: [String] = [], idle: [String] = []
    ) throws -> Process {
        try lab.start(
            name,
            runner + [lab.binary("bindkeeper"), "exec", "--socket", lab.socketPath] + urls.flatMap { ["--bind", $0] }
                + ["--", "/usr/bin/python3", "-c", Self.holder, command] + idle)
    }

    func connect(_ count: Int, port: UInt16) throws -> [Int32] {
        try lab.inside {
            try (0..<count).map { _ in
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                let result = SocketAddress(IPAddress(BrokerLab.address)!, port: port).withSockaddr {
                    Glibc.connect(fd, $0, $1)
                }
                guard result == 0 else { throw SystemError("connect to \(port)") }
                return fd
            }
        }
    }

    /// The holders `list` reports, as (key, pid) → (established, draining); none before the
    /// first count (each `list` asks for the next).
    func holders() throws -> [String: (established: UInt32, draining: Bool)] {
        let listing = try lab.client().list()
        let holders = listing.holders ?? []
        return Dictionary(holders.map { ("\($0.key) \($0.pid)", ($0.established, $0.draining)) }) { first, _ in first }
    }

    func metric(_ name: String, _ key: String, port: UInt16) throws -> UInt64? {
        let body = try lab.inside { try Lab.httpGet(IPAddress(BrokerLab.address)!, port: port) }
        let prefix = "\(name){key=\"\(key)\"} "
        return body.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { UInt64($0.dropFirst(prefix.count)) }
    }

    /// A socket handed to two processes, one of which lets go and drains (a HAProxy reload), and
    /// the two generations of a group, each held by its own process: each process's connections
    /// count for the socket or generation it holds, or held; the command a process gave itself
    /// is escaped in the listing.
    func testEachHoldersEstablishedConnectionsCountForWhatItHoldsOrHeld() throws {
        try lab.startBroker(["--metrics", "\(BrokerLab.address):9527"])
        let (plain, group) = ("tcp://\(BrokerLab.address):8820", "tcp://\(BrokerLab.address):8821")
        let old = try startHolder("old", command: "ev\nil\u{1b}[31m", [plain, group + "?shards=1"])
        let a = old.processIdentifier
        try lab.waitFor("the old holder") { try self.holders()["\(plain) \(a)"] != nil }
        var clients = try connect(3, port: 8820) + connect(2, port: 8821)
        defer { clients.forEach { close($0) } }
        try lab.waitFor("the old holder's five connections") {
            let seen = try self.holders()
            return seen["\(plain) \(a)"]?.established == 3 && seen["\(group) \(a)"]?.established == 2
        }
        let listed = try lab.run([lab.binary("bindkeeper"), "list", "--socket", lab.socketPath]).output
        XCTAssertTrue(listed.contains(#"ev\nil\x1b[31m"#), listed)
        XCTAssertFalse(listed.contains("\u{1b}"), "no byte of the command reaches the terminal as it is")

        let new = try startHolder("new", command: "new", [plain, group + "?shards=1&generation=1"])
        let b = new.processIdentifier
        try lab.waitFor("the new holder") { try self.holders()["\(group)~g1 \(b)"] != nil }
        kill(a, SIGUSR1)
        try lab.waitFor("the old holder draining") { try self.holders()["\(plain) \(a)"]?.draining == true }
        clients += try connect(2, port: 8820)
        try lab.waitFor("the new holder's connections") { try self.holders()["\(plain) \(b)"]?.established == 2 }
        let seen = try holders()
        XCTAssertEqual(seen["\(plain) \(a)"]?.established, 3, "\(seen)")
        XCTAssertEqual(seen["\(group) \(a)"]?.established, 2, "\(seen)")
        XCTAssertEqual(seen["\(group) \(a)"]?.draining, true, "\(seen)")
        XCTAssertEqual(seen["\(group)~g1 \(b)"]?.established, 0, "generation 1 accepted nothing: \(seen)")
        XCTAssertEqual(seen["\(plain) \(b)"]?.draining, false, "\(seen)")
        XCTAssertEqual(try lab.client().list().unattributedConnections, 0, "every connection is a holder's")
        XCTAssertFalse(lab.allLogs.contains("per socket unknown"), lab.allLogs)
        XCTAssertNil(seen["\(group) \(b)"], "the new holder holds generation 1 only: \(seen)")

        try lab.waitFor("the metrics' count (every 10 s)", seconds: 25) {
            try metric("bindkeeper_established_connections", plain, port: 9527) == 5
        }
        XCTAssertEqual(try metric("bindkeeper_draining_established_connections", plain, port: 9527), 3)
        XCTAssertEqual(try metric("bindkeeper_holding_processes", plain, port: 9527), 1)
        XCTAssertEqual(try metric("bindkeeper_established_connections", group, port: 9527), 2)
        XCTAssertEqual(try metric("bindkeeper_holding_processes", group, port: 9527), 0)
        XCTAssertEqual(try metric("bindkeeper_holding_processes", group + "~g1", port: 9527), 1)
    }

    /// Without CAP_SYS_PTRACE (the shipped unit's bounding set) the broker cannot read another
    /// user's descriptor table: that process's connections are counted as no holder's, with the
    /// processes it could not read, and never given to another holder.
    func testWithoutCAPSYSPTRACEAnotherUsersConnectionsAreUnattributedNotMiscounted() throws {
        let policy = lab.directory.appendingPathComponent("policy.json")
        let other = "tcp://\(BrokerLab.address):8822"
        try #"{"control":{"mode":"0666"},"allow":[{"uid":4242,"binds":["\#(other)"]}]}"#.write(
            to: policy, atomically: true, encoding: .utf8)
        try lab.startBroker(["--config", policy.path, "--metrics", "\(BrokerLab.address):9528"], asTheUnit: true)
        // Root with the broker's capabilities (no more: the kernel lets a process read the table
        // of one whose capabilities are within its own), and another user. Root holds the other
        // user's socket too, without accepting: the other user's connections are not root's.
        let root = try startHolder(
            "root", command: "root", ["tcp://\(BrokerLab.address):8823", "idle=" + other],
            runner: BrokerLab.unitCapabilities, idle: ["idle"])
        let grantee = try startHolder("grantee", command: "grantee", [other], runner: BindkeeperHardeningTests.grantee)
        try lab.waitFor("the grantee's holder") {
            ProcessSockets.identity(of: grantee.processIdentifier)?.command == "grantee"
        }
        // Each holder's sockets listen once the broker has answered its bind.
        try lab.waitUntilListening(port: 8822)
        try lab.waitUntilListening(port: 8823)
        let clients = try connect(2, port: 8822) + connect(1, port: 8823)
        defer { clients.forEach { close($0) } }
        // A count may be taken between a client's connect and the server's side of it: wait for
        // one that saw all three.
        var listing = try lab.client().list()
        try lab.waitFor("the grantee's two connections unattributed, root's one counted") {
            listing = try self.lab.client().list()
            let counted = listing.holders?.first { $0.key != other }?.established
            return listing.unattributedConnections == 2 && counted == 1
        }
        XCTAssertGreaterThanOrEqual(listing.unreadableProcesses ?? 0, 1)
        let holders = try XCTUnwrap(listing.holders)
        XCTAssertEqual(
            holders.map(\.pid), [root.processIdentifier, root.processIdentifier], "only root is seen: \(holders)")
        XCTAssertEqual(holders.first { $0.key == other }?.established, 0, "root holds it, but accepted none")
        XCTAssertEqual(holders.first { $0.key != other }?.established, 1)
        // Another user's `list` shows the sockets, not who holds them.
        let asGrantee = try lab.run(
            BindkeeperHardeningTests.grantee + [lab.binary("bindkeeper"), "list", "--json", "--socket", lab.socketPath])
        XCTAssertEqual(asGrantee.status, 0, asGrantee.output)
        XCTAssertTrue(asGrantee.output.contains("listed to root and the broker's user only"), asGrantee.output)
        XCTAssertFalse(asGrantee.output.contains("\"command\""), "no holder: \(asGrantee.output)")
        try lab.waitFor("the metrics to say so", seconds: 25) {
            let body = try self.lab.inside { try Lab.httpGet(IPAddress(BrokerLab.address)!, port: 9528) }
            return body.contains("bindkeeper_unattributed_established_connections 2\n")
                && body.contains("bindkeeper_established_connections{key=\"\(other)\"} 0\n")
        }
    }

    /// A grantee that forks many processes holding its sockets cannot make root's listing too
    /// large to send (a line per process and socket: 8 sockets and 901 processes are over a
    /// megabyte): `list` names the first holders and counts the rest.
    func testAFloodOfHoldersLeavesTheListingWhole() throws {
        try lab.startBroker()
        let binds = (8824...8831).flatMap { ["--bind", "tcp://\(BrokerLab.address):\($0)"] }
        let forker = try lab.start(
            "forker",
            [lab.binary("bindkeeper"), "exec", "--socket", lab.socketPath] + binds + [
                "--", "/usr/bin/python3", "-c",
                """
                import os, time
                for _ in range(900):
                    if os.fork() == 0:
                        time.sleep(600)
                        os._exit(0)
                time.sleep(600)
                """,
            ])
        defer { _ = try? Lab.shell("pkill -KILL -P \(forker.processIdentifier); kill -9 \(forker.processIdentifier)") }
        var listing = try lab.client().list()
        try lab.waitFor("901 holders of 8 sockets", seconds: 30) {
            listing = try self.lab.client().list()
            return (listing.holders?.count ?? 0) + (listing.holdersLeftOut ?? 0) >= 901 * 8
        }
        XCTAssertEqual(listing.holders?.count, 1000)
        XCTAssertGreaterThanOrEqual(listing.holdersLeftOut ?? 0, 901 * 8 - 1000)
        let printed = try lab.run([lab.binary("bindkeeper"), "list", "--socket", lab.socketPath])
        XCTAssertEqual(printed.status, 0, String(printed.output.suffix(500)))
        XCTAssertTrue(printed.output.contains("more (the metrics count them all)"), String(printed.output.suffix(500)))
    }
}
