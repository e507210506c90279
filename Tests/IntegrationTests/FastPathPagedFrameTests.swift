import Foundation
import Glibc
import LabKit
import NetTypes
import XCTest

/// A NIC often hands the stack a frame's headers in the skb's linear part and the rest in pages.
/// The tc program makes only the headers it reads linear (the payload is never copied), and
/// decides such a frame as it decides a linear one.
final class FastPathPagedFrameTests: XCTestCase {
    var lab: Lab!

    override func tearDown() { lab?.tearDown() }

    /// The director's datagrams sent with MSG_ZEROCOPY (their GUE headers, hops and inner packets
    /// in page fragments, headers as deep as 30 hops and inner IPv6 allow): a SYN for the VIP is
    /// delivered, an ACK with no socket forwarded to P2 and one with no hop left delivered, each
    /// decided by the program, none sent up for want of a readable header.
    func testAFrameWhosePayloadIsInPagesIsDecidedInTheKernel() throws {
        lab = try Lab(prefix: "pspg")
        try lab.startEcho("p1")
        // Forwarding on eth0 and p2's neighbour known: the FIB answers, and tc forwards itself.
        let p2MAC = try Lab.linkAddress(in: lab.namespace("p2"))
        try Lab.shell(
            """
            ip netns exec \(lab.namespace("p1")) sysctl -qw net.ipv4.conf.eth0.forwarding=1 && \
            ip -n \(lab.namespace("p1")) neigh replace \(Lab.p2) lladdr \(p2MAC) dev eth0 nud permanent
            """)
        try lab.startSecondChance("p1", Lab.p1, extra: ["--fast-path", "tc", "--max-hops", "30"])
        let deep = [IPv4Address](repeating: Lab.p2, count: 30)
        // Each from its own port: an ACK of the SYN's flow would meet its request socket.
        let cases: [(String, (UInt16) -> [UInt8], [IPv4Address], UInt8)] = [
            ("fast_path_accepted_syn", { self.inner(.v4(Lab.client), $0, .syn, payload: 0) }, [Lab.p2], 0),
            ("fast_path_accepted_syn", { self.inner(.v6(Lab.client6), $0, .syn, payload: 0) }, deep, 0),
            ("fast_path_forwarded", { self.inner(.v4(Lab.client), $0, .ack, payload: 1200) }, [Lab.p2], 0),
            ("fast_path_forwarded", { self.inner(.v6(Lab.client6), $0, .ack, payload: 1000) }, deep, 29),
            ("fast_path_accepted_last_resort", { self.inner(.v4(Lab.client), $0, .ack, payload: 1200) }, [Lab.p2], 1),
        ]
        for (index, (counter, packet, hops, nextHop)) in cases.enumerated() {
            let before = try lab.stats("p1")
            try sendGUE(
                lab, from: "d", source: Lab.director, sourcePort: 32000 + UInt16(index), to: Lab.p1,
                inner: packet(41000 + UInt16(index)),
                hops: hops, nextHop: nextHop, zeroCopy: true)
            try Lab.waitFor(
                "case \(index): \(counter)", seconds: 5,
                context: {
                    let now = (try? self.lab.stats("p1")) ?? [:]
                    return "\(now.filter { before[$0.key] != $0.value }.sorted { $0.key < $1.key })"
                }
            ) { try self.lab.stats("p1").value(counter) == before.value(counter) + 1 }
            let after = try lab.stats("p1")
            let wentUp = after.filter { $0.key.hasPrefix("fast_path_up_") && before[$0.key] != $0.value }
            XCTAssertEqual(wentUp, [:], "case \(index) went up")
            XCTAssertEqual(try after.value("total_packets") - before.value("total_packets"), 1, "case \(index)")
        }
    }

    func inner(_ source: IPAddress, _ port: UInt16, _ flags: TCPFlags, payload: Int) -> [UInt8] {
        let destination: IPAddress = if case .v6 = source { .v6(Lab.vip6) } else { .v4(Lab.vip) }
        return PacketBuilder.tcp(
            source: source, sourcePort: port, destination: destination, destinationPort: 80, flags: flags,
            sequence: 7, acknowledgement: flags == .syn ? 0 : 9, payload: [UInt8](repeating: 0x5a, count: payload))
    }
}
