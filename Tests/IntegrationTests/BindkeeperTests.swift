import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import Telemetry
import XCTest

/// bindkeeper through real sockets: SCM_RIGHTS, SO_PEERCRED, sock_diag, re-exec, fd-store recovery.
final class BindkeeperTests: XCTestCase {
    var lab: BrokerLab!

    override func setUpWithError() throws {
        lab = try BrokerLab(testName)
        raiseFileLimit()
    }

    override func tearDown() {
        lab?.tearDown()
    }

    func raiseFileLimit() {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = limit.rlim_max
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    func url(_ text: String) -> BindRequest { try! BindRequest.parse(url: text).get() }

    func testMultibinderRubyClientAndFramedClientGetTheSameKernelSocket() throws {
        try lab.startBroker()
        let script = Lab.packageRoot.appendingPathComponent("Tests/IntegrationTests/Fixtures/multibinder_client.rb")
            .path
        let (status, output) = try lab.run(
            [
                "ruby", script, BrokerLab.address, "8080", BrokerLab.address, "8080", BrokerLab.address6, "8081",
                "198.18.2", "9",
            ],
            environment: ["BINDER_SOCK": lab.socketPath])
        XCTAssertEqual(status, 0, output)
        // Padded, so that a line of another shape fails an assertion rather than an index.
        let lines = output.split(separator: "\n").map { $0.split(separator: " ").map(String.init) + ["", "", "", ""] }
        XCTAssertEqual(lines.count, 4, output)
        guard lines.count == 4 else { return }
        XCTAssertEqual(lines[0][0], "ok")
        XCTAssertEqual(lines[0][2], lines[1][2], "one key, one kernel socket: \(output)")
        XCTAssertNotEqual(lines[0][1], lines[1][1], "each reply carries its own fd")
        XCTAssertEqual(lines[0][3], "true", "the socket listens")
        XCTAssertNotEqual(lines[2][2], lines[0][2])
        XCTAssertEqual(lines[3].first, "error")
        XCTAssertTrue(output.contains("not an IPv4 or IPv6 address"), output)

        // The framed client gets that same socket too, by inode and by SO_COOKIE.
        let bound = try lab.client().bind([
            url("tcp://\(BrokerLab.address):8080"), url("tcp://[\(BrokerLab.address6)]:8081"),
        ])
        defer { bound.forEach { close($0.fd) } }
        XCTAssertEqual(String(inode(bound[0].fd)), lines[0][2])
        XCTAssertEqual(String(inode(bound[1].fd)), lines[2][2])
        let again = try lab.client().bind([url("tcp://\(BrokerLab.address):8080")])
        defer { close(again[0].fd) }
        XCTAssertNotNil(OwnedSocket.cookie(bound[0].fd))
        XCTAssertEqual(OwnedSocket.cookie(again[0].fd), OwnedSocket.cookie(bound[0].fd))
        // A connection made to the broker's socket is accepted through the client's fd.
        let connection = try lab.inside { try LabSockets.connectTCP(to: IPAddress(BrokerLab.address)!, port: 8080) }
        defer { close(connection) }
        let accepted = try acceptConnection(again[0].fd)
        XCTAssertGreaterThanOrEqual(accepted, 0)
        close(accepted)
    }

    func testThousandBindsGetDistinctSocketsAndListShowsThem() throws {
        try lab.startBroker()
        let requests = (0..<1024).map { url("tcp://\(BrokerLab.address):\(20000 + $0)?backlog=128") }
        let bound = try lab.client().bind(requests)
        defer { bound.forEach { close($0.fd) } }
        XCTAssertEqual(bound.count, 1024)
        XCTAssertEqual(Set(bound.map(\.fd)).count, 1024, "distinct fds")
        XCTAssertEqual(Set(bound.map { OwnedSocket.cookie($0.fd) ?? 0 }).count, 1024, "distinct kernel sockets")
        XCTAssertTrue(bound.allSatisfy { isListening($0.fd) })
        XCTAssertEqual(bound.map(\.key), requests.map(\.key))
        // The same 1024 through multibinder's form on one connection, one request at a time.
        let raw = try RawControlClient(lab.socketPath)
        for (index, request) in requests.enumerated() {
            raw.send(Wire.multibinder.request(id: .number(Int64(index)), method: "bind", binds: [request]))
            let reply = try XCTUnwrap(raw.reply(), "reply \(index)")
            XCTAssertEqual(reply.object["result"] as? Bool, true)
            XCTAssertEqual(reply.fds.count, 1)
            XCTAssertEqual(reply.fds.first.flatMap(OwnedSocket.cookie), OwnedSocket.cookie(bound[index].fd))
            reply.fds.forEach { close($0) }
        }
        let listing = try lab.client().list()
        let sockets = listing.sockets
        XCTAssertEqual(sockets.count, 1024)
        XCTAssertEqual(sockets.first?.handedOut, 2)
        XCTAssertEqual(sockets.first?.kernelBacklog, 128, "sock_diag reports the listener")
    }

    func testConcurrentClientsAreServedWhileSlowClientsStall() throws {
        try lab.startBroker(["--stalled-seconds", "2"])
        // One client stops in the middle of a message, one floods requests and never reads a reply.
        let stalled = try RawControlClient(lab.socketPath)
        stalled.send(#"{"jsonrpc":"2.0","method":"bind","params":[{"addr"#)
        let deaf = try RawControlClient(lab.socketPath)
        let flood = Array(repeating: Wire.framed.request(id: .number(1), method: "list"), count: 20000).flatMap { $0 }
        let deafFD = deaf.fd
        let flooding = try WorkerThread { _ = SocketIO.sendAll(deafFD, flood) }

        /// Written by the 16 threads: each owns its slot; errors go through the lock.
        final class Results: @unchecked Sendable {
            private let lock = NSLock()
            private var counts = [Int](repeating: 0, count: 16)
            private var errors: [String] = []
            func add(_ count: Int, at index: Int) { lock.withLock { counts[index] += count } }
            func fail(_ error: String) { lock.withLock { errors.append(error) } }
            var snapshot: (counts: [Int], errors: [String]) { lock.withLock { (counts, errors) } }
        }
        let results = Results()
        let path = lab.socketPath
        let threads = try (0..<16).map { index in
            try WorkerThread {
                do {
                    let client = try BindkeeperClient(path: path)
                    for port in 0..<20 {
                        let bound = try client.bind([
                            try BindRequest.parse(url: "tcp://\(BrokerLab.address):\(30000 + index * 20 + port)").get()
                        ])
                        bound.forEach { close($0.fd) }
                        results.add(bound.count, at: index)
                    }
                } catch { results.fail("\(error)") }
            }
        }
        threads.forEach { $0.join() }
        XCTAssertEqual(results.snapshot.errors, [])
        XCTAssertEqual(results.snapshot.counts, [Int](repeating: 20, count: 16))
        // Both slow clients are cut off; the broker goes on.
        XCTAssertTrue(stalled.isClosedByPeer(), "a stalled message is cut off")
        XCTAssertTrue(deaf.isClosedByPeer(), "a client that never reads is cut off")
        flooding.join()
        XCTAssertEqual(try lab.client().list().sockets.count, 320)
    }

    func testBadInputGetsErrorsAndTheBrokerKeepsServing() throws {
        try lab.startBroker()
        let raw = try RawControlClient(lab.socketPath)
        raw.send("this is not json")
        XCTAssertEqual(errorCode(raw.reply()?.object), -32700)
        raw.send(#"{"jsonrpc":"2.0","method":"frobnicate","id":5}"#)
        let unknown = raw.reply()?.object
        XCTAssertEqual(errorCode(unknown), -32601)
        XCTAssertEqual(unknown?["id"] as? Int, 5)
        raw.send(#"{"jsonrpc":"2.0","method":"bind","id":6,"params":[{"address":"198.18.2.1","port":99999}]}"#)
        XCTAssertEqual(errorCode(raw.reply()?.object), -32602)
        // The same connection still works after errors.
        raw.send(#"{"jsonrpc":"2.0","method":"bind","id":7,"params":[{"address":"198.18.2.1","port":8443}]}"#)
        let good = raw.reply()
        XCTAssertEqual(good?.object["result"] as? Bool, true)
        XCTAssertEqual(good?.fds.count, 1)
        good?.fds.forEach { close($0) }
        // A bind the kernel refuses (an address not configured here) is an error with the reason, no backtrace.
        raw.send(#"{"jsonrpc":"2.0","method":"bind","id":8,"params":[{"address":"198.18.9.9","port":80}]}"#)
        let refused = raw.reply()?.object
        XCTAssertEqual(errorCode(refused), 10000)
        XCTAssertTrue(
            ((refused?["error"] as? [String: Any])?["message"] as? String ?? "").contains("freebind"),
            "\(String(describing: refused))")
        XCTAssertNil((refused?["error"] as? [String: Any])?["backtrace"])

        // A huge message: an error, then the connection ends.
        let huge = try RawControlClient(lab.socketPath)
        huge.send(
            "{\"jsonrpc\":\"2.0\",\"method\":\"bind\",\"params\":[{\"address\":\""
                + String(repeating: "9", count: 100_000))
        XCTAssertEqual(errorCode(huge.reply()?.object), -32600)
        XCTAssertTrue(huge.isClosedByPeer())
        // EOF in the middle of a message, and a framed message cut short.
        for partial in [Array(#"{"jsonrpc":"2.0","method":"bi"#.utf8), [0, 0, 0, 50, UInt8(ascii: "{")]] {
            let eof = try RawControlClient(lab.socketPath)
            eof.send(partial)
            shutdown(eof.fd, Int32(SHUT_WR))
            XCTAssertTrue(eof.isClosedByPeer())
        }
        // Options that conflict with the socket already made are refused, never served differently.
        _ = try lab.client().bind([url("tcp://[::]:8444?v6only=1")]).map { close($0.fd) }
        XCTAssertThrowsError(try lab.client().bind([url("tcp://[::]:8444?v6only=0")])) {
            XCTAssertTrue("\($0)".contains("Conflicting options"), "\($0)")
        }
        // Batches are all or none.
        XCTAssertThrowsError(
            try lab.client().bind([url("tcp://\(BrokerLab.address):8445"), url("tcp://[::]:8444?v6only=0")]))
        XCTAssertFalse(try lab.client().list().sockets.contains { $0.key == "tcp://\(BrokerLab.address):8445" })
        // Also when the failing bind is one the kernel refuses (the address is not this host's):
        // the sockets made before it are closed, not kept.
        XCTAssertThrowsError(
            try lab.client().bind([url("tcp://\(BrokerLab.address):8446"), url("tcp://198.18.99.1:8447")])
        ) { XCTAssertTrue("\($0)".contains("Cannot assign requested address"), "\($0)") }
        XCTAssertFalse(try lab.client().list().sockets.contains { $0.key == "tcp://\(BrokerLab.address):8446" })
        let free = try lab.inside { try LabSockets.listenTCP(on: IPAddress(BrokerLab.address)!, port: 8446) }
        close(free)  // nothing held the port
        // Two binds of one key with different options are refused, not merged.
        XCTAssertThrowsError(
            try lab.client().bind([
                url("tcp://\(BrokerLab.address):8448?backlog=16"), url("tcp://\(BrokerLab.address):8448?backlog=32"),
            ])
        ) { XCTAssertTrue("\($0)".contains("in one batch"), "\($0)") }
        XCTAssertFalse(try lab.client().list().sockets.contains { $0.key == "tcp://\(BrokerLab.address):8448" })
        let twice = try lab.client().bind([
            url("tcp://\(BrokerLab.address):8448?backlog=16"), url("tcp://\(BrokerLab.address):8448"),
        ])
        XCTAssertEqual(twice.count, 2, "the same socket twice, options alike")
        XCTAssertEqual(inode(twice[0].fd), inode(twice[1].fd))
        twice.forEach { close($0.fd) }
        // Still serving.
        let after = try lab.client().bind([url("tcp://\(BrokerLab.address):8443")])
        XCTAssertEqual(after.count, 1)
        after.forEach { close($0.fd) }
    }

    func testPolicyDeniesAndAllowsByPeerCredentials() throws {
        let policy = lab.directory.appendingPathComponent("policy.json")
        try #"{"control":{"mode":"0666"},"allow":[{"uid":65534,"binds":["tcp://198.18.2.1:9000-9009"]}]}"#.write(
            to: policy, atomically: true, encoding: .utf8)
        try lab.startBroker(["--config", policy.path])
        var status = stat()
        XCTAssertEqual(stat(lab.socketPath, &status), 0)
        XCTAssertEqual(status.st_mode & 0o777, 0o666)
        let asNobody = [
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", lab.binary("bindkeeper"), "exec", "--socket",
            lab.socketPath,
        ]
        let allowed = try lab.run(
            asNobody + [
                "--bind", "tcp://\(BrokerLab.address):9001", "--", "sh", "-c", "test \"$LISTEN_FDS\" = 1 && echo bound",
            ])
        XCTAssertEqual(allowed.status, 0, allowed.output)
        XCTAssertTrue(allowed.output.contains("bound"), allowed.output)
        let denied = try lab.run(asNobody + ["--bind", "tcp://\(BrokerLab.address):80", "--", "true"])
        XCTAssertNotEqual(denied.status, 0)
        XCTAssertTrue(denied.output.contains("Permission denied: uid 65534"), denied.output)
        // Re-executing the broker is for root and the broker's own user.
        let reexec = try lab.run([
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", lab.binary("bindkeeper"), "reexec",
            "--socket", lab.socketPath,
        ])
        XCTAssertNotEqual(reexec.status, 0)
        XCTAssertTrue(reexec.output.contains("may not re-execute"), reexec.output)
    }

    func testControlSocketModeKeepsOthersOut() throws {
        try lab.startBroker()
        let denied = try lab.run([
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", lab.binary("bindkeeper"), "list", "--socket",
            lab.socketPath,
        ])
        XCTAssertNotEqual(denied.status, 0)
        XCTAssertTrue(denied.output.contains("Permission denied"), denied.output)
    }

    /// systemd's and most shells' soft open-file limit is 1024: `exec` must place the sockets
    /// under it (the test process raised its own limit, so the child gets the low one explicitly).
    func testExecHandsSocketsOverUnderTheDefaultOpenFileLimit() throws {
        try lab.startBroker()
        for limit in [1024, 16] {
            let result = try lab.run([
                "sh", "-c", "ulimit -n \(limit) && exec \"$0\" \"$@\"", lab.binary("bindkeeper"), "exec", "--socket",
                lab.socketPath, "--bind", "tcp://\(BrokerLab.address):8081", "--bind",
                "udp://\(BrokerLab.address):8082",
                "--", "sh", "-c",
                "test \"$LISTEN_FDS\" = 2 && test -e /proc/self/fd/4 && ! test -e /proc/self/fd/5 && echo ok",
            ])
            XCTAssertEqual(result.status, 0, "ulimit -n \(limit): \(result.output)")
            XCTAssertTrue(result.output.contains("ok"), "ulimit -n \(limit): \(result.output)")
        }
    }

    func testBacklogIsReportedAgainstTheNamespacesSomaxconn() throws {
        try lab.run(["sysctl", "-q", "-w", "net.core.somaxconn=256"])
        try lab.startBroker()
        let bound = try lab.client().bind([
            url("tcp://\(BrokerLab.address):7000?backlog=1024"), url("tcp://\(BrokerLab.address):7001?backlog=64"),
            url("tcp://\(BrokerLab.address):7002"),
        ])
        defer { bound.forEach { close($0.fd) } }
        XCTAssertEqual(bound[0].warning, "backlog 1024 capped to 256 by net.core.somaxconn")
        XCTAssertNil(bound[1].warning)
        XCTAssertNil(bound[2].warning, "the default is meant to be capped")
        let sockets = try lab.client().list().sockets
        XCTAssertEqual(sockets.map(\.kernelBacklog), [256, 64, 256])
        XCTAssertEqual(sockets.map(\.backlog?.effective), [256, 64, 256])
        let text = try lab.run([lab.binary("bindkeeper"), "list", "--socket", lab.socketPath])
        XCTAssertTrue(text.output.contains("1024/256"), text.output)
    }

    func testUDPAndUnixSocketsWithTheirOptions() throws {
        try lab.startBroker()
        let unixPath = lab.directory.appendingPathComponent("app.sock").path
        let bound = try lab.client().bind([
            url("udp://[::]:5353?v6only=1"), url("unix:\(unixPath)?mode=0640&owner=65534&group=65534"),
            url("tcp://\(BrokerLab.vip):80?freebind=1"), url("tcp://[fe80::1%lo]:81?freebind=1"),
        ])
        defer { bound.forEach { close($0.fd) } }
        var value: Int32 = 0
        var length = socklen_t(4)
        getsockopt(bound[0].fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &value, &length)
        XCTAssertEqual(value, 1)
        getsockopt(bound[0].fd, SOL_SOCKET, SO_TYPE, &value, &length)
        XCTAssertEqual(value, Int32(SOCK_DGRAM.rawValue))
        var status = stat()
        XCTAssertEqual(stat(unixPath, &status), 0)
        XCTAssertEqual(status.st_mode & 0o777, 0o640)
        XCTAssertEqual(status.st_uid, 65534)
        XCTAssertTrue(isListening(bound[1].fd))
        let connected = try UnixAddress.connect(unixPath)
        close(connected)
        XCTAssertTrue(isListening(bound[2].fd))
        // The scope names an interface of the broker's namespace: its index is in the bound address.
        var address = sockaddr_in6()
        var addressLength = socklen_t(MemoryLayout<sockaddr_in6>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(bound[3].fd, $0, &addressLength) }
        }
        XCTAssertEqual(address.sin6_scope_id, try lab.inside { if_nametoindex("lo") })
        XCTAssertNotEqual(address.sin6_scope_id, 0)
        XCTAssertThrowsError(try lab.client().bind([url("tcp://[fe80::1%nosuchif]:81?freebind=1")])) {
            XCTAssertTrue("\($0)".contains("no such interface"), "\($0)")
        }
        // A path some other process listens on is not taken over.
        let otherPath = lab.directory.appendingPathComponent("other.sock").path
        let other = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try UnixAddress.bind(other, otherPath)
        listen(other, 1)
        defer { close(other) }
        XCTAssertThrowsError(try lab.client().bind([url("unix:\(otherPath)")])) {
            XCTAssertTrue("\($0)".contains("another process"), "\($0)")
        }
    }

    func testReexecKeepsSocketsControlSocketAndConnectedClients() throws {
        let broker = try lab.startBroker()
        let raw = try RawControlClient(lab.socketPath)
        raw.send(#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"198.18.2.1","port":8500}]}"#)
        let first = try XCTUnwrap(raw.reply())
        let cookie = OwnedSocket.cookie(try XCTUnwrap(first.fds.first, "\(first.object)"))
        first.fds.forEach { close($0) }
        // A connection waits in the accept queue across both re-execs.
        let waiting = try lab.inside { try LabSockets.connectTCP(to: IPAddress(BrokerLab.address)!, port: 8500) }
        defer { close(waiting) }

        let reexec = try lab.run([lab.binary("bindkeeper"), "reexec", "--socket", lab.socketPath])
        XCTAssertEqual(reexec.status, 0, reexec.output)
        kill(broker.processIdentifier, SIGUSR1)
        try lab.waitFor("two re-execs") { lab.allLogs.components(separatedBy: "re-executed: kept").count == 3 }
        XCTAssertTrue(broker.isRunning, "the same process, re-executed")

        // The client's connection survived; so did the socket, and a new client gets it too.
        raw.send(#"{"jsonrpc":"2.0","method":"bind","id":2,"params":[{"address":"198.18.2.1","port":8500}]}"#)
        let second = try XCTUnwrap(raw.reply(), lab.allLogs)
        XCTAssertEqual(OwnedSocket.cookie(try XCTUnwrap(second.fds.first, "\(second.object)")), cookie)
        let fresh = try lab.client().bind([url("tcp://\(BrokerLab.address):8500")])
        XCTAssertEqual(OwnedSocket.cookie(fresh[0].fd), cookie)
        let accepted = try acceptConnection(fresh[0].fd)
        XCTAssertGreaterThanOrEqual(accepted, 0, "the connection made before the re-execs is still queued")
        close(accepted)
        (second.fds + fresh.map(\.fd)).forEach { close($0) }
        XCTAssertFalse(lab.allLogs.contains("Address already in use"))
    }

    /// A burst of requests the broker is still answering, a turn at a time, when it re-executes (a
    /// re-exec asked for early in the burst): the new image answers the rest, none is lost. The
    /// burst (16 KB) arrives in one read, so nothing left in the socket would wake the new image.
    func testABurstOfRequestsIsAnsweredAcrossAReexec() throws {
        try lab.startBroker()
        let raw = try RawControlClient(lab.socketPath)
        let list = Wire.framed.request(id: .number(1), method: "list")
        raw.send(
            Array(repeating: list, count: 100).flatMap { $0 } + Wire.framed.request(id: .number(2), method: "reexec")
                + Array(repeating: list, count: 300).flatMap { $0 })
        let count = 401
        var replies = 0
        var buffered: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while replies < count {
            let received = recv(raw.fd, &chunk, chunk.count, 0)
            guard received > 0 else { break }  // the client's 5 s receive timeout
            buffered += chunk[0..<received]
            while buffered.count >= 4 {
                let length = buffered[0..<4].reduce(0) { $0 << 8 | Int($1) }
                guard buffered.count >= 4 + length else { break }
                buffered.removeFirst(4 + length)
                replies += 1
            }
        }
        XCTAssertEqual(replies, count, lab.allLogs)
        try lab.waitFor("the re-exec") { lab.allLogs.contains("re-executed: kept") }
    }

    /// systemd's fd store, played by the test: the broker stores each socket with FDSTORE=1; after
    /// kill -9 a new broker gets them back at fd 3.. with LISTEN_FDS/LISTEN_FDNAMES.
    func testSocketsSurviveKillDashNineThroughTheFDStore() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let broker = try lab.startBroker(environment: ["NOTIFY_SOCKET": manager.path])
        try manager.collect { $0.isReady }
        let requests = [
            url("tcp://\(BrokerLab.address):8600?backlog=100"), url("udp://\(BrokerLab.address):8600"),
            url("unix:\(lab.directory.path)/app.sock"),
        ]
        let before = try lab.client().bind(requests)
        try manager.collect { $0.store.count == 4 }
        XCTAssertEqual(manager.store.first?.name, "control")

        // A stale entry that is no bindkeeper socket: the next broker closes it and takes it out.
        let stale = try lab.inside { try LabSockets.bindUDP(IPAddress(BrokerLab.address)!, port: 8609) }
        manager.storeAsTheService(stale, name: "not-a-socket-url")
        close(stale)
        kill(broker.processIdentifier, SIGKILL)
        broker.waitUntilExit()
        // While no broker runs, the kernel socket lives on in the store: connections still queue.
        let queued = try lab.inside { try LabSockets.connectTCP(to: IPAddress(BrokerLab.address)!, port: 8600) }
        defer { close(queued) }
        // ...and so do clients of the control socket: this request is answered by the next broker.
        let early = try RawControlClient(lab.socketPath)
        early.send(Wire.multibinder.request(id: .number(1), method: "bind", binds: [requests[0]]))

        let restartLog = lab.directory.appendingPathComponent("restarted-broker.log").path
        let pid = try Spawn.run(
            "/usr/bin/env",
            [
                "ip", "netns", "exec", lab.namespace, "/bin/sh", "-c",
                "LISTEN_PID=$$ exec \"$0\" \"$@\" 2>\(restartLog)",
                lab.binary("bindkeeper"), "serve", "--socket", lab.socketPath,
            ],
            environment: ProcessInfo.processInfo.environment.merging(manager.listenEnvironment) { $1 },
            placing: manager.placements)
        defer { kill(pid, SIGTERM); _ = Spawn.wait(pid) }
        try lab.waitForBroker()
        let answered = try XCTUnwrap(early.reply(), "the request made while no broker ran")
        XCTAssertEqual(answered.fds.first.flatMap(OwnedSocket.cookie), OwnedSocket.cookie(before[0].fd))
        answered.fds.forEach { close($0) }
        let after = try lab.client().bind(requests)
        XCTAssertEqual(
            after.map { OwnedSocket.cookie($0.fd) }, before.map { OwnedSocket.cookie($0.fd) }, "the same kernel sockets"
        )
        XCTAssertEqual(try lab.client().list().sockets.count, 3)
        try manager.collect { !$0.store.contains { $0.name == "not-a-socket-url" } }
        let restarted = (try? String(contentsOfFile: restartLog, encoding: .utf8)) ?? ""
        XCTAssertTrue(
            restarted.contains("recovered 3 sockets from the service manager and the control socket"), restarted)
        let accepted = try acceptConnection(after[0].fd)
        XCTAssertGreaterThanOrEqual(accepted, 0, "the connection made while the broker was dead is served")
        close(accepted)
        (before + after).forEach { close($0.fd) }
        // A released socket leaves the store too: a later crash does not bring it back.
        XCTAssertEqual(try lab.client().release([requests[1]]), [requests[1].key])
        try manager.collect { $0.store.count == 3 }
        XCTAssertFalse(manager.store.contains { $0.name.contains("udp") }, "\(manager.store.map(\.name))")
    }

    func testExecPassesSocketsBySystemdConvention() throws {
        try lab.startBroker()
        // A Python server that knows only sd_listen_fds: it takes fd 3 and answers one connection.
        let server = """
            import os, socket
            assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID"
            print(os.environ["LISTEN_FDS"], os.environ["LISTEN_FDNAMES"], flush=True)
            listener = socket.socket(fileno=3)
            connection, _ = listener.accept()
            connection.sendall(b"served by " + os.environ["LISTEN_FDNAMES"].split(":")[0].encode())
            connection.close()
            """
        let process = try lab.start(
            "app",
            [
                lab.binary("bindkeeper"), "exec", "--socket", lab.socketPath,
                "--bind", "web=tcp://\(BrokerLab.address):8700", "--bind", "udp://[::]:8701", "--", "python3", "-c",
                server,
            ])
        try lab.waitFor("the app's first line") { lab.allLogs.contains("web:udp-__-8701") }
        let fd = try lab.inside { try LabSockets.connectTCP(to: IPAddress(BrokerLab.address)!, port: 8700) }
        defer { close(fd) }
        XCTAssertEqual(LabSockets.receiveExactly(fd, 13).map { String(decoding: $0, as: UTF8.self) }, "served by web")
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, lab.allLogs)
        XCTAssertTrue(lab.allLogs.contains("2 web:udp-__-8701"), lab.allLogs)
    }

    func testMetricsOverHTTP() throws {
        try lab.startBroker(["--metrics", "\(BrokerLab.address):9523"])
        _ = try lab.client().bind([url("tcp://\(BrokerLab.address):8800")]).map { close($0.fd) }
        _ = try? lab.client().bind([url("tcp://198.18.9.9:1")])
        let raw = try RawControlClient(lab.socketPath)
        raw.send("{]")
        _ = raw.reply()
        let cutShort = try RawControlClient(lab.socketPath)
        cutShort.send(#"{"jsonrpc":"2.0","method":"bi"#)
        shutdown(cutShort.fd, Int32(SHUT_WR))
        XCTAssertTrue(cutShort.isClosedByPeer())
        var body = ""
        try lab.waitFor("the EOF to be counted") {
            body = try lab.inside { try Lab.httpGet(IPAddress(BrokerLab.address)!, port: 9523) }
            return body.contains("bindkeeper_incomplete_at_eof_total 1\n")
        }
        XCTAssertTrue(body.contains("bindkeeper_sockets 1\n"), body)
        XCTAssertTrue(
            body.contains("# HELP bindkeeper_sockets Sockets the broker owns.\n# TYPE bindkeeper_sockets gauge\n"), body
        )
        XCTAssertEqual(
            body.components(separatedBy: "# HELP ").count, body.components(separatedBy: "# TYPE ").count,
            "a HELP per family")
        XCTAssertTrue(body.contains("bindkeeper_bind_errors_total 1\n"), body)
        XCTAssertTrue(body.contains("bindkeeper_bad_requests_total 1\n"), body)
        XCTAssertTrue(body.contains("bindkeeper_socket_handed_out_total{key=\"tcp://198.18.2.1:8800\"} 1"), body)
    }

    /// The kernel's listen drops per socket: two listeners nobody accepts from, one overloaded.
    /// Its count in the metrics and in `list` is exactly the namespace's ListenDrops increase;
    /// the other's stays 0.
    func testListenDropsAreCountedPerSocketAndAddUpToTheNamespacesCount() throws {
        try lab.startBroker(["--metrics", "\(BrokerLab.address):9525"])
        let (busy, idle) = ("tcp://\(BrokerLab.address):8810", "tcp://\(BrokerLab.address):8811")
        try lab.client().bind([url(busy + "?backlog=2"), url(idle + "?backlog=2")]).forEach { close($0.fd) }
        func listenDrops() throws -> UInt64 {
            let netstat = try Lab.shell("ip netns exec \(lab.namespace) cat /proc/net/netstat")
            return try XCTUnwrap(ProcFile.counter("ListenDrops", section: "TcpExt", in: netstat))
        }
        func metric(_ key: String) throws -> UInt64? {
            let body = try lab.inside { try Lab.httpGet(IPAddress(BrokerLab.address)!, port: 9525) }
            let prefix = "bindkeeper_socket_listen_drops_total{key=\"\(key)\"} "
            return body.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap {
                UInt64($0.dropFirst(prefix.count))
            }
        }
        try lab.waitFor("both sockets in the metrics") { try metric(busy) == 0 && metric(idle) == 0 }
        let before = try listenDrops()
        // Nobody accepts: the accept queue holds backlog + 1, every further SYN (and its
        // retransmissions) is dropped at the listener.
        let clients: [Int32] = try lab.inside {
            (0..<12).map { _ in
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                _ = SocketAddress(IPAddress(BrokerLab.address)!, port: 8810).withSockaddr { connect(fd, $0, $1) }
                return fd
            }
        }
        try lab.waitFor("SYNs dropped at the busy listener") { try listenDrops() > before }
        usleep(1_500_000)  // a retransmission round too (1 s): more than one drop per client
        clients.forEach { close($0) }
        var dropped: UInt64 = 0
        try lab.waitFor("the busy socket's count to equal the namespace's increase") {
            dropped = try listenDrops() - before
            return try metric(busy) == dropped
        }
        XCTAssertGreaterThanOrEqual(dropped, 9, "at least one drop for each of the 9 clients the queue could not take")
        XCTAssertEqual(try metric(idle), 0, "the other listener dropped nothing")
        let listed = try lab.client().list().sockets
        XCTAssertEqual(listed.first { $0.key == busy }?.listenDrops.map(UInt64.init), dropped)
        XCTAssertEqual(listed.first { $0.key == idle }?.listenDrops, 0)
        XCTAssertEqual(listed.first { $0.key == busy }?.acceptQueue, 3, "backlog 2 holds 3")
    }
}
