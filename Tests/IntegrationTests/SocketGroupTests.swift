import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import XCTest

/// Socket groups (`shards=N`) through the kernel: the reuseport program steers each SYN to the
/// member of the CPU that received it; a member gone leaves the choice to the kernel.
final class SocketGroupTests: XCTestCase {
    var lab: BrokerLab!

    override func setUpWithError() throws {
        guard sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2 else { throw XCTSkip("needs two CPUs") }
        lab = try BrokerLab(testName)
    }

    override func tearDown() { lab?.tearDown() }

    /// Connects from `cpu` (over loopback, whose receive runs on the sender's CPU) and tells which of
    /// `listeners` holds the connection in its accept queue; the connection is accepted and closed.
    func acceptingMember(from cpu: Int, port: UInt16, _ listeners: [Int32]) throws -> Int? {
        let client = try lab.inside {
            try CPUAffinity.onCPU(cpu) { try LabSockets.connectTCP(to: .v4(IPv4Address(BrokerLab.vip)!), port: port) }
        }
        defer { close(client) }
        for _ in 0..<100 {
            for (index, listener) in listeners.enumerated() {
                let accepted = accept(listener, nil, nil)
                if accepted >= 0 {
                    close(accepted)
                    return index
                }
            }
            usleep(1000)
        }
        return nil
    }

    func testAGroupSteersEachSYNToTheMemberOfItsCPUAndFallsBackWhenOneIsGone() throws {
        try lab.startBroker()
        let request = try BindRequest.parse(url: "tcp://\(BrokerLab.vip):8600?shards=2").get()
        let members = try lab.client().bind([request])
        XCTAssertEqual(members.map(\.key), ["tcp://\(BrokerLab.vip):8600#0", "tcp://\(BrokerLab.vip):8600#1"])
        let fds = members.map(\.fd)
        for fd in fds { XCTAssertEqual(fcntl(fd, F_SETFL, O_NONBLOCK), 0) }
        let listed = try lab.client().list().sockets.filter { $0.key.hasPrefix("tcp://\(BrokerLab.vip):8600") }
        XCTAssertEqual(listed.map(\.url).sorted(), members.map(\.url).sorted(), "list shows the members")
        XCTAssertEqual(Set(listed.map(\.cookie)).count, 2, "two kernel sockets")
        // The kernel keeps the program with the group: a re-executed broker holds the same members
        // and steers without loading anything again.
        _ = try lab.client().reexec()
        try lab.waitFor("the re-executed broker") { (try? lab.client().list().pid) != nil }
        let kept = try lab.client().bind([request])
        XCTAssertEqual(kept.map { OwnedSocket.cookie($0.fd) }, fds.map { OwnedSocket.cookie($0) }, "the same members")
        kept.forEach { close($0.fd) }

        var landed: [[Int?]] = [[], []]
        for round in 0..<100 {
            let cpu = round % 2
            landed[cpu].append(try acceptingMember(from: cpu, port: 8600, fds))
        }
        XCTAssertEqual(landed[0], Array(repeating: 0, count: 50), "SYNs received on CPU 0 go to member 0")
        XCTAssertEqual(landed[1], Array(repeating: 1, count: 50), "SYNs received on CPU 1 go to member 1")

        // The group ends only whole; once the broker let go, the last holder of member 1 closes it:
        // CPU 1's slot is empty and the kernel's hash picks among what is left.
        XCTAssertEqual(try lab.client().release([request]).sorted(), members.map(\.key).sorted())
        close(fds[1])
        defer { close(fds[0]) }
        for cpu in [1, 0, 1] {
            XCTAssertEqual(try acceptingMember(from: cpu, port: 8600, [fds[0]]), 0, "the member left serves CPU \(cpu)")
        }
    }

    /// A candidate generation beside a group: nothing until it is steered to, then its share of
    /// new connections by the flow's hash; once new connections go back and the last holder of its
    /// sockets closes them, what was queued on them moves to the served generation, none reset.
    func testACandidateGenerationTakesItsShareAndItsQueueMovesBack() throws {
        // Without CAP_SYS_ADMIN, as under its unit: the group's socket array only by the descriptor
        // the broker holds, across the re-exec below too.
        try lab.startBroker(asTheUnit: true)
        func url(_ text: String) -> BindRequest { try! BindRequest.parse(url: text).get() }
        let served = url("tcp://\(BrokerLab.vip):8610?shards=2"), candidate = url("\(served.url)&generation=1")
        let first = try lab.client().bind([served]).map(\.fd)
        defer { first.forEach { close($0) } }
        var second = try lab.client().bind([candidate]).map(\.fd)
        XCTAssertEqual(try lab.client().list().sockets.filter { $0.key.contains(":8610~g1#") }.count, 2)
        let all = first + second
        for fd in all { XCTAssertEqual(fcntl(fd, F_SETFL, O_NONBLOCK), 0) }
        func candidateShare(_ count: Int) throws -> Double {
            let landed = try (0..<count).map { try acceptingMember(from: $0 % 2, port: 8610, all) }
            XCTAssertFalse(landed.contains(nil), "every connection was queued on a member")
            return Double(landed.filter { ($0 ?? 0) >= 2 }.count) / Double(count)
        }
        XCTAssertEqual(try candidateShare(40), 0, "a generation made beside another takes nothing")
        // A re-executed broker finds the group's socket array again, by its members.
        _ = try lab.client().reexec()
        try lab.waitFor("the re-executed broker") { (try? lab.client().list().pid) != nil }
        let steered = try lab.client().steer(served: served, candidate: candidate, percent: 30)
        XCTAssertEqual(steered.count, 4)
        let share = try candidateShare(300)
        print("socket groups: a 30 % candidate took \(share) of 300 connections")
        XCTAssertTrue((0.18...0.42).contains(share), "the candidate's share: \(share)")

        // Every new connection to the candidate, which accepts none: they wait in its queues.
        _ = try lab.client().steer(served: served, candidate: candidate, percent: 100)
        let clients = try (0..<6).map { index in
            try lab.inside {
                try CPUAffinity.onCPU(index % 2) {
                    try LabSockets.connectTCP(to: .v4(IPv4Address(BrokerLab.vip)!), port: 8610)
                }
            }
        }
        defer { clients.forEach { close($0) } }
        // Roll back: new connections to the served generation, the candidate's sockets let go of.
        _ = try lab.client().steer(served: served)
        XCTAssertEqual(try lab.client().release([candidate]).count, 2)
        second.forEach { close($0) }
        second = []
        var moved: [Int32] = []
        defer { moved.forEach { close($0) } }
        for _ in 0..<200 where moved.count < clients.count {
            for fd in first {
                let accepted = accept(fd, nil, nil)
                if accepted >= 0 { moved.append(accepted) }
            }
            usleep(5000)
        }
        // Linux before 5.14 has no migration: there they are reset, as the program's comment says.
        guard try XCTUnwrap(KernelRelease.version(of: KernelRelease.current)) >= (5, 14) else {
            XCTAssertEqual(moved.count, 0, "no migration before 5.14")
            return
        }
        XCTAssertEqual(moved.count, clients.count, "the candidate's queued connections moved to the served generation")
        for (index, client) in clients.enumerated() {
            XCTAssertEqual(send(client, "x", 1, Int32(MSG_NOSIGNAL)), 1, "client \(index) is not reset")
        }
        var received = 0
        for connection in moved {
            SocketOptions.setTimeouts(connection, seconds: 2)
            var byte: UInt8 = 0
            if recv(connection, &byte, 1, 0) == 1, byte == UInt8(ascii: "x") { received += 1 }
        }
        XCTAssertEqual(received, clients.count, "each moved connection carries its client's bytes")
    }

    /// A group's owner is no one else's: drawn again while it falls in a range delegated to
    /// user namespaces (here everything from 0xC0000000 up) or is another group's.
    func testAGroupsOwnerIsNoAccountsNoDelegatedRangesAndNoOtherGroups() throws {
        let subuid = lab.directory.appendingPathComponent("subuid").path
        try "podman:3221225472:1073741822\n".write(toFile: subuid, atomically: true, encoding: .utf8)
        let taken: Set<uid_t> = [0x8000_0001]
        for _ in 0..<200 {
            let owner = try SocketGroupSteering.freshOwner(taken: taken, delegations: [subuid])
            XCTAssertTrue((0x8000_0000..<0xC000_0000).contains(owner), "\(owner)")
            XCTAssertFalse(taken.contains(owner))
        }
    }

    /// A group is made, handed out and released whole, and nothing else binds its address and port.
    func testAGroupIsOneUnit() throws {
        try lab.startBroker()
        func url(_ text: String) -> BindRequest { try! BindRequest.parse(url: text).get() }
        let group = try lab.client().bind([url("tcp://\(BrokerLab.vip):8601?shards=3&backlog=64")])
        defer { group.forEach { close($0.fd) } }
        XCTAssertEqual(group.count, 3)
        let again = try lab.client().bind([url("tcp://\(BrokerLab.vip):8601?shards=3")])
        XCTAssertEqual(
            again.map { OwnedSocket.cookie($0.fd) }, group.map { OwnedSocket.cookie($0.fd) }, "the same group")
        again.forEach { close($0.fd) }
        for refused in [
            "tcp://\(BrokerLab.vip):8601", "tcp://\(BrokerLab.vip):8601?shards=2",
            "tcp://\(BrokerLab.vip):8601?shards=3&member=1",
        ] {
            XCTAssertThrowsError(try lab.client().bind([url(refused)]), refused) { error in
                XCTAssertTrue("\(error)".contains("Conflicting"), "\(refused): \(error)")
            }
        }
        XCTAssertThrowsError(try lab.client().release([url("tcp://\(BrokerLab.vip):8601?shards=3&member=1")]))
        // A plain socket's address and port takes no group either, and a failed group leaves nothing.
        let plain = try lab.client().bind([url("tcp://\(BrokerLab.vip):8602")])
        defer { plain.forEach { close($0.fd) } }
        XCTAssertThrowsError(try lab.client().bind([url("tcp://\(BrokerLab.vip):8602?shards=2")]))
        XCTAssertEqual(try lab.client().list().sockets.filter { $0.key.contains(":8602") }.count, 1)
        // `auto` names the group that exists, whatever the CPUs online now.
        let auto = try lab.client().bind([url("tcp://\(BrokerLab.vip):8601?shards=auto")])
        XCTAssertEqual(auto.map { OwnedSocket.cookie($0.fd) }, group.map { OwnedSocket.cookie($0.fd) })
        auto.forEach { close($0.fd) }
        XCTAssertEqual(try lab.client().release([url("tcp://\(BrokerLab.vip):8601")]).count, 3, "released whole")
        // `bindkeeper exec` names each member by its group's name, in order.
        let exec = try lab.run([
            lab.binary("bindkeeper"), "exec", "--socket", lab.socketPath, "--bind",
            "web=tcp://\(BrokerLab.vip):8603?shards=2", "--bind", "admin=tcp://\(BrokerLab.vip):8604", "--", "/bin/sh",
            "-c", "echo $LISTEN_FDS $LISTEN_FDNAMES",
        ])
        XCTAssertEqual(exec.output.trimmingCharacters(in: .whitespacesAndNewlines), "3 web:web:admin", exec.output)
    }
}

/// Socket groups under real HAProxy: each member for one thread, pinned to one CPU.
extension HAProxyReloadTests {
    /// Two threads, thread K on CPU K-1, answering each request with the number of the thread
    /// that serves it (0 or 1).
    func writeThreadTemplate(_ name: String, bind: String) throws -> String {
        let path = lab.directory.appendingPathComponent("\(name).cfg.tmpl").path
        try """
        global
            maxconn 4000
            nbthread 2
            cpu-map 1/1 0
            cpu-map 1/2 1
        defaults
            mode http
            timeout connect 2s
            timeout client 5s
            timeout server 5s
        frontend www
            bind \(bind)
            http-request return status 200 content-type text/plain lf-string "%[thread]"

        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The share of `count` requests sent from each CPU that the thread on that CPU answered, while
    /// a load from either CPU keeps both threads busy (idle, the thread woken on the SYN's CPU tends
    /// to take it even from a shared socket).
    func locality(port: UInt16, count: Int) throws -> Double {
        let busy = try load(port: Int(port), seconds: 30, concurrency: 16)
        defer {
            busy.terminate()
            busy.waitUntilExit()
        }
        usleep(300_000)
        var local = 0
        for index in 0..<count {
            let cpu = index % 2
            let reply = try lab.inside {
                try CPUAffinity.onCPU(cpu) {
                    try Lab.httpGet(.v4(IPv4Address(BrokerLab.vip)!), port: port, path: "/")
                }
            }
            if reply.hasSuffix("\r\n\r\n\(cpu)") { local += 1 }
        }
        return Double(local) / Double(count)
    }

    /// With `shards=2` every connection is accepted by the thread on the CPU that received its SYN;
    /// with one socket for both threads, about half are. 50 reloads under load fail nothing.
    func testAGroupKeepsEachConnectionOnTheThreadOfItsCPUAcrossReloads() throws {
        guard sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2 else { throw XCTSkip("needs two CPUs") }
        let group = try writeThreadTemplate("group", bind: "{{bind tcp://\(BrokerLab.vip):84?shards=2&backlog=4096}}")
        let single = try writeThreadTemplate("single", bind: "{{bind tcp://\(BrokerLab.vip):85?backlog=4096}}")
        let supervisor = try lab.startSupervisor("group", template: group)
        _ = try lab.startSupervisor("single", template: single)
        try lab.waitUntilListening(port: 84)
        try lab.waitUntilListening(port: 85)
        let rendered = try String(contentsOfFile: HAProxyOptions.renderedPath(for: group), encoding: .utf8)
        XCTAssertEqual(rendered.components(separatedBy: " thread ").count - 1, 2, rendered)

        let grouped = try locality(port: 84, count: 400)
        let shared = try locality(port: 85, count: 400)
        print("socket groups: answered by the thread of the SYN's CPU: shards=2 \(grouped), one socket \(shared)")
        XCTAssertGreaterThanOrEqual(grouped, 0.99, "shards=2")

        let load = try load(port: 84, seconds: 14, concurrency: 64)
        usleep(500_000)
        try reload("group", supervisor.process, count: 50, intervalMs: 150)
        let counts = try counts(load)
        print("socket groups: 50 reloads under load: \(counts)")
        XCTAssertEqual(reloads("group"), 50)
        XCTAssertGreaterThan(counts["attempts"] ?? 0, 10_000, "the load ran")
        XCTAssertEqual(counts["failed"], 0, "no connection fails across reloads of a group: \(counts)")
        XCTAssertGreaterThanOrEqual(try locality(port: 84, count: 100), 0.99, "after the reloads")
    }
}

/// A group's address and port belong to the broker's uid: nobody else joins it or splits it.
extension BindkeeperTrustTests {
    func testNoOneOutsideAGrantJoinsStealsFromOrSplitsAGroup() throws {
        try lab.startBroker(["--config", try writePolicy([range])])
        let group = url("tcp://\(BrokerLab.vip):8700?shards=2&freebind=1")
        let members = try lab.client().bind([group])
        defer { members.forEach { close($0.fd) } }
        // A local user's own SO_REUSEPORT socket on the group's address and port: the kernel lets
        // only the group's uid join, so it cannot take a share of the SYNs.
        let join = """
            import socket, sys
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.SOL_IP, 15, 1)
            try:
                s.bind((sys.argv[1], 8700)); s.listen(); print("joined")
            except OSError as e:
                print("refused", e.errno)
            """
        let attempt = try lab.run(
            [
                "setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", "/usr/bin/python3", "-c", join,
                BrokerLab.vip,
            ])
        XCTAssertEqual(attempt.output.trimmingCharacters(in: .whitespacesAndNewlines), "refused \(EADDRINUSE)")

        let grantee = { try self.granteeRequest($0, $1) }
        // Outside the grant (8700 is not in 8000-8999): no member, no group, no release.
        for (method, binds) in [
            ("bind", [group]), ("bind", [url("tcp://\(BrokerLab.vip):8700")]), ("release", [group]),
            ("bind", [url("tcp://\(BrokerLab.vip):8700?shards=2&member=1")]),
        ] {
            let answer = try grantee(method, binds)
            XCTAssertNotNil(answer.reply["error"], "\(method) \(binds): \(answer.reply)")
            XCTAssertEqual(answer.fds, [], "\(method) \(binds)")
        }
        // Inside it: the grantee's own group, whole; one member alone, or a resize, is refused.
        let own = url("tcp://\(BrokerLab.address):8100?shards=2")
        let granted = try grantee("bind", [own])
        XCTAssertEqual(granted.fds.count, 2, "\(granted.reply)")
        granted.fds.forEach { close($0) }
        for binds in [
            [url("tcp://\(BrokerLab.address):8100?shards=2&member=0")],
            [url("tcp://\(BrokerLab.address):8100?shards=3")],
        ] {
            let answer = try grantee("bind", binds)
            XCTAssertNotNil(answer.reply["error"], "\(binds): \(answer.reply)")
            XCTAssertEqual(answer.fds, [])
        }
        XCTAssertEqual(
            try lab.client().list().sockets.filter { $0.key.contains(":8700") }.count, 2, "root's group is whole")
        try overlappingGroupsCannotShadowOthers()
    }

    /// Members are owned by a uid of their group's own, so no other SO_REUSEPORT socket shares or
    /// shadows their address: not a grantee's group on the specific address under root's wildcard
    /// group, not a root process's own SO_REUSEPORT listener, not a group made again after a release
    /// while a holder keeps the old members; and multibinder's clients get no group.
    func overlappingGroupsCannotShadowOthers() throws {
        let grantee = { try self.granteeRequest($0, $1) }
        let wildcard = try lab.client().bind([url("tcp://0.0.0.0:8200?shards=2")])
        defer { wildcard.forEach { close($0.fd) } }
        let shadow = try grantee("bind", [url("tcp://\(BrokerLab.address):8200?shards=1")])
        XCTAssertNotNil(shadow.reply["error"], "a group under root's wildcard group: \(shadow.reply)")
        XCTAssertEqual(shadow.fds, [])

        let listener = """
            import socket, sys, time
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((sys.argv[1], 8201)); s.listen(); print("listening", flush=True); time.sleep(30)
            """
        let outside = try lab.start("reuseport", ["/usr/bin/python3", "-c", listener, BrokerLab.address])
        defer { outside.terminate() }
        try lab.waitUntilListening(port: 8201)
        let joined = try grantee("bind", [url("tcp://\(BrokerLab.address):8201?shards=2")])
        XCTAssertNotNil(joined.reply["error"], "a group joining root's own listener: \(joined.reply)")
        XCTAssertEqual(joined.fds, [])

        let first = try grantee("bind", [url("tcp://\(BrokerLab.address):8202?shards=2")])
        defer { first.fds.forEach { close($0) } }
        XCTAssertEqual(first.fds.count, 2)
        XCTAssertNotNil(try grantee("release", [url("tcp://\(BrokerLab.address):8202?shards=2")]).reply["result"])
        let again = try grantee("bind", [url("tcp://\(BrokerLab.address):8202?shards=2")])
        XCTAssertNotNil(again.reply["error"], "a new group over members still held: \(again.reply)")
        XCTAssertEqual(again.fds, [])

        let multibinder = try granteeConnection()
        defer { close(multibinder) }
        let json =
            #"{"jsonrpc":"2.0","id":1,"method":"bind","params":"#
            + #"[{"address":"\#(BrokerLab.address)","port":8203,"shards":2}]}"#
        XCTAssertTrue(SocketIO.sendAll(multibinder, Array(json.utf8)))
        let (bytes, fds) = try FDPassing.receive(multibinder)
        XCTAssertEqual(fds, [])
        XCTAssertTrue(String(decoding: bytes, as: UTF8.self).contains("error"), String(decoding: bytes, as: UTF8.self))
    }
}
