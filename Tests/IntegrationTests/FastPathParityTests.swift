import CFastPathABI
import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import TestSupport
import XCTest

@testable import SecondChance

/// The tc program against the Swift decider, packet by packet: each packet runs through the loaded
/// program (BPF_PROG_TEST_RUN, in proxy p1's namespace, where its helpers see p1's sockets, routes
/// and neighbours) and through the daemon's Decider with the daemon's own socket-table answers
/// (sock_diag). The program must give the same verdict and the same bytes, or send the packet up
/// unchanged. The program's counters say which verdict it reached. The XDP entry point runs on
/// every packet too, bound to the tc one: a packet it drops, delivers or sends back out, tc must
/// drop, deliver or forward alike (same counters, same bytes); any other it must pass on unchanged
/// and uncounted.
final class FastPathParityTests: XCTestCase {
    static let tcOK: UInt32 = 0, tcShot: UInt32 = 2, tcRedirect: UInt32 = 7
    static let xdpDrop: UInt32 = 1, xdpPass: UInt32 = 2, xdpTX: UInt32 = 3

    struct Harness {
        let object: FastPathObject
        let maps: FastPathMaps
        var decider: Decider
        var ownership: KernelFlowOwnership
        let interfaceIndex: UInt32
        /// An interface of p1's that no route to the peers leaves by.
        let elsewhere: UInt32
        /// The interface both are told the packet arrived on (eth0 unless a case says otherwise).
        var arrival: UInt32
        let localMAC: [UInt8]
        /// The client's MAC, where a case made it p1's neighbour.
        var clientMAC: [UInt8] = []
        /// p1's neighbours by address: where a forwarded packet must be sent.
        let neighbours: [IPv4Address: [UInt8]]
        var outcomes: [String: Int] = [:]
        /// What the XDP entry point decided itself (the rest it passed to tc), by tc's outcome.
        var xdpDecided: [String: Int] = [:]

        /// Runs one outer IPv4 packet through both; returns what happened, or fails the test.
        mutating func compare(
            _ packet: [UInt8], _ what: @autoclosure () -> String, to destination: [UInt8]? = nil,
            file: StaticString = #filePath, line: UInt = #line
        ) throws {
            let frame = frame(packet, to: destination)
            let xdp = try runXDP(frame)
            let before = maps.readCounters()
            let (action, output) = try BPF.testRun(
                programFD: object.programFD, frame: frame, interfaceIndex: arrival)
            let after = maps.readCounters()
            let delta = zip(after.slots, before.slots).map { $0 &- $1 }
            let decision = packet.withUnsafeBytes { decider.decide($0, arrival: arrival, ownership: &ownership) }
            let counted = delta.enumerated().filter { $0.element != 0 }.map { $0.offset }
            func fail(_ message: String) {
                XCTFail(
                    "\(what()): \(message); program action \(action), slots \(counted), decider \(decision.verdict)\n"
                        + "packet \(packet.map { String(format: "%02x", $0) }.joined())", file: file, line: line)
            }
            if let xdp, let failure = xdpFailure(xdp, frame, packet, decision, tc: (action, output, delta)) {
                return fail("XDP: \(failure)")
            }
            switch tcOutcome(action, output, frame: frame, packet: packet, decision: decision, counted: counted) {
            case .success(let label): outcomes[label, default: 0] += 1
            case .failure(let failure): fail(failure.message)
            }
        }

        struct Mismatch: Error { var message: String }

        /// What is wrong with XDP's action on `frame` against tc's, if anything; tallies what XDP
        /// decided itself.
        mutating func xdpFailure(
            _ xdp: (action: UInt32, output: [UInt8], delta: [UInt64]), _ frame: [UInt8], _ packet: [UInt8],
            _ decision: Decision, tc: (action: UInt32, output: [UInt8], delta: [UInt64])
        ) -> String? {
            let counted = tc.delta.enumerated().filter { $0.element != 0 }.map { $0.offset }
            if let failure = FastPathParityTests.xdpBinding(
                xdp, frame: frame, tc: tc, forward: decision.verdict.isForward,
                leftToTC: leftToTC(packet, decision, tcCounted: counted))
            {
                return failure
            }
            if xdp.action != FastPathParityTests.xdpPass || xdp.output != frame {
                xdpDecided[xdp.action == FastPathParityTests.xdpTX ? "forwarded" : "\(tc.action)", default: 0] += 1
            }
            // The driver's checksum verdict covered the outer datagram only, and stays on what
            // XDP delivers: it must vouch for the inner segment itself.
            if xdp.action == FastPathParityTests.xdpPass, xdp.output != frame,
                case .tcp(let segment) = decision.inner, !FastPathParityTests.checksumVerifiable(packet, segment)
            {
                return "delivered a segment whose checksum it cannot vouch for"
            }
            return nil
        }

        /// tc's action, output and counted slots against the decider's verdict: the outcome's
        /// label, or what differs.
        func tcOutcome(
            _ action: UInt32, _ output: [UInt8], frame: [UInt8], packet: [UInt8], decision: Decision, counted: [Int]
        ) -> Result<String, Mismatch> {
            func fail(_ message: String) -> Result<String, Mismatch> { .failure(Mismatch(message: message)) }
            let upSlots = Set(FastPathCounters.passedUp.map { Int($0.slot.rawValue) })
            switch action {
            case FastPathParityTests.tcOK:
                guard output == frame else { return fail("sent up, but changed") }
                guard counted.count <= 1, counted.allSatisfy(upSlots.contains) else {
                    return fail("sent up, miscounted")
                }
                return .success("up")
            case FastPathParityTests.tcShot:
                let name: CounterName
                let label: String
                switch decision.verdict {
                case .drop(let reason): (name, label) = (.dropped(reason), reason.rawValue)
                case .refuse(let refusal): (name, label) = (.refused(refusal), refusal.rawValue)
                default: return fail("dropped, but the decider does not drop it")
                }
                guard let slot = FastPathCounters.slot(for: name), counted == [0, slot].sorted() else {
                    return fail("dropped for another reason than \(name)")
                }
                return .success(label)
            case FastPathParityTests.tcRedirect:
                return redirectOutcome(output, packet: packet, decision: decision, counted: counted)
            default:
                return fail("unexpected action")
            }
        }

        /// A redirect: a forward with the queue's bytes to the hop's neighbour, or a delivery of
        /// the inner packet, each counted for its reason.
        func redirectOutcome(
            _ output: [UInt8], packet: [UInt8], decision: Decision, counted: [Int]
        ) -> Result<String, Mismatch> {
            func fail(_ message: String) -> Result<String, Mismatch> { .failure(Mismatch(message: message)) }
            guard let gue = decision.gue else { return fail("redirected an unparsed packet") }
            switch decision.verdict {
            case .forward(let hop):
                guard counted == [0, Int(FP_FORWARDED.rawValue)].sorted() else { return fail("forward miscounted") }
                var expected = packet
                expected.withUnsafeMutableBytes {
                    GUEForwarding.rewrite($0, gue, source: decider.selfAddress, destination: hop)
                }
                guard Array(output.dropFirst(14)) == Array(expected[0..<gue.innerEnd]) else {
                    return fail("forwarded bytes differ from the queue's")
                }
                guard Array(output.prefix(6)) == neighbours[hop] else {
                    return fail("forwarded to the wrong neighbour")
                }
                return .success("forwarded")
            case .local(let reason):
                guard let slot = FastPathCounters.slot(for: .local(reason)), counted == [0, slot].sorted() else {
                    return fail("delivered for another reason than \(reason)")
                }
                let etherType: [UInt8] = gue.innerFamily == .ipv6 ? [0x86, 0xdd] : [0x08, 0x00]
                guard Array(output.dropFirst(14)) == Array(packet[gue.innerOffset..<gue.innerEnd]),
                    Array(output[12..<14]) == etherType
                else { return fail("decapsulated bytes differ from the inner packet") }
                return .success(reason.rawValue)
            default:
                return fail("redirected, but the decider does not take or forward it")
            }
        }

        /// Why XDP may pass on a packet tc drops or delivers itself, if it may: a SYN the responder
        /// may answer, a peer's way back judged (a bond's slave is not the bond), an inner segment
        /// whose checksum XDP cannot vouch for, an ACK the cookie check found no cookie in.
        func leftToTC(_ packet: [UInt8], _ decision: Decision, tcCounted: [Int]) -> Bool {
            if tcCounted.contains(Int(FP_REFUSED_REVERSE_PATH.rawValue))
                || tcCounted.contains(Int(FP_COOKIE_ACKS_INVALID.rawValue))
            {
                return true
            }
            guard case .tcp(let segment) = decision.inner else { return false }
            let responder = (maps.readConfiguration()?.flags ?? 0) & UInt8(FP_F_RESPONDER) != 0
            if responder && segment.flags.contains(.syn) && segment.flags.isDisjoint(with: [.ack, .fin, .rst]) {
                return true
            }
            return !FastPathParityTests.checksumVerifiable(packet, segment)
        }

        /// `packet` (outer IPv4) in an Ethernet frame to `destination` (p1's MAC unless given).
        func frame(_ packet: [UInt8], to destination: [UInt8]? = nil) -> [UInt8] {
            (destination ?? localMAC) + [0x02, 0, 0, 0, 0, 0x02] + [0x08, 0x00] + packet
        }

        /// The XDP entry point's action, bytes and counters for `frame`; nil where it is not
        /// loaded.
        func runXDP(_ frame: [UInt8]) throws -> (action: UInt32, output: [UInt8], delta: [UInt64])? {
            guard object.xdpFD >= 0 else { return nil }
            let before = maps.readCounters()
            let (action, output) = try BPF.testRun(
                programFD: object.xdpFD, frame: frame, interfaceIndex: arrival, hook: .xdp)
            return (action, output, zip(maps.readCounters().slots, before.slots).map { $0 &- $1 })
        }
    }

    /// Whether this kernel loads the XDP entry point (its helpers: Linux 5.12) and runs it on given
    /// bytes as if they arrived on a given interface (an xdp_md context: 5.15); where it does not,
    /// only the tc entry point is compared, and the test says so.
    static let xdpComparable: Bool = {
        let version = KernelRelease.version(of: KernelRelease.current) ?? (0, 0)
        if version < (5, 15) { print("fast path parity: the XDP entry point is not compared on Linux \(version)") }
        return version >= (5, 15)
    }()

    /// Whether XDP verifies the inner segment's checksum and finds it right: over the
    /// pseudo-header and the segment to the end of its IP packet, below 2048 bytes.
    static func checksumVerifiable(_ packet: [UInt8], _ segment: TCPSegment) -> Bool {
        packet.withUnsafeBytes { bytes in
            let ip = segment.ipHeaderOffset, tcp = segment.tcpOffset
            let ipv6 = bytes[ip] >> 4 == 6
            let end = ipv6 ? ip + 40 + Int(bytes.be16(ip + 4)) : ip + Int(bytes.be16(ip + 2))
            guard end <= bytes.count, end >= tcp, end - tcp < 2048 else { return false }
            let length = end - tcp
            let pseudo =
                ipv6
                ? InternetChecksum.pseudoHeaderSum(
                    source: IPv6Address(high: bytes.be64(ip + 8), low: bytes.be64(ip + 16)),
                    destination: IPv6Address(high: bytes.be64(ip + 24), low: bytes.be64(ip + 32)), nextHeader: 6,
                    length: length)
                : InternetChecksum.pseudoHeaderSum(
                    source: IPv4Address(bytes.be32(ip + 12)), destination: IPv4Address(bytes.be32(ip + 16)),
                    protocol: 6, length: length)
            let segmentBytes = UnsafeRawBufferPointer(rebasing: bytes[tcp..<end])
            return InternetChecksum.fold(InternetChecksum.partialSum(segmentBytes, initial: pseudo)) == 0xffff
        }
    }

    /// The XDP entry point against the tc one on the same frame: nil when bound, else why not.
    static func xdpBinding(
        _ xdp: (action: UInt32, output: [UInt8], delta: [UInt64]), frame: [UInt8],
        tc: (action: UInt32, output: [UInt8], delta: [UInt64]), forward: Bool, leftToTC: Bool
    ) -> String? {
        let decapsulated = tc.action == tcRedirect && !forward
        switch xdp.action {
        case xdpDrop:
            guard tc.action == tcShot else { return "dropped what tc does not drop" }
            return xdp.delta == tc.delta ? nil : "dropped, counted otherwise than tc"
        case xdpTX:
            guard tc.action == tcRedirect && forward else { return "sent back out what tc does not forward" }
            guard xdp.output == tc.output else { return "forwarded bytes differ from tc's" }
            return xdp.delta == tc.delta ? nil : "forwarded, counted otherwise than tc"
        case xdpPass where xdp.output != frame:
            guard decapsulated else { return "decapsulated what tc does not deliver" }
            guard xdp.output == tc.output else { return "decapsulated bytes differ from tc's" }
            return xdp.delta == tc.delta ? nil : "delivered, counted otherwise than tc"
        case xdpPass:
            guard xdp.delta.allSatisfy({ $0 == 0 }) else { return "passed to tc, but counted" }
            // Only what tc sends up, forwards or answers is left to it; what it drops or
            // delivers XDP decides itself (a SYN the responder may answer aside).
            return tc.action == tcOK || (tc.action == tcRedirect && forward) || leftToTC
                ? nil : "passed to tc what it decides itself"
        default:
            return "unexpected action \(xdp.action)"
        }
    }

    var lab: Lab!

    override func tearDown() {
        lab?.tearDown()
        super.tearDown()
    }

    static let self4 = Lab.p1, wildcardPort: UInt16 = 8080, closedPort: UInt16 = 9999
    static let foreignVIP = IPv4Address("198.19.7.7")!
    static let outsider = IPv4Address("198.18.1.66")!
    /// Addresses of a sockets' namespace (--netns) the host routes there: destinations only.
    static let podVIP = IPv4Address("198.19.8.8")!, podVIP6 = IPv6Address("2001:db8::88")!
    /// In ranges p1 serves by local routes (AnyIP: `ip route add local PREFIX dev lo`).
    static let rangeVIP = IPv4Address("198.19.9.5")!, rangeVIP6 = IPv6Address("2001:db8:99::5")!

    static func mac(_ text: some StringProtocol) -> [UInt8] { text.split(separator: ":").map { UInt8($0, radix: 16)! } }

    /// p1 forwards, the client reaches the VIP through it, and an interface no route to the peers
    /// leaves by is there: p1's MAC and its neighbours' by address.
    func routeThroughP1() throws -> (String, [IPv4Address: [UInt8]]) {
        // The client reaches the VIP through p1 directly: real connections, with no director. p1
        // forwards (bpf_fib_lookup answers only where the interface does).
        try Lab.shell(
            """
            ip netns exec pspf-p1 sysctl -qw net.ipv4.conf.eth0.forwarding=1 && \
            ip -n pspf-p1 route add local 198.19.9.0/24 dev lo && \
            ip -n pspf-p1 -6 route add local 2001:db8:99::/64 dev lo && \
            ip -n pspf-c route replace \(Lab.vip)/32 via \(Lab.p1) && \
            ip -n pspf-c -6 route replace \(Lab.vip6)/128 via 2001:2::11
            """)
        let p2MAC = try Lab.linkAddress(in: "pspf-p2")
        try Lab.shell("ip -n pspf-p1 neigh replace \(Lab.p2) lladdr \(p2MAC) dev eth0 nud permanent")
        let p1MAC = try Lab.linkAddress(in: "pspf-p1")
        // An interface no route to the peers leaves by, with eth0's MAC, so that a frame arriving
        // there is for this host as on eth0.
        try Lab.shell(
            """
            ip -n pspf-p1 link add elsewhere0 address \(p1MAC) type veth peer name elsewhere1 && \
            ip -n pspf-p1 link set elsewhere0 up && ip -n pspf-p1 link set elsewhere1 up && \
            ip -n pspf-p1 route add \(Self.elsewhereHop)/32 dev elsewhere0 && \
            ip -n pspf-p1 neigh replace \(Self.elsewhereHop) lladdr 02:00:00:00:00:77 dev elsewhere0 nud permanent
            """)
        var neighbours: [IPv4Address: [UInt8]] = [:]
        for line in try Lab.shell("ip -n pspf-p1 -4 neigh show").split(separator: "\n") {
            let words = line.split(separator: " ")
            if let address = words.first.flatMap({ IPv4Address(String($0)) }), let at = words.firstIndex(of: "lladdr"),
                at + 1 < words.count
            {
                neighbours[address] = Self.mac(words[at + 1])
            }
        }
        return (p1MAC, neighbours)
    }

    /// One connection from the client to each listener (the first IPv4, the second IPv6): their
    /// flows, their sockets kept open.
    func connect(to listeners: [Int32], keeping keep: inout [Int32]) throws -> [FlowKey] {
        var established: [FlowKey] = []
        for (vip, listener) in [(IPAddress.v4(Lab.vip), listeners[0]), (.v6(Lab.vip6), listeners[1])] {
            let client = try lab.inside("c") { try LabSockets.connectTCP(to: vip, port: 80) }
            let server = try acceptConnection(listener)
            keep += [client, server]
            var address = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(client, $0, &length) }
            }
            let port = withUnsafeBytes(of: &address) { UInt16($0[2]) << 8 | UInt16($0[3]) }
            switch vip {
            case .v4:
                established.append(
                    FlowKey(source: Lab.client, sourcePort: port, destination: Lab.vip, destinationPort: 80))
            case .v6:
                established.append(
                    FlowKey(source: Lab.client6, sourcePort: port, destination: Lab.vip6, destinationPort: 80))
            }
        }
        return established
    }

    /// p1 of the lab with listeners on the VIP (both families) and a wildcard one, one established
    /// connection per family from the client, and the program loaded with p1's configuration.
    func makeHarness() throws -> (Harness, established: [FlowKey], keep: [Int32]) {
        lab = try Lab(prefix: "pspf")
        let (p1MAC, neighbours) = try routeThroughP1()

        var keep: [Int32] = []
        let listeners = try lab.inside("p1") {
            [
                try LabSockets.listenTCP(on: .v4(Lab.vip), port: 80),
                try LabSockets.listenTCP(on: .v6(Lab.vip6), port: 80),
                try LabSockets.listenTCP(on: .v4(IPv4Address(0)), port: Self.wildcardPort),
            ]
        }
        keep += listeners
        let established = try connect(to: listeners, keeping: &keep)
        let harness = try lab.inside("p1") { () throws -> Harness in
            let peers = PeerPolicy(sources: [IPv4Prefix("198.18.0.0/24")!])
            var local = try LocalAddressWatcher.dump()
            (local.deliverableIPv4, local.deliverableIPv6) = ([Self.podVIP], [Self.podVIP6])
            let reversePaths = try ReversePathReader.read(peers: peers.sources.prefixes)
            let object = try FastPathObject(xdp: Self.xdpComparable)
            let maps = FastPathMaps(object)
            try maps.write(local)
            try maps.write(reversePaths)
            var settings = FastPathSettings(
                selfAddress: Self.self4, peers: peers, guePort: GUEPacket.port, checkCookies: true,
                lookupsElsewhere: false)
            settings.xdpForward = true
            try maps.write(settings)
            let counters = CounterBlock()
            var decider = Decider(selfAddress: Self.self4, peers: peers, local: local)
            decider.reversePaths = reversePaths
            let eth0 = try NetworkInterface.index("eth0")
            return Harness(
                object: object, maps: maps, decider: decider,
                ownership: KernelFlowOwnership(
                    sockDiag: try SockDiag(), cookieState: try KernelCookieState(), oracle: try? SynCookieOracle(),
                    counters: counters, responder: nil,
                    cache: FlowCache(positiveLifetime: 0, negativeLifetime: 0), epochs: FlowEpochs()),
                interfaceIndex: eth0, elsewhere: try NetworkInterface.index("elsewhere0"), arrival: eth0,
                localMAC: Self.mac(p1MAC), neighbours: neighbours)
        }
        return (harness, established, keep)
    }

    static func gue(
        _ inner: [UInt8], from source: IPv4Address = Lab.director, hops: [IPv4Address] = [Lab.p2], nextHop: UInt8 = 0,
        checksum: Bool = true
    ) -> [UInt8] {
        PacketBuilder.gue(
            from: source, to: self4, sourcePort: 50123, inner: inner, hops: hops, nextHop: nextHop,
            udpChecksum: checksum)
    }

    /// An allowed hop whose route leaves by elsewhere0, not by eth0 where the GUE arrives.
    static let elsewhereHop = IPv4Address("198.18.0.77")!

    /// Forwards at the corners of the UDP checksum's update, found by trying source ports: one
    /// carrying 0xffff, and one whose update sums to zero (sent as 0xffff); nil for one not found.
    static func checksumCorners() -> (carrying: [UInt8]?, updatedToZero: [UInt8]?) {
        let inner = tcp(.v4(Lab.client), 40002, .v4(Lab.vip), 80, .ack)
        var carrying: [UInt8]?, updatedToZero: [UInt8]?
        for port in UInt16(1)...UInt16.max where carrying == nil || updatedToZero == nil {
            var packet = PacketBuilder.gue(
                from: Lab.director, to: self4, sourcePort: port, inner: inner, hops: [Lab.p2])
            if carrying == nil, packet.be16(26) == 0xffff { carrying = packet }
            let original = packet
            packet.withUnsafeMutableBytes { bytes in
                guard case .success(let gue) = GUEPacket.parse(UnsafeRawBufferPointer(bytes)) else { return }
                GUEForwarding.rewrite(bytes, gue, source: self4, destination: Lab.p2)
            }
            if updatedToZero == nil, packet.be16(26) == 0xffff { updatedToZero = original }
        }
        return (carrying, updatedToZero)
    }

    /// `packet` (outer IPv4 and UDP) with its UDP checksum off by one.
    static func wrongUDPChecksum(_ packet: [UInt8]) -> [UInt8] {
        var packet = packet
        packet[27] ^= 1
        return packet
    }

    /// An inner IPv4 TCP segment whose checksum is wrong (tc forwards it all the same, reading
    /// nothing of the segment; so does XDP, where no UDP checksum needs updating).
    static func wrongTCPChecksum(_ inner: [UInt8]) -> [UInt8] {
        var inner = inner
        inner[20 + 16] ^= 1
        return inner
    }

    static func tcp(
        _ source: IPAddress, _ sourcePort: UInt16, _ destination: IPAddress, _ destinationPort: UInt16,
        _ flags: TCPFlags
    ) -> [UInt8] {
        PacketBuilder.tcp(
            source: source, sourcePort: sourcePort, destination: destination, destinationPort: destinationPort,
            flags: flags, sequence: 1000, acknowledgement: 2000, options: [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            payload: [1, 2, 3])
    }

    /// Data lengths around each piece of XDP's checksum: every tail, the pieces' edges, a full segment.
    static let sweptLengths =
        Array(0...70) + Array(250...262) + Array(506...520) + Array(1020...1030) + Array(1440...1460)

    /// The named cases: every verdict the program decides, the attacker's packets among them.
    static func namedCases(established: [FlowKey]) -> [(String, [UInt8])] {
        let client = IPAddress.v4(Lab.client), vip = IPAddress.v4(Lab.vip), vip6 = IPAddress.v6(Lab.vip6)
        let client6 = IPAddress.v6(Lab.client6)
        let flow4 = established[0], flow6 = established[1]
        return [
            ("SYN", gue(tcp(client, 40001, vip, 80, .syn))),
            ("SYN, IPv6", gue(tcp(client6, 40001, vip6, 80, .syn))),
            ("established", gue(tcp(client, flow4.sourcePort, vip, 80, .ack))),
            ("established, IPv6", gue(tcp(client6, flow6.sourcePort, vip6, 80, .ack))),
            ("established, no UDP checksum", gue(tcp(client, flow4.sourcePort, vip, 80, .ack), checksum: false)),
            ("listener only: forwarded", gue(tcp(client, 40002, vip, 80, .ack))),
            ("listener only: forwarded, IPv6", gue(tcp(client6, 40002, vip6, 80, .ack))),
            ("forwarded, no UDP checksum", gue(tcp(client, 40002, vip, 80, .ack), checksum: false)),
            (
                "forwarded, no UDP checksum, inner checksum wrong",
                gue(wrongTCPChecksum(tcp(client, 40002, vip, 80, .ack)), checksum: false)
            ),
            ("forwarded, second hop", gue(tcp(client, 40002, vip, 80, .ack), hops: [Lab.p1, Lab.p2], nextHop: 1)),
            ("forwarded, UDP checksum wrong", wrongUDPChecksum(gue(tcp(client, 40002, vip, 80, .ack)))),
            ("nothing listens: forwarded", gue(tcp(client, 40003, vip, closedPort, .ack))),
            ("no hops left", gue(tcp(client, 40004, vip, 80, .ack), hops: [Lab.p2], nextHop: 1)),
            ("no hops at all", gue(tcp(client, 40004, vip, 80, .ack), hops: [])),
            ("established, no hops left", gue(tcp(client, flow4.sourcePort, vip, 80, .ack), hops: [])),
            ("next hop is this host", gue(tcp(client, 40005, vip, 80, .ack), hops: [Lab.p1])),
            ("RST to a listener", gue(tcp(client, 40006, vip, 80, .rst))),
            // The attacker's packets.
            ("outsider's SYN", gue(tcp(client, 40010, vip, 80, .syn), from: outsider)),
            ("outsider's ACK", gue(tcp(client, flow4.sourcePort, vip, 80, .ack), from: outsider)),
            ("too many hops", gue(tcp(client, 40011, vip, 80, .ack), hops: Array(repeating: Lab.p2, count: 5))),
            ("hop outside --allow-hop", gue(tcp(client, 40012, vip, 80, .ack), hops: [IPv4Address("198.18.9.9")!])),
            ("hop on loopback", gue(tcp(client, 40013, vip, 80, .ack), hops: [IPv4Address("127.0.0.1")!])),
            (
                "hop is the subnet's broadcast",
                gue(tcp(client, 40014, vip, 80, .ack), hops: [IPv4Address("198.18.0.255")!])
            ),
            ("hop is multicast", gue(tcp(client, 40015, vip, 80, .ack), hops: [IPv4Address("224.0.0.1")!])),
            ("SYN for a foreign address", gue(tcp(client, 40016, .v4(foreignVIP), 80, .syn))),
            ("wildcard listener, foreign address", gue(tcp(client, 40017, .v4(foreignVIP), wildcardPort, .syn))),
            ("wildcard listener, last resort", gue(tcp(client, 40018, .v4(foreignVIP), wildcardPort, .ack), hops: [])),
            ("SYN to loopback", gue(tcp(client, 40019, .v4(IPv4Address("127.0.0.1")!), 80, .syn))),
            ("SYN to ::1", gue(tcp(client6, 40019, .v6(IPv6Address("::1")!), 80, .syn))),
            ("SYN to the sockets' namespace", gue(tcp(client, 40026, .v4(podVIP), 80, .syn))),
            ("SYN to the sockets' namespace, IPv6", gue(tcp(client6, 40026, .v6(podVIP6), 80, .syn))),
            ("SYN from the sockets' namespace", gue(tcp(.v4(podVIP), 40027, vip, 80, .syn))),
            ("SYN from the sockets' namespace, IPv6", gue(tcp(.v6(podVIP6), 40027, vip6, 80, .syn))),
            ("hop in the sockets' namespace", gue(tcp(client, 40028, vip, 80, .ack), hops: [podVIP])),
            ("SYN to a local route's range", gue(tcp(client, 40029, .v4(rangeVIP), 80, .syn))),
            ("SYN to a local route's range, IPv6", gue(tcp(client6, 40029, .v6(rangeVIP6), 80, .syn))),
            ("martian source: a local route's range", gue(tcp(.v4(rangeVIP), 40030, vip, 80, .syn))),
            ("martian source: loopback", gue(tcp(.v4(IPv4Address("127.0.0.1")!), 40020, vip, 80, .syn))),
            ("martian source: this host", gue(tcp(.v4(Lab.p1), 40021, vip, 80, .syn))),
            ("martian source: multicast", gue(tcp(.v4(IPv4Address("239.1.1.1")!), 40022, vip, 80, .syn))),
            (
                "martian source: the subnet's broadcast",
                gue(tcp(.v4(IPv4Address("198.18.0.255")!), 40025, vip, 80, .syn))
            ),
            (
                "martian source: ::ffff:127.0.0.1",
                gue(tcp(.v6(IPv6Address("::ffff:127.0.0.1")!), 40023, vip6, 80, .syn))
            ),
            ("martian source: ::1", gue(tcp(.v6(IPv6Address("::1")!), 40024, vip6, 80, .syn))),
            // Up to the queue: what the program does not decide.
            (
                "inner UDP",
                gue(
                    PacketBuilder.ip(
                        source: client, destination: vip, protocol: 17, transport: [0, 1, 0, 2, 0, 8, 0, 0],
                        checksumOffset: nil))
            ),
            (
                "inner ICMP",
                gue(
                    PacketBuilder.ip(
                        source: client, destination: vip, protocol: 1, transport: [8, 0, 0, 0, 0, 0, 0, 0],
                        checksumOffset: 2))
            ),
        ]
    }

    /// Random GUE in the shape the property tests use: every field drawn from values that matter
    /// to the decision (peers and outsiders, allowed and forbidden hops, this host's addresses,
    /// foreign and martian ones, every flag combination, the sockets p1 has and has not).
    static func randomPacket(_ random: inout SeededGenerator, established: [FlowKey]) -> [UInt8] {
        let sources4: [IPv4Address] = [
            Lab.client, Lab.p1, foreignVIP, IPv4Address("127.0.0.1")!, IPv4Address("0.1.2.3")!, podVIP,
        ]
        let destinations4: [IPv4Address] = [Lab.vip, Lab.p1, foreignVIP, IPv4Address("127.0.0.1")!, podVIP]
        let sources6: [IPv6Address] = [
            Lab.client6, IPv6Address("::1")!, IPv6Address("::ffff:198.18.0.11")!, IPv6Address("fe80::1")!, podVIP6,
        ]
        let destinations6: [IPv6Address] = [
            Lab.vip6, IPv6Address("fe80::1")!, IPv6Address("2001:db8::99")!, podVIP6,
        ]
        let hops: [IPv4Address] = [
            Lab.p2, Lab.p1, Lab.director, IPv4Address("198.18.9.9")!, IPv4Address("198.18.0.255")!,
            IPv4Address("127.0.0.1")!, podVIP,
        ]
        let outer: [IPv4Address] = [Lab.director, Lab.p2, outsider]
        let ports: [UInt16] = [80, wildcardPort, closedPort] + established.map(\.destinationPort)
        let flags = TCPFlags(rawValue: UInt8.random(in: 0...255, using: &random))
        let ipv6 = Bool.random(using: &random)
        var sourcePort = UInt16.random(in: 1024...65535, using: &random)
        let inner: [UInt8]
        if ipv6 {
            var source = sources6.randomElement(using: &random)!
            let destination = destinations6.randomElement(using: &random)!
            if Int.random(in: 0..<3, using: &random) == 0 {
                (source, sourcePort) = (Lab.client6, established[1].sourcePort)
            }
            inner = tcp(.v6(source), sourcePort, .v6(destination), ports.randomElement(using: &random)!, flags)
        } else {
            var source = sources4.randomElement(using: &random)!
            let destination = destinations4.randomElement(using: &random)!
            if Int.random(in: 0..<3, using: &random) == 0 {
                (source, sourcePort) = (Lab.client, established[0].sourcePort)
            }
            inner = tcp(.v4(source), sourcePort, .v4(destination), ports.randomElement(using: &random)!, flags)
        }
        let hopList = (0..<Int.random(in: 0...5, using: &random)).map { _ in hops.randomElement(using: &random)! }
        return gue(
            inner, from: outer.randomElement(using: &random)!, hops: hopList,
            nextHop: UInt8.random(in: 0...UInt8(hopList.count + 1), using: &random),
            checksum: Bool.random(using: &random))
    }

    /// A mutation as the fuzz tests make them; half of them get a valid outer header again, so
    /// that they reach the GUE and inner checks instead of the kernel's own.
    static func mutate(_ packet: [UInt8], _ random: inout SeededGenerator) -> [UInt8] {
        var packet = packet
        for _ in 0..<Int.random(in: 1...3, using: &random) {
            switch Int.random(in: 0..<4, using: &random) {
            case 0 where packet.count > 28:
                packet[Int.random(in: 20..<packet.count, using: &random)] ^=
                    UInt8(1) << UInt8.random(in: 0..<8, using: &random)
            case 1 where packet.count > 40:
                packet.removeLast(Int.random(in: 1...min(packet.count - 28, 48), using: &random))
            case 2 where packet.count > 60:
                let offset = [24, 28, 29, 32, 35, 38, 40, 42, 44, 48, 52, 56].randomElement(using: &random)!
                packet[offset] = UInt8.random(in: 0...255, using: &random)
            default:
                packet += (0..<Int.random(in: 1...8, using: &random)).map { _ in
                    UInt8.random(in: 0...255, using: &random)
                }
            }
        }
        // Half the time the UDP checksum is made right again, so that XDP forwards some.
        if Bool.random(using: &random) && packet.count >= 28 {
            let length = Int(packet.be16(24))
            if length >= 8, 20 + length <= packet.count {
                packet.setBE16(26, 0)
                let pseudo = InternetChecksum.pseudoHeaderSum(
                    source: IPv4Address(packet.be32(12)), destination: IPv4Address(packet.be32(16)), protocol: 17,
                    length: length)
                let check = InternetChecksum.checksum(Array(packet[20..<(20 + length)]), initial: pseudo)
                packet.setBE16(26, check == 0 ? 0xffff : check)
            }
        }
        if Bool.random(using: &random) && packet.count >= 28 {
            packet.setBE16(2, UInt16(packet.count))
            packet.setBE16(10, 0)
            packet.setBE16(
                10,
                packet.withUnsafeBytes {
                    InternetChecksum.finish(InternetChecksum.partialSum(UnsafeRawBufferPointer(rebasing: $0[0..<20])))
                })
        }
        return packet
    }

    /// The named cases bind both programs to the daemon; then arrivals elsewhere, the settings'
    /// switches and random and mutated packets do, and every kind of verdict must have come up.
    func testTheProgramDecidesAsTheDaemonDoesOrSendsThePacketUp() throws {
        var (harness, established, keep) = try makeHarness()
        defer { keep.forEach { close($0) } }
        try lab.inside("p1") {
            try compareNamedCases(&harness, established)
            try compareWhereTheyMayNotArrive(&harness, established)
            try compareUnderEverySetting(&harness, established)
            try compareAnAddressBothHostAndBroadcast(&harness)
            try compareRandomPackets(&harness, established)
            checkEveryVerdictCameUp(harness)
        }
    }

    /// The named cases and the forward's corners, tallied.
    func compareNamedCases(_ harness: inout Harness, _ established: [FlowKey]) throws {
        for (name, packet) in Self.namedCases(established: established) { try harness.compare(packet, name) }
        // Every named case that the program decides is decided, not sent up: the cases above
        // name 41 decided packets (forwarded, taken, dropped) and 2 inner non-TCP ones; a last
        // hop's established segment counts as established, as glb-redirect counts it.
        XCTAssertEqual(harness.outcomes["up"], 2, "\(harness.outcomes)")
        XCTAssertGreaterThanOrEqual(harness.outcomes["forwarded"] ?? 0, 5, "\(harness.outcomes)")
        XCTAssertEqual(harness.outcomes["accepted_established"], 4, "\(harness.outcomes)")
        if Self.xdpComparable {
            // XDP sends back out every forward but the one whose UDP checksum it finds wrong.
            XCTAssertEqual(
                harness.xdpDecided["forwarded"], (harness.outcomes["forwarded"] ?? 0) - 1, "\(harness.xdpDecided)")
        }
        // The update's corners, bound to tc's bytes like every forward (outside the named
        // cases' tally, which the passes below compare against).
        let named = harness.outcomes
        let corners = Self.checksumCorners()
        try harness.compare(try XCTUnwrap(corners.carrying), "forwarded, UDP checksum 0xffff")
        try harness.compare(try XCTUnwrap(corners.updatedToZero), "forwarded, UDP checksum updated to zero")
        // What XDP leaves to tc although tc forwards it: a hop routed by another interface, and
        // a frame to another host's MAC (tc sends that one up: the stack drops it).
        let ack = Self.tcp(.v4(Lab.client), 40002, .v4(Lab.vip), 80, .ack)
        let elsewhere = Self.gue(ack, hops: [Self.elsewhereHop])
        try harness.compare(elsewhere, "forwarded by another interface")
        XCTAssertNotEqual(try harness.runXDP(harness.frame(elsewhere))?.action, Self.xdpTX)
        try harness.compare(
            Self.gue(ack), "forwarded, to another host's MAC", to: [2, 0x11, 0x22, 0x33, 0x44, 0x55])
        harness.outcomes = named
        // Outside --allow-hop, loopback, multicast, the subnet's broadcast address (the
        // kernel's broadcast route: no brd was given) and the sockets' namespace: no packet
        // goes to any of them.
        XCTAssertEqual(harness.outcomes["untrusted_hop"], 5, "\(harness.outcomes)")

    }

    /// The named cases again where their route back does not lead, and to a group MAC address.
    func compareWhereTheyMayNotArrive(_ harness: inout Harness, _ established: [FlowKey]) throws {
        // The same packets arriving where the route back to the peers does not lead (another
        // interface; eth0 carries it): every one that passed the source check is refused for it,
        // by both.
        let heard = harness.outcomes
        harness.outcomes = [:]
        harness.arrival = harness.elsewhere
        for (name, packet) in Self.namedCases(established: established) { try harness.compare(packet, name) }
        XCTAssertEqual(
            harness.outcomes["reverse_path"], Self.namedCases(established: established).count - 2,
            "all but the outsider's two: \(harness.outcomes)")
        harness.arrival = harness.interfaceIndex
        // To a group MAC address: ip_rcv takes no unicast IP from it, and neither program
        // decides one (tc sends it up, XDP passes it to tc).
        harness.outcomes = [:]
        for (name, packet) in Self.namedCases(established: established) {
            try harness.compare(packet, "\(name), to a group MAC", to: [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01])
        }
        XCTAssertEqual(harness.outcomes, ["up": Self.namedCases(established: established).count])
        harness.outcomes = heard

    }

    /// The named cases with the responder serving, with look-ups elsewhere, and suspended.
    func compareUnderEverySetting(_ harness: inout Harness, _ established: [FlowKey]) throws {
        // While the responder serves listeners none of these packets reach, every decision
        // stays; with --netns every look-up goes up.
        let baseline = harness.outcomes
        var settings = FastPathSettings(
            selfAddress: Self.self4, peers: harness.decider.peers, guePort: GUEPacket.port, checkCookies: true,
            lookupsElsewhere: false)
        settings.xdpForward = true
        settings.responderServing = true
        try harness.maps.write(settings)
        harness.outcomes = [:]
        for (name, packet) in Self.namedCases(established: established) { try harness.compare(packet, name) }
        XCTAssertEqual(harness.outcomes, baseline)
        settings.responderServing = false
        settings.lookupsElsewhere = true
        try harness.maps.write(settings)
        harness.outcomes = [:]
        for (name, packet) in Self.namedCases(established: established) { try harness.compare(packet, name) }
        XCTAssertEqual(harness.outcomes["accepted_syn"], 8, "the SYNs decide no look-up: \(harness.outcomes)")
        XCTAssertNil(harness.outcomes["accepted_established"], "\(harness.outcomes)")
        XCTAssertNil(harness.outcomes["forwarded"], "\(harness.outcomes)")
        // Suspended (the address maps could not be written): every packet goes up, counted.
        harness.maps.suspend(settings)
        harness.outcomes = [:]
        let before = harness.maps.readCounters()
        for (name, packet) in Self.namedCases(established: established) { try harness.compare(packet, name) }
        XCTAssertEqual(harness.outcomes, ["up": Self.namedCases(established: established).count])
        XCTAssertEqual(
            harness.maps.readCounters()[FP_UP_UNCONFIGURED] - before[FP_UP_UNCONFIGURED],
            UInt64(Self.namedCases(established: established).count))
        settings.lookupsElsewhere = false
        try harness.maps.write(settings)
        harness.outcomes = [:]

    }

    /// An address that is this host's and a subnet's broadcast address at once (an operator gave
    /// the host the subnet's last address: the kernel keeps both routes, and `fp_hosts4` both
    /// flags): a SYN to it is delivered, a hop to it refused and a source of it martian, by the
    /// decider, tc and XDP alike.
    func compareAnAddressBothHostAndBroadcast(_ harness: inout Harness) throws {
        let both = IPv4Address("198.18.0.255")!
        let (saved, original) = (harness.outcomes, harness.decider.local)
        func use(_ local: LocalAddresses) throws {
            var local = local
            (local.deliverableIPv4, local.deliverableIPv6) = ([Self.podVIP], [Self.podVIP6])
            try harness.maps.write(local)
            harness.decider.local = local
        }
        try Lab.shell("ip -n \(lab.namespace("p1")) addr add \(both)/32 dev lo")
        defer {
            _ = try? Lab.shell("ip -n \(lab.namespace("p1")) addr del \(both)/32 dev lo")
            try? use(original)
            harness.outcomes = saved
        }
        try use(try LocalAddressWatcher.dump())
        XCTAssertTrue(harness.decider.local.owns(both) && harness.decider.local.isBroadcast(both), "both, as read")
        harness.outcomes = [:]
        let client = IPAddress.v4(Lab.client)
        try harness.compare(Self.gue(Self.tcp(client, 40040, .v4(both), 80, .syn)), "SYN to an address both")
        try harness.compare(
            Self.gue(Self.tcp(client, 40041, .v4(Lab.vip), 80, .ack), hops: [both]), "hop to an address both")
        try harness.compare(Self.gue(Self.tcp(.v4(both), 40042, .v4(Lab.vip), 80, .syn)), "source an address both")
        XCTAssertEqual(
            harness.outcomes, ["accepted_syn": 1, "untrusted_hop": 1, "martian_source": 1], "\(harness.outcomes)")
    }

    /// Random packets, mutated seeds (the named cases and the fuzzer's corpus), and every length
    /// XDP sums a segment in.
    func compareRandomPackets(_ harness: inout Harness, _ established: [FlowKey]) throws {
        var random = SeededGenerator.fromEnvironment(name: #function)
        var seeds = Self.namedCases(established: established).map(\.1)
        let corpus = Lab.packageRoot.appendingPathComponent("Tests/Fuzz/corpus/PacketDecision")
        for file in try FileManager.default.contentsOfDirectory(atPath: corpus.path).sorted() {
            seeds.append(Array(try Data(contentsOf: corpus.appendingPathComponent(file))))
        }
        for _ in 0..<3000 {
            try harness.compare(Self.randomPacket(&random, established: established), "random GUE \(random.report)")
        }
        for _ in 0..<6000 {
            let packet = Self.mutate(seeds.randomElement(using: &random)!, &random)
            // One in eight arrives where its route back does not lead.
            harness.arrival = random.below(8) == 0 ? harness.elsewhere : harness.interfaceIndex
            try harness.compare(packet, "mutated packet \(random.report)")
        }
        harness.arrival = harness.interfaceIndex
        // Every way XDP sums a segment (512-byte chunks, pieces of 256 down to 4 bytes, a tail
        // of 1 to 3), its checksum right and wrong, in both families: XDP must deliver the
        // first (tc delivers it) and leave the second to tc (the binding above fails either).
        for length in Self.sweptLengths {
            for flow in established.prefix(2) {
                var inner = PacketBuilder.tcp(
                    source: flow.sourceAddress, sourcePort: flow.sourcePort, destination: flow.destinationAddress,
                    destinationPort: flow.destinationPort, flags: .ack, sequence: 1000, acknowledgement: 2000,
                    payload: Array(repeating: UInt8(truncatingIfNeeded: length), count: length))
                try harness.compare(Self.gue(inner), "ACK with \(length) bytes of data to \(flow)")
                inner[inner.count - 1] ^= 0x5a
                try harness.compare(Self.gue(inner), "ACK with \(length) bytes of data, checksum wrong")
            }
        }
    }

    func checkEveryVerdictCameUp(_ harness: Harness) {
        print("fast path parity: \(harness.outcomes.sorted { $0.key < $1.key })")
        if Self.xdpComparable {
            print("fast path parity, decided in XDP by tc's action: \(harness.xdpDecided)")
            XCTAssertGreaterThan(harness.xdpDecided["\(Self.tcShot)"] ?? 0, 0, "XDP drops what tc drops")
            XCTAssertGreaterThan(harness.xdpDecided["\(Self.tcRedirect)"] ?? 0, 0, "XDP delivers what tc delivers")
            XCTAssertGreaterThan(harness.xdpDecided["forwarded"] ?? 0, 20, "XDP forwards what tc forwards")
        }
        // The random packets reach every kind of verdict in the program, not just "up".
        for verdict in [
            "forwarded", "accepted_syn", "accepted_established", "untrusted_source", "untrusted_hop",
            "too_many_hops", "martian_source", "not_local_destination", "accepted_last_resort", "reverse_path",
        ] {
            XCTAssertGreaterThan(
                harness.outcomes[verdict] ?? 0, 0,
                "no \(verdict) in \(harness.outcomes)")
        }
    }
}

extension Verdict {
    var isForward: Bool { if case .forward = self { true } else { false } }
}
