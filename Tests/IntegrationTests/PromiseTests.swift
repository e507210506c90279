import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import Telemetry
import XCTest

/// What the README promises of second-chance and no other test drives: each flag and path below
/// through the real kernel in the lab.
final class PromiseTests: XCTestCase {
    var lab: Lab!

    override func setUpWithError() throws {
        lab = try Lab(prefix: "pspr")
        try lab.startProxies()
    }

    override func tearDown() { lab?.tearDown() }

    func ack(_ port: UInt16, from source: IPv4Address = Lab.client, flags: TCPFlags = .ack) -> [UInt8] {
        PacketBuilder.tcp(
            source: .v4(source), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 80, flags: flags,
            sequence: 7, acknowledgement: 9)
    }

    /// A connection to the VIP on P1 from `client`, an address P1 holds only until the connection is
    /// made: then, as for a real client, the address is not P1's. Returns (client fd, server fd, port).
    func connectionOnP1(from client: IPv4Address, keepAddress: Bool = false) throws -> (
        client: Int32, server: Int32, port: UInt16
    ) {
        try Lab.shell("ip -n \(lab.namespace("p1")) addr add \(client)/32 dev lo")
        let listener = try lab.inside("p1") { try LabSockets.listenTCP(on: .v4(Lab.vip), port: 8081) }
        defer { close(listener) }
        let fd = try lab.inside("p1") { try LabSockets.connectTCP(to: .v4(Lab.vip), port: 8081, from: .v4(client)) }
        let server = try acceptConnection(listener)
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        if !keepAddress { try Lab.shell("ip -n \(lab.namespace("p1")) addr del \(client)/32 dev lo") }
        return (fd, server, UInt16(bigEndian: local.sin_port))
    }

    func flowPacket(_ client: IPv4Address, _ port: UInt16, _ flags: TCPFlags) -> [UInt8] {
        PacketBuilder.tcp(
            source: .v4(client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 8081, flags: flags,
            sequence: 1, acknowledgement: 1)
    }

    func testStatsCommandPrintsTheDaemonsCounters() throws {
        try sendGUE(lab, sourcePort: 30001, to: Lab.p1, inner: ack(40001, flags: .syn), hops: [])
        try lab.waitFor("the SYN") { try lab.stats("p1")["accepted_syn"] == 1 }
        let (status, output) = try lab.runToEnd("p1", "second-chance", ["stats", "--control", lab.controlPath("p1")])
        XCTAssertEqual(status, 0, output)
        // Both paths' counts, then each one's share: the tc program takes the SYN where it runs.
        let shares =
            Lab.fastPathOn
            ? ["queue_0_packets: 0", "fast_path_accepted_syn: 1", "fast_path_total_packets: 1"]
            : ["queue_0_packets: 1", "fast_path: off (--fast-path off)"]
        for line in ["total_packets: 1", "accepted_syn: 1", "dropped_untrusted_source: 0", "queue_0_kernel_dropped: 0"]
            + shares
        {
            XCTAssertTrue(output.contains(line + "\n"), "\(line) in \(output)")
        }
    }

    func testDoctorChecksTheGUEPortAndANamespaceByName() throws {
        let (otherPort, report) = try lab.runToEnd("p1", "second-chance", ["doctor", "--gue-port", "6080"])
        XCTAssertEqual(otherPort, 1, report)
        XCTAssertTrue(report.contains("[FAIL] iptables: no raw PREROUTING NFQUEUE rule for UDP 6080"), report)
        let (status, byName) = try lab.runToEnd("p1", "second-chance", ["doctor", "--netns", lab.namespace("p2")])
        XCTAssertEqual(status, 0, byName)
        XCTAssertTrue(byName.contains("[ ok ] sock_diag: exact TCP lookups work in \(lab.namespace("p2"))"), byName)
    }

    /// "Not here" answers are cached for --negative-cache-ms; 0 asks the kernel for every packet.
    func testNegativeCacheZeroAsksTheKernelForEveryPacket() throws {
        // One at a time: a batch asks the kernel once per flow whatever the cache holds.
        func sendThree() throws {
            for index in 1...3 {
                try sendGUE(lab, sourcePort: 30011, to: Lab.p1, inner: ack(40010), hops: [Lab.p2])
                try lab.waitFor("forward \(index)") { try lab.stats("p1")["forwarded"] == UInt64(index) }
            }
        }
        try sendThree()
        var stats = try lab.stats("p1")
        XCTAssertEqual(stats["socket_lookups"], 1)
        XCTAssertEqual(stats["socket_lookup_cache_hits"], 2)

        try lab.restartSecondChance("p1", Lab.p1, extra: Lab.labPeers + ["--negative-cache-ms", "0"])
        try sendThree()
        stats = try lab.stats("p1")
        XCTAssertEqual(stats["socket_lookups"], 3)
        XCTAssertEqual(stats["socket_lookup_cache_hits"], 0)
    }

    /// A SYN, FIN or RST drops the flow's cached answer (a FIN or RST after using it): the next
    /// packet asks the kernel again.
    func testSynFinAndRstDropTheFlowsCachedAnswer() throws {
        let client = IPv4Address("198.18.0.61")!
        let connection = try connectionOnP1(from: client)
        defer { close(connection.client); close(connection.server) }
        // The queue's flow cache: with the tc program, this flow's packets would not reach the queue.
        // Started after the client's address left p1: a daemon that still counted it as the host's
        // (its watcher a notification behind) would refuse the first packet as a martian source.
        try lab.restartSecondChance("p1", Lab.p1, extra: ["--fast-path", "off"])
        var lookups: UInt64 = 0
        for (index, flags) in [TCPFlags.ack, .ack, [.ack, .fin], .ack, .rst, .ack, .syn, .ack].enumerated() {
            try sendGUE(
                lab, sourcePort: 30020, to: Lab.p1, inner: flowPacket(client, connection.port, flags), hops: [Lab.p2])
            try lab.waitFor("packet \(index)") { try lab.stats("p1").value("total_packets") == UInt64(index + 1) }
            let stats = try lab.stats("p1")
            lookups = try stats.value("socket_lookups")
            XCTAssertEqual(
                try stats.value("accepted_established") + stats.value("accepted_syn"), UInt64(index + 1),
                "every packet of the flow is taken here")
        }
        // Asked: the first ACK and the ACKs after the FIN, the RST and the SYN (a SYN is taken without
        // asking); the second ACK, the FIN and the RST used the cache.
        XCTAssertEqual(lookups, 4)
        XCTAssertEqual(try lab.stats("p1").value("socket_lookup_cache_hits"), 3)
    }

    /// A flow whose server side closed first waits in TIME_WAIT, and that socket is found too.
    func testATimeWaitSocketKeepsItsFlowHere() throws {
        let client = IPv4Address("198.18.0.62")!
        let connection = try connectionOnP1(from: client, keepAddress: true)
        close(connection.server)
        try lab.waitFor("the client side to see the server's FIN") {
            try Lab.shell("ip netns exec \(lab.namespace("p1")) ss -tan state close-wait").contains(
                "\(client):\(connection.port)")
        }
        close(connection.client)
        try lab.waitFor("the server side in TIME_WAIT") {
            try Lab.shell("ip netns exec \(lab.namespace("p1")) ss -tan state time-wait").contains(
                "\(client):\(connection.port)")
        }
        try Lab.shell("ip -n \(lab.namespace("p1")) addr del \(client)/32 dev lo")
        // The daemon learns of the removed address through netlink a moment later (longer on a busy
        // host); until then the client's address is still this host's, and an ACK from it martian.
        try lab.waitFor("the ACK taken for the TIME_WAIT socket") {
            try sendGUE(
                lab, sourcePort: 30030, to: Lab.p1, inner: flowPacket(client, connection.port, .ack), hops: [Lab.p2])
            usleep(50_000)
            return try lab.stats("p1").value("accepted_established") >= 1
        }
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["forwarded"] ?? 0, 0, "never forwarded: \(stats)")
        XCTAssertEqual(
            stats["total_packets"], (stats["accepted_established"] ?? 0) + (stats["dropped_martian_source"] ?? 0),
            "each ACK taken, or refused while the address was still here: \(stats)")
    }

    /// Inner UDP and ICMP are taken by the first proxy and answered by its stack; an ICMPv6 Packet
    /// Too Big names its flow by the packet it quotes, and goes where that flow lives.
    func testInnerUDPAndICMPAreAnsweredAndPacketTooBigFollowsItsFlow() throws {
        let service = try lab.inside("p1") {
            try LabSockets.bindUDP(.v4(Lab.vip), port: 7777, receiveTimeoutSeconds: 3)
        }
        defer { close(service) }
        var datagram: [UInt8] = [0x9c, 0x41, 0x1e, 0x61, 0, 13] + [0, 0] + Array("hello".utf8)
        datagram.setBE16(4, UInt16(datagram.count))
        let udp = PacketBuilder.ip(
            source: .v4(Lab.client), destination: .v4(Lab.vip), protocol: 17, transport: datagram, checksumOffset: 6)
        try sendGUE(lab, sourcePort: 30040, to: Lab.p1, inner: udp, hops: [Lab.p2])
        var buffer = [UInt8](repeating: 0, count: 64)
        XCTAssertEqual(recv(service, &buffer, buffer.count, 0), 5, "the datagram reached the service on the VIP")

        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_ICMP)) }
        let echo = PacketBuilder.ip(
            source: .v4(Lab.client), destination: .v4(Lab.vip), protocol: 1,
            transport: [8, 0, 0, 0, 0x12, 0x34, 0, 1] + Array("ping".utf8), checksumOffset: 2)
        try sendGUE(lab, sourcePort: 30041, to: Lab.p1, inner: echo, hops: [Lab.p2])
        XCTAssertNotNil(
            capture.first {
                $0.count >= 28 && $0[20] == 0 && IPv4Address($0.be32(12)) == Lab.vip && $0.be16(24) == 0x1234
            },
            "the VIP answered the echo")

        let quoted = PacketBuilder.tcp(
            source: .v6(Lab.vip6), sourcePort: 80, destination: .v6(Lab.client6), destinationPort: 40050, flags: .ack)
        let tooBig = PacketBuilder.icmpv6PacketTooBig(
            from: IPv6Address("2001:2::2")!, to: Lab.vip6, mtu: 1280, original: quoted)
        try sendGUE(lab, sourcePort: 30042, to: Lab.p1, inner: tooBig, hops: [Lab.p2])
        try lab.waitFor("the Packet Too Big to reach P2") { try lab.stats("p2")["accepted_last_resort"] == 1 }
        // P2 can count it before P1 has counted the forward (counted once its send returned).
        try lab.waitFor("P1 to count the forward") { try lab.stats("p1")["forwarded"] == 1 }
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["accepted_udp"], 1)
        XCTAssertEqual(stats["accepted_icmp"], 1)
        XCTAssertEqual(stats["forwarded"], 1, "no socket for the quoted flow here: on to the next proxy")
        XCTAssertEqual(stats["socket_lookups"], 1)
        // Path-MTU messages are counted by decision as well: forwarded on P1, taken on P2.
        XCTAssertEqual(stats["path_mtu_forwarded"], 1)
        XCTAssertEqual(stats["path_mtu_local"], 0, "the echo is no path-MTU message")
        XCTAssertEqual(try lab.stats("p2")["path_mtu_local"], 1)
        // One for a flow whose destination is not this host's: refused, and counted so.
        let foreign = PacketBuilder.icmpFragmentationNeeded(
            from: Lab.director, to: IPv4Address("198.18.1.99")!, mtu: 1400,
            original: PacketBuilder.tcp(
                source: .v4(IPv4Address("198.18.1.99")!), sourcePort: 80, destination: .v4(Lab.client),
                destinationPort: 40051, flags: .ack))
        try sendGUE(lab, sourcePort: 30043, to: Lab.p1, inner: foreign, hops: [])
        try lab.waitFor("the foreign one refused") { try lab.stats("p1")["path_mtu_refused"] == 1 }
    }

    /// With --forward kernel a packet whose TTL is 255 cannot have it raised by one: it goes the
    /// raw way, TTL unchanged.
    func testATTLOf255TakesTheRawPathInKernelForwarding() throws {
        try Lab.shell(
            """
            ip netns exec \(lab.namespace("p1")) sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.eth0.accept_local=1 \
            net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
            """
        )
        try lab.restartSecondChance("p1", Lab.p1, extra: Lab.labPeers + ["--forward", "kernel"])
        let (receiver, capture) = try lab.inside("c") {
            (try LabSockets.bindUDP(.v4(Lab.client), port: GUEPacket.port), try Capture(protocol: Int32(IPPROTO_UDP)))
        }
        defer { close(receiver) }
        for (sourcePort, ttl) in [(UInt16(30061), Int32(255)), (30062, 64)] {
            try lab.inside("c") {
                let fd = try LabSockets.bindUDP(.v4(Lab.client), port: sourcePort)
                defer { close(fd) }
                var value = ttl
                setsockopt(fd, Int32(IPPROTO_IP), IP_TTL, &value, socklen_t(MemoryLayout<Int32>.size))
                let payload = PacketBuilder.guePayload(inner: ack(40060), hops: [Lab.client])
                _ = SocketAddress(.v4(Lab.p1), port: GUEPacket.port).withSockaddr { address, length in
                    payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, address, length) }
                }
            }
            let arrived = try XCTUnwrap(
                capture.first {
                    $0.count > 28 && $0[9] == 17 && $0.be16(22) == GUEPacket.port && $0.be16(20) == sourcePort
                },
                "the packet sent with TTL \(ttl) reached the last hop")
            XCTAssertEqual(Int32(arrived[8]), ttl, "TTL \(ttl) kept, whichever path forwarded it")
        }
        try lab.assertStats("p1", ["forwarded": 2])
    }

    /// When the socket table cannot be asked, the packet is taken here: this host's flows live on,
    /// at the risk of resetting one another proxy owns. sock_diag is made to fail by a preloaded
    /// library (Fixtures/sock_diag_fault.c).
    func testAPacketIsTakenHereWhenTheSocketTableCannotBeRead() throws {
        let library = lab.directory.appendingPathComponent("sock_diag_fault.so").path
        try Lab.shell(
            """
            gcc -shared -fPIC -o \(library) \
            \(Lab.packageRoot.appendingPathComponent("Tests/IntegrationTests/Fixtures/sock_diag_fault.c").path) -ldl
            """
        )
        for entry in lab.processes where entry.name == "p1 second-chance" && entry.process.isRunning {
            entry.process.terminate()
            entry.process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: lab.controlPath("p1"))
        let daemon = try Lab.launch(
            inside: lab.namespace("p1"),
            [
                Lab.binaries.appendingPathComponent("second-chance").path, "run", "--queue", "0",
                "--self", Lab.p1.description, "--control", lab.controlPath("p1"), "--syn-cookies", "off",
            ]
                + Lab.labPeers, log: lab.directory.appendingPathComponent("failing.log"),
            environment: ["LD_PRELOAD": library, "SOCK_DIAG_FAULT": "fail"])
        defer { daemon.terminate(); daemon.waitUntilExit() }
        try lab.waitFor("the daemon with failing lookups") {
            FileManager.default.fileExists(atPath: lab.controlPath("p1"))
        }
        try sendGUE(lab, sourcePort: 30080, to: Lab.p1, inner: ack(40080), hops: [Lab.p2])
        try lab.waitFor("the ACK") { try lab.stats("p1").value("total_packets") == 1 }
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["accepted_lookup_failed"], 1, "\(stats)")
        XCTAssertEqual(stats["forwarded"], 0)
        XCTAssertEqual(try lab.stats("p2").value("total_packets"), 0)
    }

    /// --batch bounds the verdicts per batch; a daemon with batches of one decides a burst too.
    func testBatchesOfOneDecideABurst() throws {
        try lab.restartSecondChance("p1", Lab.p1, extra: Lab.labPeers + ["--batch", "1"])
        for port in UInt16(41000)..<41200 {
            try sendGUE(lab, sourcePort: 30070, to: Lab.p1, inner: ack(port, flags: .syn), hops: [])
        }
        try lab.waitFor("200 SYNs") { try lab.stats("p1").value("accepted_syn") == 200 }
    }
}
