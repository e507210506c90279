import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import XCTest

@testable import SecondChance

/// doctor's reading of the firewall rules that feed second-chance.
final class HostCheckTests: XCTestCase {
    /// Kernel decapsulation: fou alone is not enough; doctor names the missing part and its fix.
    func testKernelDecapsulationNeedsTunl0AndSit0UpAndNoStrictReversePathFilter() {
        func failing(_ checks: [HostCheck]) -> [String] { checks.filter { $0.level != .ok }.map(\.subject) }
        XCTAssertEqual(
            failing(HostChecks.kernelDecapsulationChecks(tunl0: .up, sit0: .up, rpFilterAll: 0, rpFilterTunl0: 0)), [])
        XCTAssertEqual(
            failing(HostChecks.kernelDecapsulationChecks(tunl0: .up, sit0: .up, rpFilterAll: 2, rpFilterTunl0: 0)), [])
        let down = HostChecks.kernelDecapsulationChecks(tunl0: .down, sit0: .up, rpFilterAll: 0, rpFilterTunl0: 0)
        XCTAssertEqual(down.first { $0.subject == "tunl0" }?.level, .fail)
        XCTAssertEqual(down.first { $0.subject == "tunl0" }?.fix, "ip link set tunl0 up")
        let absent = HostChecks.kernelDecapsulationChecks(
            tunl0: .absent, sit0: .absent, rpFilterAll: 0, rpFilterTunl0: nil)
        XCTAssertEqual(failing(absent), ["tunl0", "sit0"])
        XCTAssertEqual(absent.first { $0.subject == "sit0" }?.fix, "modprobe sit && ip link set sit0 up")
        // Strict on either side is strict: the larger of `all` and the device's counts.
        XCTAssertEqual(
            failing(HostChecks.kernelDecapsulationChecks(tunl0: .up, sit0: .up, rpFilterAll: 1, rpFilterTunl0: 0)),
            ["rp_filter on tunl0"])
        XCTAssertEqual(
            failing(HostChecks.kernelDecapsulationChecks(tunl0: .up, sit0: .up, rpFilterAll: 0, rpFilterTunl0: 1)),
            ["rp_filter on tunl0"])
    }

    /// GLB's encapsulation on a full-size segment: with a 1500-byte link and two hops, MSS 1460
    /// makes a 1544-byte GUE packet, lost; doctor names the MSS that fits, for each family.
    func testAFullSizeSegmentMustFitTheGUELinkOnceEncapsulated() throws {
        XCTAssertEqual(GUEPathMTU.overhead(hops: 2), 44)
        XCTAssertEqual(GUEPathMTU.largestMSS(linkMTU: 1500, hops: 2, ipv6: false), 1416)
        XCTAssertEqual(GUEPathMTU.largestMSS(linkMTU: 1500, hops: 2, ipv6: true), 1396)
        var host = HostSnapshot()
        (host.peerInterfaces, host.linkMTUs) = (["eth0"], ["eth0": 1500])
        let everywhere4 = try XCTUnwrap(IPv4Prefix("0.0.0.0/0"))
        let everywhere6 = IPv6Prefix(network: IPv6Address(high: 0, low: 0), length: 0)
        host.replyRoutes = ReplyRoutes(ipv4: [(everywhere4, .init(mss: 1460, interfaceIndex: 2))])
        let lost = PathMTUChecks.run(host, hops: 2)
        XCTAssertEqual(lost.map(\.level), [.fail], "listeners unknown: the route alone")
        XCTAssertFalse(lost[0].blocksStart, "a start goes on: small requests still work")
        XCTAssertTrue(lost[0].finding.contains("advertises MSS 1460; a full-size segment arrives as a 1544-byte"))
        XCTAssertTrue(lost[0].fix?.contains("advmss 1416") == true, lost[0].line)
        host.replyRoutes = ReplyRoutes(
            ipv4: [(everywhere4, .init(mss: 1416, interfaceIndex: 2))],
            ipv6: [(everywhere6, .init(mss: 1440, interfaceIndex: 2))])
        XCTAssertTrue(PathMTUChecks.run(host, hops: 2)[0].fix?.contains("advmss 1396") == true)
        host.replyRoutes = ReplyRoutes(
            ipv4: [(everywhere4, .init(mss: 1416, interfaceIndex: 2))],
            ipv6: [(everywhere6, .init(mss: 1396, interfaceIndex: 2))])
        XCTAssertEqual(PathMTUChecks.run(host, hops: 2).map(\.level), [.ok])
        XCTAssertEqual(PathMTUChecks.run(host, hops: 3).map(\.level), [.fail], "one more hop no longer fits")
        host.linkMTUs = ["eth0": 9000]
        XCTAssertEqual(PathMTUChecks.run(host, hops: 4).map(\.level), [.ok], "jumbo frames on the director's path")
        // Both families too wide: each is named with its own limit; link-local routes lead to no client.
        host.linkMTUs = ["eth0": 1500]
        let linkLocal = IPv6Prefix(network: try XCTUnwrap(IPv6Address("fe80::")), length: 64)
        host.replyRoutes = ReplyRoutes(
            ipv4: [(everywhere4, .init(mss: 1460, interfaceIndex: 2))],
            ipv6: [
                (everywhere6, .init(mss: 1440, interfaceIndex: 2)), (linkLocal, .init(mss: 8940, interfaceIndex: 2)),
            ])
        let both = try XCTUnwrap(PathMTUChecks.run(host, hops: 2).first)
        XCTAssertTrue(
            both.fix?.contains("MSS 1416 for IPv4") == true && both.fix?.contains("MSS 1396 for IPv6") == true,
            both.line)
        XCTAssertFalse(both.finding.contains("fe80"), both.line)
        // The listeners: one clamped by TCP_MAXSEG (HAProxy's mss) loses nothing; one that is not
        // is named; an IPv6 wildcard listener serves IPv4 clients too; none at all only warns.
        host.replyRoutes = ReplyRoutes(ipv4: [(everywhere4, .init(mss: 1460, interfaceIndex: 2))])
        let vip = ListenerKey(address: .v4(try XCTUnwrap(IPv4Address("198.19.0.10"))), port: 443)
        let other = ListenerKey(address: .v4(try XCTUnwrap(IPv4Address("198.19.0.10"))), port: 80)
        let dual = ListenerKey(address: .v6(IPv6Address(high: 0, low: 0)), port: 8443)
        host.listenerMSS = [vip: 1400]
        XCTAssertEqual(PathMTUChecks.run(host, hops: 2).map(\.level), [.ok], "TCP_MAXSEG 1400 fits")
        host.listenerMSS = [vip: 1400, other: 0]
        let named = try XCTUnwrap(PathMTUChecks.run(host, hops: 2).first)
        XCTAssertEqual(named.level, .fail)
        XCTAssertTrue(named.finding.contains("listeners 198.19.0.10:80 (MSS 1460)"), named.line)
        XCTAssertFalse(named.finding.contains(":443"), named.line)
        host.listenerMSS = [dual: 1500]
        XCTAssertEqual(PathMTUChecks.run(host, hops: 2).first?.level, .fail, "the route's MSS, not a larger clamp")
        host.listenerMSS = [:]
        XCTAssertEqual(PathMTUChecks.run(host, hops: 2).map(\.level), [.warn], "no listener yet")
        host.listenerMSS = nil
        // A link too small for any segment the kernel sends: the MTU is what must change.
        host.linkMTUs = ["eth0": 300]
        XCTAssertTrue(PathMTUChecks.run(host, hops: 2).first?.fix?.hasPrefix("raise the MTU") == true)
    }

    /// --fou-mark as operators write it; a value outside its mask, or no mask, is refused.
    func testAFouMarkParsesAsOperatorsWriteItAndSetsOnlyItsBits() {
        XCTAssertEqual(PacketMark("0x40000000"), PacketMark(value: 0x4000_0000, mask: 0x4000_0000))
        XCTAssertEqual(PacketMark("0x10/0xf0"), PacketMark(value: 0x10, mask: 0xf0))
        XCTAssertEqual(PacketMark("16/240"), PacketMark(value: 0x10, mask: 0xf0))
        for bad in ["0x3/0x1", "0", "0x0/0x0", "0/0x40000000", "", "/", "0x/0x1", "1/2/3", "-1", "0x100000000", "mark"]
        {
            XCTAssertNil(PacketMark(bad), bad)
        }
        XCTAssertEqual(PacketMark(value: 0x10, mask: 0xf0).applied(to: 0xffff_ff0f), 0xffff_ff1f)
        XCTAssertEqual(PacketMark(value: 0, mask: 0x1).applied(to: 0x3), 0x2)
        XCTAssertEqual(PacketMark.none.applied(to: 0x1234), 0x1234)
        XCTAssertEqual(PacketMark.default.description, "0x40000000/0x40000000")
    }

    /// With fou on the port, doctor looks for the rule that drops a health probe fou decapsulated
    /// with no daemon deciding, in either tool's rules as it prints them, against --fou-mark.
    func testTheHealthProbeRuleIsFoundAndCheckedAgainstTheFouMark() throws {
        let iptables = """
            *raw
            -A PREROUTING -i tunl0 -p icmp -m icmp --icmp-type 8 -m mark ! --mark 0x40000000/0x40000000 -j DROP
            COMMIT
            """
        let nft = """
            table ip proxyside {
                chain prerouting {
                    iifname "tunl0" icmp type echo-request meta mark & 0x00000100 != 0x00000100 drop
                }
            }
            """
        XCTAssertEqual(FirewallRules.probeDropMarks(iptablesSave: iptables), [.default])
        XCTAssertEqual(FirewallRules.probeDropMarks(nftRuleset: nft), [PacketMark(value: 0x100, mask: 0x100)])
        // Not the rule: another interface, another ICMP type, a mark that must be set, no drop.
        for other in [
            "-A PREROUTING -i eth0 -p icmp -m icmp --icmp-type 8 -m mark ! --mark 0x1/0x1 -j DROP",
            "-A PREROUTING -i tunl0 -p icmp -m icmp --icmp-type 0 -m mark ! --mark 0x1/0x1 -j DROP",
            "-A PREROUTING -i tunl0 -p icmp -m icmp --icmp-type 8 -m mark --mark 0x1/0x1 -j DROP",
            "-A PREROUTING -i tunl0 -p icmp -m icmp --icmp-type 8 -m mark ! --mark 0x1/0x1 -j ACCEPT",
        ] {
            XCTAssertEqual(FirewallRules.probeDropMarks(iptablesSave: other), [], other)
        }
        var host = HostSnapshot()
        host.fou = .success(.gue)
        host.iptablesRaw = iptables
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let shipped = try String(contentsOf: root.appendingPathComponent("examples/iptables/rules.v4"), encoding: .utf8)
        func level(_ rules: String?, nft: String? = nil, mark: PacketMark = .default) -> HostCheck.Level {
            (host.iptablesRaw, host.nft) = (rules, nft)
            return HostChecks.healthProbe(host, fouMark: mark).level
        }
        XCTAssertEqual(level(iptables), .ok)
        XCTAssertEqual(level(shipped), .ok, "the shipped rules have it")
        XCTAssertEqual(level(nil, nft: nft, mark: PacketMark(value: 0x100, mask: 0x100)), .ok)
        XCTAssertEqual(level(nil, nft: nft), .fail, "the rule's mark is not the daemon's: every probe dropped")
        XCTAssertEqual(level("*raw\nCOMMIT\n"), .warn, "no rule: a stopped daemon looks healthy")
        XCTAssertEqual(level(iptables, mark: .none), .warn, "--fou-mark none")
        host.fou = .success(.portNotConfigured)
        XCTAssertFalse(
            HostChecks.run(
                host, port: 19523, queues: [0], namespace: nil, forwarding: .raw, allowedSources: nil
            ).contains { $0.subject == "health checks" }, "without fou the probe needs no rule")
    }

    /// The running kernel against what each feature needs.
    func testTheKernelReleaseIsCheckedAgainstWhatEachFeatureNeeds() {
        XCTAssertEqual(HostChecks.kernelFeatures(release: "6.1.0-57-amd64").map(\.level), [.ok])
        XCTAssertEqual(HostChecks.kernelFeatures(release: "6.18.0").map(\.level), [.ok])
        let old = HostChecks.kernelFeatures(release: "5.19.17")
        XCTAssertEqual(old.map(\.level), [.warn])
        XCTAssertTrue(old[0].finding.contains("needs 6.0"), old[0].finding)
        XCTAssertEqual(HostChecks.kernelFeatures(release: "5.10.0-46-amd64").count, 1, "the fast path loads on 5.10")
        XCTAssertEqual(HostChecks.kernelFeatures(release: "5.4.0-216-generic").count, 2, "no fast path either")
        XCTAssertEqual(HostChecks.kernelFeatures(release: "garbage").map(\.level), [.warn])
    }

    /// The shipped rules applied twice with --noflush: the second copy's queue rules come after
    /// the first copy's DROP of the port and are never reached; doctor fails them.
    func testQueueRulesAfterTheDropOfThePortAreNeverReached() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let file = try String(contentsOf: root.appendingPathComponent("examples/iptables/rules.v4"), encoding: .utf8)
        let rules = file.split(separator: "\n").filter { $0.hasPrefix("-A PREROUTING") }.joined(separator: "\n")
        let once = FirewallRules.gueRules(iptablesSave: "*raw\n\(rules)\nCOMMIT\n", port: 19523)
        XCTAssertEqual(once.unreachable, [])
        let twice = FirewallRules.gueRules(iptablesSave: "*raw\n\(rules)\n\(rules)\nCOMMIT\n", port: 19523)
        XCTAssertEqual(twice.queueRules.count, 3)
        XCTAssertEqual(twice.unreachable.count, 3)
        let checks = HostChecks.ruleChecks(twice, tool: "iptables", port: 19523, queues: [0])
        XCTAssertEqual(checks.filter { $0.level == .fail }.count, 3, checks.map(\.line).joined(separator: "\n"))
        let nft = FirewallRules.gueRules(
            nftRuleset: "udp dport 19523 drop\nip saddr @glb_peers udp dport 19523 queue num 0 bypass\n", port: 19523)
        XCTAssertEqual(nft.unreachable.count, 1)
    }

    func testIPTablesRulesAreReadWithTheirSourceRestriction() {
        let shipped = """
            *raw
            :PREROUTING ACCEPT [0:0]
            -A PREROUTING -s 198.18.0.2/32 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass
            -A PREROUTING -m set --match-set glb-peers src -p udp -m udp --dport 19523 \
            -j NFQUEUE --queue-num 0 --queue-bypass
            -A PREROUTING -p udp -m udp --dport 19523 -j DROP
            COMMIT
            """
        let rules = FirewallRules.gueRules(iptablesSave: shipped, port: 19523)
        XCTAssertEqual(rules.queueRules.map(\.restricted), [true, true])
        XCTAssertEqual(rules.queueRules.map(\.bypass), [true, true])
        XCTAssertTrue(rules.dropsTheRest)

        let open = FirewallRules.gueRules(
            iptablesSave: "-A PREROUTING -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0\n", port: 19523)
        XCTAssertEqual(
            open.queueRules,
            [
                .init(
                    rule: "-A PREROUTING -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0", bypass: false,
                    restricted: false)
            ])
        XCTAssertFalse(open.dropsTheRest)
        // A DROP before any queue rule drops GUE from the peers too: it is not "the rest".
        let dropFirst = FirewallRules.gueRules(
            iptablesSave: "-A PREROUTING -p udp -m udp --dport 19523 -j DROP\n", port: 19523)
        XCTAssertFalse(dropFirst.dropsTheRest)
        XCTAssertTrue(FirewallRules.gueRules(iptablesSave: shipped, port: 6081).queueRules.isEmpty)

        // A negated source hears every host but a few: no restriction. A negated DROP drops the rest.
        let negated = FirewallRules.gueRules(
            iptablesSave: """
                -A PREROUTING ! -s 198.18.0.0/24 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass
                -A PREROUTING -m set ! --match-set glb-peers src -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0
                -A PREROUTING ! -s 198.18.0.0/24 -p udp -m udp --dport 19523 -j DROP
                """, port: 19523)
        XCTAssertEqual(negated.queueRules.map(\.restricted), [false, false])
        XCTAssertTrue(negated.dropsTheRest)
    }

    func testNftRulesAreReadInBothPrintedForms() {
        let ruleset = """
            table ip proxyside {
            \tset glb_peers {
            \t\ttype ipv4_addr
            \t\tflags interval
            \t\telements = { 198.18.0.2, 198.18.0.11-198.18.0.12 }
            \t}
            \tchain prerouting {
            \t\ttype filter hook prerouting priority raw; policy accept;
            \t\tip saddr @glb_peers udp dport 19523 queue flags bypass to 0
            \t\tip saddr 198.18.0.12 udp dport 19523 queue num 1 bypass
            \t\tudp dport 19523 drop
            \t}
            }
            """
        let rules = FirewallRules.gueRules(nftRuleset: ruleset, port: 19523)
        XCTAssertEqual(rules.queueRules.count, 2)
        XCTAssertTrue(rules.queueRules.allSatisfy { $0.restricted && $0.bypass })
        XCTAssertTrue(rules.dropsTheRest)
        let open = FirewallRules.gueRules(nftRuleset: "udp dport 19523 queue num 0\n", port: 19523)
        XCTAssertEqual(open.queueRules.map(\.restricted), [false])
        XCTAssertEqual(open.queueRules.map(\.bypass), [false])
        let negated = FirewallRules.gueRules(
            nftRuleset: "ip saddr != @glb_peers udp dport 19523 queue num 0 bypass\n", port: 19523)
        XCTAssertEqual(negated.queueRules.map(\.restricted), [false])
    }

    func testDoctorWarnsAboutRulesThatHearEveryone() {
        func lines(_ rules: FirewallRules.GUERules) -> [String] {
            HostChecks.ruleChecks(rules, tool: "iptables", port: 19523, queues: [0]).map(\.line)
        }
        let open = FirewallRules.gueRules(
            iptablesSave: "-A PREROUTING -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass\n",
            port: 19523)
        XCTAssertTrue(
            lines(open).contains { $0.hasPrefix("[warn] iptables: the NFQUEUE rule takes GUE from every host") },
            "\(lines(open))")
        let noDrop = FirewallRules.gueRules(
            iptablesSave:
                "-A PREROUTING -s 198.18.0.2/32 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass\n",
            port: 19523)
        XCTAssertTrue(
            lines(noDrop).contains {
                $0.hasPrefix("[warn] iptables: GUE from hosts that are not peers is not dropped")
            }, "\(lines(noDrop))")
        let trusting = FirewallRules.gueRules(
            iptablesSave: """
                -A PREROUTING -s 198.18.0.2/32 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass
                -A PREROUTING -p udp -m udp --dport 19523 -j DROP
                """, port: 19523)
        XCTAssertEqual(
            lines(trusting).filter { $0.hasPrefix("[warn]") }.map { String($0.prefix(60)) },
            [
                "[warn] iptables: no reverse-path check before the queue: GUE",
                "[warn] iptables: GUE from the peers goes on to conntrack aft",
            ])
        // The checks count only in front of the queue rule: behind it they see nothing it took.
        let late = FirewallRules.gueRules(
            iptablesSave: """
                -A PREROUTING -s 198.18.0.2/32 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass
                -A PREROUTING -p udp -m udp --dport 19523 -m rpfilter --invert -j DROP
                -A PREROUTING -p udp -m udp --dport 19523 -j CT --notrack
                """, port: 19523)
        XCTAssertFalse(late.reversePathChecked || late.untracked)
        let good = FirewallRules.gueRules(
            iptablesSave: """
                -A PREROUTING -p udp -m udp --dport 19523 -m rpfilter --invert -j DROP
                -A PREROUTING -p udp -m udp --dport 19523 -j CT --notrack
                -A PREROUTING -s 198.18.0.2/32 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass
                -A PREROUTING -p udp -m udp --dport 19523 -j DROP
                """, port: 19523)
        XCTAssertEqual(
            lines(good),
            [
                """
                [ ok ] iptables: -A PREROUTING -s 198.18.0.2/32 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 \
                --queue-bypass
                """
            ])
        let otherQueue = HostChecks.ruleChecks(good, tool: "iptables", port: 19523, queues: [3]).map(\.line)
        XCTAssertTrue(otherQueue.first?.contains("does not feed queue(s) [3]") == true, "\(otherQueue)")
    }

    /// The shipped nft rules as nft lists them: anti-spoofing and notrack in front, the peers
    /// queued, the rest dropped, and nothing to warn about.
    func testTheShippedNftRulesPassDoctorsRuleChecks() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let text = try String(
            contentsOf: root.appendingPathComponent("examples/iptables/proxyside.nft"), encoding: .utf8)
        let rules = FirewallRules.gueRules(nftRuleset: text, port: 19523)
        XCTAssertTrue(rules.reversePathChecked && rules.untracked && rules.dropsTheRest, "\(rules)")
        XCTAssertEqual(rules.queueRules.map(\.restricted), [true])
        let checks = HostChecks.ruleChecks(rules, tool: "nft", port: 19523, queues: [0])
        XCTAssertEqual(checks.filter { $0.level != .ok }.map(\.line), [])
    }
}

/// The netlink dumps the daemon relies on, in the test's own namespace (no root needed).
final class NetlinkDumpTests: XCTestCase {
    func testThisHostsAddressesComeFromRtnetlink() throws {
        let addresses = try LocalAddressWatcher.dump()
        XCTAssertTrue(addresses.owns(IPv4Address("127.0.0.1")!), "\(addresses.ipv4)")
        XCTAssertFalse(
            addresses.accepts(destination: IPv4Address("127.0.0.1")!), "loopback is never a destination from outside")
    }

    func testListenersComeFromSockDiag() throws {
        let fd = try LabSockets.listenTCP(on: .v4(IPv4Address("127.0.0.1")!), port: 0, backlog: 7)
        defer { close(fd) }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let key = ListenerKey(address: .v4(IPv4Address("127.0.0.1")!), port: UInt16(bigEndian: address.sin_port))
        let listener = try XCTUnwrap(try SockDiag().dumpListeners().first { $0.key == key })
        XCTAssertEqual(listener.backlog, 7)
    }

    /// The port filter's layout, as the kernel runs it: kept exactly on the listed ports.
    func testThePortFilterKeepsExactlyItsPorts() throws {
        let code = try XCTUnwrap(InetDiagFilter.localPort(in: [8080, 80, 443, 80]))
        XCTAssertEqual(code.count, 36, "three ports, 12 bytes each")
        for port: UInt16 in [80, 443, 8080] { XCTAssertTrue(InetDiagFilter.keeps(code, port: port), "\(port)") }
        for port: UInt16 in [0, 79, 81, 442, 8081, 65535] { XCTAssertFalse(InetDiagFilter.keeps(code, port: port)) }
        let one = try XCTUnwrap(InetDiagFilter.localPort(in: [65535]))
        XCTAssertTrue(InetDiagFilter.keeps(one, port: 65535))
        XCTAssertFalse(InetDiagFilter.keeps(one, port: 0))
        XCTAssertNil(InetDiagFilter.localPort(in: []))
        let most = (1...UInt16(InetDiagFilter.maximumPorts)).map { $0 }
        let largest = try XCTUnwrap(InetDiagFilter.localPort(in: most))
        XCTAssertTrue(InetDiagFilter.keeps(largest, port: 1) && InetDiagFilter.keeps(largest, port: most.last!))
        XCTAssertFalse(InetDiagFilter.keeps(largest, port: most.last! + 1))
        XCTAssertNil(InetDiagFilter.localPort(in: most + [most.last! + 1]), "past what a 16-bit jump reaches")
    }

    /// The kernel takes the filter (its audit refuses a malformed one) and sends only the
    /// listeners of the ports asked for.
    func testTheKernelSendsOnlyTheListenersOfThePortsAskedFor() throws {
        let loopback = IPv4Address("127.0.0.1")!
        let fds = try (0..<3).map { _ in try LabSockets.listenTCP(on: .v4(loopback), port: 0, backlog: 8) }
        defer { fds.forEach { close($0) } }
        let ports: [UInt16] = fds.map { fd in
            var address = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            return UInt16(bigEndian: address.sin_port)
        }
        let wanted: Set<UInt16> = [ports[0], ports[2]]
        let diag = try SockDiag()
        XCTAssertEqual(Set(try diag.dumpListeners(ports: wanted).map(\.key.port)), wanted)
        var sent: [UInt16] = []
        try diag.dump(
            family: UInt8(AF_INET), states: 1 << UInt32(TCP_LISTEN), filter: InetDiagFilter.localPort(in: wanted)
        ) { message, _ in sent.append(UInt16(bigEndian: message.id.idiag_sport)) }
        XCTAssertEqual(Set(sent), wanted, "the kernel sent no other listener")
        XCTAssertTrue(try diag.dumpListeners(ports: []).isEmpty)
    }

    /// An SO_REUSEPORT group is one listener whose backlog and queues are its members' together:
    /// every member's request sockets counted against one member's backlog started the responder
    /// when no member's queue was near full.
    func testAnSOReusePortGroupIsOneListenerWithItsMembersBacklogs() throws {
        let loopback = IPv4Address("127.0.0.1")!
        func member(port: UInt16, backlog: Int32) throws -> Int32 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            SocketOptions.enable(fd, SOL_SOCKET, SO_REUSEPORT)
            guard SocketAddress(.v4(loopback), port: port).withSockaddr({ bind(fd, $0, $1) }) == 0,
                listen(fd, backlog) == 0
            else { throw SystemError("bind or listen") }
            return fd
        }
        let first = try member(port: 0, backlog: 8)
        defer { close(first) }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(first, $0, &length) }
        }
        let port = UInt16(bigEndian: address.sin_port)
        let second = try member(port: port, backlog: 24)
        defer { close(second) }
        // Two connections, accepted by no one: the accept queues hold them.
        let clients = try (0..<2).map { _ in try LabSockets.connectTCP(to: .v4(loopback), port: port) }
        defer { clients.forEach { close($0) } }
        let key = ListenerKey(address: .v4(loopback), port: port)
        var listener: ListenerObservation?
        for _ in 0..<100 {
            listener = try SockDiag().dumpListeners().first { $0.key == key }
            if listener?.acceptQueue == 2 { break }
            usleep(10_000)
        }
        XCTAssertEqual(listener?.backlog, 32, "8 + 24")
        XCTAssertEqual(listener?.acceptQueue, 2, "both members' accept queues")
        XCTAssertEqual(try SockDiag().dumpListeners().filter { $0.key == key }.count, 1)
    }

    /// `--forward auto` takes the kernel's forwarding only where nothing on the forward path can
    /// stop a packet: any rule or a drop policy, in nft or iptables, keeps the raw socket.
    func testForwardPathsThatFilterAreSeen() {
        XCTAssertTrue(FirewallRules.forwardHookAccepts(nftRuleset: ""))
        XCTAssertTrue(
            FirewallRules.forwardHookAccepts(
                nftRuleset: """
                    table ip filter {
                    \tchain FORWARD {
                    \t\ttype filter hook forward priority filter; policy accept;
                    \t}
                    \tchain INPUT {
                    \t\ttype filter hook input priority filter; policy drop;
                    \t\tct state established accept
                    \t}
                    }
                    """))
        XCTAssertFalse(
            FirewallRules.forwardHookAccepts(
                nftRuleset: """
                    table ip filter {
                    \tchain FORWARD {
                    \t\ttype filter hook forward priority filter; policy drop;
                    \t}
                    }
                    """), "a drop policy")
        XCTAssertFalse(
            FirewallRules.forwardHookAccepts(
                nftRuleset: """
                    table inet fw {
                    \tchain fwd {
                    \t\ttype filter hook forward priority 0; policy accept;
                    \t\tip saddr 198.18.0.0/15 drop
                    \t}
                    }
                    """), "a rule")
        XCTAssertTrue(
            FirewallRules.forwardChainAccepts(
                iptablesSave: "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"))
        XCTAssertTrue(
            FirewallRules.forwardChainAccepts(
                iptablesSave: "*raw\n:PREROUTING ACCEPT [0:0]\n-A FORWARD -j DROP\nCOMMIT\n")
        )
        XCTAssertFalse(FirewallRules.forwardChainAccepts(iptablesSave: "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"))
        XCTAssertFalse(
            FirewallRules.forwardChainAccepts(
                iptablesSave: "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -s 198.18.0.0/15 -j REJECT\n"))
    }

    /// Rules after conntrack that drop INVALID, where the responder's SYN-ACKs in verdicts meet them.
    func testConntrackInvalidDropsAfterTheQueueAreFound() {
        let iptables = """
            *raw
            -A PREROUTING -m conntrack --ctstate INVALID -j DROP
            COMMIT
            *mangle
            -A PREROUTING -m conntrack --ctstate INVALID -j DROP
            -A OUTPUT -m conntrack --ctstate INVALID -j DROP
            COMMIT
            *filter
            -A FORWARD -m state --state INVALID -j REJECT
            -A INPUT -m conntrack --ctstate INVALID -j DROP
            COMMIT
            """
        XCTAssertEqual(
            FirewallRules.invalidDrops(iptablesSave: iptables),
            [
                "iptables -t mangle -A PREROUTING -m conntrack --ctstate INVALID -j DROP",
                "iptables -t filter -A FORWARD -m state --state INVALID -j REJECT",
            ])
        let nft = """
            table inet fw {
            \tchain early {
            \t\ttype filter hook prerouting priority raw; policy accept;
            \t\tct state invalid drop
            \t}
            \tchain pre {
            \t\ttype filter hook prerouting priority mangle; policy accept;
            \t\tct state invalid counter drop
            \t}
            \tchain numbered {
            \t\ttype filter hook prerouting priority -250; policy accept;
            \t\tct state invalid drop
            \t}
            \tchain input {
            \t\ttype filter hook input priority filter; policy accept;
            \t\tct state invalid drop
            \t}
            }
            """
        XCTAssertEqual(FirewallRules.invalidDrops(nftRuleset: nft), ["nft: ct state invalid counter drop"])
    }

    /// GLB's outer packets are IPv4: fou decapsulates them only where the port is configured for
    /// IPv4, whatever an IPv6 entry on the same port says.
    func testFouCountsOnlyTheIPv4EntryOfThePort() {
        let (v4, v6) = (UInt8(AF_INET), UInt8(AF_INET6))
        XCTAssertEqual(FouStatus.of([], port: 19523), .portNotConfigured)
        XCTAssertEqual(FouStatus.of([.init(port: 6080, family: v4, gue: true)], port: 19523), .portNotConfigured)
        XCTAssertEqual(FouStatus.of([.init(port: 19523, family: v6, gue: true)], port: 19523), .ipv6Only)
        XCTAssertEqual(
            FouStatus.of(
                [.init(port: 19523, family: v4, gue: false), .init(port: 19523, family: v6, gue: true)], port: 19523),
            .directFou)
        XCTAssertEqual(
            FouStatus.of(
                [.init(port: 19523, family: v6, gue: false), .init(port: 19523, family: v4, gue: true)], port: 19523),
            .gue)
    }
}
