import CFastPathABI
import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import XCTest

@testable import SecondChance

/// The tc and XDP entry points' SYN-cookie responder against the queue's (SynCookieReply, the Swift
/// reference), SYN by SYN through BPF_PROG_TEST_RUN in p1's namespace: the same SYN-ACK, byte for
/// byte, for every option shape, both families and both timestamp modes, the cookie the kernel's
/// own (the oracle's raw helpers compute the same one) and the MSS the route back advertises. XDP
/// sends it back out itself (XDP_TX) with the route's MACs, where tc leaves them to the neighbour
/// subsystem.
extension FastPathParityTests {
    func testTheProgramAnswersSYNsAsTheQueuesResponderDoes() throws {
        var (harness, _, keep) = try makeHarness()
        defer { keep.forEach { close($0) } }
        // The route back to the client advertises less than its link would (advmss), as on a
        // fleet that leaves room for GUE: the reply must say 1360, not the client's 1460.
        try Lab.shell(
            """
            ip -n pspf-p1 route replace 198.18.0.0/24 dev eth0 advmss 1360 && \
            ip -n pspf-p1 -6 route replace 2001:2::/64 dev eth0 metric 256 mtu 1400 && \
            ip netns exec pspf-p1 sysctl -qw net.ipv4.tcp_syncookies=2 && \
            ip netns exec pspf-p1 sysctl -qw net.ipv6.conf.eth0.forwarding=1
            """)
        // The client's neighbour entries, which XDP's route back answers with.
        let clientMAC = try Lab.linkAddress(in: "pspf-c")
        try Lab.shell(
            """
            ip -n pspf-p1 neigh replace \(Lab.client) lladdr \(clientMAC) dev eth0 nud permanent && \
            ip -n pspf-p1 -6 neigh replace \(Lab.client6) lladdr \(clientMAC) dev eth0 nud permanent
            """)
        harness.clientMAC = Self.mac(clientMAC)
        try lab.inside("p1") {
            let routes = try ReplyRoutesReader.read()
            XCTAssertEqual(routes.route(towards: .v4(Lab.client))?.mss, 1360)
            XCTAssertEqual(routes.route(towards: .v6(Lab.client6))?.mss, 1340, "IPv6: the route's MTU less 60")
            // Before Linux 6.0 no raw helper computes the cookie: the program's, which its kernel
            // computed, stands in for it, and everything else is still compared.
            let oracle = try? SynCookieOracle()
            if oracle == nil {
                let version = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current))
                XCTAssertTrue(version < (6, 0), "the raw cookie helpers load on \(version)")
            }
            for timestamps in [2, 1] {
                try compareAnswers(timestamps: timestamps, routes: routes, oracle: oracle, harness: &harness)
            }
            // SYNs the kernel would drop, and SYNs with data: neither responder answers them.
            for (destination, client) in [
                (IPAddress.v4(Lab.vip), IPAddress.v4(Lab.client)), (.v6(Lab.vip6), .v6(Lab.client6)),
            ] {
                try checkLeftToTheKernel(
                    Self.damagedSYNs(from: client, to: destination), harness: &harness)
            }
            try checkTheAttackersSYNs(routes: routes, harness: &harness)
            let entryPoints = harness.object.xdpFD >= 0 ? 2 : 1
            XCTAssertEqual(
                harness.maps.readCounters()[FP_COOKIES_SENT], UInt64(Self.optionShapes.count * 4 * entryPoints))
            try checkXDPLeavesToTcWhatItCannotSend(harness: &harness)
        }
    }

    /// Every option shape in both families, the reply compared byte for byte, with the kernel's
    /// tcp_timestamps at `timestamps`.
    func compareAnswers(
        timestamps: Int, routes: ReplyRoutes, oracle: SynCookieOracle?, harness: inout Harness
    ) throws {
        var tcp = TCPHostSettings()
        tcp.syncookies = 2
        tcp.timestamps = timestamps
        // Apart, so that a reply of either family taking the other's is seen.
        (tcp.defaultTTL, tcp.defaultHopLimit) = (61, 47)
        var snapshot = ResponderBoard.Snapshot()
        snapshot.generation = 1
        snapshot.settings = tcp
        snapshot.replyRoutes = routes
        let listener = ResponderListener(
            record: ListenerRecord(key: ListenerKey(address: .v4(Lab.vip), port: 80)), windowScale: 7,
            receiveBuffer: 131072, acceptQueueFull: false)
        let keys = [
            ListenerKey(address: .v4(Lab.vip), port: 80), ListenerKey(address: .v6(Lab.vip6), port: 80),
        ]
        for key in keys { snapshot.listeners[key] = listener }
        _ = try harness.maps.write(responder: snapshot, records: keys, after: .init())
        var settings = FastPathSettings(
            selfAddress: Self.self4, peers: harness.decider.peers, guePort: GUEPacket.port,
            checkCookies: true, lookupsElsewhere: false)
        settings.responderServing = true
        settings.xdpForward = harness.object.xdpFD >= 0
        settings.tcp = tcp
        settings.passIntervalNanoseconds = 3_600_000_000_000
        try harness.maps.write(settings)
        let destinations = [
            (IPAddress.v4(Lab.vip), IPAddress.v4(Lab.client)), (.v6(Lab.vip6), .v6(Lab.client6)),
        ]
        if timestamps == 2 {
            // A listener's first SYN goes to the kernel, which keeps its overflow mark.
            for (destination, client) in destinations {
                let before = harness.maps.readCounters()
                let syn = PacketBuilder.tcp(
                    source: client, sourcePort: 40999, destination: destination, destinationPort: 80,
                    flags: .syn)
                _ = try BPF.testRun(
                    programFD: harness.object.programFD, frame: harness.frame(Self.gue(syn)),
                    interfaceIndex: harness.interfaceIndex)
                XCTAssertEqual(harness.maps.readCounters()[FP_LOCAL_SYN] - before[FP_LOCAL_SYN], 1)
            }
        }
        for (index, (name, options)) in Self.optionShapes.enumerated() {
            for (destination, client) in destinations {
                let syn = PacketBuilder.tcp(
                    source: client, sourcePort: 41000 + UInt16(index), destination: destination,
                    destinationPort: 80, flags: .syn, sequence: 0x1234_5678 &+ UInt32(index), options: options)
                try checkAnswer(
                    to: syn, "\(name), \(destination), tcp_timestamps=\(timestamps)", harness: &harness,
                    snapshot: snapshot, listener: listener, oracle: oracle)
            }
        }
    }

    /// A served listener's SYN XDP cannot answer itself goes on to tc unchanged, spending nothing
    /// (no cookie, none of the listener's interval): one in a frame to another host's MAC (a
    /// device in promiscuous mode), one from a client whose neighbour entry is not known, and any
    /// with --xdp-forward off. tc answers the second.
    func checkXDPLeavesToTcWhatItCannotSend(harness: inout Harness) throws {
        guard harness.object.xdpFD >= 0 else { return }
        let stranger = IPv4Address("198.18.0.77")!  // on eth0's subnet, no neighbour entry
        let key = ListenerKey(address: .v4(Lab.vip), port: 80)
        func syn(_ source: IPv4Address, _ port: UInt16) -> [UInt8] {
            Self.gue(
                PacketBuilder.tcp(
                    source: .v4(source), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 80,
                    flags: .syn, options: [2, 4, 5, 0xb4]))
        }
        let cases = [
            ("to another host's MAC", harness.frame(syn(Lab.client, 41901), to: [0x02, 0, 0, 0, 0, 0x99])),
            ("from a client whose neighbour is not known", harness.frame(syn(stranger, 41902))),
        ]
        // Every SYN due to the kernel: a plan made before XDP knew it could not send would spend
        // the interval and deliver the SYN from XDP (changed, counted).
        var settings = try XCTUnwrap(harness.maps.readConfiguration())
        let interval = settings.pass_interval_ns
        settings.pass_interval_ns = 0
        try harness.maps.writeConfiguration(settings)
        for (what, frame) in cases {
            let passedBefore = harness.maps.readListenerCounts([key])[key]?[Int(FP_L_SYNS_PASSED.rawValue)]
            let xdp = try XCTUnwrap(try harness.runXDP(frame))
            XCTAssertEqual(xdp.action, Self.xdpPass, what)
            XCTAssertEqual(xdp.output, frame, "\(what): on to tc unchanged")
            XCTAssertEqual(xdp.delta.reduce(0, +), 0, "\(what): nothing counted")
            XCTAssertEqual(
                harness.maps.readListenerCounts([key])[key]?[Int(FP_L_SYNS_PASSED.rawValue)], passedBefore,
                "\(what): none of the interval spent")
        }
        settings.pass_interval_ns = interval
        try harness.maps.writeConfiguration(settings)
        let (action, _) = try BPF.testRun(
            programFD: harness.object.programFD, frame: cases[1].1, interfaceIndex: harness.interfaceIndex)
        XCTAssertEqual(action, Self.tcRedirect, "tc answers it (the neighbour subsystem resolves the client)")
        settings.flags &= ~UInt8(FP_F_XDP_FORWARD)
        try harness.maps.writeConfiguration(settings)
        defer {
            settings.flags |= UInt8(FP_F_XDP_FORWARD)
            try? harness.maps.writeConfiguration(settings)
        }
        let frame = harness.frame(syn(Lab.client, 41903))
        let xdp = try XCTUnwrap(try harness.runXDP(frame))
        XCTAssertEqual(xdp.action, Self.xdpPass, "--xdp-forward off")
        XCTAssertEqual(xdp.output, frame, "--xdp-forward off: on to tc unchanged")
    }

    /// An outsider's SYN for a served listener, and one to an address the host does not own for
    /// a wildcard listener: dropped, never answered.
    func checkTheAttackersSYNs(routes: ReplyRoutes, harness: inout Harness) throws {
        // The attacker's SYNs. An outsider's, for a served listener: dropped, never answered.
        let outsider = Self.gue(
            PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: 41998, destination: .v4(Lab.vip), destinationPort: 80,
                flags: .syn, options: [2, 4, 5, 0xb4]), from: Self.outsider)
        let (refused, _) = try BPF.testRun(
            programFD: harness.object.programFD, frame: harness.frame(outsider),
            interfaceIndex: harness.interfaceIndex)
        XCTAssertEqual(refused, Self.tcShot, "an outsider's SYN is dropped")
        XCTAssertNotEqual(try harness.runXDP(harness.frame(outsider))?.action, Self.xdpTX, "never answered in XDP")
        // An address the host does not own: the wildcard listener never makes it a reply's source.
        let foreign = Self.gue(
            PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: 41999, destination: .v4(Self.foreignVIP),
                destinationPort: Self.wildcardPort, flags: .syn, options: [2, 4, 5, 0xb4]))
        var snapshot = ResponderBoard.Snapshot()
        snapshot.generation = 2
        snapshot.replyRoutes = routes
        let wildcard = ListenerKey(address: .v4(IPv4Address(0)), port: Self.wildcardPort)
        snapshot.listeners[wildcard] = ResponderListener(
            record: ListenerRecord(key: wildcard), windowScale: 7, receiveBuffer: 131072, acceptQueueFull: false)
        _ = try harness.maps.write(responder: snapshot, records: [wildcard], after: .init())
        let (action, _) = try BPF.testRun(
            programFD: harness.object.programFD, frame: harness.frame(foreign),
            interfaceIndex: harness.interfaceIndex)
        XCTAssertEqual(action, Self.tcShot, "refused, never answered")
        XCTAssertNotEqual(try harness.runXDP(harness.frame(foreign))?.action, Self.xdpTX, "never answered in XDP")
    }

    /// The option shapes a SYN comes with: none, MSS alone, Linux's, Windows', timestamps without
    /// window scaling, window scaling without timestamps, SACK alone, padding and malformed tails.
    static let optionShapes: [(String, [UInt8])] = [
        ("no options", []),
        ("MSS", [2, 4, 5, 0xb4]),
        ("Linux", [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0x10, 0, 0, 0, 0, 0, 1, 3, 3, 7]),
        ("Windows", [2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2]),
        ("timestamps, no window scale", [2, 4, 5, 0x8c, 1, 1, 8, 10, 0, 0, 0x20, 0, 0, 0, 0, 0]),
        ("window scale, no timestamps", [2, 4, 5, 0xb4, 1, 3, 3, 14]),
        ("SACK alone", [4, 2, 1, 1]),
        ("scale above 14, no MSS", [1, 1, 8, 10, 0, 0, 0x30, 0, 0, 0, 0, 0, 1, 3, 3, 15]),
        ("malformed after the MSS", [2, 4, 2, 0x18, 8, 0, 0, 0]),
    ]

    /// SYNs a served listener's responder must leave to the kernel: a wrong TCP checksum, a wrong
    /// IPv4 header checksum, a header length past the IP packet's end (with the bytes it names
    /// there, as GUE padding), data.
    static func damagedSYNs(from client: IPAddress, to destination: IPAddress) -> [(String, [UInt8])] {
        func syn(_ port: UInt16, payload: [UInt8] = [], dataOffset: UInt8? = nil) -> [UInt8] {
            PacketBuilder.tcp(
                source: client, sourcePort: port, destination: destination, destinationPort: 80, flags: .syn,
                sequence: 7, options: dataOffset == nil ? [2, 4, 5, 0xb4] : [], payload: payload,
                dataOffset: dataOffset)
        }
        let ipv6: Bool
        if case .v6 = destination { ipv6 = true } else { ipv6 = false }
        let tcp = ipv6 ? 40 : 20
        var badTCP = syn(41901)
        badTCP[tcp + 16] ^= 0x5a
        var cases = [
            ("wrong TCP checksum", badTCP), ("data", syn(41902, payload: [1, 2, 3, 4])),
            ("doff past the end", syn(41903, dataOffset: 15) + [UInt8](repeating: 0, count: 40)),
        ]
        if !ipv6 {
            var badIP = syn(41904)
            badIP[10] ^= 0x5a
            cases.append(("wrong IPv4 header checksum", badIP))
        }
        return cases
    }

    /// Runs each SYN through the program: not answered (no cookie counted; delivered to the
    /// kernel as a SYN), and the queue's responder would not answer it either.
    func checkLeftToTheKernel(_ cases: [(String, [UInt8])], harness: inout Harness) throws {
        for (what, syn) in cases {
            let packet = Self.gue(syn)
            if let xdp = try harness.runXDP(harness.frame(packet)) {
                XCTAssertEqual(xdp.action, Self.xdpPass, "\(what): XDP delivers it or leaves it to tc")
                XCTAssertEqual(xdp.delta[Int(FP_COOKIES_SENT.rawValue)], 0, "\(what): no cookie from XDP")
            }
            let before = harness.maps.readCounters()
            _ = try BPF.testRun(
                programFD: harness.object.programFD, frame: harness.frame(packet),
                interfaceIndex: harness.interfaceIndex)
            let after = harness.maps.readCounters()
            XCTAssertEqual(after[FP_COOKIES_SENT], before[FP_COOKIES_SENT], "\(what): no cookie from the program")
            XCTAssertEqual(after[FP_LOCAL_SYN] - before[FP_LOCAL_SYN], 1, "\(what): delivered to the kernel")
            packet.withUnsafeBytes { bytes in
                guard case .parsed(let parsed) = harness.decider.parse(bytes), case .tcp(let segment) = parsed.inner
                else { return XCTFail("\(what): the decider does not parse it") }
                XCTAssertFalse(SynIntegrity.isAnswerable(bytes, segment), "\(what): nor from the queue's responder")
            }
        }
    }

    /// The SYN answered by each entry point (XDP first: a plan that answers spends nothing of the
    /// listener's interval), each reply the queue's responder's.
    func checkAnswer(
        to syn: [UInt8], _ what: String, harness: inout Harness, snapshot: ResponderBoard.Snapshot,
        listener: ResponderListener, oracle: SynCookieOracle?
    ) throws {
        let packet = Self.gue(syn)
        let ipv6 = syn[0] >> 4 == 6
        let etherType: [UInt8] = ipv6 ? [0x86, 0xdd] : [0x08, 0x00]
        let xdp = try harness.runXDP(harness.frame(packet))
        let before = harness.maps.readCounters()[FP_COOKIES_SENT]
        let (action, output) = try BPF.testRun(
            programFD: harness.object.programFD, frame: harness.frame(packet), interfaceIndex: harness.interfaceIndex)
        guard action == Self.tcRedirect, harness.maps.readCounters()[FP_COOKIES_SENT] == before + 1 else {
            return XCTFail("\(what): not answered (action \(action))")
        }
        XCTAssertEqual(Array(output[0..<12]), [UInt8](repeating: 0, count: 12), "\(what): the neighbour fills in MACs")
        XCTAssertEqual(Array(output[12...13]), etherType, what)
        try checkReply(
            Array(output[14...]), to: packet, what, harness: harness, snapshot: snapshot, listener: listener,
            oracle: oracle)
        guard let xdp else { return }
        guard xdp.action == Self.xdpTX, xdp.delta[Int(FP_COOKIES_SENT.rawValue)] == 1 else {
            return XCTFail("\(what): not answered in XDP (action \(xdp.action))")
        }
        XCTAssertEqual(Array(xdp.output.prefix(14)), harness.clientMAC + harness.localMAC + etherType, what)
        // Ethernet's shortest frame: padded with zeros where the reply is shorter.
        XCTAssertEqual(xdp.output.count, max(60, output.count), what)
        XCTAssertTrue(xdp.output.dropFirst(output.count).allSatisfy { $0 == 0 }, what)
        try checkReply(
            Array(xdp.output[14..<output.count]), to: packet, "XDP, \(what)", harness: harness, snapshot: snapshot,
            listener: listener, oracle: oracle)
    }

    /// `reply` (an IP packet) is the queue's responder's SYN-ACK for the GUE `packet`.
    func checkReply(
        _ reply: [UInt8], to packet: [UInt8], _ what: String, harness: Harness, snapshot: ResponderBoard.Snapshot,
        listener: ResponderListener, oracle: SynCookieOracle?
    ) throws {
        let ipv6 = reply.first.map { $0 >> 4 == 6 } ?? false
        // The reference: the queue's responder's SYN-ACK for the same SYN, with the cookie the
        // oracle computes and the TSval the program chose (its option bits checked by the equality).
        try packet.withUnsafeBytes { bytes in
            guard case .parsed(let parsed) = harness.decider.parse(bytes), case .tcp(let segment) = parsed.inner,
                let options = SynOptions.parse(bytes, tcpOffset: segment.tcpOffset, end: parsed.gue.innerEnd)
            else { return XCTFail("\(what): the decider does not parse it") }
            let tcp = ipv6 ? 40 : 20
            let answered = reply.count >= tcp + 20 ? reply.be32(tcp + 4) : 0
            var cookie = answered
            if let oracle {
                var cookies: [(cookie: UInt32, mss: UInt16)?] = []
                oracle.cookies(
                    forSYNs: [.init(packet: bytes, segment: segment, options: options)][...], ipv6: ipv6, into: &cookies
                )
                cookie = try XCTUnwrap(cookies.first ?? nil, what).cookie
                XCTAssertEqual(answered, cookie, "\(what): the kernel's cookie")
            }
            // The TSval follows the MSS option: 01 01 08 0a, or 04 02 08 0a with SACK.
            let hasTimestamp =
                reply.count >= tcp + 36
                && [[1, 1, 8, 10], [4, 2, 8, 10]].contains(Array(reply[(tcp + 24)..<(tcp + 28)]))
            let now = hasTimestamp ? UInt64(reply.be32(tcp + 28)) : 0
            let offer = SynCookieReply.offer(
                options, settings: snapshot.settings, ourWindowScale: listener.windowScale, nowMilliseconds: now)
            let route = try XCTUnwrap(snapshot.replyRoutes.route(towards: segment.flow.sourceAddress))
            let window = TCPWindow.synAckWindow(
                listenerReceiveBuffer: listener.receiveBuffer, mss: offer.timestamp == nil ? route.mss : route.mss - 12)
            var expected = [UInt8](repeating: 0, count: SynCookieReply.maximumLength)
            let length = expected.withUnsafeMutableBytes {
                SynCookieReply.write(
                    into: $0, answering: bytes, segment, cookie: cookie, mss: route.mss, offer: offer,
                    window: window, ttl: snapshot.settings.replyTTL(ipv6: ipv6))
            }
            XCTAssertEqual(
                reply.hex, Array(expected[0..<length]).hex, "\(what): the program's SYN-ACK is the queue's responder's")
        }
    }
}

extension FastPathParityTests.Harness {
    /// An outer IPv4 packet as p1's eth0 receives it.
    func frame(_ packet: [UInt8]) -> [UInt8] { localMAC + [0x02, 0, 0, 0, 0, 0x02] + [0x08, 0x00] + packet }
}

extension Array where Element == UInt8 {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}
