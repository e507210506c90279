import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChance
import SecondChanceCore
import Telemetry
import XCTest

/// second-chance as an outsider meets it: GUE from hosts that are not peers, hop lists pointing
/// anywhere, inner packets for addresses the proxy does not own. Everything runs in the lab's
/// namespaces; the director's namespace is the only peer besides the proxies.
final class TrustBoundaryTests: XCTestCase {
    var lab: Lab!
    static let peers = [
        "--allow-source", "198.18.0.2", "--allow-source", "198.18.0.11", "--allow-source", "198.18.0.12",
    ]

    override func setUpWithError() throws {
        lab = try Lab(prefix: "pstb")
        try lab.startProxies(extra: Self.peers)
    }

    override func tearDown() {
        lab?.tearDown()
    }

    func fromDirector(_ inner: [UInt8], sourcePort: UInt16, to proxy: IPv4Address = Lab.p1, hops: [IPv4Address]) throws
    {
        try sendGUE(lab, from: "d", source: Lab.director, sourcePort: sourcePort, to: proxy, inner: inner, hops: hops)
    }

    func tcp(_ source: IPAddress, _ sourcePort: UInt16, _ destination: IPAddress, _ port: UInt16, _ flags: TCPFlags)
        -> [UInt8]
    {
        PacketBuilder.tcp(
            source: source, sourcePort: sourcePort, destination: destination, destinationPort: port, flags: flags,
            sequence: 100)
    }

    func udp(_ source: IPAddress, _ destination: IPAddress, _ port: UInt16) -> [UInt8] {
        var datagram: [UInt8] = [0x9c, 0x40, UInt8(port >> 8), UInt8(port & 0xff), 0, 13, 0, 0] + Array("probe".utf8)
        datagram.setBE16(4, UInt16(datagram.count))
        return PacketBuilder.ip(
            source: source, destination: destination, protocol: 17, transport: datagram, checksumOffset: 6)
    }

    func counter(_ host: String, _ name: String) throws -> UInt64 { try lab.stats(host)[name] ?? 0 }

    func testPeersAreServedAndOutsidersAreNot() throws {
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        func reply(to port: UInt16, within seconds: Double = 3) -> [UInt8]? {
            capture.first(within: seconds) { $0.ipv4TCP.map { $0.0 == Lab.vip && $0.3 == port } ?? false }
        }
        // The director's SYN is answered by the VIP, straight to the client.
        try fromDirector(tcp(.v4(Lab.client), 40101, .v4(Lab.vip), 80, .syn), sourcePort: 30101, hops: [Lab.p2])
        XCTAssertNotNil(reply(to: 40101), "no SYN-ACK for the director's SYN")
        // The director's ACK of an unknown flow goes on to the proxy hop, which takes it last.
        try fromDirector(tcp(.v4(Lab.client), 40102, .v4(Lab.vip), 80, .ack), sourcePort: 30102, hops: [Lab.p2])
        try lab.waitFor("P2 to take the forwarded ACK") { try counter("p2", "accepted_last_resort") == 1 }
        XCTAssertEqual(try counter("p1", "forwarded"), 1)

        // glb-healthcheck's probe: an ICMP echo to the proxy's own address, no hops; the reply goes
        // straight back to the checker.
        let checker = try lab.inside("d") { try Capture(protocol: Int32(IPPROTO_ICMP)) }
        let identifier = Array("glbhc_0123456789abcdef".utf8)
        let probe = PacketBuilder.ip(
            source: .v4(Lab.director), destination: .v4(Lab.p1), protocol: 1,
            transport: [8, 0, 0, 0, 0x47, 0x4c, 0, 1] + identifier, checksumOffset: 2)
        try fromDirector(probe, sourcePort: 30103, hops: [])
        let echoReply = checker.first { packet in
            packet.count >= 28 + identifier.count && packet[20] == 0 && IPv4Address(packet.be32(12)) == Lab.p1
                && Array(packet[28..<(28 + identifier.count)]) == identifier
        }
        XCTAssertNotNil(echoReply, "the health check probe was not answered")
        XCTAssertEqual(try counter("p1", "accepted_icmp"), 1)

        // The client is no peer: its SYN gets no answer, its ACK is relayed nowhere.
        let lastHop = try lab.inside("c") {
            try LabSockets.bindUDP(.v4(Lab.client), port: GUEPacket.port, receiveTimeoutSeconds: 1)
        }
        defer { close(lastHop) }
        try sendGUE(
            lab, sourcePort: 30104, to: Lab.p1, inner: tcp(.v4(Lab.client), 40103, .v4(Lab.vip), 80, .syn),
            hops: [Lab.p2])
        try sendGUE(
            lab, sourcePort: 30105, to: Lab.p1, inner: tcp(.v4(Lab.client), 40104, .v4(Lab.vip), 80, .ack),
            hops: [Lab.client])
        try lab.waitFor("the outsider's packets to be refused") { try counter("p1", "dropped_untrusted_source") == 2 }
        XCTAssertNil(reply(to: 40103, within: 1), "an outsider's SYN was answered")
        var buffer = [UInt8](repeating: 0, count: 2048)
        XCTAssertLessThanOrEqual(
            recv(lastHop, &buffer, buffer.count, 0), 0, "an outsider had GUE relayed to the hop it chose")
        XCTAssertEqual(try counter("p1", "forwarded"), 1)
        XCTAssertEqual(try counter("p1", "accepted_syn"), 1)
    }

    func testHopsOutsideTheAllowedSetAreNotForwarded() throws {
        let listener = try lab.inside("c") {
            try LabSockets.bindUDP(.v4(IPv4Address(0)), port: GUEPacket.port, receiveTimeoutSeconds: 1)
        }
        defer { close(listener) }
        let ack = tcp(.v4(Lab.client), 40201, .v4(Lab.vip), 80, .ack)
        let refused = ["198.18.0.1", "127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "198.18.0.255"].map {
            IPv4Address($0)!
        }
        for (index, hop) in refused.enumerated() {
            try fromDirector(ack, sourcePort: 30201 + UInt16(index), hops: [hop])
        }
        // More hops than --max-hops (4), even when every hop is a proxy.
        try fromDirector(ack, sourcePort: 30210, hops: [IPv4Address](repeating: Lab.p2, count: 5))
        try lab.waitFor("every packet to be refused") {
            try counter("p1", "dropped_untrusted_hop") == UInt64(refused.count)
                && counter("p1", "dropped_too_many_hops") == 1
        }
        XCTAssertEqual(try counter("p1", "forwarded"), 0)
        XCTAssertEqual(try counter("p1", "forward_send_failures"), 0)
        var buffer = [UInt8](repeating: 0, count: 2048)
        XCTAssertLessThanOrEqual(recv(listener, &buffer, buffer.count, 0), 0, "GUE reached a hop that is no proxy")
        XCTAssertEqual(try counter("p2", "total_packets"), 0, "the five-hop packet was not passed on")
    }

    /// --self removed from the host while the daemon runs: nothing is forwarded with it as the
    /// source (in the queue's path, and the program sends forwards up), counted as failed
    /// forwards; once it is back, forwarding resumes.
    func testNothingIsForwardedFromASelfAddressTheHostNoLongerHas() throws {
        let p1 = lab.namespace("p1"), selfAddress = IPv4Address("198.18.0.111")!
        try Lab.shell("ip -n \(p1) addr add \(selfAddress)/24 dev eth0")
        try lab.restartSecondChance("p1", selfAddress, extra: Self.peers)
        let ack = tcp(.v4(Lab.client), 40301, .v4(Lab.vip), 80, .ack)
        var port: UInt16 = 30300
        func forward() throws {
            port += 1
            try fromDirector(ack, sourcePort: port, hops: [Lab.p2])
        }
        try forward()
        try lab.waitFor("a forward from --self") { try counter("p2", "total_packets") == 1 }

        try Lab.shell("ip -n \(p1) addr del \(selfAddress)/24 dev eth0")
        try lab.waitFor("forwards refused once --self is gone") {
            try forward()
            usleep(100_000)
            return try counter("p1", "forward_send_failures") >= 1
        }
        let reached = try counter("p2", "total_packets"), failed = try counter("p1", "forward_send_failures")
        for _ in 0..<3 { try forward() }
        try lab.waitFor("three more refused") { try counter("p1", "forward_send_failures") == failed + 3 }
        XCTAssertEqual(try counter("p2", "total_packets"), reached, "nothing left with the address that is gone")
        // A re-exec now would start an image that refuses --self: refused, and this one serves on.
        let reexec = try lab.runToEnd("p1", "second-chance", ["reexec", "--control", lab.controlPath("p1")])
        XCTAssertNotEqual(reexec.status, 0, reexec.output)
        XCTAssertTrue(reexec.output.contains("--self \(selfAddress) is not an address of this host"), reexec.output)
        XCTAssertEqual(try counter("p1", "reexecs"), 0, "still the same image")

        try Lab.shell("ip -n \(p1) addr add \(selfAddress)/24 dev eth0")
        try lab.waitFor("forwarding again") {
            try forward()
            usleep(100_000)
            return try counter("p2", "total_packets") > reached
        }
    }

    /// With forwarding on (as --forward kernel needs), an inner packet for someone else would be
    /// routed onwards; an inner IPv6 packet leaves through the raw socket whatever its destination.
    func testNothingLeavesForAnInnerDestinationThisHostDoesNotOwn() throws {
        try Lab.shell(
            "ip netns exec \(lab.namespace("p1")) sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
        let (tcp4, udp4, tcp6) = try lab.inside("c") {
            (
                try Capture(protocol: Int32(IPPROTO_TCP)), try Capture(protocol: Int32(IPPROTO_UDP)),
                try Capture(protocol: Int32(IPPROTO_TCP), ipv6: true)
            )
        }
        let loopbackService = try lab.inside("p1") {
            try LabSockets.bindUDP(.v6(IPv6Address("::1")!), port: 7777, receiveTimeoutSeconds: 1)
        }
        defer { close(loopbackService) }
        let director6: IPAddress = .v6(IPv6Address("2001:2::2")!)
        try fromDirector(tcp(.v4(Lab.director), 40301, .v4(Lab.client), 9, .syn), sourcePort: 30301, hops: [])
        try fromDirector(udp(.v4(Lab.director), .v4(Lab.client), 9999), sourcePort: 30302, hops: [])
        try fromDirector(tcp(director6, 40303, .v6(Lab.client6), 9, .syn), sourcePort: 30303, hops: [])
        try fromDirector(udp(director6, .v6(IPv6Address("::1")!), 7777), sourcePort: 30304, hops: [])
        try lab.waitFor("the four packets to be refused") { try counter("p1", "dropped_not_local_destination") == 4 }
        XCTAssertNil(
            tcp4.first(within: 1) { $0.ipv4TCP.map { $0.3 == 9 && $0.1 == 40301 } ?? false },
            "the IPv4 SYN was routed on")
        XCTAssertNil(udp4.first(within: 1) { $0.count >= 28 && $0.be16(22) == 9999 }, "the IPv4 datagram was routed on")
        XCTAssertNil(
            tcp6.first(within: 1) { $0.count >= 20 && $0.be16(0) == 40303 }, "the IPv6 SYN left through the raw socket")
        var buffer = [UInt8](repeating: 0, count: 256)
        XCTAssertLessThanOrEqual(
            recv(loopbackService, &buffer, buffer.count, 0), 0, "a decapsulated packet reached a ::1 service")
        XCTAssertEqual(try counter("p1", "accepted_syn") + counter("p1", "accepted_udp"), 0)

        // Kernel decapsulation (fou) is guarded by the same check.
        try lab.restartSecondChance("p2", Lab.p2, extra: Self.peers + ["--decap", "kernel"])
        try fromDirector(
            tcp(.v4(Lab.director), 40305, .v4(Lab.client), 9, .syn), sourcePort: 30305, to: Lab.p2, hops: [])
        try lab.waitFor("P2 to refuse it") { try counter("p2", "dropped_not_local_destination") == 1 }
    }

    /// The set of local addresses follows rtnetlink: a VIP added to lo is served at once, a removed
    /// one no longer is.
    func testAddressesAddedAndRemovedAreFollowed() throws {
        let extra = IPv4Address("198.19.0.77")!
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        var port: UInt16 = 40400
        func synTo(_ address: IPv4Address) throws {
            port += 1
            try fromDirector(tcp(.v4(Lab.client), port, .v4(address), 80, .syn), sourcePort: 30400, hops: [])
        }
        try synTo(extra)
        try lab.waitFor("a SYN for an address P1 lacks to be refused") {
            try counter("p1", "dropped_not_local_destination") == 1
        }
        try Lab.shell("ip -n \(lab.namespace("p1")) addr add \(extra)/32 dev lo")
        try lab.waitFor("the new address to be served") {
            try synTo(extra)
            usleep(50_000)
            return try counter("p1", "accepted_syn") > 0
        }
        let answered = port
        XCTAssertNotNil(
            capture.first { $0.ipv4TCP.map { $0.0 == extra && $0.3 == answered } ?? false },
            "P1's stack answered for the new address")
        try Lab.shell("ip -n \(lab.namespace("p1")) addr del \(extra)/32 dev lo")
        let refusedBefore = try counter("p1", "dropped_not_local_destination")
        try lab.waitFor("the removed address to be refused again") {
            try synTo(extra)
            usleep(50_000)
            return try counter("p1", "dropped_not_local_destination") > refusedBefore
        }
    }

    /// A VIP range served by a local route (`ip route add local PREFIX dev lo`), IPv4 and IPv6, is
    /// this host's: taken while the route exists, refused again once it is gone.
    func testVIPRangesOfLocalRoutesAreServed() throws {
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        var port: UInt16 = 40500
        let (inRange, inRange6) = (IPv4Address("198.19.7.5")!, IPv6Address("2001:db8:77::5")!)
        func synTo(_ address: IPAddress) throws {
            port += 1
            let source: IPAddress
            if case .v4 = address { source = .v4(Lab.client) } else { source = .v6(Lab.client6) }
            try fromDirector(tcp(source, port, address, 80, .syn), sourcePort: 30500, hops: [])
        }
        try synTo(.v4(inRange))
        try synTo(.v6(inRange6))
        try lab.waitFor("SYNs for a range P1 does not serve to be refused") {
            try counter("p1", "dropped_not_local_destination") == 2
        }
        let p1 = lab.namespace("p1")
        try Lab.shell(
            "ip -n \(p1) route add local 198.19.7.0/24 dev lo && ip -n \(p1) -6 route add local 2001:db8:77::/64 dev lo"
        )
        /// SYNs to `address` until P1 counts one more under `name`.
        func synsTo(_ address: IPAddress, until name: String) throws {
            let before = try counter("p1", name)
            try lab.waitFor("\(address) counted as \(name)") {
                try synTo(address)
                usleep(50_000)
                return try counter("p1", name) > before
            }
        }
        for address in [IPAddress.v4(inRange), .v6(inRange6)] { try synsTo(address, until: "accepted_syn") }
        XCTAssertNotNil(
            capture.first { $0.ipv4TCP.map { $0.0 == inRange } ?? false }, "P1's stack answered from the range")
        try Lab.shell(
            "ip -n \(p1) route del local 198.19.7.0/24 dev lo && ip -n \(p1) -6 route del local 2001:db8:77::/64 dev lo"
        )
        for address in [IPAddress.v4(inRange), .v6(inRange6)] {
            try synsTo(address, until: "dropped_not_local_destination")
        }
    }

    func testRunRefusesWhatItCannotHonour() throws {
        let base = ["run", "--queue", "9", "--self", Lab.p1.description, "--control", lab.controlPath("refused")]
        let missing = try lab.runToEnd("p1", "second-chance", base)
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.output.contains("--allow-source"), missing.output)
        let huge = String(UInt64.max)
        for (flags, named) in [
            (["--flow-cache-ms", huge], "--flow-cache-ms"),
            (["--negative-cache-ms", "3600001"], "--negative-cache-ms"),
            (["--cookie-hold-ms", huge], "--cookie-hold-ms"), (["--listener-scan-ms", huge], "--listener-scan-ms"),
            (["--cookie-pass-ms", huge], "--cookie-pass-ms"), (["--allow-source", "198.18.0.5/24"], "198.18.0.5/24"),
            (["--allow-hop", "198.18.0.0/40"], "198.18.0.0/40"), (["--max-hops", "256"], "--max-hops"),
            (["--queue-maxlen", "0"], "--queue-maxlen"), (["--queue-maxlen", String(UInt32.max)], "--queue-maxlen"),
        ] {
            let result = try lab.runToEnd("p1", "second-chance", base + Self.peers + flags)
            XCTAssertEqual(result.status, 64, "a usage error, not a crash: \(flags) \(result.output)")
            XCTAssertTrue(result.output.contains(named), result.output)
        }
        let stranger = try lab.runToEnd(
            "p1", "second-chance",
            ["run", "--queue", "9", "--self", "198.18.0.99", "--control", lab.controlPath("refused")]
                + Self.peers)
        XCTAssertNotEqual(stranger.status, 0)
        XCTAssertTrue(stranger.output.contains("198.18.0.99 is not an address of this host"), stranger.output)

        // No route leads to every host: with no interface to attach to, auto goes on without the fast
        // path (the rounds that require one would refuse, as they should).
        try lab.restartSecondChance("p1", Lab.p1, extra: ["--allow-source", "0.0.0.0/0", "--fast-path", "auto"])
        let log = lab.processes.filter { $0.name == "p1 second-chance" }.map { lab.log(of: $0.process) }.joined()
        XCTAssertTrue(log.contains("warning: --allow-source 0.0.0.0/0"), log)

        // The largest values each option accepts make a daemon that serves.
        try lab.restartSecondChance(
            "p1", Lab.p1,
            extra: Self.peers + [
                "--flow-cache-ms", "3600000", "--negative-cache-ms", "3600000", "--cookie-hold-ms", "86400000",
                "--listener-scan-ms", "86400000",
                "--cookie-pass-ms", "86400000", "--cookie-activate-percent", "100", "--cookie-deactivate-percent",
                "100", "--max-hops", "255",
                "--queue-maxlen", String(NetfilterQueue.maximumLengthLimit), "--batch", "64",
            ])
        try fromDirector(
            tcp(.v4(Lab.client), 40601, .v4(Lab.vip), 80, .syn), sourcePort: 30601,
            hops: [IPv4Address](repeating: Lab.p2, count: 30))
        try lab.waitFor("the SYN with 30 hops") { try counter("p1", "accepted_syn") == 1 }
    }

    /// Packets the kernel could not queue are counted where the operator looks, and --fail-open
    /// decides what happens to them.
    func testQueueOverflowIsCountedAndFailOpenIsTheOperatorsChoice() throws {
        for failOpen in [false, true] {
            try lab.restartSecondChance(
                "p1", Lab.p1,
                // NFQUEUE alone: this is about the queue, whose SYNs the tc program would take.
                extra: Self.peers + ["--queue-maxlen", "4", "--fast-path", "off"] + (failOpen ? ["--fail-open"] : []))
            // Where fou would take GUE the queue lets pass: here a socket that counts it.
            let passed = try lab.inside("p1") {
                try LabSockets.bindUDP(.v4(Lab.p1), port: GUEPacket.port, receiveTimeoutSeconds: 1)
            }
            defer { close(passed) }
            let daemon = try XCTUnwrap(lab.processes.last { $0.name == "p1 second-chance" && $0.process.isRunning })
                .process
            try stopProcess(daemon.processIdentifier)
            for index in 0..<10 {
                try fromDirector(
                    tcp(.v4(Lab.client), 40500 + UInt16(index), .v4(Lab.vip), 80, .syn),
                    sourcePort: 30500 + UInt16(index), hops: [])
            }
            var table: [UInt16: KernelQueueStatistics] = [:]
            try lab.waitFor("the kernel to queue four") {
                table = try lab.inside("p1") { ProcFile.kernelQueueStatistics() }
                return table[0]?.waiting == 4 && (failOpen || table[0]?.queueDropped == 6)
            }
            var buffer = [UInt8](repeating: 0, count: 2048)
            var unread = 0
            while recv(passed, &buffer, buffer.count, 0) > 0 { unread += 1 }
            XCTAssertEqual(unread, failOpen ? 6 : 0, "fail-open: \(failOpen)")
            XCTAssertEqual(table[0]?.queueDropped, failOpen ? 0 : 6)
            kill(daemon.processIdentifier, SIGCONT)
            try lab.waitFor("the queued four to be decided") { try counter("p1", "total_packets") == 4 }
            let stats = try lab.stats("p1")
            XCTAssertEqual(stats["queue_0_kernel_dropped"], failOpen ? 0 : 6, "\(stats)")
            XCTAssertEqual(stats["queue_0_waiting"], 0)
            XCTAssertEqual(stats["queue_0_receive_errors"], 0)
        }
    }
}
