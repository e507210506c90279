import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import XCTest

/// The attacker's packets against every path that decides GUE, with the shipped rules loaded
/// (examples/iptables/rules.v4, its peers filled in): the tc program on both of P1's links, then
/// the queue alone (`--fast-path off`); in the kernel lab (PROXYSIDE_FOU), the queue with fou
/// decapsulating. P1 has a second link to an outside
/// host X carrying its default route. Whatever decides, an attacker's packet reaches no socket (Tcp
/// InSegs), is forwarded by nobody (Ip ForwDatagrams, the daemon's `forwarded`, nothing at X),
/// and is answered by nobody (no TCP at the client or X); a damaged SYN reaches TCP only to be
/// dropped there. Each row is checked to have been seen (decided or dropped by a rule), and a
/// director's SYN is answered on every path, so no row passes on a path that heard nothing.
final class DataPathMatrixTests: XCTestCase {
    var lab: Lab!

    override func setUpWithError() throws {
        lab = try Lab(prefix: "psdx")
        try lab.addOutsideHost()
        try lab.startEcho("p1")
        try loadShippedRules()
        try Lab.shell("ip -n \(lab.namespace("c")) addr add \(Self.outsider)/32 dev eth0")
        // A proxy that forwards (the program forwards only where the arrival interface does): a
        // packet decapsulated for a foreign address would leave again, by X's link.
        try Lab.shell("ip netns exec \(lab.namespace("p1")) sysctl -qw net.ipv4.ip_forward=1")
        // P2's neighbour entry, as a busy proxy has it: the program forwards without going up.
        try Lab.shell(
            """
            ip -n \(lab.namespace("p1")) neigh replace \(Lab.p2) dev eth0 nud reachable lladdr \
            $(ip -n \(lab.namespace("p2")) -o link show eth0 | sed 's/.*link.ether \\([^ ]*\\).*/\\1/')
            """)
    }

    override func tearDown() {
        lab?.tearDown()
        _ = try? Lab.shell("ip netns del \(lab.namespace("x")) 2>/dev/null")
    }

    static let outsider = IPv4Address("198.18.1.66")!, foreignVIP = IPv4Address("198.19.7.7")!
    static let labPeers = "198.18.0.0/24"

    /// The shipped file, its example peer lines replaced by the lab's range, in place of the
    /// topology's rules.
    func loadShippedRules() throws {
        let rules = Lab.packageRoot.appendingPathComponent("examples/iptables/rules.v4").path
        let queue =
            "-A PREROUTING -s \(Self.labPeers) -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass"
        try Lab.shell(
            """
            sed -e '/^-A PREROUTING -s .*NFQUEUE/d' \
            -e 's|^-A PREROUTING -p udp -m udp --dport 19523 -j DROP|\(queue)\\n&|' \(rules) | \
            ip netns exec \(lab.namespace("p1")) iptables-restore
            """)
        let loaded = try Lab.shell("ip netns exec \(lab.namespace("p1")) iptables -t raw -S PREROUTING")
        XCTAssertTrue(loaded.contains("rpfilter --invert -j DROP") && loaded.contains(Self.labPeers), loaded)
    }

    /// What can be seen of P1 from outside the daemon: counters of the kernel's, the daemon's, and
    /// of the rules' drops.
    struct Observed: Equatable {
        var tcpSegments: UInt64, forwardedByKernel: UInt64, forwardedByDaemon: UInt64, seen: UInt64
    }

    func observe() throws -> Observed {
        let stats = try lab.stats("p1")
        let rules = try Lab.shell("ip netns exec \(lab.namespace("p1")) iptables -t raw -L PREROUTING -v -x -n")
        let dropped = rules.split(separator: "\n").compactMap { line -> UInt64? in
            let words = line.split(separator: " ")
            return words.count > 2 && words[2] == "DROP" ? UInt64(words[0]) : nil
        }.reduce(0, +)
        return Observed(
            tcpSegments: try lab.tcpExtOrIP("p1", "InSegs"),
            forwardedByKernel: try lab.tcpExtOrIP("p1", "ForwDatagrams"),
            forwardedByDaemon: stats["forwarded"] ?? 0, seen: (stats["total_packets"] ?? 0) + dropped)
    }

    struct Row {
        var name: String
        /// Where it comes from, with which outer source, and its GUE payloads (several: one GSO send).
        var host = "c", source = Lab.client
        var payloads: [[UInt8]]
        /// A SYN the kernel drops once it reaches TCP (a damaged one): segments may rise.
        var reachesTCP = false
        /// Source ports of inner packets nobody may answer; `answered`: those that must be.
        var unanswered: [UInt16], answered: [UInt16] = []
        /// The daemon's forwards it must make (to an allowed hop), by the kernel where it forwards.
        var forwards: UInt64 = 0
    }

    static func syn(_ port: UInt16, from source: IPv4Address = Lab.client, to destination: IPv4Address = Lab.vip)
        -> [UInt8]
    {
        PacketBuilder.tcp(
            source: .v4(source), sourcePort: port, destination: .v4(destination), destinationPort: 80, flags: .syn,
            sequence: 1, options: [2, 4, 5, 0xb4])
    }

    static func gue(_ inner: [UInt8], hops: [IPv4Address] = []) -> [UInt8] {
        PacketBuilder.guePayload(inner: inner, hops: hops)
    }

    static func unknownACK(_ port: UInt16, to destination: IPv4Address = Lab.vip) -> [UInt8] {
        PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: port, destination: .v4(destination), destinationPort: 80,
            flags: .ack, sequence: 2, acknowledgement: 2)
    }

    static var rows: [Row] {
        var badChecksum = syn(42030)
        badChecksum[36] ^= 0x5a
        let longHeader =
            PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: 42031, destination: .v4(Lab.vip), destinationPort: 80,
                flags: .syn, dataOffset: 15) + [UInt8](repeating: 0, count: 40)
        return [
            Row(
                name: "the director's address from the outside link", host: "x", source: Lab.director,
                payloads: [gue(syn(42001))], unanswered: [42001]),
            Row(
                name: "an address outside --allow-source on the peers' link", source: outsider,
                payloads: [gue(syn(42002))], unanswered: [42002]),
            Row(
                name: "hop: loopback", payloads: [gue(unknownACK(42010), hops: [IPv4Address("127.0.0.1")!])],
                unanswered: [42010]),
            Row(
                name: "hop: multicast", payloads: [gue(unknownACK(42011), hops: [IPv4Address("224.0.0.1")!])],
                unanswered: [42011]),
            Row(
                name: "hop: the subnet's broadcast address",
                payloads: [gue(unknownACK(42012), hops: [IPv4Address("198.18.0.255")!])], unanswered: [42012]),
            Row(
                name: "hop: outside --allow-hop (X)",
                payloads: [gue(unknownACK(42013), hops: [IPv4Address(Lab.outsideX)!])], unanswered: [42013]),
            Row(name: "a foreign destination: SYN", payloads: [gue(syn(42020, to: foreignVIP))], unanswered: [42020]),
            Row(
                name: "a foreign destination: no hops left", payloads: [gue(unknownACK(42021, to: foreignVIP))],
                unanswered: [42021]),
            Row(
                name: "martian source: loopback", payloads: [gue(syn(42040, from: IPv4Address("127.0.0.1")!))],
                unanswered: [42040]),
            Row(name: "martian source: this host", payloads: [gue(syn(42041, from: Lab.p1))], unanswered: [42041]),
            Row(
                name: "martian source: the subnet's broadcast address",
                payloads: [gue(syn(42042, from: IPv4Address("198.18.0.255")!))], unanswered: [42042]),
            Row(
                name: "martian source: multicast", payloads: [gue(syn(42043, from: IPv4Address("224.0.0.5")!))],
                unanswered: [42043]),
            Row(
                name: "a SYN with a wrong TCP checksum", payloads: [gue(badChecksum)], reachesTCP: true,
                unanswered: [42030]),
            Row(
                name: "a SYN whose header runs past its packet", payloads: [gue(longHeader)], reachesTCP: true,
                unanswered: [42031]),
            // A peer's forward, as it should be.
            Row(
                name: "an ACK for P2 (no attack)", payloads: [gue(unknownACK(42049), hops: [Lab.p2])],
                unanswered: [42049], forwards: 1),
            // One UDP_SEGMENT send: a GSO super-packet of two datagrams, decided one by one.
            Row(
                name: "a GSO super-packet: a SYN, then a SYN for a foreign address",
                payloads: [gue(syn(42050)), gue(syn(42051, to: foreignVIP))], reachesTCP: true,
                unanswered: [42051], answered: [42050]),
            // Decided on its first datagram, the whole would go to P2, the SYN with it.
            Row(
                name: "a GSO super-packet: an ACK for P2, then a SYN",
                payloads: [gue(unknownACK(42052), hops: [Lab.p2]), gue(syn(42053))], reachesTCP: true,
                unanswered: [42052], answered: [42053], forwards: 1),
        ]
    }

    func testTheAttackersPacketsAgainstEveryPathWithTheShippedRules() throws {
        // With fou, the program decides before fou sees anything and sends up what the queue then
        // decides: the queue's column with fou decapsulating is the one this machine cannot run.
        let tc = ("tc", ["--fast-path", "tc", "--fast-path-interface", "eth0", "--fast-path-interface", "xb"])
        let paths = (Lab.kernelDecapsulation ? [] : [tc]) + [("queue", ["--fast-path", "off"])]
        for (index, (path, flags)) in paths.enumerated() {
            if index == 0 {
                try lab.startSecondChance("p1", Lab.p1, extra: flags)
            } else {
                try lab.restartSecondChance("p1", Lab.p1, extra: flags)
            }
            let label = Lab.kernelDecapsulation ? "\(path), fou decapsulating" : path
            try checkDirectorIsAnswered(label, port: 42100 + UInt16(index))
            for row in Self.rows { try check(row, label) }
        }
    }

    func checkDirectorIsAnswered(_ path: String, port: UInt16) throws {
        let client = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        try sendGUE(lab, from: "d", source: Lab.director, sourcePort: port, to: Lab.p1, inner: Self.syn(port), hops: [])
        XCTAssertNotNil(
            client.first(within: 5) { $0.ipv4TCP.map { $0.3 == port && $0.4.contains([.syn, .ack]) } ?? false },
            "\(path): the director's SYN is answered")
        usleep(UInt32(300_000 * Lab.waitScale))  // the client's RST for it, before the rows count segments
    }

    func check(_ row: Row, _ path: String) throws {
        let what = "\(path): \(row.name)"
        let client = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        let outsideTCP = try lab.inside("x") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        let outsideUDP = try lab.inside("x") { try Capture(protocol: Int32(IPPROTO_UDP)) }
        let before = try observe()
        try send(row)
        var after = before
        try lab.waitFor("\(what): seen") {
            after = try observe()
            return after.seen >= before.seen + 1
        }
        usleep(UInt32(300_000 * Lab.waitScale))  // what a decision lets through has reached where it goes
        after = try observe()
        XCTAssertLessThanOrEqual(
            after.forwardedByKernel - before.forwardedByKernel, row.forwards, "\(what): forwarded by the kernel")
        XCTAssertEqual(
            after.forwardedByDaemon - before.forwardedByDaemon, row.forwards, "\(what): the daemon's forwards")
        if !row.reachesTCP { XCTAssertEqual(after.tcpSegments, before.tcpSegments, "\(what): it reached TCP") }
        let replies = client.drain().compactMap { $0.ipv4TCP }.filter { $0.4.contains(.syn) }.map(\.3)
        XCTAssertTrue(Set(replies).isDisjoint(with: row.unanswered), "\(what): answered \(replies)")
        XCTAssertTrue(Set(row.answered).isSubset(of: replies), "\(what): \(row.answered) unanswered: \(replies)")
        let leaked = outsideTCP.drain().count + outsideUDP.drain().count
        XCTAssertEqual(leaked, 0, "\(what): \(leaked) packets left P1 for X")
    }

    /// The row's payloads in one send: several make one GSO super-packet (UDP_SEGMENT), which the
    /// veth and the bridge carry to P1 whole.
    func send(_ row: Row) throws {
        guard row.payloads.count > 1 else {
            return try sendUDP(
                lab, from: row.host, source: row.source, sourcePort: 50000, to: Lab.p1, payload: row.payloads[0])
        }
        precondition(Set(row.payloads.map(\.count)).count == 1, "GSO segments of one size")
        try lab.inside(row.host) {
            let fd = try LabSockets.bindUDP(.v4(row.source), port: 50001)
            defer { close(fd) }
            var size = Int32(row.payloads[0].count)
            guard setsockopt(fd, Int32(IPPROTO_UDP), 103 /* UDP_SEGMENT */, &size, 4) == 0 else {
                throw SystemError("UDP_SEGMENT")
            }
            let payload = row.payloads.flatMap { $0 }
            let sent = SocketAddress(.v4(Lab.p1), port: 19523).withSockaddr { address, length in
                payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, address, length) }
            }
            guard sent == payload.count else { throw SystemError("sendto GSO") }
        }
    }
}
