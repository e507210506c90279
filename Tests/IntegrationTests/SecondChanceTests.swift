import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import Telemetry
import XCTest

/// second-chance on two proxies in namespaces, driven through NFQUEUE, sock_diag, raw sockets and
/// the proxies' real TCP stacks.
final class SecondChanceTests: XCTestCase {
    var lab: Lab!

    override func setUpWithError() throws {
        lab = try Lab(prefix: "psit")
        try lab.startProxies()
    }

    override func tearDown() {
        lab?.tearDown()
    }

    func synAck(from capture: Capture, port: UInt16) -> (seq: UInt32, ack: UInt32)? {
        capture.first { packet in
            guard let tcp = packet.ipv4TCP else { return false }
            return tcp.0 == Lab.vip && tcp.1 == 80 && tcp.3 == port && tcp.4.contains([.syn, .ack])
        }?.ipv4TCP.map { ($0.5, $0.6) }
    }

    func testSYNViaP1IsAnsweredByTheVIPOnP1() throws {
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        let syn = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 40001, destination: .v4(Lab.vip), destinationPort: 80,
            flags: .syn, sequence: 1000)
        try sendGUE(lab, sourcePort: 30001, to: Lab.p1, inner: syn, hops: [Lab.p2])
        let reply = try XCTUnwrap(synAck(from: capture, port: 40001), "no SYN-ACK from the VIP reached the client")
        XCTAssertEqual(reply.ack, 1001)
        try lab.assertStats("p1", ["accepted_syn": 1])
        XCTAssertEqual(try lab.stats("p2")["total_packets"], 0)
    }

    /// glb-healthcheck's GUE check (an ICMP echo request from the checker to the proxy, inside GUE
    /// with no hops, its check's id as payload) is answered only while second-chance decides.
    /// Stopped, or killed with the tc program left deciding, the proxy fails it in every
    /// decapsulation mode: without fou the bypassed probe reaches a closed UDP port; with fou (the
    /// kernel lab) fou decapsulates it without --fou-mark's bit and the rules drop it. Started
    /// again, the proxy passes.
    func testGLBHealthchecksProbeFailsWhileSecondChanceIsDown() throws {
        let capture = try lab.inside("d") { try Capture(protocol: Int32(IPPROTO_ICMP)) }
        var checks: UInt16 = 0
        func probeAnswered() throws -> Bool {
            checks += 1
            let id = Array("glbhc_\(getpid())_\(checks)".utf8)
            let probe = PacketBuilder.icmpEchoRequest(from: Lab.director, to: Lab.p1, payload: id)
            try sendGUE(
                lab, from: "d", source: Lab.director, sourcePort: 41000 + checks, to: Lab.p1, inner: probe, hops: [])
            return capture.first(within: 1) { packet in
                packet.count >= 28 && packet[9] == 1 && packet[20] == 0 && packet.suffix(id.count).elementsEqual(id)
            } != nil
        }
        XCTAssertTrue(try probeAnswered(), "the probe is answered while second-chance decides")
        for signal in [SIGTERM, SIGKILL] {
            try lab.stopSecondChance("p1", signal: signal)
            XCTAssertFalse(try probeAnswered(), "signal \(signal): no echo reply while second-chance is down")
            XCTAssertFalse(try probeAnswered(), "signal \(signal): nor for the checker's next probe")
            try lab.startSecondChance("p1", Lab.p1)
            XCTAssertTrue(try probeAnswered(), "signal \(signal): answered again once second-chance decides")
        }
    }

    /// glb-director #139: a proxy that runs the director's health checker (or the director) itself
    /// sends GUE from its own address, over loopback. That is where the way back to its own
    /// address leads, so it is heard there and answered; from any other interface the proxy's
    /// own address is a forgery and is refused.
    func testTheProxysOwnHealthCheckIsHeardOverLoopbackAndItsAddressFromOutsideIsNot() throws {
        let capture = try lab.inside("p1") { try Capture(protocol: Int32(IPPROTO_ICMP)) }
        func answered(_ id: [UInt8]) -> Bool {
            capture.first(within: 1) { packet in
                packet.count >= 28 && packet[9] == 1 && packet[20] == 0 && packet.suffix(id.count).elementsEqual(id)
            } != nil
        }
        let own = Array("glbhc_self".utf8)
        let probe = PacketBuilder.icmpEchoRequest(from: Lab.p1, to: Lab.p1, payload: own)
        try sendGUE(lab, from: "p1", source: Lab.p1, sourcePort: 41500, to: Lab.p1, inner: probe, hops: [])
        XCTAssertTrue(answered(own), "the proxy's own check, over loopback, is answered")

        // Any local user can send there: nothing but the probe passes. Not a datagram from a
        // forged source to a local service, not the probe from loopback's address or with a hop.
        let service = try lab.inside("p1") { try LabSockets.bindUDP(.v4(Lab.p1), port: 7777, receiveTimeoutSeconds: 1) }
        defer { close(service) }
        var datagram: [UInt8] = [0x9c, 0x41, 0x1e, 0x61, 0, 13, 0, 0] + Array("forged".utf8)
        datagram.setBE16(4, UInt16(datagram.count))
        let local = try lab.stats("p1")["dropped_reverse_path"] ?? 0
        for (port, inner, hops) in [
            (
                UInt16(41502),
                PacketBuilder.ip(
                    source: .v4(IPv4Address("198.18.0.77")!), destination: .v4(Lab.p1), protocol: 17,
                    transport: datagram, checksumOffset: 6), [IPv4Address]()
            ),
            (41503, PacketBuilder.icmpEchoRequest(from: IPv4Address("127.0.0.1")!, to: Lab.p1, payload: own), []),
            (41504, probe, [Lab.p2]),
        ] {
            try sendGUE(lab, from: "p1", source: Lab.p1, sourcePort: port, to: Lab.p1, inner: inner, hops: hops)
        }
        try lab.waitFor("the local user's packets refused") {
            try lab.stats("p1").value("dropped_reverse_path") == local + 3
        }
        var buffer = [UInt8](repeating: 0, count: 64)
        XCTAssertLessThan(recv(service, &buffer, buffer.count, 0), 0, "the forged datagram reached no socket")

        let refused = try lab.stats("p1")["dropped_reverse_path"] ?? 0
        let forged = Array("glbhc_forged".utf8)
        let outside = PacketBuilder.icmpEchoRequest(from: Lab.p1, to: Lab.p1, payload: forged)
        // The client sends it with P1's address as its source (IP_TRANSPARENT: a foreign source).
        try lab.inside("c") {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(fd) }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_IP), IP_TRANSPARENT, &one, 4)
            let payload = PacketBuilder.guePayload(inner: outside, hops: [])
            let sent =
                SocketAddress(.v4(Lab.p1), port: 41501).withSockaddr { bind(fd, $0, $1) } == 0
                && SocketAddress(.v4(Lab.p1), port: GUEPacket.port).withSockaddr { address, length in
                    payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, address, length) }
                } == payload.count
            guard sent else { throw SystemError("sending GUE from P1's address") }
        }
        // The shipped nft rules' reverse-path check (the kernel lab's) drops it before the queue.
        if !Lab.nftRules {
            try lab.waitFor("the forged one refused") {
                try lab.stats("p1").value("dropped_reverse_path") == refused + 1
            }
        }
        XCTAssertFalse(answered(forged), "the proxy's address from outside is not heard")
    }

    /// GUE from outside the peers meets the rules' DROP before anything decapsulates it: not the
    /// daemon, not fou (the kernel lab runs this with fou on the port); the tc program refuses it
    /// before either.
    func testGUEFromOutsideThePeersMeetsTheDropBeforeAnyDecapsulation() throws {
        let outsider = IPv4Address("198.18.1.66")!
        try Lab.shell("ip -n \(lab.namespace("c")) addr add \(outsider)/32 dev eth0")
        let listener = try lab.inside("p1") { try LabSockets.listenTCP(on: .v4(Lab.vip), port: 8090) }
        defer { close(listener) }
        func dropped() throws -> Int {
            let rules = try Lab.shell(
                Lab.nftRules
                    ? "ip netns exec \(lab.namespace("p1")) nft list ruleset"
                    : "ip netns exec \(lab.namespace("p1")) iptables -t raw -L PREROUTING -v -x -n")
            return rules.split(separator: "\n").filter { $0.contains("drop") || $0.contains("DROP") }.count
        }
        XCTAssertGreaterThan(try dropped(), 0, "the proxy's rules end in a DROP for the GUE port")
        let before = try lab.tcpExtOrIP("p1", "InSegs")
        func arrived() throws -> UInt64 {
            try lab.tcpExtOrIP("p1", "InReceives") + (lab.stats("p1")["dropped_untrusted_source"] ?? 0)
        }
        let arrivedBefore = try arrived()
        for port in UInt16(41000)..<41010 {
            let syn = PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 8090,
                flags: .syn, sequence: 1)
            try sendGUE(lab, source: outsider, sourcePort: 30900, to: Lab.p1, inner: syn, hops: [])
        }
        // Absence counts once all ten are there: refused by the tc program, or taken in by IP, whose
        // raw PREROUTING pass drops them in the same go.
        try lab.waitFor("the ten packets to reach P1") { try arrived() >= arrivedBefore + 10 }
        XCTAssertEqual(try lab.tcpExtOrIP("p1", "InSegs"), before, "no inner segment reached P1's TCP")
        // The tc program, in front of netfilter, refuses them itself (the daemon's --allow-source); the
        // queue never sees one.
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["total_packets"], stats["dropped_untrusted_source"], "\(stats)")
        XCTAssertEqual(stats["queue_0_packets"], 0, "nothing passed the DROP to the queue")
    }

    func testUnknownACKIsForwardedAlongTheHopsWithItsBytesIntact() throws {
        try checkForwardingAlongTheHops()
    }

    /// The same with `--forward kernel` on both proxies: the kernel forwards the rewritten packet,
    /// and the hop still sees the TTL the sender set.
    func testKernelForwardingKeepsTheBytesAndTheTTLToo() throws {
        for (host, address) in [("p1", Lab.p1), ("p2", Lab.p2)] {
            let refused = try lab.runToEnd(
                host, "second-chance",
                ["run", "--queue", "7", "--self", address.description, "--forward", "kernel"] + Lab.labPeers + [
                    "--control", lab.controlPath("\(host)-refused"),
                ])
            XCTAssertNotEqual(refused.status, 0)
            XCTAssertTrue(refused.output.contains("ip_forward"), "the missing sysctls are named: \(refused.output)")
            try Lab.shell(
                """
                ip netns exec \(lab.namespace(host)) sysctl -qw net.ipv4.ip_forward=1 \
                net.ipv4.conf.eth0.accept_local=1 net.ipv4.conf.all.send_redirects=0 \
                net.ipv4.conf.eth0.send_redirects=0
                """
            )
            try lab.restartSecondChance(host, address, extra: ["--forward", "kernel"])
        }
        try checkForwardingAlongTheHops()
    }

    /// By default (`--forward auto`) the kernel forwards where the host lets it (ip_forward,
    /// accept_local, nothing filtering the forward path), and the raw socket does where it does not:
    /// here a FORWARD chain that drops. Either way the packets reach their hop intact.
    func testForwardAutoTakesTheKernelWhereTheHostAllowsItAndTheRawSocketWhereNot() throws {
        func started(_ host: String) throws -> String {
            let process = try XCTUnwrap(lab.processes.last { $0.name == "\(host) second-chance" }?.process)
            return lab.log(of: process)
        }
        for (host, address) in [("p1", Lab.p1), ("p2", Lab.p2)] {
            try Lab.shell(
                """
                ip netns exec \(lab.namespace(host)) sysctl -qw net.ipv4.ip_forward=1 \
                net.ipv4.conf.eth0.accept_local=1 net.ipv4.conf.all.send_redirects=0 \
                net.ipv4.conf.eth0.send_redirects=0
                """
            )
            try lab.restartSecondChance(host, address, extra: [])
            let log = try started(host)
            XCTAssertTrue(log.contains("forwarding: kernel (ip_forward and accept_local are on"), log)
        }
        try checkForwardingAlongTheHops()
        try Lab.shell("ip netns exec \(lab.namespace("p1")) iptables -P FORWARD DROP")
        try lab.restartSecondChance("p1", Lab.p1, extra: [])
        try lab.restartSecondChance("p2", Lab.p2, extra: [])  // its counters start again too
        XCTAssertTrue(try started("p2").contains("forwarding: kernel ("))
        let log = try started("p1")
        XCTAssertTrue(log.contains("forwarding: raw ("), log)
        XCTAssertTrue(log.contains("FORWARD chain") || log.contains("forward hook"), "the reason is named: \(log)")
        try checkForwardingAlongTheHops()
    }

    /// The kernel checks accept_local on the interface a packet arrives on (or all): set on
    /// another interface it does not let the kernel forward GUE, and `auto` keeps the raw socket.
    /// A rule after conntrack that drops INVALID would eat the responder's SYN-ACKs in verdicts:
    /// `auto` keeps the raw socket then too, and doctor names the rule for `--forward kernel`.
    func testForwardAutoChecksTheGUEInterfaceAndConntrackInvalidDrops() throws {
        func started() throws -> String {
            lab.log(of: try XCTUnwrap(lab.processes.last { $0.name == "p1 second-chance" }?.process))
        }
        let p1 = lab.namespace("p1")
        try Lab.shell(
            """
            ip netns exec \(p1) sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.lo.accept_local=1 \
            net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
            """
        )
        try lab.restartSecondChance("p1", Lab.p1, extra: [])
        var log = try started()
        XCTAssertTrue(log.contains("forwarding: raw ("), log)
        XCTAssertTrue(log.contains("0 on eth0, where GUE arrives"), log)

        try Lab.shell(
            """
            ip netns exec \(p1) sysctl -qw net.ipv4.conf.eth0.accept_local=1 && ip netns exec \(p1) iptables -t mangle \
            -A PREROUTING -m conntrack --ctstate INVALID -j DROP
            """
        )
        try lab.restartSecondChance("p1", Lab.p1, extra: [])
        log = try started()
        XCTAssertTrue(log.contains("forwarding: raw ("), log)
        // iptables-nft: the rule is in nft's ruleset too, and found there first.
        XCTAssertTrue(log.contains("drop would drop the SYN-cookie responder's SYN-ACKs"), log)
        let (_, report) = try lab.runToEnd(
            "p1", "second-chance", ["doctor", "--forward", "kernel", "--allow-source", "198.18.0.0/24"])
        XCTAssertTrue(report.contains("[warn] conntrack: iptables -t mangle -A PREROUTING -m conntrack"), report)
        XCTAssertTrue(report.contains("[ ok ] accept_local: 1 on eth0, where GUE arrives"), report)
        // Without the responder the SYN-ACKs do not exist: the kernel forwards. Doctor, given the
        // daemon's flags, makes the daemon's choice both ways.
        try lab.restartSecondChance("p1", Lab.p1, extra: ["--syn-cookies", "off"])
        log = try started()
        XCTAssertTrue(log.contains("forwarding: kernel ("), log)
        for (flags, mode) in [([String](), "raw"), (["--syn-cookies", "off"], "kernel")] {
            let (_, said) = try lab.runToEnd(
                "p1", "second-chance", ["doctor", "--allow-source", "198.18.0.0/24"] + flags)
            XCTAssertTrue(said.contains("[info] plan: forwarding: \(mode) ("), "\(flags): \(said)")
        }
    }

    /// Where the interface GUE arrives on forwards, the tc program sends the packet to the next hop
    /// itself: the last hop gets the bytes the queue's path sends (checked as for it), and no queue
    /// saw them.
    func testTheFastPathForwardsInTheKernelWhereTheInterfaceForwards() throws {
        for (host, address) in [("p1", Lab.p1), ("p2", Lab.p2)] {
            try Lab.shell("ip netns exec \(lab.namespace(host)) sysctl -qw net.ipv4.conf.eth0.forwarding=1")
            try lab.restartSecondChance(host, address, extra: ["--fast-path", "tc"])
        }
        // A hop whose neighbour entry the kernel has not resolved yet goes up, to the raw socket,
        // whose send resolves it: here the hops are known first.
        for (host, hop, address) in [("p1", "p2", Lab.p2), ("p2", "c", Lab.client)] {
            let mac = try Lab.linkAddress(in: lab.namespace(hop))
            try Lab.shell("ip -n \(lab.namespace(host)) neigh replace \(address) lladdr \(mac) dev eth0 nud permanent")
        }
        try checkForwardingAlongTheHops()
        for host in ["p1", "p2"] {
            let stats = try lab.stats(host)
            XCTAssertEqual(stats["fast_path_forwarded"], 2, "\(host): \(stats)")
            XCTAssertEqual(stats["queue_0_packets"], 0, "\(host): \(stats)")
        }
    }

    /// An inner IPv6 packet the tc program takes reaches the stack on the interface GUE arrived on,
    /// as an inner IPv4 one does: INPUT rules scoped to that interface see it, `-i lo` does not.
    func testInnerIPv6TakenInTheKernelArrivesOnTheGUEInterface() throws {
        try lab.restartSecondChance("p1", Lab.p1, extra: ["--fast-path", "tc"])
        for interface in ["lo", "eth0"] {
            try Lab.shell(
                "ip netns exec \(lab.namespace("p1")) ip6tables -A INPUT -i \(interface) -p tcp --syn --dport 80")
        }
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP), ipv6: true) }
        let syn = PacketBuilder.tcp(
            source: .v6(Lab.client6), sourcePort: 40070, destination: .v6(Lab.vip6), destinationPort: 80, flags: .syn)
        try sendGUE(lab, sourcePort: 30070, to: Lab.p1, inner: syn, hops: [Lab.p2])
        XCTAssertNotNil(
            capture.first { $0.count >= 20 && $0.be16(0) == 80 && $0.be16(2) == 40070 && $0[13] & 0x12 == 0x12 },
            "the VIP answered")
        let counters = try Lab.shell("ip netns exec \(lab.namespace("p1")) ip6tables -L INPUT -v -x -n")
        let packets = Dictionary(
            uniqueKeysWithValues: counters.split(separator: "\n").compactMap { line -> (String, UInt64)? in
                let words = line.split(separator: " ")
                guard words.count > 5, let count = UInt64(words[0]) else { return nil }
                return (String(words[4] == "*" ? words[3] : words[4]), count)
            })
        XCTAssertEqual(packets["eth0"], 1, counters)
        XCTAssertEqual(packets["lo"], 0, counters)
        XCTAssertEqual(try lab.stats("p1")["fast_path_accepted_syn"], 1)
    }

    func checkForwardingAlongTheHops() throws {
        // The client plays the last hop: it listens on the GUE port and also captures raw UDP to see checksums.
        let (receiver, capture) = try lab.inside("c") {
            (try LabSockets.bindUDP(.v4(Lab.client), port: GUEPacket.port), try Capture(protocol: Int32(IPPROTO_UDP)))
        }
        defer { close(receiver) }
        for zeroChecksum in [false, true] {
            let sourcePort: UInt16 = zeroChecksum ? 30003 : 30002
            let ack = PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: 40002, destination: .v4(Lab.vip), destinationPort: 80,
                flags: [.ack, .psh], sequence: 5, acknowledgement: 7, payload: Array("payload".utf8))
            try sendGUE(
                lab, sourcePort: sourcePort, to: Lab.p1, inner: ack, hops: [Lab.p2, Lab.client],
                zeroChecksum: zeroChecksum)

            var buffer = [UInt8](repeating: 0, count: 2048)
            var from = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let count = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(receiver, &buffer, buffer.count, 0, $0, &length)
                }
            }
            XCTAssertGreaterThan(count, 0, "nothing arrived at the last hop (zero checksum: \(zeroChecksum))")
            guard count > 0 else { continue }
            let payload = Array(buffer[0..<count])
            XCTAssertEqual(IPv4Address(UInt32(bigEndian: from.sin_addr.s_addr)), Lab.p2, "sent by the second hop")
            XCTAssertEqual(UInt16(bigEndian: from.sin_port), sourcePort, "UDP source port kept")
            XCTAssertEqual(payload[6], 2, "next_hop advanced twice")
            XCTAssertEqual(payload[7], 2, "hop count unchanged")
            XCTAssertEqual(Array(payload[16...]), ack, "inner packet unchanged")

            let raw = try XCTUnwrap(
                capture.first {
                    $0.count > 28 && $0[9] == 17 && $0.be16(22) == GUEPacket.port && $0.be16(20) == sourcePort
                })
            XCTAssertEqual(raw[8], 64, "TTL kept: forwarding hops do not route the packet")
            XCTAssertEqual(
                raw.be16(26) == 0, zeroChecksum,
                "a zero UDP checksum stays zero, a set one stays set (and valid: the socket got it)")
        }
        try lab.assertStats("p1", ["forwarded": 2])
        try lab.assertStats("p2", ["forwarded": 2])
    }

    /// A connection made through the director straight to P2, then the table changes so that its
    /// packets reach P1 first with P2 as the next hop.
    func establishOnP2ThenDrain(ipv6: Bool) throws -> (fd: Int32, port: UInt16, capture: Capture) {
        let table = lab.directory.appendingPathComponent("table").path
        try "\(Lab.p2)\n".write(toFile: table, atomically: true, encoding: .utf8)
        let director = try lab.start(
            "d", "glb-lab", ["director", "--self", Lab.director.description, "--table", table])
        try lab.waitFor("the director") { lab.log(of: director).contains("director: serving queue") }
        let vip: IPAddress = ipv6 ? .v6(Lab.vip6) : .v4(Lab.vip)
        let (fd, capture) = try lab.inside("c") {
            (try LabSockets.connectTCP(to: vip, port: 80), try Capture(protocol: Int32(IPPROTO_TCP), ipv6: ipv6))
        }
        var local = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        _ = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let port = UInt16(bigEndian: local.sin6_port)  // same offset in sockaddr_in and sockaddr_in6

        let first = Array("before the drain\n".utf8)
        XCTAssertTrue(SocketIO.sendAll(fd, first))
        XCTAssertEqual(LabSockets.receiveExactly(fd, first.count), first)
        let establishedOnP2 = try lab.stats("p2")["accepted_established"] ?? 0
        XCTAssertGreaterThan(establishedOnP2, 0)

        try "\(Lab.p1)\n\(Lab.p2) draining\n".write(toFile: table, atomically: true, encoding: .utf8)
        kill(director.processIdentifier, SIGHUP)
        try lab.waitFor("the director to reload") { lab.log(of: director).contains("table reloaded") }
        let forwardedBefore = try lab.stats("p1")["forwarded"] ?? 0
        let second = Array("after the drain: P1 forwards to P2\n".utf8)
        XCTAssertTrue(SocketIO.sendAll(fd, second))
        XCTAssertEqual(LabSockets.receiveExactly(fd, second.count), second, "the flow survived the table change")
        // The echo can overtake the counters: P1 counts a forward once its send returned.
        try lab.waitFor("P1 to count the packets it gave their second chance") {
            try lab.stats("p1").value("forwarded") > forwardedBefore
        }
        try lab.waitFor("P2 to count them as its own") {
            try lab.stats("p2").value("accepted_established") > establishedOnP2
        }

        // A new connection now lands on P1 and stays there.
        let fresh = try lab.inside("c") { try LabSockets.connectTCP(to: vip, port: 80) }
        defer { close(fresh) }
        let hello = Array("new flow\n".utf8)
        XCTAssertTrue(SocketIO.sendAll(fresh, hello))
        XCTAssertEqual(LabSockets.receiveExactly(fresh, hello.count), hello)
        return (fd, port, capture)
    }

    func testEstablishedFlowOnP2SurvivesWhenItsPacketsArriveAtP1() throws {
        let flow = try establishOnP2ThenDrain(ipv6: false)
        close(flow.fd)
    }

    func testIPv6FlowSurvivesTheDrainToo() throws {
        let flow = try establishOnP2ThenDrain(ipv6: true)
        close(flow.fd)
    }

    func testFragmentationNeededViaP1ReachesTheStackThatOwnsTheFlow() throws {
        let flow = try establishOnP2ThenDrain(ipv6: false)
        defer { close(flow.fd) }
        // The server's next sequence number, from the segments it sent us: the kernel ignores
        // ICMP quoting a sequence number outside its send window.
        var serverNext: UInt32?
        for packet in flow.capture.drain() {
            guard let tcp = packet.ipv4TCP, tcp.0 == Lab.vip, tcp.3 == flow.port else { continue }
            let end = tcp.5 &+ UInt32(tcp.7) &+ (tcp.4.contains(.syn) || tcp.4.contains(.fin) ? 1 : 0)
            if serverNext.map({ Int32(bitPattern: end &- $0) > 0 }) ?? true { serverNext = end }
        }
        let sequence = try XCTUnwrap(serverNext, "captured no segment from the server")
        let quoted = PacketBuilder.tcp(
            source: .v4(Lab.vip), sourcePort: 80, destination: .v4(Lab.client), destinationPort: flow.port,
            flags: [.ack, .psh], sequence: sequence, payload: [UInt8](repeating: 0x41, count: 1400))
        let icmp = PacketBuilder.icmpFragmentationNeeded(from: Lab.director, to: Lab.vip, mtu: 1200, original: quoted)
        try sendGUE(lab, sourcePort: 30010, to: Lab.p1, inner: icmp, hops: [Lab.p2])

        try lab.waitFor("P2 to learn the path MTU") {
            try Lab.shell("ip -n \(lab.namespace("p2")) route get \(Lab.client) from \(Lab.vip)").contains("mtu 1200")
        }
        XCTAssertFalse(
            try Lab.shell("ip -n \(lab.namespace("p1")) route get \(Lab.client) from \(Lab.vip)").contains("mtu 1200"))
    }

    func testLastHopAndSelfHopAreTakenLocallyAndHopsCannotLoop() throws {
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        func ack(_ port: UInt16) -> [UInt8] {
            PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 80, flags: .ack,
                sequence: 1, acknowledgement: 1)
        }
        // No hops left: P1's stack takes it and, knowing no such flow, resets it.
        try sendGUE(lab, sourcePort: 30020, to: Lab.p1, inner: ack(40020), hops: [])
        XCTAssertNotNil(
            capture.first { $0.ipv4TCP.map { $0.0 == Lab.vip && $0.3 == 40020 && $0.4.contains(.rst) } ?? false },
            "the last-resort packet reached P1's TCP stack")
        try lab.assertStats("p1", ["accepted_last_resort": 1])

        try sendGUE(lab, sourcePort: 30021, to: Lab.p1, inner: ack(40021), hops: [Lab.p1])
        try lab.waitFor("the self hop to be counted") { try lab.stats("p1")["forwarded_to_self"] == 1 }
        XCTAssertEqual(try lab.stats("p1")["forwarded"], 0)

        // A hop list bouncing between the proxies: next_hop only grows, so it ends after four forwards.
        try sendGUE(lab, sourcePort: 30022, to: Lab.p1, inner: ack(40022), hops: [Lab.p2, Lab.p1, Lab.p2, Lab.p1])
        func totals() throws -> (UInt64, UInt64) {
            let (s1, s2) = (try lab.stats("p1"), try lab.stats("p2"))
            return (
                (s1["forwarded"] ?? 0) + (s2["forwarded"] ?? 0),
                (s1["accepted_last_resort"] ?? 0) + (s2["accepted_last_resort"] ?? 0)
            )
        }
        // Each forward happens before the hop that takes the packet counts it: once the last
        // resort is counted, every forward of this packet is, and none can follow.
        try lab.waitFor("the bouncing packet to come to rest") { try totals().1 == 2 }
        let (forwarded, lastResort) = try totals()
        XCTAssertEqual(forwarded, 4)
        XCTAssertEqual(lastResort, 2)
    }

    /// Malformed GUE payloads, each with the reason it is dropped for: truncations, GUE's and the
    /// inner packet's fields, and walks past their limits.
    static func malformedPayloads() -> [(DropReason, [UInt8])] {
        let inner = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 40030, destination: .v4(Lab.vip), destinationPort: 80, flags: .ack)
        let good = PacketBuilder.guePayload(inner: inner, hops: [Lab.p2])
        let inner6 = PacketBuilder.tcp(
            source: .v6(Lab.client6), sourcePort: 40031, destination: .v6(Lab.vip6), destinationPort: 80, flags: .ack)
        let good6 = PacketBuilder.guePayload(inner: inner6, hops: [])
        func edit(_ bytes: [UInt8], _ change: (inout [UInt8]) -> Void) -> [UInt8] {
            var copy = bytes; change(&copy); return copy
        }
        let innerStart = 12
        return [
            (.gueTruncated, []),
            (.gueTruncated, [0x01, 0x04, 0x00]),
            (.gueVersion, edit(good) { $0[0] |= 0x40 }),
            (.gueControl, edit(good) { $0[0] |= 0x20 }),
            // glb-healthcheck's legacy "fou" check: GRE (key bit, IPv4) in UDP on the GUE port.
            (
                .gueControl,
                [0x20, 0, 0x08, 0, 0, 0, 0, 0]
                    + PacketBuilder.icmpEchoRequest(from: Lab.director, to: Lab.p1, payload: Array("glbhc_fou".utf8))
            ),
            (.gueFlags, edit(good) { $0[3] = 1 }),
            (.gueHeaderLength, edit(good) { $0[0] = 0 }),
            (.gueHeaderLength, edit(good) { $0[7] = 3 }),
            (.guePrivateType, edit(good) { $0[5] = 1 }),
            (.innerProtocol, edit(good) { $0[1] = 17 }),
            (.innerProtocol, edit(good) { $0[1] = 47 }),
            (.gueTruncated, Array(good.prefix(10))),
            (.innerTruncated, Array(good.prefix(innerStart + 10))),
            (.innerVersion, edit(good) { $0[innerStart] = 0x65 }),
            (.innerTruncated, edit(good) { $0.setBE16(innerStart + 2, 1400) }),
            (.innerTransport, edit(good) { $0[innerStart + 9] = 47 }),
            (.innerTruncated, edit(Array(good.prefix(innerStart + 30))) { $0.setBE16(innerStart + 2, 30) }),
            (.innerTruncated, edit(good) { $0[innerStart] = 0x43 }),
            (.innerTruncated, Array(good6.prefix(8 + 30))),
            (.innerTruncated, edit(good6) { $0.setBE16(8 + 4, 900) }),
            (.innerTransport, edit(good6) { $0[8 + 6] = 47 }),
            (.innerVersion, edit(good6) { $0[1] = 4 }),
            (
                .innerTruncated,
                PacketBuilder.guePayload(
                    inner: PacketBuilder.ip(
                        source: .v4(Lab.client), destination: .v4(Lab.vip), protocol: 1, transport: [3, 4, 0, 0],
                        checksumOffset: nil), hops: [])
            ),
            (
                .innerTruncated,
                PacketBuilder.guePayload(
                    inner: PacketBuilder.ip(
                        source: .v4(Lab.client), destination: .v4(Lab.vip), protocol: 1,
                        transport: [3, 4, 0, 0, 0, 0, 5, 0, 0x45, 0], checksumOffset: nil), hops: [])
            ),
            (
                .innerTruncated,
                edit(good6) { packet in
                    // Nine destination-options headers: more than the walk allows.
                    packet[8 + 6] = 60
                    let options = (0..<9).flatMap { index in [index == 8 ? 6 : 60, 0, 1, 4, 0, 0, 0, 0] as [UInt8] }
                    packet.insert(contentsOf: options, at: 8 + 40)
                    packet.setBE16(8 + 4, UInt16(packet.count - 8 - 40))
                }
            ),
        ]
    }

    func testMalformedPacketsAreDroppedAndCountedAndTheDaemonKeepsAnswering() throws {
        let cases = Self.malformedPayloads()
        for (index, (_, payload)) in cases.enumerated() {
            try sendUDP(lab, sourcePort: 31000 + UInt16(index), to: Lab.p1, payload: payload)
        }
        var expected: [String: UInt64] = [:]
        for (reason, _) in cases { expected["dropped_malformed_\(reason.rawValue)", default: 0] += 1 }
        try lab.waitFor("all malformed packets to be counted") {
            try lab.stats("p1")["dropped_malformed"] == UInt64(cases.count)
        }
        let stats = try lab.stats("p1")
        for (name, count) in expected { XCTAssertEqual(stats[name], count, name) }
        XCTAssertEqual(stats["total_packets"], UInt64(cases.count))

        // Still answering.
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        let syn = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 40032, destination: .v4(Lab.vip), destinationPort: 80, flags: .syn,
            sequence: 9)
        try sendGUE(lab, sourcePort: 30032, to: Lab.p1, inner: syn, hops: [Lab.p2])
        XCTAssertNotNil(synAck(from: capture, port: 40032))
    }

    func testIPv6SYNInsideIPv4GUEIsAnsweredOverIPv6() throws {
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP), ipv6: true) }
        let syn = PacketBuilder.tcp(
            source: .v6(Lab.client6), sourcePort: 40040, destination: .v6(Lab.vip6), destinationPort: 80,
            flags: .syn, sequence: 77)
        try sendGUE(lab, sourcePort: 30040, to: Lab.p1, inner: syn, hops: [Lab.p2])
        // Raw IPv6 sockets receive the transport header only.
        let reply = capture.first { $0.count >= 20 && $0.be16(0) == 80 && $0.be16(2) == 40040 && $0[13] & 0x12 == 0x12 }
        let segment = try XCTUnwrap(reply, "no IPv6 SYN-ACK from the VIP")
        XCTAssertEqual(segment.be32(8), 78)
        try lab.assertStats("p1", ["accepted_syn": 1])
    }

    /// glb-director #64: a client behind a 6to4 relay has a 2002::/16 address whose embedded IPv4
    /// address is the relay's, not the director's. With fou, sit drops its packets as spoofed;
    /// second-chance hands them to the stack itself. The client's address here is the 6to4 image
    /// of a test-range relay (198.18.0.99), the director's GUE comes from 198.18.0.1; the kernel
    /// lab runs this with fou.
    func testASixToFourClientIsAnsweredInEveryDecapsulationMode() throws {
        let client = try XCTUnwrap(IPv6Address("2002:c612:63::1"))
        try Lab.shell(
            """
            ip -n \(lab.namespace("c")) -6 addr add \(client)/128 dev eth0 nodad && \
            ip -n \(lab.namespace("p1")) -6 route add 2002:c612:63::/48 via \(Lab.client6)
            """)
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP), ipv6: true) }
        let syn = PacketBuilder.tcp(
            source: .v6(client), sourcePort: 40070, destination: .v6(Lab.vip6), destinationPort: 80, flags: .syn,
            sequence: 700)
        try sendGUE(lab, sourcePort: 30070, to: Lab.p1, inner: syn, hops: [Lab.p2])
        let reply = capture.first { $0.count >= 20 && $0.be16(0) == 80 && $0.be16(2) == 40070 && $0[13] & 0x12 == 0x12 }
        XCTAssertEqual(try XCTUnwrap(reply, "no SYN-ACK for the 6to4 client").be32(8), 701)
        try lab.assertStats("p1", ["accepted_syn": 1])
    }

    func testValidSYNCookieACKIsTakenAndAnInvalidOneForwarded() throws {
        // A listener that never accepts, with a one-entry SYN queue; the client never answers SYN-ACKs.
        let listener = try lab.inside("p1") { try LabSockets.listenTCP(on: .v4(Lab.vip), port: 8080, backlog: 1) }
        defer { close(listener) }
        try Lab.shell("ip netns exec \(lab.namespace("c")) iptables -A OUTPUT -p tcp --tcp-flags RST RST -j DROP")
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        func send(_ port: UInt16, _ flags: TCPFlags, seq: UInt32, ack: UInt32 = 0, hops: [IPv4Address] = [Lab.p2])
            throws
        {
            let packet = PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 8080,
                flags: flags, sequence: seq, acknowledgement: ack,
                options: flags == .syn ? [2, 4, 0x05, 0xb4] : [])
            try sendGUE(lab, sourcePort: 30050, to: Lab.p1, inner: packet, hops: hops)
        }
        for port in UInt16(41000)..<41004 { try send(port, .syn, seq: 100) }
        try lab.waitFor("the four SYNs to reach P1's stack") { try lab.stats("p1").value("accepted_syn") == 4 }
        // The SYN queue is full now: these get cookies. The valid ACK and the invalid one belong to
        // two flows: the valid one makes a connection, which the other's 4-tuple would then find
        // (the tc program takes the valid one at once while the invalid one goes up to the queue).
        try send(41100, .syn, seq: 5000)
        try send(41101, .syn, seq: 5000)
        // Both SYN-ACKs in one pass, in whichever order they come: once the responder serves the
        // listener, it passes one SYN to the kernel and answers the other itself, and its answer
        // (from the tc program, or the queue's raw socket before the batch's verdicts) can come first.
        var cookies: [UInt16: UInt32] = [:]
        _ = capture.first { packet in
            if let tcp = packet.ipv4TCP, tcp.0 == Lab.vip, [41100, 41101].contains(tcp.3),
                tcp.4.contains([.syn, .ack])
            {
                cookies[tcp.3] = cookies[tcp.3] ?? tcp.5
            }
            return cookies.count == 2
        }
        let cookie = try XCTUnwrap(cookies[41100], "P1 sent no SYN-ACK for 41100")
        let otherCookie = try XCTUnwrap(cookies[41101], "P1 sent no SYN-ACK for 41101")
        let netstat = try Lab.shell("ip netns exec \(lab.namespace("p1")) cat /proc/net/netstat")
        XCTAssertGreaterThan(
            ProcFile.counter("SyncookiesSent", section: "TcpExt", in: netstat) ?? 0, 0, "the kernel issued cookies")
        sleep(1)  // let the daemon's once-a-second look at SyncookiesSent notice the rise

        let before = try lab.stats("p1")
        try send(41101, .ack, seq: 5001, ack: otherCookie &+ 2)  // wrong cookie
        try send(41100, .ack, seq: 5001, ack: cookie &+ 1)  // the kernel's cookie
        // Counted once carried out: a forward when its batch is sent, after the packet's total.
        try lab.waitFor("both ACKs to be carried out") {
            let now = try lab.stats("p1")
            return try now.value("accepted_syn_cookie") > before.value("accepted_syn_cookie")
                && now.value("forwarded") > before.value("forwarded")
        }
        let after = try lab.stats("p1")
        XCTAssertEqual(
            (after["accepted_syn_cookie"] ?? 0) - (before["accepted_syn_cookie"] ?? 0), 1,
            "the valid cookie ACK was taken")
        XCTAssertEqual((after["forwarded"] ?? 0) - (before["forwarded"] ?? 0), 1, "the invalid one went on to P2")
        XCTAssertGreaterThanOrEqual((after["syn_cookie_checks"] ?? 0) - (before["syn_cookie_checks"] ?? 0), 2)
        let syncookiesRecv = try Lab.shell("ip netns exec \(lab.namespace("p1")) cat /proc/net/netstat")
        XCTAssertGreaterThan(
            ProcFile.counter("SyncookiesRecv", section: "TcpExt", in: syncookiesRecv) ?? 0, 0,
            "P1's kernel took the cookie ACK")
    }

    func testSecondDaemonOnTheSameQueueFailsClearlyAndSIGTERMStopsCleanly() throws {
        let duplicate = try lab.runToEnd(
            "p1", "second-chance",
            ["run", "--queue", "0", "--self", Lab.p1.description, "--control", lab.controlPath("dup")] + Lab.labPeers)
        XCTAssertNotEqual(duplicate.status, 0)
        XCTAssertTrue(duplicate.output.contains("already bound by another process"), duplicate.output)

        // SIGTERM with packets waiting: a daemon on queue 7 (fed by its own rule) is stopped while 50
        // SYNs queue, then told to stop and let go on: every one is answered before it exits.
        try Lab.shell(
            """
            ip netns exec \(lab.namespace("p1")) iptables -t raw -I PREROUTING -p udp --dport 19523 -s 198.18.0.40 -j \
            NFQUEUE --queue-num 7
            """
        )
        try Lab.shell("ip -n \(lab.namespace("c")) addr add 198.18.0.40/24 dev eth0")
        let spare = try lab.start(
            "p1", "second-chance",
            ["run", "--queue", "7", "--self", Lab.p1.description, "--control", lab.controlPath("spare")] + Lab.labPeers)
        try lab.waitFor("the spare daemon") { FileManager.default.fileExists(atPath: lab.controlPath("spare")) }
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        try stopProcess(spare.processIdentifier)
        let ports = UInt16(44000)..<44050
        for port in ports {
            let syn = PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 80, flags: .syn,
                sequence: 1)
            try sendGUE(lab, source: IPv4Address("198.18.0.40")!, sourcePort: 30090, to: Lab.p1, inner: syn, hops: [])
        }
        spare.terminate()
        kill(spare.processIdentifier, SIGCONT)
        spare.waitUntilExit()
        XCTAssertEqual(spare.terminationStatus, 0)
        XCTAssertTrue(lab.log(of: spare).contains("stopped; all read packets answered"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: lab.controlPath("spare")), "control socket removed")
        var answered = Set<UInt16>()
        try? lab.waitFor("the SYN-ACKs", seconds: 3) {
            for packet in capture.drain() {
                if let tcp = packet.ipv4TCP, tcp.0 == Lab.vip, tcp.4.contains([.syn, .ack]) { answered.insert(tcp.3) }
            }
            return answered == Set(ports)
        }
        XCTAssertEqual(answered, Set(ports), "every SYN queued before the stop was decided and answered by P1's stack")
    }

    /// A daemon on queues 3 and 4 fed by --queue-balance 3:4 from client addresses 198.18.0.16/28,
    /// and one of those addresses for each queue, found by asking: a RST from each address, until
    /// both queue threads have counted one (the balance hash covers the outer addresses and
    /// protocol, and its seed is drawn at boot, so no fixed choice of addresses is sure to reach
    /// both). A probe's queue is the series whose count rose, named by its labels alone: the
    /// counts differ from one probe to the next whichever queue took them.
    func balancedDaemon(extra: [String] = []) throws -> (sources: [IPv4Address], first: IPv4Address, other: IPv4Address)
    {
        try Lab.shell(
            """
            ip netns exec \(lab.namespace("p2")) iptables -t raw -I PREROUTING -p udp --dport 19523 -s 198.18.0.16/28 \
            -j NFQUEUE --queue-balance 3:4
            """
        )
        try lab.start(
            "p2", "second-chance",
            // NFQUEUE alone: the probes are SYNs, which the tc program would take before any queue.
            ["run", "--queue", "3", "--queue", "4", "--self", Lab.p2.description, "--fast-path", "off"] + Lab.labPeers
                + extra
                + ["--control", lab.controlPath("balanced"), "--metrics", "\(Lab.p2):9523"])
        try lab.waitFor("the balanced daemon") { FileManager.default.fileExists(atPath: lab.controlPath("balanced")) }
        func queueTotals() throws -> [String] {
            try lab.inside("c") { try Lab.httpGet(.v4(Lab.p2), port: 9523) }.split(separator: "\n")
                .filter { $0.hasPrefix("second_chance_queue_packets_total{") }.map(String.init).sorted()
        }
        var queueOf: [IPv4Address: [Substring]] = [:]
        var sources: [IPv4Address] = []
        for last in 16...31 {
            let source = IPv4Address("198.18.0.\(last)")!
            try Lab.shell("ip -n \(lab.namespace("c")) addr add \(source)/24 dev eth0")
            sources.append(source)
            let before = try queueTotals()
            let probe = PacketBuilder.tcp(
                source: .v4(source), sourcePort: 5000, destination: .v4(Lab.vip), destinationPort: 9, flags: .rst)
            try sendGUE(lab, source: source, sourcePort: 30070 + UInt16(last), to: Lab.p2, inner: probe, hops: [])
            try lab.waitFor("the probe from \(source)") { try queueTotals() != before }
            queueOf[source] = zip(before, try queueTotals()).filter { $0 != $1 }.map { $0.0.prefix { $0 != " " } }
            if let first = sources.first, let other = sources.first(where: { queueOf[$0] != queueOf[first] }) {
                try lab.waitFor("the probes to be counted") {
                    try lab.stats("balanced")["total_packets"] == UInt64(sources.count)
                }
                return (sources, first, other)
            }
        }
        throw LabError("all 16 addresses of 198.18.0.16/28 hashed to one queue: \(queueOf)")
    }

    func testQueueBalanceRunsAThreadPerQueueAndMetricsAreServed() throws {
        let (probed, first, other) = try balancedDaemon()
        let sources = [first, other]
        for (index, source) in sources.enumerated() {
            let syn = PacketBuilder.tcp(
                source: .v4(source), sourcePort: 42000 + UInt16(index), destination: .v4(Lab.vip), destinationPort: 80,
                flags: .syn)
            try sendGUE(lab, source: source, sourcePort: 30060, to: Lab.p2, inner: syn, hops: [])
        }
        try lab.waitFor("all SYNs to be taken") { try lab.stats("balanced")["accepted_syn"] == UInt64(sources.count) }

        let metrics = try lab.inside("c") { try Lab.httpGet(.v4(Lab.p2), port: 9523) }
        XCTAssertTrue(metrics.hasPrefix("HTTP/1.1 200 OK"), metrics)
        XCTAssertTrue(
            metrics.contains(
                "second_chance_packets_local_total{reason=\"accepted_syn\",path=\"queue\"} \(sources.count)"), metrics)
        let perQueue = metrics.split(separator: "\n").filter { $0.hasPrefix("second_chance_queue_packets_total{") }
        XCTAssertEqual(perQueue.count, 2)
        let counted = perQueue.compactMap { $0.split(separator: " ").last.flatMap { UInt64($0) } }
        XCTAssertEqual(counted.reduce(0, +), UInt64(probed.count + sources.count), "\(perQueue)")
        XCTAssertTrue(counted.allSatisfy { $0 >= 2 }, "both queue threads took a probe and a SYN: \(perQueue)")
        XCTAssertEqual(try lab.stats("p2")["total_packets"], 0, "the queue-0 daemon saw none of them")
    }

    /// Clients of the metrics port that connect and send nothing (anyone who reaches the port can)
    /// hold up scrapes, not the control socket: `stats` is answered at once. On one thread for
    /// both, each of the eight held it for its one-second read timeout.
    func testAStalledMetricsClientDoesNotDelayTheControlSocket() throws {
        try lab.start(
            "p2", "second-chance",
            ["run", "--queue", "6", "--self", Lab.p2.description] + Lab.labPeers + [
                "--control", lab.controlPath("scraped"), "--metrics", "\(Lab.p2):9524",
            ])
        try lab.waitFor("the daemon") { FileManager.default.fileExists(atPath: lab.controlPath("scraped")) }
        let stalled = try lab.inside("c") {
            try (0..<8).map { _ in try LabSockets.connectTCP(to: .v4(Lab.p2), port: 9524) }
        }
        usleep(100_000)  // the server has taken the first of them
        let started = MonotonicClock.nanoseconds()
        XCTAssertNotNil(try lab.stats("scraped")["total_packets"])
        let waited = Double(MonotonicClock.nanoseconds() - started) / 1e9
        XCTAssertLessThan(waited, 0.5, "stats waited \(waited) s behind the stalled scrapers")
        // Once they hang up, scrapes are answered again.
        stalled.forEach { close($0) }
        let scrape = try lab.inside("c") { try Lab.httpGet(.v4(Lab.p2), port: 9524) }
        XCTAssertTrue(scrape.hasPrefix("HTTP/1.1 200 OK"), scrape)
    }

    /// A "not here" answer cached on one queue thread must not outlive a SYN another thread let
    /// this host take: the SYN bumps the flow's epoch, which every thread checks.
    func testANotHereCachedOnOneThreadIsVoidedByASYNTakenOnAnother() throws {
        let (sources, first, other) = try balancedDaemon(extra: ["--negative-cache-ms", "60000"])
        let flow = (client: Lab.client, port: UInt16(41000))
        let ack = PacketBuilder.tcp(
            source: .v4(flow.client), sourcePort: flow.port, destination: .v4(Lab.vip), destinationPort: 80,
            flags: .ack, sequence: 2, acknowledgement: 2)
        // 1. On the first thread, an ACK of an unknown flow: not here, forwarded to P1, and the answer cached.
        try sendGUE(lab, source: first, sourcePort: 30080, to: Lab.p2, inner: ack, hops: [Lab.p1])
        try lab.waitFor("the forward") { try lab.stats("balanced")["forwarded"] == 1 }
        // 2. On the other thread, the flow's SYN: taken, so P2 now holds a request socket for it.
        let syn = PacketBuilder.tcp(
            source: .v4(flow.client), sourcePort: flow.port, destination: .v4(Lab.vip), destinationPort: 80,
            flags: .syn, sequence: 1)
        try sendGUE(lab, source: other, sourcePort: 30081, to: Lab.p2, inner: syn, hops: [Lab.p1])
        try lab.waitFor("the SYN") { try lab.stats("balanced")["accepted_syn"] == 1 }
        // 3. The first thread again: its cached "not here" is void; the flow is P2's now.
        try sendGUE(lab, source: first, sourcePort: 30080, to: Lab.p2, inner: ack, hops: [Lab.p1])
        try lab.waitFor("the second ACK") { try lab.stats("balanced")["total_packets"] == UInt64(sources.count) + 3 }
        let stats = try lab.stats("balanced")
        XCTAssertEqual(stats["forwarded"], 1, "the stale answer was not used: \(stats)")
        XCTAssertEqual(stats["accepted_established"], 1, "the request socket was found: \(stats)")
    }

    /// A "pod" namespace as a container runtime makes one: a veth pair from p1, 198.18.9.10 on its
    /// `lo`, routed there by p1.
    func makePod() throws -> String {
        let pod = lab.namespace("pod")
        let p1 = lab.namespace("p1")
        try Lab.shell(
            """
            ip netns add \(pod) && ip -n \(pod) link set lo up && ip -n \(pod) addr add 198.18.9.10/32 dev lo && \
            ip -n \(p1) link add vpod type veth peer name eth0 netns \(pod) && ip -n \(p1) link set vpod up && \
            ip -n \(pod) link set eth0 up && ip -n \(p1) route add 198.18.9.10/32 dev vpod
            """
        )
        return pod
    }

    func testNetnsLooksSocketsUpInTheNamedNamespace() throws {
        // The pod holds an established connection 198.18.9.1 -> 198.18.9.10:80.
        let pod = try makePod()
        defer { _ = try? Lab.shell("ip netns del \(pod)") }
        try Lab.shell("ip -n \(pod) addr add 198.18.9.1/32 dev lo")
        let (listener, clientFD, serverFD) = try lab.inside("pod") { () -> (Int32, Int32, Int32) in
            let listener = try LabSockets.listenTCP(on: .v4(IPv4Address("198.18.9.10")!), port: 80)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            _ = SocketAddress(.v4(IPv4Address("198.18.9.1")!), port: 45000).withSockaddr { bind(fd, $0, $1) }
            guard SocketAddress(.v4(IPv4Address("198.18.9.10")!), port: 80).withSockaddr({ connect(fd, $0, $1) }) == 0
            else {
                throw SystemError("connect in pod")
            }
            return (listener, fd, try acceptConnection(listener))
        }
        defer { close(listener); close(clientFD); close(serverFD) }
        // The connection outlives its client address; without it the client is no longer this
        // host, which second-chance requires of the source of anything it delivers.
        try Lab.shell("ip -n \(pod) addr del 198.18.9.1/32 dev lo")

        let source = IPv4Address("198.18.0.31")!
        try Lab.shell("ip -n \(lab.namespace("c")) addr add \(source)/24 dev eth0")
        try Lab.shell(
            """
            ip netns exec \(lab.namespace("p1")) iptables -t raw -I PREROUTING -p udp --dport 19523 -s \(source) -j \
            NFQUEUE --queue-num 5
            """
        )
        try lab.start(
            "p1", "second-chance",
            [
                "run", "--queue", "5", "--self", Lab.p1.description, "--control", lab.controlPath("pod"),
                "--netns", "/run/netns/\(pod)", "--fast-path", "off",
            ] + Lab.labPeers)
        try lab.waitFor("the --netns daemon") { FileManager.default.fileExists(atPath: lab.controlPath("pod")) }

        let ack = PacketBuilder.tcp(
            source: .v4(IPv4Address("198.18.9.1")!), sourcePort: 45000, destination: .v4(IPv4Address("198.18.9.10")!),
            destinationPort: 80, flags: .ack, sequence: 1, acknowledgement: 1)
        try sendGUE(lab, source: source, sourcePort: 30070, to: Lab.p1, inner: ack, hops: [Lab.p2])
        try lab.waitFor("the pod's flow to be found") { try lab.stats("pod")["accepted_established"] == 1 }
        // The same packet to a daemon that looks in its own namespace finds nothing and forwards it.
        try sendGUE(lab, sourcePort: 30071, to: Lab.p2, inner: ack, hops: [Lab.client])
        try lab.waitFor("p2 to forward") { try lab.stats("p2")["forwarded"] == 1 }
        XCTAssertEqual(try lab.stats("pod")["forwarded"], 0)
    }

    /// Root in the sockets' namespace (`--netns`) owns that namespace's addresses and routes, not
    /// the host's decisions: an address it adds is a destination only where the host routes it
    /// there, never makes a client's source martian, never turns a hop into this host. The daemon
    /// alone decides p1's GUE (its own program on eth0 with the fast path).
    func testRootInTheSocketsNamespaceDecidesNothingForTheHost() throws {
        for entry in lab.processes where entry.name == "p1 second-chance" {
            entry.process.terminate()
            entry.process.waitUntilExit()
        }
        let pod = try makePod()
        defer { _ = try? Lab.shell("ip netns del \(pod)") }
        try lab.startSecondChance("p1", Lab.p1, extra: ["--netns", "/run/netns/\(pod)"])
        let client = IPv4Address("198.18.7.7")!
        func syn(_ source: IPv4Address, to destination: IPv4Address, port: UInt16) throws {
            let packet = PacketBuilder.tcp(
                source: .v4(source), sourcePort: port, destination: .v4(destination), destinationPort: 80,
                flags: .syn, sequence: 1, acknowledgement: 0)
            try sendGUE(lab, sourcePort: port, to: Lab.p1, inner: packet, hops: [Lab.p2])
        }
        func counted(_ name: String, _ expected: UInt64) throws {
            do {
                try lab.waitFor("\(name) = \(expected)") { (try lab.stats("p1")[name] ?? 0) == expected }
            } catch {
                // Where the packets went instead: every counter that moved.
                let moved = try lab.stats("p1").filter { $0.value != 0 }.sorted { $0.key < $1.key }
                throw LabError("\(error); moved: \(moved.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
            }
        }
        try syn(client, to: IPv4Address("198.18.9.10")!, port: 31001)
        try counted("accepted_syn", 1)

        // Sends SYNs (a new port each, every 50 ms) until `counter` rises: the watcher has read
        // what just changed. Bounded by the lab's wait.
        func synsUntil(_ counter: String, risesFor destination: IPv4Address, from port: UInt16) throws {
            let before = try lab.stats("p1")[counter] ?? 0
            var port = port
            try lab.waitFor("\(counter) to rise for SYNs to \(destination)") {
                port += 1
                try syn(client, to: destination, port: port)
                usleep(50_000)
                return (try lab.stats("p1")[counter] ?? 0) > before
            }
        }

        // The pod's root: an address and a local range the host does not route there, the
        // client's address, and p2's; then one more address the host does route there, whose
        // first accepted SYN shows the watcher has read all of it.
        let p1 = lab.namespace("p1")
        try Lab.shell(
            """
            ip -n \(pod) addr add 198.18.66.6/32 dev lo && ip -n \(pod) route add local 198.18.67.0/24 dev lo && \
            ip -n \(pod) addr add \(client)/32 dev lo && ip -n \(pod) addr add \(Lab.p2)/32 dev lo && \
            ip -n \(pod) addr add 198.18.9.11/32 dev lo && ip -n \(p1) route add 198.18.9.11/32 dev vpod
            """)
        try synsUntil("accepted_syn", risesFor: IPv4Address("198.18.9.11")!, from: 31100)
        // SYNs to 198.18.9.11 sent before the watcher read its route were dropped as not local:
        // count from here.
        let accepted = try lab.stats("p1")["accepted_syn"] ?? 0
        let notLocal = try lab.stats("p1")["dropped_not_local_destination"] ?? 0
        try syn(client, to: IPv4Address("198.18.9.10")!, port: 31002)
        try counted("accepted_syn", accepted + 1)
        try syn(client, to: IPv4Address("198.18.66.6")!, port: 31003)
        try syn(client, to: IPv4Address("198.18.67.9")!, port: 31004)
        try counted("dropped_not_local_destination", notLocal + 2)
        let before = try lab.stats("p1")["forwarded"] ?? 0
        let ack = PacketBuilder.tcp(
            source: .v4(client), sourcePort: 31005, destination: .v4(IPv4Address("198.18.9.10")!),
            destinationPort: 80, flags: .ack, sequence: 1, acknowledgement: 1)
        try sendGUE(lab, sourcePort: 31005, to: Lab.p1, inner: ack, hops: [Lab.p2])
        try counted("forwarded", before + 1)
        XCTAssertEqual(try lab.stats("p1")["dropped_martian_source"] ?? 0, 0)
        XCTAssertEqual(try lab.stats("p1")["forwarded_to_self"] ?? 0, 0)

        // The host's route is what counts, and it is followed, both ways.
        try Lab.shell("ip -n \(p1) route del 198.18.9.10/32 dev vpod")
        try synsUntil("dropped_not_local_destination", risesFor: IPv4Address("198.18.9.10")!, from: 31200)
        try Lab.shell("ip -n \(p1) route add 198.18.9.10/32 dev vpod")
        try synsUntil("accepted_syn", risesFor: IPv4Address("198.18.9.10")!, from: 31300)
    }

    /// The GUE MTU black hole: with the director's path at MTU 1500 and two hops, the MSS the
    /// proxy's routes advertise (1460) makes 1544-byte GUE packets. Doctor fails, names the MSS to
    /// advertise instead and the listeners that would offer more (not one whose TCP_MAXSEG is
    /// low enough), and is content once the routes advertise it. Through the director an upload
    /// stalls before the clamp and 10 MiB arrive after it.
    func testDoctorFindsTheGUEMTUBlackHoleAndTheClampCarriesAnUpload() throws {
        let p1 = lab.namespace("p1")
        for host in ["d", "p1"] { try Lab.shell("ip -n \(lab.namespace(host)) link set eth0 mtu 1500") }
        let clamped = try lab.inside("p1") { try LabSockets.listenTCP(on: .v4(Lab.vip), port: 8443) }
        defer { close(clamped) }
        var mss: Int32 = 1400
        XCTAssertEqual(setsockopt(clamped, Int32(IPPROTO_TCP), TCP_MAXSEG, &mss, 4), 0)
        let flags = ["doctor", "--allow-source", "198.18.0.0/24", "--max-hops", "2"]
        let (status, before) = try lab.runToEnd("p1", "second-chance", flags)
        XCTAssertEqual(status, 1, before)
        XCTAssertTrue(before.contains("[FAIL] GUE MTU: eth0 (MTU 1500), 2 hops: the route to"), before)
        XCTAssertTrue(before.contains("advertises MSS 1460 and listeners 198.19.0.10:80 (MSS 1460)"), before)
        XCTAssertTrue(before.contains("a full-size segment arrives as a 1544-byte"), before)
        XCTAssertFalse(before.contains(":8443"), "TCP_MAXSEG 1400 fits: \(before)")
        XCTAssertTrue(before.contains("advmss 1416"), before)

        let table = lab.directory.appendingPathComponent("table").path
        // P1 first for every flow, P2 its second chance: one hop in every GUE packet.
        try "\(Lab.p1)\n\(Lab.p2) draining\n".write(toFile: table, atomically: true, encoding: .utf8)
        let director = try lab.start(
            "d", "glb-lab", ["director", "--self", Lab.director.description, "--table", table])
        try lab.waitFor("the director") { lab.log(of: director).contains("director: serving queue") }
        let stalled = try upload(1 << 20, port: 8081, seconds: 3)
        XCTAssertLessThan(stalled, 1 << 20, "the full-size segments are lost on the director's path")

        try lab.clampRoutes("p1", ipv4: 1416, ipv6: 1396)
        let (_, after) = try lab.runToEnd("p1", "second-chance", flags)
        XCTAssertTrue(after.contains("[ ok ] GUE MTU: eth0 (MTU 1500) carries full-size segments with 2 hops"), after)
        XCTAssertEqual(try upload(10 << 20, port: 8082, seconds: 60), 10 << 20, "the clamped segments fit")
    }

    /// Sends `bytes` from the client to a listener on the VIP through the director, within
    /// `seconds`; how many bytes the listener's connection read by then.
    func upload(_ bytes: Int, port: UInt16, seconds: Double) throws -> Int {
        let listener = try lab.inside("p1") { try LabSockets.listenTCP(on: .v4(Lab.vip), port: port) }
        defer { close(listener) }
        let client = try lab.inside("c") { try LabSockets.connectTCP(to: .v4(Lab.vip), port: port, timeoutSeconds: 5) }
        defer { close(client) }
        let accepted = try acceptConnection(listener)
        defer { close(accepted) }
        SocketOptions.setTimeouts(accepted, seconds: 1)
        let received = ReceivedBytes()
        let deadline = Lab.deadline(after: seconds)
        let reader = try WorkerThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while received.value < bytes && Date() < deadline {
                let count = recv(accepted, &buffer, buffer.count, 0)
                if count > 0 { received.add(count) } else if count == 0 { break }
            }
        }
        // The socket's buffer takes what the path does not: the sender never waits past the deadline.
        SocketOptions.setTimeouts(client, seconds: Int(seconds.rounded(.up)))
        _ = SocketIO.sendAll(client, [UInt8](repeating: 0x5a, count: bytes))
        reader.join()
        return received.value
    }

    func testDoctorPassesOnAProxyAndExplainsWhatIsMissingElsewhere() throws {
        // The lab's 1600-byte links would carry 1560-byte segments no GLB path takes with four
        // hops: the routes advertise what the clients' 1500-byte links carry, as a proxy's should.
        try lab.clampRoutes("p1", ipv4: 1460, ipv6: 1440)
        let (status, report) = try lab.runToEnd(
            "p1", "second-chance", ["doctor", "--allow-source", "198.18.0.2,198.18.0.11"])
        XCTAssertEqual(status, 0, report)
        XCTAssertTrue(
            report.contains(
                """
                [ ok ] iptables: -A PREROUTING -s 198.18.0.0/24 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 \
                --queue-bypass
                """
            ), report)
        XCTAssertTrue(report.contains("[ ok ] --allow-source: 198.18.0.2/32, 198.18.0.11/32"), report)
        XCTAssertFalse(report.contains("takes GUE from every host"), report)
        XCTAssertFalse(report.contains("is not dropped"), report)
        XCTAssertTrue(report.contains("[ ok ] sock_diag"), report)
        XCTAssertTrue(report.contains("SYN cookies"), report)

        try Lab.shell(
            "ip netns exec \(lab.namespace("c")) sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.tcp_syncookies=0")
        let (clientStatus, advice) = try lab.runToEnd("c", "second-chance", ["doctor"])
        XCTAssertEqual(clientStatus, 1, advice)
        XCTAssertTrue(advice.contains("[FAIL] iptables: no raw PREROUTING NFQUEUE rule for UDP 19523"), advice)
        XCTAssertTrue(
            advice.contains("fix: iptables -t raw -A PREROUTING -s PEERS -p udp --dport 19523 -j NFQUEUE"), advice)
        XCTAssertTrue(advice.contains("[warn] rp_filter"), advice)
        XCTAssertTrue(advice.contains("[warn] tcp_syncookies"), advice)

        // A rule that hears every host, and a daemon told to hear every host, are both named.
        try Lab.shell(
            """
            ip netns exec \(lab.namespace("c")) iptables -t raw -A PREROUTING -p udp --dport 19523 -j NFQUEUE \
            --queue-num 0 --queue-bypass
            """
        )
        let (_, open) = try lab.runToEnd("c", "second-chance", ["doctor", "--allow-source", "0.0.0.0/0"])
        XCTAssertTrue(open.contains("[warn] iptables: the NFQUEUE rule takes GUE from every host"), open)
        XCTAssertTrue(open.contains("[warn] --allow-source: 0.0.0.0/0"), open)
    }
}
