import LabKit
import NetTypes
import TestSupport
import XCTest

@testable import SecondChanceCore

final class SynCookieTests: XCTestCase {
    static let client = IPAddress.v4(IPv4Address("198.18.0.1")!)
    static let vip = IPAddress.v4(IPv4Address("198.19.0.10")!)

    func syn(options: [UInt8], ipv6: Bool = false) -> [UInt8] {
        let (source, destination): (IPAddress, IPAddress) =
            ipv6
            ? (.v6(IPv6Address("2001:2::1")!), .v6(IPv6Address("2001:2:0:ff::10")!)) : (Self.client, Self.vip)
        return PacketBuilder.tcp(
            source: source, sourcePort: 40000, destination: destination, destinationPort: 443,
            flags: .syn, sequence: 0xdead_beef, window: 64240, options: options)
    }

    /// Linux's SYN options: MSS 1460, SACK-permitted, timestamp, NOP, window scale 7.
    static let linuxOptions: [UInt8] = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7]

    /// The SYN's TCP segment, as the decision classifies it.
    func segment(of packet: [UInt8], ipv6: Bool) -> TCPSegment? {
        packet.withUnsafeBytes { bytes -> TCPSegment? in
            guard
                case .success(.tcp(let segment)) = ipv6
                    ? InnerPacket.classifyIPv6(bytes, start: 0, end: bytes.count)
                    : InnerPacket.classifyIPv4(bytes, start: 0, end: bytes.count)
            else { return nil }
            return segment
        }
    }

    func parsed(_ packet: [UInt8], ipv6: Bool = false) -> SynOptions? {
        packet.withUnsafeBytes { SynOptions.parse($0, tcpOffset: ipv6 ? 40 : 20, end: $0.count) }
    }

    func testSynOptionsAreReadAsTheKernelReadsThem() {
        XCTAssertEqual(
            parsed(syn(options: Self.linuxOptions)),
            SynOptions(mss: 1460, windowScale: 7, sackPermitted: true, timestamp: 12345))
        XCTAssertEqual(parsed(syn(options: [])), SynOptions())
        // A window scale above 14 is taken as 14; an MSS of zero is ignored.
        XCTAssertEqual(parsed(syn(options: [1, 3, 3, 20, 2, 4, 0, 0])), SynOptions(windowScale: 14))
        // A bad length ends the walk, keeping what came before it.
        XCTAssertEqual(parsed(syn(options: [2, 4, 0x05, 0xb4, 3, 9, 3, 7])), SynOptions(mss: 1460))
        XCTAssertEqual(parsed(syn(options: [2, 4, 0x05, 0xb4, 8, 1, 0, 0])), SynOptions(mss: 1460))
        // Data offset beyond the packet.
        var truncated = syn(options: Self.linuxOptions)
        truncated.removeLast(8)
        XCTAssertNil(parsed(truncated))
    }

    /// Random headers at random offsets: a result exactly when the header fits before `end`, and
    /// then only values the kernel would take.
    /// The responders answer only SYNs the kernel would take to a listener: no data, the TCP
    /// header inside the IP packet, both checksums right; a SYN damaged anywhere (every byte
    /// flipped in turn) is the kernel's to drop.
    func testOnlyAnIntactSYNWithoutDataIsAnswerable() throws {
        for ipv6 in [false, true] {
            let good = syn(options: Self.linuxOptions, ipv6: ipv6)
            func answerable(_ packet: [UInt8]) -> Bool {
                guard let segment = segment(of: packet, ipv6: ipv6) else { return false }
                return packet.withUnsafeBytes { SynIntegrity.isAnswerable($0, segment) }
            }
            XCTAssertTrue(answerable(good), "ipv6 \(ipv6)")
            for index in good.indices {
                var damaged = good
                damaged[index] ^= 0x40
                // The IPv6 traffic class, flow label and hop limit are in no checksum.
                if ipv6 && [1, 2, 3, 7].contains(index) { continue }
                XCTAssertFalse(answerable(damaged), "ipv6 \(ipv6): byte \(index) flipped")
            }
            let source: IPAddress = ipv6 ? .v6(IPv6Address("2001:2::1")!) : Self.client
            let destination: IPAddress = ipv6 ? .v6(IPv6Address("2001:2:0:ff::10")!) : Self.vip
            let withData = PacketBuilder.tcp(
                source: source, sourcePort: 40000, destination: destination, destinationPort: 443, flags: .syn,
                options: [2, 4, 5, 0xb4], payload: [1, 2, 3, 4])
            XCTAssertFalse(answerable(withData), "a SYN with data")
            // A header length past the IP packet's end, the bytes it names there (GUE padding).
            let longHeader = PacketBuilder.tcp(
                source: source, sourcePort: 40000, destination: destination, destinationPort: 443, flags: .syn,
                dataOffset: 15)
            XCTAssertFalse(answerable(longHeader + [UInt8](repeating: 0, count: 40)), "doff past the end")
        }
    }

    func testSynOptionsParserSurvivesRandomHeaders() {
        var generator = SeededGenerator.fromEnvironment(name: #function)
        var parsed = 0
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...64, using: &generator)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let offset = Int.random(in: -2...24, using: &generator)
            let end = Int.random(in: 0...length, using: &generator)
            let options = bytes.withUnsafeBytes { SynOptions.parse($0, tcpOffset: offset, end: end) }
            let fits =
                offset >= 0 && end - offset >= 20 && end - offset >= Int(bytes[offset + 12] >> 4) * 4
                && bytes[offset + 12] >> 4 >= 5
            XCTAssertEqual(options != nil, fits, "\(generator.report) offset \(offset) end \(end) \(bytes)")
            if let options {
                parsed += 1
                XCTAssertLessThanOrEqual(options.windowScale ?? 0, TCPWindow.maximumScale)
                XCTAssertNotEqual(options.mss, 0)
            }
        }
        XCTAssertGreaterThan(parsed, 200, "the random headers reach the option walk")
    }

    func testCookieTimestampCarriesOptionsAndNeverRunsAhead() {
        // 0 and 5: the clock's first 64 ms, where stepping back wraps (as the kernel's u64 does).
        for now in [UInt64(0), 5, 0x40, 1_000_000, 1_000_063, 0x1_0000_0005] {
            for (scale, sack, ecn) in [
                (UInt8?(7), true, false), (nil, false, false), (0, false, true), (14, true, true),
            ] {
                let options = CookieTimestamp.options(windowScale: scale, sack: sack, ecn: ecn)
                let stamp = CookieTimestamp.value(nowMilliseconds: now, options: options)
                XCTAssertEqual(stamp & 0x3f, options)
                // At most 63 ms behind the clock, never ahead (TSval arithmetic is modulo 2^32).
                XCTAssertLessThan(UInt32(truncatingIfNeeded: now) &- stamp, 64)
                let decoded = CookieTimestamp.decode(stamp)
                XCTAssertEqual(decoded.windowScale, scale)
                XCTAssertEqual(decoded.sack, sack)
                XCTAssertEqual(decoded.ecn, ecn)
            }
        }
    }

    func testWindowScaleFollowsTheKernelsChoice() {
        var settings = TCPHostSettings()
        settings.tcpReceiveMemoryMaximum = 33_554_432
        settings.receiveMemoryMaximum = 4_194_304
        // Unlocked: the largest buffer the socket may grow to, 32 MiB -> 2^25 -> scale 10.
        XCTAssertEqual(
            TCPWindow.receiveScale(listenerReceiveBuffer: 131_072, receiveBufferLocked: false, settings: settings), 10)
        settings.tcpReceiveMemoryMaximum = 6_291_456
        settings.receiveMemoryMaximum = 212_992
        XCTAssertEqual(
            TCPWindow.receiveScale(listenerReceiveBuffer: 131_072, receiveBufferLocked: false, settings: settings), 7)
        // SO_RCVBUF 262144 -> sk_rcvbuf 524288 -> full space 262144 = 2^18 -> scale 3.
        XCTAssertEqual(
            TCPWindow.receiveScale(listenerReceiveBuffer: 524_288, receiveBufferLocked: true, settings: settings), 3)
        XCTAssertEqual(
            TCPWindow.receiveScale(listenerReceiveBuffer: 4608, receiveBufferLocked: true, settings: settings), 0)
        XCTAssertEqual(
            TCPWindow.receiveScale(listenerReceiveBuffer: UInt32.max, receiveBufferLocked: true, settings: settings), 14
        )
        XCTAssertEqual(TCPWindow.synAckWindow(listenerReceiveBuffer: 131_072, mss: 1448), 65160)
        XCTAssertEqual(TCPWindow.synAckWindow(listenerReceiveBuffer: 131_072, mss: 1460), 64240)
        XCTAssertEqual(TCPWindow.synAckWindow(listenerReceiveBuffer: 1 << 24, mss: 1460), 65535)
    }

    func testOfferMatchesWhatTheKernelCanDecode() {
        let options = SynOptions(mss: 1460, windowScale: 7, sackPermitted: true, timestamp: 99)
        var settings = TCPHostSettings()
        settings.timestamps = 1
        let secret = SynCookieReply.offer(options, settings: settings, ourWindowScale: 10, nowMilliseconds: 5000)
        XCTAssertNil(secret.timestamp, "a secret timestamp offset: no timestamp, and so no options")
        XCTAssertFalse(secret.sack)
        XCTAssertNil(secret.windowScales)
        XCTAssertEqual(optionBytes(offer: secret), [2, 4, 0x05, 0xb4])

        settings.timestamps = 2
        let full = SynCookieReply.offer(options, settings: settings, ourWindowScale: 10, nowMilliseconds: 5000)
        XCTAssertEqual(full.timestamp?.echo, 99)
        XCTAssertEqual(full.windowScales?.client, 7)
        XCTAssertEqual(full.windowScales?.ours, 10)
        let decoded = CookieTimestamp.decode(full.timestamp!.value)
        XCTAssertEqual(decoded.windowScale, 7, "the kernel recovers the client's scale from the echo")
        XCTAssertTrue(decoded.sack)
        XCTAssertFalse(decoded.ecn)
        let bytes = optionBytes(offer: full)
        XCTAssertEqual(bytes.count, 20)
        XCTAssertEqual(Array(bytes[4..<8]), [4, 2, 8, 10], "SACK-permitted in the timestamp's padding")
        XCTAssertEqual(Array(bytes[16...]), [1, 3, 3, 10])

        settings.sack = false
        settings.windowScaling = false
        let plain = SynCookieReply.offer(options, settings: settings, ourWindowScale: 10, nowMilliseconds: 5000)
        XCTAssertEqual(CookieTimestamp.decode(plain.timestamp!.value).windowScale, nil)
        XCTAssertEqual(optionBytes(offer: plain).count, 16)
        XCTAssertEqual(Array(optionBytes(offer: plain)[4..<8]), [1, 1, 8, 10])
    }

    func testGeneratorInputIsTheSYNWithOnlyItsMSS() throws {
        for ipv6 in [false, true] {
            let packet = syn(options: Self.linuxOptions, ipv6: ipv6)
            let ipLength = ipv6 ? 40 : 20
            var output = [UInt8](repeating: 0xff, count: 128)
            let segment = try XCTUnwrap(segment(of: packet, ipv6: ipv6))
            let length = packet.withUnsafeBytes { input in
                output.withUnsafeMutableBytes {
                    SynCookieReply.generatorInput(input, segment, options: SynOptions(mss: 1460), into: $0)
                }
            }
            XCTAssertEqual(length, ipLength + 24)
            XCTAssertEqual(Array(output[0..<ipLength].dropFirst()), Array(packet[0..<ipLength].dropFirst()))
            XCTAssertEqual(
                Array(output[ipLength..<(ipLength + 12)]), Array(packet[ipLength..<(ipLength + 12)]), "ports, ISN")
            XCTAssertEqual(output[ipLength + 12] >> 4, 6, "doff 6: fixed header and MSS")
            XCTAssertEqual(Array(output[(ipLength + 20)..<(ipLength + 24)]), [2, 4, 0x05, 0xb4])
        }
    }

    /// The options `SynCookieReply.writeOptions` writes for an MSS of 1460.
    func optionBytes(offer: SynCookieReply.Offer) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xee, count: SynCookieReply.optionsLength(offer))
        let end = bytes.withUnsafeMutableBytes { SynCookieReply.writeOptions(mss: 1460, offer: offer, into: $0, at: 0) }
        XCTAssertEqual(end, bytes.count)
        return bytes
    }

    /// The reply `SynCookieReply.write` makes, in a buffer of the largest reply's size.
    func synAck(_ packet: [UInt8], _ segment: TCPSegment, cookie: UInt32, offer: SynCookieReply.Offer, window: UInt16)
        -> [UInt8]
    {
        var out = [UInt8](repeating: 0xee, count: SynCookieReply.maximumLength)
        let length = packet.withUnsafeBytes { input in
            out.withUnsafeMutableBytes {
                SynCookieReply.write(
                    into: $0, answering: input, segment, cookie: cookie, mss: 1460, offer: offer,
                    window: window, ttl: 64)
            }
        }
        return Array(out[0..<length])
    }

    /// The allocation-free writer makes, byte for byte, the packet the lab's builder makes from
    /// the same fields, for both families and every shape of offer.
    func testSynAckWriterMatchesThePacketBuilder() throws {
        var settings = TCPHostSettings()
        for ipv6 in [false, true] {
            let packet = syn(options: Self.linuxOptions, ipv6: ipv6)
            let segment = try XCTUnwrap(segment(of: packet, ipv6: ipv6))
            for (timestamps, sack, scaling) in [
                (1, true, true), (2, true, true), (2, false, true), (2, true, false), (2, false, false),
            ] {
                settings.timestamps = timestamps
                settings.sack = sack
                settings.windowScaling = scaling
                let offer = SynCookieReply.offer(
                    parsed(packet, ipv6: ipv6)!, settings: settings, ourWindowScale: 9, nowMilliseconds: 77_777)
                let written = synAck(packet, segment, cookie: 0xfeed_f00d, offer: offer, window: 64240)
                let isn = packet.withUnsafeBytes { $0.be32(segment.tcpOffset + 4) }
                let expected = PacketBuilder.tcp(
                    source: segment.flow.destinationAddress, sourcePort: segment.flow.destinationPort,
                    destination: segment.flow.sourceAddress, destinationPort: segment.flow.sourcePort,
                    flags: [.syn, .ack], sequence: 0xfeed_f00d, acknowledgement: isn &+ 1, window: 64240,
                    options: optionBytes(offer: offer), ttl: 64)
                XCTAssertEqual(
                    written, expected, "ipv6 \(ipv6), timestamps \(timestamps), sack \(sack), scaling \(scaling)")
            }
        }
    }

    func testSynAckAnswersTheSYN() throws {
        let packet = syn(options: Self.linuxOptions)
        let segment = FlowKey(
            source: IPv4Address("198.18.0.1")!, sourcePort: 40000, destination: IPv4Address("198.19.0.10")!,
            destinationPort: 443)
        let tcp = TCPSegment(flow: segment, flags: .syn, ipHeaderOffset: 0, tcpOffset: 20)
        var settings = TCPHostSettings()
        settings.timestamps = 2
        let offer = SynCookieReply.offer(
            parsed(packet)!, settings: settings, ourWindowScale: 10, nowMilliseconds: 123_456)
        let reply = synAck(packet, tcp, cookie: 0x1234_5678, offer: offer, window: 65160)
        let fields = try XCTUnwrap(reply.ipv4TCPFields)
        XCTAssertEqual(fields.source, IPv4Address("198.19.0.10"))
        XCTAssertEqual(fields.destination, IPv4Address("198.18.0.1"))
        XCTAssertEqual(fields.sourcePort, 443)
        XCTAssertEqual(fields.destinationPort, 40000)
        XCTAssertEqual(fields.sequence, 0x1234_5678)
        XCTAssertEqual(fields.acknowledgement, 0xdead_bef0)
        XCTAssertEqual(fields.flags, TCPFlags([.syn, .ack]).rawValue)
        XCTAssertEqual(reply.be16(20 + 14), 65160)
        XCTAssertEqual(InternetChecksum.checksum(reply[0..<20].map { $0 }), 0, "IPv4 header checksum")
        let pseudo = InternetChecksum.pseudoHeaderSum(
            source: IPv4Address("198.19.0.10")!, destination: IPv4Address("198.18.0.1")!, protocol: 6,
            length: reply.count - 20)
        XCTAssertEqual(InternetChecksum.checksum(Array(reply[20...]), initial: pseudo), 0, "TCP checksum")
    }

    /// The monitor's poll-by-poll signal, against a model of the readings: the fast path's
    /// answers count in the kernel's TCPReqQFullDoCookies first and in its own counter after, so
    /// a poll (kernel's counter read, then the fast path's) sees up to three answers in one and
    /// not the other, either way. Cookies the kernel gives for another listener, and any move of
    /// the drop counters, are news at the poll that reads them; the fast path's own answers are
    /// not, beyond a few polls whose skew is the largest yet; once they stop, the next quiet
    /// poll starts from the exact excess, so nothing earlier hides a single foreign cookie.
    func testTheOverflowSignalIgnoresTheFastPathsOwnCookiesAndNothingElse() {
        var random = SeededGenerator.fromEnvironment(name: #function)
        for round in 0..<200 {
            var signal = OverflowSignal()
            var (answers, foreign, drops): (UInt64, UInt64, UInt64) = (UInt64(random.below(1 << 20)), 0, 0)
            var lastKernel: UInt64 = 0
            func read(inFlight: UInt64, completing: UInt64, unread: Bool = false) -> Bool {
                lastKernel = answers &- completing &+ foreign
                return signal.rose(
                    kernelCookies: lastKernel, drops: drops, ownCookies: unread ? nil : answers &- inFlight)
            }
            let context = "round \(round) \(random.report)"
            XCTAssertFalse(read(inFlight: 0, completing: 0), "the first poll: \(context)")
            var spurious = 0
            for _ in 0..<300 {
                // Both counters only rise: the answers a reading is ahead or behind by are among
                // those since the last poll.
                let step = 1 + UInt64(random.below(3000))
                answers += step
                let (inFlight, completing) = (min(UInt64(random.below(4)), step), min(UInt64(random.below(4)), step))
                switch random.below(10) {
                case 0:
                    foreign += 7 + UInt64(random.below(100))
                    XCTAssertTrue(read(inFlight: inFlight, completing: completing), "foreign cookies: \(context)")
                case 1:
                    drops += 1
                    XCTAssertTrue(read(inFlight: inFlight, completing: completing), "a drop: \(context)")
                case 2:
                    // The fast path's counters could not be read: the kernel's moved, which is news,
                    // and the mark stays where it was (a reading of 0 would have lifted it past every
                    // foreign cookie to come).
                    let before = lastKernel
                    XCTAssertEqual(
                        read(inFlight: inFlight, completing: completing, unread: true), lastKernel != before,
                        "unread: \(context)")
                default:
                    if read(inFlight: inFlight, completing: completing) { spurious += 1 }
                }
            }
            // Each spurious rise lifts the mark, which a skew of at most 3 + 3 bounds above the
            // excess the last foreign cookies set.
            XCTAssertLessThan(spurious, 300 / 4, "most of the flood's polls scan no sooner: \(context)")
            _ = read(inFlight: 0, completing: 0)
            XCTAssertFalse(read(inFlight: 0, completing: 0), "quiet: \(context)")
            foreign += 1
            XCTAssertTrue(read(inFlight: 0, completing: 0), "one foreign cookie after the flood: \(context)")
            XCTAssertFalse(read(inFlight: 0, completing: 0), context)
        }
        // Without a fast path (its count stays 0), any move of either counter is news, as it was.
        var signal = OverflowSignal()
        XCTAssertFalse(signal.rose(kernelCookies: 10, drops: 5, ownCookies: 0))
        XCTAssertFalse(signal.rose(kernelCookies: 10, drops: 5, ownCookies: 0))
        XCTAssertTrue(signal.rose(kernelCookies: 11, drops: 5, ownCookies: 0))
        XCTAssertTrue(signal.rose(kernelCookies: 11, drops: 6, ownCookies: 0))
        XCTAssertTrue(signal.rose(kernelCookies: 11, drops: 5, ownCookies: 0), "a counter read lower moved")
        XCTAssertTrue(signal.rose(kernelCookies: 0, drops: UInt64.max, ownCookies: 0), "wrapped: no trap")
    }

    func testTrackerActivatesOnAFullQueueAndHoldsBeforeTurningOff() {
        var policy = OverflowPolicy()
        policy.holdNanoseconds = 5
        policy.markLifetimeNanoseconds = 100
        var tracker = ListenerOverflowTracker(policy: policy)
        let key = ListenerKey(address: Self.vip, port: 443)
        func look(_ requests: UInt32, accept: UInt32 = 0) -> [ListenerObservation] {
            [
                ListenerObservation(
                    key: key, backlog: 16, acceptQueue: accept, requestSockets: requests, receiveBuffer: 131_072)
            ]
        }
        XCTAssertEqual(tracker.update(look(15), now: 1), [])
        XCTAssertEqual(tracker.update(look(16), now: 2), [.activated(look(16)[0])])
        XCTAssertEqual(tracker.update(look(16), now: 3), [])
        XCTAssertEqual(tracker.update(look(9), now: 4), [], "above the low mark: stays on")
        XCTAssertEqual(tracker.update(look(7), now: 5), [], "below it: the hold starts")
        XCTAssertEqual(tracker.update(look(12), now: 9), [], "back above: the hold is reset")
        XCTAssertEqual(tracker.update(look(7), now: 10), [])
        guard case .deactivated(key, _) = tracker.update(look(7), now: 15).first else {
            return XCTFail("not turned off after the hold")
        }
        XCTAssertEqual(tracker.activeKeys, [])
        XCTAssertEqual(tracker.update(look(16), now: 16), [.activated(look(16)[0])], "on again")
        // Never full again for the mark's lifetime: off, though the queue stays above the low mark.
        XCTAssertEqual(tracker.update(look(12), now: 100), [])
        guard case .deactivated(key, let reason) = tracker.update(look(12), now: 116).first else {
            return XCTFail("not turned off before the mark lapses")
        }
        XCTAssertTrue(reason.contains("overflow mark"))
        // With tcp_syncookies=2 there is no mark to keep.
        tracker.kernelNeedsOverflowMark = false
        XCTAssertEqual(tracker.update(look(16), now: 200).count, 1)
        XCTAssertEqual(tracker.update(look(12), now: 400), [])
        guard case .deactivated(key, "listener closed") = tracker.update([], now: 401).first else {
            return XCTFail("closed listener kept")
        }
        XCTAssertTrue(tracker.states.isEmpty)
    }

    func testListenerCandidatesGoFromExactToWildcard() {
        let flow = FlowKey(
            source: IPv4Address("198.18.0.1")!, sourcePort: 1, destination: IPv4Address("198.19.0.10")!,
            destinationPort: 443)
        XCTAssertEqual(
            ListenerKey.candidates(for: flow).map(\.description), ["198.19.0.10:443", "0.0.0.0:443", "[::]:443"])
        let flow6 = FlowKey(
            source: IPv6Address("2001:2::1")!, sourcePort: 1, destination: IPv6Address("2001:2:0:ff::10")!,
            destinationPort: 443)
        XCTAssertEqual(ListenerKey.candidates(for: flow6).map(\.description), ["[2001:2:0:ff::10]:443", "[::]:443"])
    }
}

extension Array where Element == UInt8 {
    var ipv4TCPFields:
        (
            source: IPv4Address, destination: IPv4Address, sourcePort: UInt16, destinationPort: UInt16,
            sequence: UInt32, acknowledgement: UInt32, flags: UInt8
        )?
    {
        guard count >= 40, self[0] == 0x45, self[9] == 6 else { return nil }
        return (IPv4Address(be32(12)), IPv4Address(be32(16)), be16(20), be16(22), be32(24), be32(28), self[33])
    }
}

final class SynCookieBatchProgramTests: XCTestCase {
    func testEveryBoundsCheckJumpsToTheExitAndEverySlotIsStored() {
        for ipv6 in [false, true] {
            let program = SynCookieProgram.batchGenerate(ipv6: ipv6, slots: 4)
            let exit = program.count - 2
            XCTAssertEqual(
                program[exit],
                BPFInstruction(
                    code: 0xb7, destination: 0, source: 0, offset: 0, immediate: Int32(SynCookieProgram.xdpPass)))
            let jumps = program.enumerated().filter { $0.element.code == 0x2d }
            XCTAssertEqual(jumps.count, 4)
            for (position, jump) in jumps { XCTAssertEqual(position + 1 + Int(jump.offset), exit) }
            let stores = program.filter { $0.code == 0x7b }.map(\.offset)
            XCTAssertEqual(stores, [0, 64, 128, 192])
            XCTAssertEqual(
                program.filter { $0.code == 0x85 }.map(\.immediate), Array(repeating: ipv6 ? 205 : 204, count: 4))
        }
    }
}
