import LabKit
import NetTypes
import SecondChanceCore
import TestSupport
import XCTest

let client = IPv4Address("198.18.0.1")!
let director = IPv4Address("198.18.0.2")!
let p1 = IPv4Address("198.18.0.11")!
let p2 = IPv4Address("198.18.0.12")!
let vip = IPv4Address("198.19.0.10")!
let client6 = IPv6Address("2001:2::1")!
let vip6 = IPv6Address("2001:2:0:ff::10")!
/// The lab's peers (directors and proxies) and P1's addresses, as the daemon would see them.
let labPeers = PeerPolicy(sources: [IPv4Prefix("198.18.0.0/24")!])
let p1Addresses = LocalAddresses(
    ipv4: [p1, vip, IPv4Address("127.0.0.1")!], ipv6: [vip6, IPv6Address("::1")!, IPv6Address("2001:2::11")!],
    broadcast: [IPv4Address("198.18.0.255")!])
let p1Decider = Decider(selfAddress: p1, peers: labPeers, local: p1Addresses)

func tcp4(_ flags: TCPFlags, port: UInt16 = 40000, payload: [UInt8] = []) -> [UInt8] {
    PacketBuilder.tcp(
        source: .v4(client), sourcePort: port, destination: .v4(vip), destinationPort: 80, flags: flags,
        sequence: 10, acknowledgement: 20, payload: payload)
}

func gue(_ inner: [UInt8], hops: [IPv4Address] = [p2], nextHop: UInt8 = 0, checksum: Bool = true) -> [UInt8] {
    PacketBuilder.gue(
        from: director, to: p1, sourcePort: 50123, inner: inner, hops: hops, nextHop: nextHop, udpChecksum: checksum)
}

func parse(_ packet: [UInt8]) -> Result<GUEPacket, DropReason> { packet.withUnsafeBytes { GUEPacket.parse($0) } }

func classify(_ packet: [UInt8]) -> Result<InnerPacket, DropReason>? {
    packet.withUnsafeBytes { bytes in
        guard case .success(let gue) = GUEPacket.parse(bytes) else { return nil }
        return InnerPacket.classify(bytes, gue)
    }
}

/// The UDP checksum over the pseudo-header is zero-sum when it is right.
func udpChecksumIsValid(_ packet: [UInt8]) -> Bool {
    let ihl = Int(packet[0] & 0x0f) * 4
    let udp = Array(packet[ihl...])
    let pseudo = InternetChecksum.pseudoHeaderSum(
        source: IPv4Address(packet.be32(12)), destination: IPv4Address(packet.be32(16)), protocol: 17, length: udp.count
    )
    return InternetChecksum.checksum(udp, initial: pseudo) == 0
}

final class AddressTests: XCTestCase {
    func testIPv4RoundTripAndRejects() {
        XCTAssertEqual(IPv4Address("198.18.0.1")?.description, "198.18.0.1")
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1..2.3", "a.b.c.d", "1.2.3.4 "] {
            XCTAssertNil(IPv4Address(bad), bad)
        }
    }

    func testIPv6RoundTripAndCompression() {
        XCTAssertEqual(IPv6Address("2001:2:0:ff::10")?.description, "2001:2:0:ff::10")
        XCTAssertEqual(IPv6Address("::")?.description, "::")
        XCTAssertEqual(IPv6Address("1:0:0:2:0:0:0:3")?.description, "1:0:0:2::3")
        XCTAssertEqual(IPv6Address("::1")?.bytes.last, 1)
        for bad in ["1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "g::"] { XCTAssertNil(IPv6Address(bad), bad) }
    }
}

final class ChecksumTests: XCTestCase {
    func testKnownIPv4HeaderChecksum() {
        // RFC 1071 style example: a header whose checksum is known.
        let header: [UInt8] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ]
        XCTAssertEqual(InternetChecksum.checksum(header), 0xb861)
    }

    /// The word-at-a-time sum against RFC 1071's definition (16-bit words, an odd byte padded), for
    /// every length up to 67, odd start addresses and a carried-in pseudo-header sum.
    func testChecksumMatchesTheSixteenBitDefinition() {
        var generator = SeededGenerator.fromEnvironment(name: #function)
        for length in 0..<68 {
            for start in 0..<3 {
                let bytes = (0..<(start + length)).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let initial = UInt64.random(in: 0...0x3_ffff, using: &generator)
                var reference = initial
                for index in stride(from: start, to: start + length, by: 2) {
                    reference += UInt64(bytes[index]) << 8 | (index + 1 < start + length ? UInt64(bytes[index + 1]) : 0)
                }
                while reference >> 16 != 0 { reference = (reference & 0xffff) + (reference >> 16) }
                let sum = bytes.withUnsafeBytes {
                    InternetChecksum.partialSum(UnsafeRawBufferPointer(rebasing: $0[start...]), initial: initial)
                }
                XCTAssertEqual(
                    InternetChecksum.finish(sum), ~UInt16(reference), "\(generator.report) \(length) \(start)")
            }
        }
    }

    func testIncrementalUpdateMatchesRecomputation() {
        var generator = SeededGenerator.fromEnvironment(name: #function)
        for _ in 0..<2000 {
            var data = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let before = InternetChecksum.checksum(data)
            let offset = Int.random(in: 0..<8, using: &generator) * 4
            let old = data.be32(offset)
            let new = UInt32.random(in: 0...UInt32.max, using: &generator)
            data.setBE32(offset, new)
            let updated = InternetChecksum.update(before, old: old, new: new)
            // 0x0000 and 0xffff are the same number in one's complement.
            XCTAssertTrue(
                updated == InternetChecksum.checksum(data) || (updated | InternetChecksum.checksum(data)) == 0xffff,
                "\(generator.report) \(data)")
        }
    }
}

final class GUEParsingTests: XCTestCase {
    func testBuilderAndParserAgree() throws {
        let inner = tcp4(.ack, payload: Array("hello".utf8))
        let packet = gue(inner, hops: [p2, client], nextHop: 1)
        let parsed = try parse(packet).get()
        XCTAssertEqual(parsed.outerSource, director)
        XCTAssertEqual(parsed.outerDestination, p1)
        XCTAssertEqual(parsed.udpSourcePort, 50123)
        XCTAssertEqual(parsed.innerFamily, .ipv4)
        XCTAssertEqual(parsed.nextHop, 1)
        XCTAssertEqual(parsed.hopCount, 2)
        packet.withUnsafeBytes { bytes in
            XCTAssertEqual(parsed.hop(0, in: bytes), p2)
            XCTAssertEqual(parsed.hop(1, in: bytes), client)
        }
        XCTAssertEqual(Array(packet[parsed.innerOffset..<parsed.innerEnd]), inner)
        XCTAssertTrue(udpChecksumIsValid(packet))
        XCTAssertEqual(InternetChecksum.checksum(Array(packet[0..<20])), 0, "outer header checksum")
    }

    func testInnerClassification() throws {
        guard case .tcp(let segment) = try classify(gue(tcp4([.syn])))?.get() else { return XCTFail("not TCP") }
        XCTAssertEqual(segment.flow, FlowKey(source: client, sourcePort: 40000, destination: vip, destinationPort: 80))
        XCTAssertTrue(segment.flags.contains(.syn))

        let udp = PacketBuilder.ip(
            source: .v4(client), destination: .v4(vip), protocol: 17, transport: [0, 1, 0, 2, 0, 8, 0, 0],
            checksumOffset: nil)
        XCTAssertEqual(try classify(gue(udp))?.get(), .udp)
        let echo = PacketBuilder.ip(
            source: .v4(client), destination: .v4(vip), protocol: 1, transport: [8, 0, 0, 0, 0, 1, 0, 1],
            checksumOffset: 2)
        XCTAssertEqual(try classify(gue(echo))?.get(), .icmp)

        // Frag-needed about VIP:80 -> client:40000 names the client's flow.
        let quoted = PacketBuilder.tcp(
            source: .v4(vip), sourcePort: 80, destination: .v4(client), destinationPort: 40000, flags: .ack)
        let icmp = PacketBuilder.icmpFragmentationNeeded(from: director, to: vip, mtu: 1200, original: quoted)
        XCTAssertEqual(
            try classify(gue(icmp))?.get(),
            .pathMTU(FlowKey(source: client, sourcePort: 40000, destination: vip, destinationPort: 80)))

        let syn6 = PacketBuilder.tcp(
            source: .v6(client6), sourcePort: 40000, destination: .v6(vip6), destinationPort: 443, flags: .syn)
        guard case .tcp(let segment6) = try classify(gue(syn6))?.get() else { return XCTFail("not TCP over IPv6") }
        XCTAssertEqual(
            segment6.flow, FlowKey(source: client6, sourcePort: 40000, destination: vip6, destinationPort: 443))
        XCTAssertEqual(try parse(gue(syn6)).get().innerFamily, .ipv6)

        let quoted6 = PacketBuilder.tcp(
            source: .v6(vip6), sourcePort: 443, destination: .v6(client6), destinationPort: 40000, flags: .ack)
        let ptb = PacketBuilder.icmpv6PacketTooBig(
            from: IPv6Address("2001:2::2")!, to: vip6, mtu: 1280, original: quoted6)
        XCTAssertEqual(
            try classify(gue(ptb))?.get(),
            .pathMTU(FlowKey(source: client6, sourcePort: 40000, destination: vip6, destinationPort: 443)))

        var fragment = tcp4(.ack)
        fragment.setBE16(6, 0x0010)  // offset 128 bytes
        fragment.setBE16(10, 0)
        XCTAssertEqual(try classify(gue(fragment))?.get(), .fragment)
    }

    func testEveryMalformedOuterPacketHasItsReason() {
        let good = gue(tcp4(.ack))
        func edit(_ change: (inout [UInt8]) -> Void) -> [UInt8] { var copy = good; change(&copy); return copy }
        let cases: [(DropReason, [UInt8])] = [
            (.outerTruncated, Array(good.prefix(19))),
            (.outerNotIPv4, edit { $0[0] = 0x65 }),
            (.outerTruncated, edit { $0[0] = 0x44 }),
            (.outerTruncated, edit { $0.setBE16(2, UInt16(good.count + 1)) }),
            (.outerFragment, edit { $0.setBE16(6, 0x2000) }),
            (.outerFragment, edit { $0.setBE16(6, 0x0001) }),
            (.outerNotUDP, edit { $0[9] = 6 }),
            (.udpTruncated, Array(edit { $0.setBE16(2, 24) }.prefix(24))),
            (.udpTruncated, edit { $0.setBE16(24, 7) }),
            (.udpTruncated, edit { $0.setBE16(24, UInt16(good.count)) }),
            (.gueTruncated, edit { $0.setBE16(24, 10) }),
            (.gueVersion, edit { $0[28] |= 0x80 }),
            (.gueControl, edit { $0[28] |= 0x20 }),
            (.gueFlags, edit { $0[31] = 0x80 }),
            (.gueHeaderLength, edit { $0[28] = 0 }),
            (.gueHeaderLength, edit { $0[35] = 0 }),
            (
                .gueTruncated,
                edit {
                    $0[28] = 30; $0[35] = 29
                }
            ),
            (.guePrivateType, edit { $0[32] = 1 }),
            (.innerProtocol, edit { $0[29] = 17 }),
        ]
        for (index, (reason, packet)) in cases.enumerated() {
            XCTAssertEqual(parse(packet), .failure(reason), "case \(index)")
        }
    }

    func testEveryMalformedInnerPacketHasItsReason() {
        let inner = tcp4(.ack)
        func edited(_ change: (inout [UInt8]) -> Void) -> [UInt8] { var copy = inner; change(&copy); return gue(copy) }
        /// Edits the inner bytes after encapsulation, so the GUE proto field keeps the original family.
        func afterEncapsulation(_ packet: [UInt8], _ change: (inout ArraySlice<UInt8>) -> Void) -> [UInt8] {
            var copy = packet
            let start = try! parse(packet).get().innerOffset
            change(&copy[start...])
            return copy
        }
        let syn6 = PacketBuilder.tcp(
            source: .v6(client6), sourcePort: 1, destination: .v6(vip6), destinationPort: 2, flags: .syn)
        let cases: [(DropReason, [UInt8])] = [
            (.innerTruncated, gue(Array(inner.prefix(19)))),
            (.innerVersion, afterEncapsulation(gue(inner)) { $0[$0.startIndex] = 0x65 }),
            (.innerTruncated, edited { $0[0] = 0x44 }),
            (.innerTruncated, edited { $0.setBE16(2, 200) }),
            (
                .innerTruncated,
                gue(
                    {
                        var p = Array(inner.prefix(30)); p.setBE16(2, 30); return p
                    }())
            ),
            (.innerTransport, edited { $0[9] = 47 }),
            (
                .innerTransport,
                edited {
                    $0[9] = 47; $0.setBE16(6, 0x0002)
                }
            ),
            (
                .innerTruncated,
                gue(
                    PacketBuilder.ip(
                        source: .v4(client), destination: .v4(vip), protocol: 1, transport: [3, 4, 0],
                        checksumOffset: nil))
            ),
            (
                .innerTruncated,
                gue(
                    PacketBuilder.ip(
                        source: .v4(client), destination: .v4(vip), protocol: 1,
                        transport: [3, 4, 0, 0, 0, 0, 0, 0, 0x45], checksumOffset: nil))
            ),
            (.innerTruncated, gue(Array(syn6.prefix(39)))),
            (.innerVersion, afterEncapsulation(gue(syn6)) { $0[$0.startIndex] = 0x45 }),
            (
                .innerTruncated,
                gue(
                    {
                        var p = syn6; p.setBE16(4, 100); return p
                    }())
            ),
            (
                .innerTransport,
                gue(
                    {
                        var p = syn6; p[6] = 47; return p
                    }())
            ),
            (
                .innerTruncated,
                gue(
                    PacketBuilder.ip(
                        source: .v6(client6), destination: .v6(vip6), protocol: 58,
                        transport: [2, 0, 0, 0, 0, 0, 5, 0], checksumOffset: nil))
            ),
        ]
        for (index, (reason, packet)) in cases.enumerated() {
            XCTAssertEqual(
                classify(packet).map { result in result.map { _ in "ok" } }, .failure(reason), "case \(index)")
        }
    }
}

/// Ownership answers from tables, for the decision table.
struct TableOwnership: FlowOwnership {
    var sockets: [FlowKey: SocketLookup] = [:]
    var cookiesAccepted = false
    var validCookie = false
    var lookups = 0

    mutating func lookup(_ flow: FlowKey) -> SocketLookup {
        lookups += 1
        return sockets[flow] ?? .none
    }
    mutating func listenerAcceptsCookies(_ flow: FlowKey) -> Bool { cookiesAccepted }
    mutating func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool { validCookie }
}

final class DecisionTests: XCTestCase {
    let decider = p1Decider
    let flow = FlowKey(source: client, sourcePort: 40000, destination: vip, destinationPort: 80)

    func decide(_ packet: [UInt8], _ ownership: inout TableOwnership) -> Verdict {
        packet.withUnsafeBytes { decider.decide($0, ownership: &ownership).verdict }
    }

    func decide(_ packet: [UInt8], sockets: [FlowKey: SocketLookup] = [:], cookies: Bool = false, valid: Bool = false)
        -> Verdict
    {
        var ownership = TableOwnership(sockets: sockets, cookiesAccepted: cookies, validCookie: valid)
        return decide(packet, &ownership)
    }

    func testDecisionTable() {
        let udp = PacketBuilder.ip(
            source: .v4(client), destination: .v4(vip), protocol: 17, transport: [0, 1, 0, 2, 0, 8, 0, 0],
            checksumOffset: nil)
        let quoted = PacketBuilder.tcp(
            source: .v4(vip), sourcePort: 80, destination: .v4(client), destinationPort: 40000, flags: .ack)
        let icmp = PacketBuilder.icmpFragmentationNeeded(from: director, to: vip, mtu: 1200, original: quoted)

        XCTAssertEqual(decide(gue(udp)), .local(.udp))
        XCTAssertEqual(decide(gue(tcp4(.syn))), .local(.syn))
        XCTAssertEqual(decide(gue(tcp4([.syn, .ack]))), .local(.syn))
        XCTAssertEqual(decide(gue(tcp4(.ack)), sockets: [flow: .connected]), .local(.established))
        XCTAssertEqual(decide(gue(tcp4(.ack)), sockets: [flow: .failed]), .local(.lookupFailed))
        XCTAssertEqual(decide(gue(tcp4(.ack))), .forward(to: p2))
        XCTAssertEqual(decide(gue(tcp4(.ack)), sockets: [flow: .listener]), .forward(to: p2))
        XCTAssertEqual(decide(gue(icmp), sockets: [flow: .connected]), .local(.established))
        XCTAssertEqual(decide(gue(icmp)), .forward(to: p2))

        // SYN cookies: only a pure ACK to a listener that is issuing cookies, with a valid cookie.
        XCTAssertEqual(
            decide(gue(tcp4(.ack)), sockets: [flow: .listener], cookies: true, valid: true), .local(.synCookie))
        XCTAssertEqual(
            decide(gue(tcp4([.ack, .psh])), sockets: [flow: .listener], cookies: true, valid: true), .local(.synCookie))
        XCTAssertEqual(
            decide(gue(tcp4(.ack)), sockets: [flow: .listener], cookies: false, valid: true), .forward(to: p2))
        XCTAssertEqual(
            decide(gue(tcp4(.ack)), sockets: [flow: .listener], cookies: true, valid: false), .forward(to: p2))
        XCTAssertEqual(
            decide(gue(tcp4([.ack, .fin])), sockets: [flow: .listener], cookies: true, valid: true), .forward(to: p2))
        XCTAssertEqual(
            decide(gue(tcp4([.ack, .rst])), sockets: [flow: .listener], cookies: true, valid: true), .forward(to: p2))
        XCTAssertEqual(decide(gue(tcp4(.ack)), sockets: [flow: .none], cookies: true, valid: true), .forward(to: p2))
        XCTAssertEqual(decide(gue(icmp), sockets: [flow: .listener], cookies: true, valid: true), .forward(to: p2))

        // Hops.
        XCTAssertEqual(decide(gue(tcp4(.ack), hops: [])), .local(.lastResort))
        XCTAssertEqual(decide(gue(tcp4(.ack), hops: [p2], nextHop: 1)), .local(.lastResort))
        XCTAssertEqual(decide(gue(tcp4(.ack), hops: [p2], nextHop: 200)), .local(.lastResort))
        XCTAssertEqual(decide(gue(tcp4(.ack), hops: [p1])), .local(.forwardedToSelf))
        XCTAssertEqual(decide(gue(tcp4(.ack), hops: [p1, p2], nextHop: 1)), .forward(to: p2))
        XCTAssertEqual(decide(gue(tcp4(.ack), hops: [p2, p1], nextHop: 1)), .local(.forwardedToSelf))
    }

    func testSYNAndStatelessPacketsNeverAskTheSocketTable() {
        var ownership = TableOwnership()
        _ = decide(gue(tcp4(.syn)), &ownership)
        let udp = PacketBuilder.ip(
            source: .v4(client), destination: .v4(vip), protocol: 17, transport: [0, 1, 0, 2, 0, 8, 0, 0],
            checksumOffset: nil)
        _ = decide(gue(udp), &ownership)
        XCTAssertEqual(ownership.lookups, 0)
    }
}

final class ForwardingTests: XCTestCase {
    func testRewriteAdvancesTheHopAndKeepsEverythingElse() throws {
        for checksum in [true, false] {
            let inner = tcp4([.ack, .psh], payload: Array("data".utf8))
            var packet = gue(inner, hops: [p2, client], checksum: checksum)
            let original = packet
            let parsed = try parse(packet).get()
            packet.withUnsafeMutableBytes { GUEForwarding.rewrite($0, parsed, source: p1, destination: p2) }
            let after = try parse(packet).get()
            XCTAssertEqual(after.outerSource, p1)
            XCTAssertEqual(after.outerDestination, p2)
            XCTAssertEqual(after.nextHop, 1)
            XCTAssertEqual(after.hopCount, 2)
            XCTAssertEqual(after.udpSourcePort, 50123)
            XCTAssertEqual(packet[8], original[8], "TTL")
            XCTAssertEqual(Array(packet[after.innerOffset...]), inner)
            XCTAssertEqual(InternetChecksum.checksum(Array(packet[0..<20])), 0, "IP header checksum")
            if checksum {
                XCTAssertTrue(udpChecksumIsValid(packet), "UDP checksum updated incrementally")
            } else {
                XCTAssertEqual(packet.be16(26), 0, "a zero UDP checksum stays zero")
            }
        }
    }

    func testRewriteForKernelForwardingRaisesTheTTLTheKernelWillLower() throws {
        for checksum in [true, false] {
            var packet = gue(tcp4(.ack), hops: [p2], checksum: checksum)
            let original = packet
            let parsed = try parse(packet).get()
            packet.withUnsafeMutableBytes {
                GUEForwarding.rewrite($0, parsed, source: p1, destination: p2, forKernelForwarding: true)
            }
            XCTAssertEqual(packet[8], original[8] + 1)
            // A TTL already at 255 cannot be raised: such a packet leaves from the raw socket.
            packet[8] = 254
            XCTAssertTrue(packet.withUnsafeMutableBytes { GUEForwarding.kernelCanForward($0) })
            packet[8] = 255
            XCTAssertFalse(packet.withUnsafeMutableBytes { GUEForwarding.kernelCanForward($0) })
            packet[8] = original[8] + 1
            XCTAssertEqual(InternetChecksum.checksum(Array(packet[0..<20])), 0, "IP header checksum covers the TTL")
            XCTAssertEqual(try parse(packet).get().nextHop, 1)
            if checksum { XCTAssertTrue(udpChecksumIsValid(packet), "the TTL is not in the UDP pseudo-header") }
        }
    }

    func testIncrementalUDPChecksumAgreesWithRecomputationForManyHeaders() throws {
        var generator = SeededGenerator.fromEnvironment(name: #function)
        for _ in 0..<500 {
            let hops = (0..<Int.random(in: 1...6, using: &generator)).map { _ in
                IPv4Address(UInt32.random(in: 0...UInt32.max, using: &generator))
            }
            let inner = tcp4(
                .ack, port: UInt16.random(in: 1...65535, using: &generator),
                payload: (0..<Int.random(in: 0...40, using: &generator)).map { _ in
                    UInt8.random(in: 0...255, using: &generator)
                })
            var packet = PacketBuilder.gue(
                from: IPv4Address(UInt32.random(in: 0...UInt32.max, using: &generator)),
                to: IPv4Address(UInt32.random(in: 0...UInt32.max, using: &generator)),
                sourcePort: UInt16.random(in: 1...65535, using: &generator), inner: inner, hops: hops)
            let parsed = try parse(packet).get()
            let me = IPv4Address(UInt32.random(in: 0...UInt32.max, using: &generator))
            packet.withUnsafeMutableBytes { GUEForwarding.rewrite($0, parsed, source: me, destination: hops[0]) }
            XCTAssertTrue(udpChecksumIsValid(packet), "\(generator.report) \(packet)")
            XCTAssertNotEqual(packet.be16(26), 0, "\(generator.report) \(packet)")
        }
    }
}
