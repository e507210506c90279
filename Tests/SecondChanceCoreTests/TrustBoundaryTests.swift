import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import XCTest

/// The trust boundary of the decision: only peers are heard, only allowed proxies are hops, only
/// this host's addresses are delivered to, whatever the packet says.
final class TrustBoundaryTests: XCTestCase {
    let outsider = IPv4Address("198.19.5.5")!
    let flow = FlowKey(source: client, sourcePort: 40000, destination: vip, destinationPort: 80)

    func decide(_ packet: [UInt8], decider: Decider = p1Decider, sockets: [FlowKey: SocketLookup] = [:]) -> Verdict {
        var ownership = TableOwnership(sockets: sockets)
        return packet.withUnsafeBytes { decider.decide($0, ownership: &ownership).verdict }
    }

    func from(_ source: IPv4Address, _ inner: [UInt8], hops: [IPv4Address] = [p2]) -> [UInt8] {
        PacketBuilder.gue(from: source, to: p1, sourcePort: 50123, inner: inner, hops: hops)
    }

    func syn(_ source: IPAddress, to destination: IPAddress) -> [UInt8] {
        PacketBuilder.tcp(source: source, sourcePort: 40000, destination: destination, destinationPort: 80, flags: .syn)
    }

    func testPrefixesParseAsOperatorsWriteThem() {
        XCTAssertEqual(IPv4Prefix("198.18.0.0/24")?.description, "198.18.0.0/24")
        XCTAssertEqual(IPv4Prefix("198.18.0.2")?.description, "198.18.0.2/32")
        XCTAssertEqual(IPv4Prefix("0.0.0.0/0"), .everything)
        for bad in [
            "", "/24", "198.18.0.0/", "198.18.0.0/33", "198.18.0.5/24", "198.18.0.0/24/1", "198.18.0.0/-1",
            "198.18.0.0/ 24",
            "198.18.0.0/024", "::/0", "198.18.0.0/2x",
        ] {
            XCTAssertNil(IPv4Prefix(bad), bad)
        }
        let set = IPv4PrefixSet([IPv4Prefix("198.18.0.0/24")!, IPv4Prefix("198.19.1.7")!])
        XCTAssertTrue(set.contains(IPv4Address("198.18.0.255")!))
        XCTAssertTrue(set.contains(IPv4Address("198.19.1.7")!))
        XCTAssertFalse(set.contains(IPv4Address("198.19.1.8")!))
        XCTAssertFalse(set.contains(IPv4Address("198.18.1.0")!))
        XCTAssertFalse(IPv4PrefixSet([]).contains(IPv4Address(0)))
        XCTAssertTrue(IPv4PrefixSet([.everything]).contains(IPv4Address(UInt32.max)))
    }

    func testOnlyPeersAreHeard() {
        XCTAssertEqual(decide(from(outsider, tcp4(.syn))), .refuse(.untrustedSource))
        XCTAssertEqual(decide(from(outsider, tcp4(.ack))), .refuse(.untrustedSource))
        XCTAssertEqual(decide(from(director, tcp4(.syn))), .local(.syn))
        let everyone = Decider(selfAddress: p1, peers: PeerPolicy(sources: [.everything]), local: p1Addresses)
        XCTAssertEqual(decide(from(outsider, tcp4(.syn)), decider: everyone), .local(.syn))
    }

    func testHopsBeyondTheLimitAreRefused() {
        let four = [IPv4Address](repeating: p2, count: 4)
        XCTAssertEqual(decide(from(director, tcp4(.ack), hops: four)), .forward(to: p2))
        XCTAssertEqual(decide(from(director, tcp4(.ack), hops: four + [p2])), .refuse(.tooManyHops))
        XCTAssertEqual(
            decide(from(director, tcp4(.syn), hops: [IPv4Address](repeating: p2, count: 30))), .refuse(.tooManyHops))
        var strict = p1Decider
        strict.peers.maximumHops = 0
        XCTAssertEqual(decide(from(director, tcp4(.ack), hops: [p2]), decider: strict), .refuse(.tooManyHops))
    }

    func testOnlyAllowedProxiesAreHops() {
        XCTAssertEqual(decide(from(director, tcp4(.ack), hops: [outsider])), .refuse(.untrustedHop))
        let anywhere = Decider(selfAddress: p1, peers: PeerPolicy(sources: [.everything]), local: p1Addresses)
        for hop in [
            "127.0.0.1", "127.1.2.3", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250", "255.255.255.255",
            "240.0.0.1",
            "198.18.0.255",
        ] {
            XCTAssertEqual(
                decide(from(director, tcp4(.ack), hops: [IPv4Address(hop)!]), decider: anywhere),
                .refuse(.untrustedHop), hop)
        }
        // A hop that is one of this host's addresses, not only --self, is this host.
        XCTAssertEqual(decide(from(director, tcp4(.ack), hops: [vip])), .local(.forwardedToSelf))
        // --allow-hop narrower than --allow-source.
        let onlyP2 = Decider(
            selfAddress: p1,
            peers: PeerPolicy(sources: [IPv4Prefix("198.18.0.0/24")!], hops: [IPv4Prefix("198.18.0.12")!]),
            local: p1Addresses)
        XCTAssertEqual(decide(from(director, tcp4(.ack), hops: [p2]), decider: onlyP2), .forward(to: p2))
        XCTAssertEqual(decide(from(director, tcp4(.ack), hops: [director]), decider: onlyP2), .refuse(.untrustedHop))
    }

    func testOnlyThisHostsAddressesAreDeliveredTo() {
        let foreign4: IPAddress = .v4(client), foreign6: IPAddress = .v6(client6)
        let udp = PacketBuilder.ip(
            source: .v4(director), destination: foreign4, protocol: 17, transport: [0, 1, 0, 2, 0, 8, 0, 0],
            checksumOffset: nil)
        let udp6 = PacketBuilder.ip(
            source: .v6(IPv6Address("2001:2::2")!), destination: foreign6, protocol: 17,
            transport: [0, 1, 0, 2, 0, 8, 0, 0],
            checksumOffset: nil)
        let echo = PacketBuilder.ip(
            source: .v4(director), destination: foreign4, protocol: 1, transport: [8, 0, 0, 0, 0, 1, 0, 1],
            checksumOffset: 2)
        var fragment = PacketBuilder.ip(
            source: .v4(director), destination: foreign4, protocol: 6, transport: [UInt8](repeating: 0, count: 8),
            checksumOffset: nil)
        fragment.setBE16(6, 0x0010)
        for (name, inner) in [
            ("SYN", syn(.v4(director), to: foreign4)),
            ("IPv6 SYN", syn(.v6(client6), to: .v6(IPv6Address("2001:2::99")!))),
            ("UDP", udp), ("IPv6 UDP", udp6), ("ICMP", echo), ("fragment", fragment),
            ("SYN to loopback", syn(.v4(client), to: .v4(IPv4Address("127.0.0.1")!))),
            ("SYN to ::1", syn(.v6(client6), to: .v6(IPv6Address("::1")!))),
            ("SYN to link-local", syn(.v6(client6), to: .v6(IPv6Address("fe80::1")!))),
        ] {
            XCTAssertEqual(decide(from(director, inner)), .refuse(.notLocalDestination), name)
        }
        // Every local reason passes through the same check: last resort, established, forwarded to self.
        let ackToClient = PacketBuilder.tcp(
            source: .v4(director), sourcePort: 1, destination: foreign4, destinationPort: 80, flags: .ack)
        XCTAssertEqual(decide(from(director, ackToClient, hops: [])), .refuse(.notLocalDestination))
        XCTAssertEqual(decide(from(director, ackToClient, hops: [p1])), .refuse(.notLocalDestination))
        let foreignFlow = FlowKey(source: director, sourcePort: 1, destination: client, destinationPort: 80)
        XCTAssertEqual(
            decide(from(director, ackToClient), sockets: [foreignFlow: .connected]), .refuse(.notLocalDestination))
        // Forwarded packets keep their inner destination: the next proxy checks it.
        XCTAssertEqual(decide(from(director, ackToClient)), .forward(to: p2))
        // This host's addresses, IPv4 and IPv6, interface and VIP.
        XCTAssertEqual(decide(from(director, syn(.v4(client), to: .v4(p1)))), .local(.syn))
        XCTAssertEqual(decide(from(director, syn(.v6(client6), to: .v6(vip6)))), .local(.syn))
        XCTAssertEqual(decide(from(director, syn(.v6(client6), to: .v6(IPv6Address("2001:2::11")!)))), .local(.syn))
    }

    /// Ranges of the local routing table are this host's, as the kernel delivers them.
    func testLocalRouteRangesAreThisHostsAddresses() {
        var local = LocalAddresses(ipv4: [p1])
        local.ipv4Ranges = [IPv4Prefix("198.19.7.0/24")!]
        local.ipv6Ranges = [IPv6Prefix(network: IPv6Address("2001:db8:77::")!, length: 64)]
        XCTAssertTrue(local.accepts(destination: IPv4Address("198.19.7.200")!))
        XCTAssertFalse(local.accepts(destination: IPv4Address("198.19.8.1")!))
        XCTAssertTrue(local.accepts(destination: IPv6Address("2001:db8:77::ffff:1")!))
        XCTAssertFalse(local.accepts(destination: IPv6Address("2001:db8:78::1")!))
        XCTAssertTrue(local.isMartianSource(IPv4Address("198.19.7.1")!), "a source in the range is this host")
        // Masks at every boundary of the two halves.
        for (network, length, inside, outside) in [
            ("::", UInt8(0), "ffff::1", nil), ("::", 1, "7fff::", "8000::"),
            ("2001:db8::", 63, "2001:db8:0:1::", "2001:db8:0:2::"),
            ("2001:db8::", 64, "2001:db8::ffff", "2001:db8:0:1::"),
            ("2001:db8::", 65, "2001:db8::7fff:0:0:0", "2001:db8::8000:0:0:0"),
            ("2001:db8::", 128, "2001:db8::", "2001:db8::1"),
        ] as [(String, UInt8, String, String?)] {
            let prefix = IPv6Prefix(network: IPv6Address(network)!, length: length)
            XCTAssertTrue(prefix.contains(IPv6Address(inside)!), "\(prefix) \(inside)")
            if let outside { XCTAssertFalse(prefix.contains(IPv6Address(outside)!), "\(prefix) \(outside)") }
        }
    }

    /// Addresses of the sockets' namespace (--netns) routed there by the host: a destination, and
    /// nothing else (not this host's as a source or a hop).
    func testAddressesRoutedIntoTheSocketsNamespaceAreDestinationsOnly() {
        let pod = IPv4Address("198.19.8.8")!, pod6 = IPv6Address("2001:db8::88")!
        let local = LocalAddresses(ipv4: [p1], deliverableIPv4: [pod], deliverableIPv6: [pod6])
        XCTAssertTrue(local.accepts(destination: pod))
        XCTAssertTrue(local.accepts(destination: pod6))
        XCTAssertFalse(local.accepts(destination: IPv4Address("198.19.8.9")!))
        XCTAssertFalse(local.owns(pod))
        XCTAssertFalse(local.isMartianSource(pod))
        XCTAssertFalse(local.isMartianSource(pod6))
        XCTAssertNotEqual(local, LocalAddresses(ipv4: [p1]), "a change of them is published")
        XCTAssertFalse(
            LocalAddresses(deliverableIPv6: [IPv6Address("fe80::1")!]).accepts(destination: IPv6Address("fe80::1")!))
    }

    func testMartianInnerSourcesAreNotDelivered() {
        for source in ["127.0.0.1", "198.19.0.10", "198.18.0.11", "224.0.0.5", "0.0.0.0", "198.18.0.255"] {
            XCTAssertEqual(
                decide(from(director, syn(.v4(IPv4Address(source)!), to: .v4(vip)))), .refuse(.martianSource), source)
        }
        // IPv4-mapped and IPv4-compatible sources (::ffff:0:0/96, ::/96): a dual-stack socket sees
        // ::ffff:127.0.0.1 as loopback and ::ffff:198.18.0.11 as this host; no host sends either.
        for source in [
            "::1", "::", "ff02::1", "2001:2:0:ff::10", "::ffff:127.0.0.1", "::ffff:198.18.0.11", "::ffff:198.19.0.10",
            "::ffff:198.18.0.1", "::198.18.0.1", "::2",
        ] {
            XCTAssertEqual(
                decide(from(director, syn(.v6(IPv6Address(source)!), to: .v6(vip6)))), .refuse(.martianSource), source)
        }
    }

    /// glb-healthcheck's GUE probe: hop count 0, an ICMP echo to the proxy's own address whose
    /// payload is the check's identifier. It is answered by the proxy's stack.
    func testTheDirectorsHealthCheckProbeIsTakenHere() {
        let probe = PacketBuilder.ip(
            source: .v4(director), destination: .v4(p1), protocol: 1,
            transport: [8, 0, 0, 0, 0, 0, 0, 0] + Array("glbhc_c0ffee".utf8), checksumOffset: 2)
        XCTAssertEqual(decide(from(director, probe, hops: [])), .local(.icmp))
        XCTAssertEqual(decide(from(outsider, probe, hops: [])), .refuse(.untrustedSource))
    }

    func testOverflowThresholdsHoldForTheLargestBacklogs() {
        for backlog in [UInt32(Int32.max), UInt32.max] {
            var tracker = ListenerOverflowTracker(policy: OverflowPolicy())
            let key = ListenerKey(address: .v4(vip), port: 80)
            func observe(_ requests: UInt32, at now: UInt64) -> [ListenerOverflowTracker.Event] {
                tracker.update(
                    [
                        ListenerObservation(
                            key: key, backlog: backlog, acceptQueue: 0, requestSockets: requests, receiveBuffer: 1 << 20
                        )
                    ], now: now)
            }
            XCTAssertEqual(observe(backlog - 1, at: 1), [])
            XCTAssertEqual(observe(backlog, at: 2).count, 1, "activated at a full queue of \(backlog)")
            var hold = OverflowPolicy()
            hold.activatePercent = 100
            hold.deactivatePercent = 100
            hold.holdNanoseconds = UInt64.max
            var patient = ListenerOverflowTracker(policy: hold)
            _ = patient.update(
                [
                    ListenerObservation(
                        key: key, backlog: backlog, acceptQueue: 0, requestSockets: backlog, receiveBuffer: 0)
                ], now: UInt64.max)
            XCTAssertEqual(patient.activeKeys, [key])
        }
    }

    func testKernelQueueTableParses() {
        let text =
            """
                0  12345     3 2 65535     7     9       42  1\n    5 -4000     0 2 65535     0     0        1  \
            1\ngarbage\n1 2\n
            """
        let table = KernelQueueStatistics.parse(text)
        XCTAssertEqual(
            table[0], KernelQueueStatistics(portID: 12345, waiting: 3, queueDropped: 7, userDropped: 9, idSequence: 42))
        XCTAssertEqual(
            table[5],
            KernelQueueStatistics(
                portID: UInt32(bitPattern: -4000), waiting: 0, queueDropped: 0, userDropped: 0, idSequence: 1))
        XCTAssertEqual(table.count, 2)
    }
}
