import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import XCTest

/// bindkeeper as a grantee would attack it: uid 4242 (no account needed; setpriv runs as it) owns
/// one directory and may bind Unix sockets below it, and tries to reach anything else, to stall the
/// broker or to wear it down.
final class BindkeeperHardeningTests: XCTestCase {
    var lab: BrokerLab!
    var grant = "", elsewhere = "", victim = ""
    static let grantee = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"]

    override func setUpWithError() throws {
        lab = try BrokerLab(testName)
        grant = lab.directory.appendingPathComponent("grant").path
        elsewhere = lab.directory.appendingPathComponent("elsewhere").path
        victim = elsewhere + "/victim"
        try Lab.shell(
            """
            mkdir -m 0755 \(grant) \(elsewhere) && chown 4242:4242 \(grant) && echo secret > \(victim) && chmod 0600 \
            \(victim)
            """
        )
    }

    override func tearDown() { lab?.tearDown() }

    func startBroker(_ extra: [String] = [], binds: [String] = []) throws -> Process {
        let policy = lab.directory.appendingPathComponent("policy.json")
        let patterns = (["unix:\(grant)/**"] + binds).map { "\"\($0)\"" }.joined(separator: ",")
        try #"{"control":{"mode":"0666"},"allow":[{"uid":4242,"binds":[\#(patterns)]}]}"#.write(
            to: policy, atomically: true, encoding: .utf8)
        return try lab.startBroker(["--config", policy.path] + extra)
    }

    /// `bindkeeper exec` as the grantee: (status, output).
    func asGrantee(_ urls: [String]) throws -> (status: Int32, output: String) {
        try lab.run(
            Self.grantee + [lab.binary("bindkeeper"), "exec", "--socket", lab.socketPath]
                + urls.flatMap { ["--bind", $0] } + ["--", "true"])
    }

    func status(_ path: String) -> stat? {
        var status = stat()
        return lstat(path, &status) == 0 ? status : nil
    }

    /// The victim is as it was, and nothing else appeared outside the grant.
    func assertNothingOutsideTheGrantChanged(_ context: String = "") throws {
        let victimStatus = try XCTUnwrap(status(victim))
        XCTAssertEqual(victimStatus.st_mode & 0o7777, 0o600, "victim mode \(context)")
        XCTAssertEqual(victimStatus.st_uid, 0, "victim owner \(context)")
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "secret\n")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: elsewhere), ["victim"], context)
    }

    func testAGranteesRequestsNeverReachOutsideTheGrant() throws {
        try startBroker()
        let dotDot = try asGrantee(["unix:\(grant)/../elsewhere/s.sock?mode=0666&owner=4242"])
        XCTAssertNotEqual(dotDot.status, 0)
        XCTAssertTrue(dotDot.output.contains("canonical"), dotDot.output)

        try lab.run(Self.grantee + ["ln", "-s", elsewhere, grant + "/link"])
        let throughLink = try asGrantee(["unix:\(grant)/link/s.sock?mode=0666&owner=4242"])
        XCTAssertNotEqual(throughLink.status, 0)
        XCTAssertTrue(throughLink.output.contains("symlink"), throughLink.output)

        try lab.run(Self.grantee + ["ln", "-s", victim, grant + "/planted.sock"])
        let planted = try asGrantee(["unix:\(grant)/planted.sock?mode=0666&owner=4242"])
        XCTAssertNotEqual(planted.status, 0)
        XCTAssertTrue(planted.output.contains("not a socket"), planted.output)
        XCTAssertEqual(
            status(grant + "/planted.sock").map { $0.st_mode & S_IFMT }, S_IFLNK, "the grantee's symlink was left alone"
        )

        let setuid = try asGrantee(["unix:\(grant)/setuid.sock?mode=04777"])
        XCTAssertNotEqual(setuid.status, 0)
        XCTAssertTrue(setuid.output.contains("at most 0777"), setuid.output)
        for option in ["owner=0", "group=0"] {
            let given = try asGrantee(["unix:\(grant)/given.sock?\(option)"])
            XCTAssertNotEqual(given.status, 0)
            XCTAssertTrue(given.output.contains("may not give"), given.output)
        }
        XCTAssertNil(status(grant + "/given.sock"))

        // What the grant allows works: the grantee's own socket, with its mode, under its name.
        let own = try asGrantee(["unix:\(grant)/own.sock?mode=0640&owner=4242&group=4242"])
        XCTAssertEqual(own.status, 0, own.output)
        let ownStatus = try XCTUnwrap(status(grant + "/own.sock"))
        XCTAssertEqual(ownStatus.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(ownStatus.st_mode & 0o7777, 0o640)
        XCTAssertEqual(ownStatus.st_uid, 4242)
        XCTAssertEqual(ownStatus.st_gid, 4242)
        let connected = try UnixAddress.connect(grant + "/own.sock")
        close(connected)

        // A socket left by a dead process is replaced; a file that is not a socket is not.
        let dead = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try UnixAddress.bind(dead, grant + "/dead.sock")
        close(dead)
        let replaced = try asGrantee(["unix:\(grant)/dead.sock?owner=4242"])
        XCTAssertEqual(replaced.status, 0, replaced.output)
        try lab.run(Self.grantee + ["sh", "-c", "echo mine > \(grant)/file.sock"])
        let file = try asGrantee(["unix:\(grant)/file.sock"])
        XCTAssertNotEqual(file.status, 0)
        XCTAssertEqual(try String(contentsOfFile: grant + "/file.sock", encoding: .utf8), "mine\n")

        XCTAssertFalse(
            try FileManager.default.contentsOfDirectory(atPath: grant).contains { $0.hasPrefix(".bindkeeper") },
            "no staging directory is left")
        try assertNothingOutsideTheGrantChanged()
    }

    /// The grantee knows the order in which its sockets will be made: it waits for each name and
    /// swaps it for a symlink to the victim the moment it appears (one rename), while 2000 sockets
    /// are made in its directory with its uid as owner.
    func testNamesSwappedDuringBindsChangeNothingOutsideTheGrant() throws {
        try startBroker()
        let racer = """
            import os, sys, time
            grant, victim, batches, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
            deadline = time.time() + 60
            swaps = 0
            for batch in range(batches):
                for index in range(per):
                    path = os.path.join(grant, "r-%d-%d.sock" % (batch, index))
                    link = os.path.join(grant, "link-%d-%d" % (batch, index))
                    os.symlink(victim, link)
                    spins = 0
                    while not os.path.lexists(path):
                        spins += 1
                        stop = os.path.join(grant, "stop")
                        if spins % 4096 == 0 and (time.time() > deadline or os.path.exists(stop)):
                            break
                    try:
                        os.rename(link, path)
                        swaps += 1
                    except OSError:
                        pass
            print("swaps", swaps, flush=True)
            """
        let script = lab.directory.appendingPathComponent("racer.py").path
        try racer.write(toFile: script, atomically: true, encoding: .utf8)
        let racing = try lab.start("racer", Self.grantee + ["/usr/bin/python3", script, grant, victim, "40", "50"])
        var made = 0, refused = 0
        for batch in 0..<40 {
            let urls = (0..<50).map {
                try! BindRequest.parse(url: "unix:\(grant)/r-\(batch)-\($0).sock?mode=0666&owner=4242").get()
            }
            do { made += try lab.client().bind(urls).map { close($0.fd) }.count } catch { refused += 1 }
        }
        try "".write(toFile: grant + "/stop", atomically: true, encoding: .utf8)
        racing.waitUntilExit()
        let log = lab.allLogs
        XCTAssertTrue(log.contains("swaps"), log)
        XCTAssertGreaterThan(made, 0, "some binds went through: \(refused) batches refused")
        try assertNothingOutsideTheGrantChanged("after \(made) sockets and \(refused) refused batches")
        // Still serving.
        let after = try lab.client().bind([try BindRequest.parse(url: "unix:\(grant)/after.sock").get()])
        after.forEach { close($0.fd) }
    }

    /// 10 MB of blanks before a request, and a request one byte at a time: both answered.
    func checkSlowAndBloatedRequestsAreAnswered(_ request: String) throws {
        let blanks = try RawControlClient(lab.socketPath)
        let chunk = [UInt8](repeating: 0x20, count: 1 << 20)
        for _ in 0..<10 { blanks.send(chunk) }
        blanks.send(request)
        let afterBlanks = try XCTUnwrap(blanks.reply(), "no reply after 10 MB of blanks")
        XCTAssertEqual(afterBlanks.object["result"] as? Bool, true)
        afterBlanks.fds.forEach { close($0) }
        let slow = try RawControlClient(lab.socketPath)
        for byte in Array(request.utf8) {
            slow.send([byte])
            usleep(500)
        }
        let afterBytes = try XCTUnwrap(slow.reply(), "no reply to the byte-at-a-time client")
        afterBytes.fds.forEach { close($0) }
    }

    func testBadClientsCannotStallOrExhaustTheBroker() throws {
        try startBroker(
            ["--idle-seconds", "3", "--max-sockets-per-user", "3", "--metrics", "\(BrokerLab.address):9524"],
            binds: ["tcp://\(BrokerLab.address):9000-9100"])
        func metric(_ name: String) throws -> Int {
            let text = try lab.inside { try Lab.httpGet(IPAddress(BrokerLab.address)!, port: 9524) }
            return text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap {
                Int($0.split(separator: " ")[1])
            } ?? -1
        }
        let request = #"{"jsonrpc":"2.0","method":"bind","id":7,"params":[{"address":"198.18.2.1","port":9050}]}"#

        try checkSlowAndBloatedRequestsAreAnswered(request)

        // 5000 connections from one uid: 64 are kept, the rest refused at once, and others are served.
        let holder = """
            import socket, sys, time
            held = []
            for _ in range(5000):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(sys.argv[1]); held.append(s)
                except OSError:
                    s.close()
            print("connected", len(held), flush=True)
            time.sleep(float(sys.argv[2]))
            """
        let script = lab.directory.appendingPathComponent("holder.py").path
        try holder.write(toFile: script, atomically: true, encoding: .utf8)
        let holding = try lab.start(
            "holder",
            ["sh", "-c", "ulimit -n 8192; exec \"$0\" \"$@\""] + Self.grantee + [
                "/usr/bin/python3", script, lab.socketPath, "8",
            ])
        var connected = 0
        try lab.waitFor("the holder's connections") {
            connected =
                lab.allLogs.split(separator: "\n").first { $0.hasPrefix("connected ") }.flatMap {
                    Int($0.dropFirst(10))
                } ?? 0
            return connected > 0
        }
        XCTAssertEqual(connected, 5000, "a blocking connect waits for the broker to accept")
        // Every connection beyond the uid's 64 is refused as soon as the broker accepts it.
        var refused = 0
        try lab.waitFor("the connections beyond the limit to be refused") {
            refused = try metric("bindkeeper_clients_over_limit_total")
            return refused == connected - 64
        }
        let served = try lab.client().bind([try BindRequest.parse(url: "tcp://\(BrokerLab.address):9051").get()])
        XCTAssertEqual(served.count, 1)
        served.forEach { close($0.fd) }
        try lab.waitFor("idle clients to be cut off", seconds: 8) {
            try metric("bindkeeper_clients_idle_cut_off_total") >= 64
        }
        holding.terminate()

        // A uid at its socket limit gets an error; sockets that exist are still handed to it, and
        // others still get theirs.
        let three = try asGrantee((9001...9003).map { "tcp://\(BrokerLab.address):\($0)" })
        XCTAssertEqual(three.status, 0, three.output)
        let fourth = try asGrantee(["tcp://\(BrokerLab.address):9004"])
        XCTAssertNotEqual(fourth.status, 0)
        XCTAssertTrue(fourth.output.contains("Limit reached"), fourth.output)
        XCTAssertEqual(try asGrantee(["tcp://\(BrokerLab.address):9001"]).status, 0)
        let root = try lab.client().bind([try BindRequest.parse(url: "tcp://\(BrokerLab.address):9005").get()])
        root.forEach { close($0.fd) }
        XCTAssertEqual(try metric("bindkeeper_socket_limit_refusals_total"), 1)
    }

    /// `release` lets go of sockets, all or none, for whoever may bind them: the grantee frees a
    /// place under --max-sockets-per-user and rebinds a port with another backlog, but cannot
    /// release a socket outside its grant, and a socket nobody holds refuses connections.
    func testReleaseIsAllOrNoneAndOnlyWithinTheGrant() throws {
        try startBroker(["--max-sockets-per-user", "2"], binds: ["tcp://\(BrokerLab.address):9300-9309"])
        let (mine, other) = ("tcp://\(BrokerLab.address):9300", "tcp://\(BrokerLab.address):9301")
        func release(_ urls: [String]) throws -> (status: Int32, output: String) {
            try lab.run(Self.grantee + [lab.binary("bindkeeper"), "release", "--socket", lab.socketPath] + urls)
        }
        XCTAssertEqual(try asGrantee([mine, other]).status, 0)
        XCTAssertNotEqual(try asGrantee(["tcp://\(BrokerLab.address):9302"]).status, 0, "the limit of 2")
        // Root's socket, outside the grant: refused, and the batch with it releases nothing.
        let outside = try lab.client().bind([try BindRequest.parse(url: "tcp://\(BrokerLab.address):9400").get()])
        outside.forEach { close($0.fd) }
        let refused = try release([mine, "tcp://\(BrokerLab.address):9400"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.output.contains("Permission denied"), refused.output)
        let unknown = try release(["tcp://\(BrokerLab.address):9305"])
        XCTAssertTrue(unknown.output.contains("holds no such socket"), unknown.output)
        XCTAssertEqual(
            Set(try lab.client().list().sockets.map(\.key)), [mine, other, "tcp://\(BrokerLab.address):9400"])

        let released = try release([mine])
        XCTAssertEqual(released.status, 0, released.output)
        XCTAssertTrue(released.output.contains("released \(mine)"), released.output)
        XCTAssertFalse(try lab.client().list().sockets.contains { $0.key == mine })
        // Nobody holds it now: the kernel refuses connections instead of completing handshakes.
        XCTAssertThrowsError(
            try lab.inside { try LabSockets.connectTCP(to: IPAddress(BrokerLab.address)!, port: 9300) })
        // The place is free again, and the port can be bound with another backlog.
        let rebound = try asGrantee(["tcp://\(BrokerLab.address):9300?backlog=64"])
        XCTAssertEqual(rebound.status, 0, rebound.output)
        XCTAssertEqual(
            try lab.client().list().sockets.first { $0.key == mine }?.kernelBacklog, 64, "made anew with backlog 64")
    }

    /// A client's text cannot forge a log line: under journald (JOURNAL_STREAM set) a line starting
    /// `<0>` would be taken as an emergency. The address's line feed and everything after it stay
    /// on the broker's own line, escaped.
    func testClientTextCannotStartALogLineOfItsOwn() throws {
        let policy = lab.directory.appendingPathComponent("policy.json")
        try #"{"control":{"mode":"0666"},"allow":[]}"#.write(to: policy, atomically: true, encoding: .utf8)
        try lab.startBroker(["--config", policy.path], environment: ["JOURNAL_STREAM": "8:1"])
        let raw = try RawControlClient(lab.socketPath)
        raw.send(
            #"{"jsonrpc":"2.0","method":"bind","id":1,"params":"#
                + #"[{"address":"1.2.3.4\n<0>FORGED emergency\u2028line\r\u0000","port":80}]}"#
        )
        XCTAssertNotNil(errorCode(raw.reply()?.object), "the bind is refused")
        try lab.waitFor("the refusal to be logged") { lab.allLogs.contains("FORGED") }
        for line in lab.allLogs.split(separator: "\n", omittingEmptySubsequences: false) where line.contains("FORGED") {
            XCTAssertTrue(line.hasPrefix("<6>bindkeeper["), "a line of the broker's own: \(line)")
            XCTAssertTrue(line.contains(#"1.2.3.4\n<0>FORGED emergency\u{2028}line\r\x00"#), String(line))
        }
        XCTAssertFalse(lab.allLogs.contains("\u{2028}"), "no raw line separator either")
    }

    /// A client sending bad requests in a loop gets an error for each, while the broker logs ten
    /// lines a second about them at most: journald's rate limit is left for the broker's own lines.
    func testBadRequestsInALoopCannotFloodTheLog() throws {
        try startBroker(binds: ["tcp://\(BrokerLab.address):9000"])
        let raw = try RawControlClient(lab.socketPath)
        let request = #"{"jsonrpc":"2.0","method":"frobnicate","id":1}"#
        let started = MonotonicClock.nanoseconds()
        for _ in 0..<3000 {
            raw.send(request)
            XCTAssertEqual(errorCode(raw.reply()?.object), -32601)
        }
        let seconds = Int((MonotonicClock.nanoseconds() - started) / 1_000_000_000) + 1
        sleep(1)
        raw.send(request)
        XCTAssertEqual(errorCode(raw.reply()?.object), -32601, "still answered")
        let lines = lab.allLogs.split(separator: "\n").filter { $0.contains("Method not found") }
        XCTAssertLessThanOrEqual(lines.count, 10 * (seconds + 1), "\(lines.count) lines in about \(seconds) s")
        // Each line logged after some were held back says how many ("(N such lines not logged ...").
        let held = lines.compactMap { line in
            line.range(of: " such lines not logged").flatMap { Int(line[..<$0.lowerBound].split(separator: "(").last!) }
        }
        XCTAssertFalse(held.isEmpty, "no line says how many were held back")
        XCTAssertEqual(held.reduce(0, +) + lines.count, 3001, "every request is either logged or counted as held back")
        // The broker's own lines are still written.
        let socket = try lab.client().bind([try BindRequest.parse(url: "tcp://\(BrokerLab.address):9000").get()])
        socket.forEach { close($0.fd) }
        try lab.waitFor("the bind to be logged") { lab.allLogs.contains("bound tcp://\(BrokerLab.address):9000") }
    }

    /// Eight connections send 1500 `list` requests each in one write (each `list` asks the kernel
    /// for every listener's queues): another client's requests are still answered at once, since a
    /// turn of the broker's loop answers a few requests per client and dumps the queues once.
    func testAClientsBurstOfRequestsDoesNotHoldUpTheOthers() throws {
        try startBroker()
        let burst = Array(repeating: Wire.framed.request(id: .number(1), method: "list"), count: 1500).flatMap { $0 }
        let attackers = try (0..<8).map { _ in try RawControlClient(lab.socketPath) }
        for attacker in attackers { attacker.send(burst) }
        let victim = try lab.client()
        var slowest: UInt64 = 0
        for _ in 0..<10 {
            let started = MonotonicClock.nanoseconds()
            _ = try victim.list()
            slowest = max(slowest, MonotonicClock.nanoseconds() - started)
        }
        // Before: the victim waited for whole reads of the others' requests, 4.5 s here at worst.
        XCTAssertLessThan(slowest, 2_000_000_000, "a list took \(slowest / 1_000_000) ms")
        XCTAssertEqual(try lab.client().list().sockets.count, 0, "the broker still serves")
        withExtendedLifetime(attackers) {}
    }

    func openFDs(_ pid: pid_t) throws -> Int {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
    }

    func testFailedRequestsLeaveNoFdBehind() throws {
        let broker = try startBroker()
        let first = try lab.client().bind([
            try BindRequest.parse(url: "tcp://\(BrokerLab.address):9200?backlog=10").get()
        ])
        first.forEach { close($0.fd) }
        let raw = try RawControlClient(lab.socketPath)
        // Counted with this connection open and the earlier client's gone (the broker drops it on its EOF).
        var brokerBefore = 0
        try lab.waitFor("the broker's fds to settle") {
            let first = try openFDs(broker.processIdentifier)
            usleep(100_000)
            brokerBefore = try openFDs(broker.processIdentifier)
            return first == brokerBefore
        }
        let failing = [
            #"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"198.18.2.1","port":9200,"backlog":20}]}"#,
            #"{"jsonrpc":"2.0","method":"bind","id":2,"params":[{"type":"unix","address":"/tmp/a?b"}]}"#,
            #"{"jsonrpc":"2.0","method":"bind","id":3,"#
                + #""params":[{"type":"unix","address":"\#(grant)/x.sock","owner":"no-such-user"}]}"#,
            #"{"jsonrpc":"2.0","method":"bind","id":4,"params":[{"address":"198.18.99.1","port":1}]}"#,
            #"{"jsonrpc":"2.0","method":"nope","id":5}"#,
        ]
        for index in 0..<1000 {
            raw.send(failing[index % failing.count])
            let reply = try XCTUnwrap(raw.reply(), "reply \(index)")
            XCTAssertNotNil(reply.object["error"], "\(reply.object)")
            XCTAssertEqual(reply.fds, [])
        }
        usleep(100_000)
        XCTAssertEqual(try openFDs(broker.processIdentifier), brokerBefore, "the broker's fds")
        // None of it reached the re-exec state: the broker re-executes with what it has.
        let reexec = try lab.run([lab.binary("bindkeeper"), "reexec", "--socket", lab.socketPath])
        XCTAssertEqual(reexec.status, 0, reexec.output)
        try lab.waitFor("the re-exec") { lab.allLogs.contains("re-executed: kept 1 sockets") }

        // The client library: a batch that fails after earlier batches brought fds closes them all.
        let mine = try openFDs(getpid())
        let many = (0..<250).map {
            try! BindRequest.parse(url: "tcp://\(BrokerLab.address):\(9300 + $0)?freebind=1").get()
        }
        for _ in 0..<4 {
            XCTAssertThrowsError(
                try lab.client().bind(
                    many + [try BindRequest.parse(url: "tcp://\(BrokerLab.address):9200?backlog=20").get()]))
        }
        XCTAssertEqual(try openFDs(getpid()), mine, "the client's fds")
    }

    func testFailedReloadsLeaveNoFdBehindInTheSupervisor() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy") else {
            throw LabError("haproxy is not installed (scripts/setup.sh installs it)")
        }
        try startBroker()
        let answer = try String(
            contentsOf: Lab.packageRoot.appendingPathComponent("examples/lab/haproxy-answer.cfg.in"), encoding: .utf8)
        let template = lab.directory.appendingPathComponent("site.cfg.tmpl").path
        try answer.replacingOccurrences(of: "@BIND@", with: "{{bind tcp://\(BrokerLab.address):8600}}").write(
            toFile: template, atomically: true, encoding: .utf8)
        let (supervisor, pidFile) = try lab.startSupervisor("site", template: template, stopTimeoutSeconds: 2)
        let before = try openFDs(supervisor.processIdentifier)
        let broken = [
            answer.replacingOccurrences(of: "@BIND@", with: "{{bind tcp://\(BrokerLab.address):8600}}")
                + "    no_such_directive\n",
            answer.replacingOccurrences(
                of: "@BIND@",
                with: "{{bind tcp://\(BrokerLab.address):8600}}\n    bind {{bind tcp://[fe80::1%nosuchif]:1}}"),
        ]
        func refusals() -> Int { lab.allLogs.components(separatedBy: "reload refused").count - 1 }
        for index in 0..<20 {
            try broken[index % 2].write(toFile: template, atomically: true, encoding: .utf8)
            let seen = refusals()
            kill(supervisor.processIdentifier, SIGHUP)
            try lab.waitFor("reload \(index) to be refused") { refusals() > seen }
        }
        XCTAssertEqual(
            try openFDs(supervisor.processIdentifier), before, "the supervisor's fds after 20 failed reloads")
        XCTAssertTrue(supervisor.isRunning)
    }
}

/// What the README promises of bindkeeper and no other test drives.
final class BindkeeperPromiseTests: XCTestCase {
    var lab: BrokerLab!

    override func setUpWithError() throws { lab = try BrokerLab(testName) }
    override func tearDown() { lab?.tearDown() }

    func exec(as gid: String?, _ url: String) throws -> (status: Int32, output: String) {
        let user = gid.map { ["setpriv", "--reuid=4242", "--regid=\($0)", "--clear-groups"] } ?? []
        return try lab.run(
            user + [lab.binary("bindkeeper"), "exec", "--socket", lab.socketPath, "--bind", url, "--", "true"])
    }

    /// A policy by group name, and the control socket's group: members get in and bind what the
    /// group may; others cannot even connect. Denials and conflicts carry their codes.
    func testGroupPolicyControlGroupAndErrorCodes() throws {
        let nogroup = try XCTUnwrap(getgrnam("nogroup")?.pointee.gr_gid)
        let policy = lab.directory.appendingPathComponent("policy.json")
        let text =
            #"{"control":{"mode":"0660","group":"nogroup"},"#
            + #""allow":[{"group":"nogroup","binds":["tcp://198.18.2.1:9101"]}]}"#
        try text.write(to: policy, atomically: true, encoding: .utf8)
        try lab.startBroker(["--config", policy.path])
        var status = stat()
        XCTAssertEqual(stat(lab.socketPath, &status), 0)
        XCTAssertEqual(status.st_gid, nogroup)
        XCTAssertEqual(status.st_mode & 0o777, 0o660)

        let member = try exec(as: String(nogroup), "tcp://\(BrokerLab.address):9101")
        XCTAssertEqual(member.status, 0, member.output)
        let denied = try exec(as: String(nogroup), "tcp://\(BrokerLab.address):9102")
        XCTAssertNotEqual(denied.status, 0)
        XCTAssertTrue(denied.output.contains("(10001)"), denied.output)
        let outsider = try exec(as: "4242", "tcp://\(BrokerLab.address):9101")
        XCTAssertNotEqual(outsider.status, 0)
        XCTAssertTrue(outsider.output.contains("Permission denied"), outsider.output)

        XCTAssertEqual(try exec(as: nil, "tcp://\(BrokerLab.address):9103?backlog=10").status, 0)
        let conflict = try exec(as: nil, "tcp://\(BrokerLab.address):9103?backlog=20")
        XCTAssertNotEqual(conflict.status, 0)
        XCTAssertTrue(conflict.output.contains("(10002)"), conflict.output)

        let listing = try lab.run([lab.binary("bindkeeper"), "list", "--json", "--socket", lab.socketPath])
        XCTAssertEqual(listing.status, 0, listing.output)
        let object = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data(listing.output.utf8)) as? [String: Any], listing.output)
        let keys = (object["sockets"] as? [[String: Any]] ?? []).compactMap { $0["key"] as? String }
        XCTAssertEqual(keys, ["tcp://\(BrokerLab.address):9101", "tcp://\(BrokerLab.address):9103"])
    }

    /// `reexec` after an upgrade runs the file now installed where the broker was started from (a
    /// new file renamed over the old one, as packages install), keeping every socket; an upgrade
    /// that is no program at all leaves the running broker serving.
    func testReexecRunsTheInstalledBinaryAfterAnUpgrade() throws {
        let installed = lab.directory.appendingPathComponent("sbin/bindkeeper").path
        try Lab.shell("mkdir -p \(lab.directory.path)/sbin && cp \(lab.binary("bindkeeper")) \(installed)")
        let broker = try lab.start("broker", [installed, "serve", "--socket", lab.socketPath])
        try lab.waitForBroker()
        let bound = try lab.client().bind([try BindRequest.parse(url: "tcp://\(BrokerLab.address):9200").get()])
        let cookie = OwnedSocket.cookie(bound[0].fd)
        bound.forEach { close($0.fd) }
        func exe() -> String {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(broker.processIdentifier)/exe")) ?? ""
        }
        func upgrade(_ command: String) throws {
            try Lab.shell(
                "\(command) > \(installed).new && chmod 0755 \(installed).new && mv \(installed).new \(installed)")
        }
        // The new version: the same program with a byte appended (a different file that still runs).
        try upgrade("cat \(lab.binary("bindkeeper")) - <<< x")
        XCTAssertTrue(exe().hasSuffix(" (deleted)"), "the running broker's file was replaced: \(exe())")
        XCTAssertEqual(try lab.run([lab.binary("bindkeeper"), "reexec", "--socket", lab.socketPath]).status, 0)
        try lab.waitFor("the re-exec") { lab.allLogs.contains("re-executed: kept 1 sockets") }
        XCTAssertEqual(exe(), installed, "the installed file runs now")
        let after = try lab.client().bind([try BindRequest.parse(url: "tcp://\(BrokerLab.address):9200").get()])
        XCTAssertEqual(OwnedSocket.cookie(after[0].fd), cookie, "the same socket")
        after.forEach { close($0.fd) }

        // Not a program, and a program that does not start: both are refused before the exec.
        for broken in ["echo 'not a program'", "printf '#!/bin/sh\\nexit 3\\n'"] {
            try upgrade(broken)
            let refused = try lab.run([lab.binary("bindkeeper"), "reexec", "--socket", lab.socketPath])
            XCTAssertNotEqual(refused.status, 0, refused.output)
            XCTAssertTrue(
                refused.output.contains("10004") || refused.output.contains("Re-exec refused"), refused.output)
        }
        try lab.waitFor("the refusals logged") { lab.allLogs.components(separatedBy: "re-exec refused").count == 3 }
        XCTAssertTrue(lab.allLogs.contains("exited with 3"), lab.allLogs)
        XCTAssertTrue(broker.isRunning)
        let still = try lab.client().bind([try BindRequest.parse(url: "tcp://\(BrokerLab.address):9200").get()])
        XCTAssertEqual(OwnedSocket.cookie(still[0].fd), cookie, "still serving the same socket")
        still.forEach { close($0.fd) }
    }

    /// A new HAProxy that cannot start but takes longer than the supervisor's two seconds of
    /// start-up to say so (exit 1), as on a loaded host: replaced from the instance before it,
    /// once, not from its own template again and again. A stand-in for HAProxy plays it.
    func testAnInstanceSlowToFailIsReplacedFromTheOneBeforeIt() throws {
        let script = lab.directory.appendingPathComponent("haproxy-stand-in").path
        try """
        #!/bin/bash
        # Checks pass; a configuration naming fails-slowly exits 1 after 2.5 s; others serve.
        for argument in "$@"; do [ "$argument" = -c ] && exit 0; done
        while [ $# -gt 0 ]; do [ "$1" = -f ] && config=$2; shift; done
        if grep -q fails-slowly "$config"; then sleep 2.5; exit 1; fi
        trap 'exit 0' USR1 TERM
        while true; do sleep 0.1; done

        """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let template = lab.directory.appendingPathComponent("slow.cfg.tmpl").path
        try "# serves\n".write(toFile: template, atomically: true, encoding: .utf8)
        let pidFile = lab.directory.appendingPathComponent("slow.pid").path
        let supervisor = try lab.start(
            "supervisor-slow",
            [
                lab.binary("bindkeeper"), "haproxy", "--socket", lab.socketPath, "-f", template, "-p", pidFile, "--",
                script,
            ])
        try lab.waitFor("the first instance") { FileManager.default.fileExists(atPath: pidFile) }
        try "# fails-slowly\n".write(toFile: template, atomically: true, encoding: .utf8)
        kill(supervisor.processIdentifier, SIGHUP)
        try lab.waitFor("the failed instance's replacement", seconds: 20) { lab.allLogs.contains("replaced by pid") }
        sleep(4)  // past a second slow failure, had the replacement taken the failing template
        XCTAssertEqual(lab.allLogs.components(separatedBy: "replaced by pid").count - 1, 1, lab.allLogs)
        let rendered = try String(contentsOfFile: HAProxyOptions.renderedPath(for: template), encoding: .utf8)
        XCTAssertFalse(rendered.contains("fails-slowly"), "the replacement runs the configuration before: \(rendered)")
        XCTAssertTrue(supervisor.isRunning)
        supervisor.terminate()
        supervisor.waitUntilExit()
    }

    /// SIGHUP reloads like SIGUSR2; a new HAProxy that passes its check but dies while starting
    /// leaves the running one serving, and is replaced from the configuration before it (once:
    /// that one starts).
    func testSupervisorReloadsOnSIGHUPAndSurvivesANewHAProxyThatDies() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy") else {
            throw LabError("haproxy is not installed (scripts/setup.sh installs it)")
        }
        try lab.startBroker()
        let answer = try String(
            contentsOf: Lab.packageRoot.appendingPathComponent("examples/lab/haproxy-answer.cfg.in"), encoding: .utf8)
        let good = answer.replacingOccurrences(of: "@BIND@", with: "{{bind tcp://\(BrokerLab.address):8600}}")
        let template = lab.directory.appendingPathComponent("site.cfg.tmpl").path
        try good.write(toFile: template, atomically: true, encoding: .utf8)
        let (supervisor, pidFile) = try lab.startSupervisor("site", template: template, stopTimeoutSeconds: 2)
        func served() throws -> Bool {
            try lab.inside { try Lab.httpGet(IPAddress(BrokerLab.address)!, port: 8600, path: "/") }.contains("200")
        }
        XCTAssertTrue(try served())

        kill(supervisor.processIdentifier, SIGHUP)
        try lab.waitFor("the SIGHUP reload") { lab.allLogs.contains("reloaded: haproxy pid") }
        XCTAssertTrue(try served())

        // A second frontend on a port another socket holds: `haproxy -c` binds nothing and passes,
        // the new instance cannot bind and exits.
        let taken = try lab.inside { try LabSockets.listenTCP(on: IPAddress(BrokerLab.address)!, port: 8601) }
        defer { close(taken) }
        try (good + "frontend taken\n    bind \(BrokerLab.address):8601\n    http-request return status 200\n").write(
            toFile: template, atomically: true, encoding: .utf8)
        kill(supervisor.processIdentifier, SIGHUP)
        try lab.waitFor("the new instance to die") { lab.allLogs.contains("exited (1); replaced by pid") }
        XCTAssertTrue(try served(), "the running instance keeps serving")
        sleep(1)
        XCTAssertTrue(try served(), "and the replacement")
        XCTAssertEqual(lab.allLogs.components(separatedBy: "replaced by pid").count - 1, 1, lab.allLogs)
        XCTAssertTrue(supervisor.isRunning)
    }
}
