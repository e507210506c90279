import Foundation
import LabKit
import LabPrograms
import LinuxSys
import NetTypes
import TestSupport
import XCTest

/// The lab's director in BPF against `glb-lab director`'s table and bytes, run on the same flows
/// (BPF_PROG_TEST_RUN: nothing is sent).
final class LabDirectorTests: XCTestCase {
    static let ethernet: [UInt8] = [0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]
    static let tcAccept: UInt32 = 0  // TC_ACT_OK
    static let tcShot: UInt32 = 2
    static let tcRedirect: UInt32 = 7

    /// Random tables (1 to 16 proxies, some draining, 1 to 8 per flow) and random client flows: the
    /// program sends each packet to the proxy `RendezvousTable.route` names first, the rest as hops,
    /// in the bytes `PacketBuilder.gue` makes (the outer UDP checksum zero).
    func testItSendsEachFlowWhereTheQueueDirectorWouldInTheSameBytes() throws {
        guard geteuid() == 0 else { throw LabError("needs root to load BPF programs") }
        var random = SeededGenerator.fromEnvironment(name: "LabDirectorTests")
        let director = try LabDirector()
        let loopback = try NetworkInterface.index("lo")
        let selfAddress = IPv4Address("198.18.0.2")!
        let vips = (0..<4).map { IPv4Address(0xc613_0000 | UInt32($0) << 8 | 10) }
        for _ in 0..<40 {
            let proxies = (0..<(1 + random.below(16))).map { _ in
                RendezvousTable.Proxy(
                    address: IPv4Address(0xc612_0000 | UInt32(random.below(0xffff))),
                    state: random.below(4) == 0 ? .draining : .active)
            }
            let table = RendezvousTable(proxies: proxies, maximumHops: 1 + random.below(8))
            try director.configure(table: table, selfAddress: selfAddress, vips: vips)
            for _ in 0..<50 {
                let flow = FlowKey(
                    source: IPv4Address(0xc612_c800 | UInt32(random.below(256))),
                    sourcePort: UInt16(random.below(65536)), destination: vips[random.below(vips.count)],
                    destinationPort: UInt16(random.below(65536)))
                let inner = PacketBuilder.tcp(
                    source: flow.sourceAddress, sourcePort: flow.sourcePort, destination: flow.destinationAddress,
                    destinationPort: flow.destinationPort, flags: .ack,
                    sequence: UInt32(truncatingIfNeeded: random.next()),
                    payload: Array(repeating: 0x61, count: random.below(1400)))
                let hash = RendezvousTable.flowHash(flow)
                let route = table.route(flowHash: hash)
                let expected = PacketBuilder.gue(
                    from: selfAddress, to: route[0], sourcePort: UInt16(truncatingIfNeeded: hash) | 0x8000,
                    inner: inner,
                    hops: Array(route.dropFirst()), udpChecksum: false)
                let run = try BPF.testRun(
                    programFD: director.programFD, frame: Self.ethernet + inner, interfaceIndex: loopback)
                XCTAssertEqual(run.action, Self.tcRedirect, "\(flow) \(random.report)")
                XCTAssertEqual(Array(run.output.dropFirst(14)), expected, "\(flow) via \(route) \(random.report)")
            }
        }
        XCTAssertEqual(director.counters().encapsulated, 40 * 50)
    }

    /// What is not for a VIP leaves unchanged; a VIP's packet shorter than its header says is
    /// dropped; Ethernet padding behind a short one is not sent on.
    func testOtherPacketsPassUnchangedAndPaddingIsNotSent() throws {
        guard geteuid() == 0 else { throw LabError("needs root to load BPF programs") }
        let director = try LabDirector()
        let loopback = try NetworkInterface.index("lo")
        let vip = IPv4Address("198.19.0.10")!, proxy = IPv4Address("198.18.0.11")!
        try director.configure(
            table: RendezvousTable(proxies: [.init(address: proxy, state: .active)], maximumHops: 2),
            selfAddress: IPv4Address("198.18.0.2")!, vips: [vip])
        let client = IPAddress.v4(IPv4Address("198.18.0.1")!)
        let other = PacketBuilder.tcp(
            source: client, sourcePort: 40000, destination: .v4(proxy), destinationPort: 80, flags: .syn)
        let passed = try BPF.testRun(
            programFD: director.programFD, frame: Self.ethernet + other, interfaceIndex: loopback)
        XCTAssertEqual(passed.action, Self.tcAccept)
        XCTAssertEqual(passed.output, Self.ethernet + other)

        let ack = PacketBuilder.tcp(
            source: client, sourcePort: 40000, destination: .v4(vip), destinationPort: 80, flags: .ack)
        var truncated = ack
        truncated.setBE16(2, UInt16(ack.count + 1))
        let dropped = try BPF.testRun(
            programFD: director.programFD, frame: Self.ethernet + truncated, interfaceIndex: loopback)
        XCTAssertEqual(dropped.action, Self.tcShot)

        let padded = try BPF.testRun(
            programFD: director.programFD, frame: Self.ethernet + ack + [0, 0, 0, 0, 0, 0], interfaceIndex: loopback)
        XCTAssertEqual(padded.action, Self.tcRedirect)
        let hash = RendezvousTable.flowHash(
            FlowKey(source: IPv4Address("198.18.0.1")!, sourcePort: 40000, destination: vip, destinationPort: 80))
        XCTAssertEqual(
            Array(padded.output.dropFirst(14)),
            PacketBuilder.gue(
                from: IPv4Address("198.18.0.2")!, to: proxy, sourcePort: UInt16(truncatingIfNeeded: hash) | 0x8000,
                inner: ack, hops: [], udpChecksum: false))
        let counts = director.counters()
        XCTAssertEqual([counts.encapsulated, counts.passed, counts.malformed], [1, 1, 1])
    }
}
