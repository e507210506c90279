import CFastPathABI
import Foundation
import Glibc
import LabKit
import LabPrograms
import LinuxSys
import NetTypes
import Telemetry
import XCTest

@testable import SecondChance

/// The SYN-cookie responder in XDP, end to end: with `--xdp-forward on` (the switch's end of p1's
/// veth runs an XDP program, so p1's XDP_TX arrives) and tc's filter taken away, a SYN for a served
/// listener is answered by XDP alone (its SYN-ACK straight back to the client), the client's
/// cookie ACK is taken in XDP, the connection carries data, and the queue sees none of it.
extension FastPathLifecycleTests {
    func testXDPAnswersSYNsWithTheKernelsCookiesWhereItMaySend() throws {
        let version = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current))
        guard version >= (5, 13) else { return }  // no XDP entry point: the responder is tc's, tested apart
        let p1 = lab.namespace("p1")
        try letXDPAnswer(Lab.client)
        let (empty, _, pass) = try EmptyPrograms.load()
        defer { withExtendedLifetime(empty) {} }
        try lab.inside("sw") { try NativeXDP.attach(programFD: pass, interface: "\(lab.prefix)-p1", replacing: nil) }
        let daemon = try startXDPResponder()
        defer { daemon.terminate(); daemon.waitUntilExit() }
        try Lab.shell("tc -n \(p1) filter del dev eth0 ingress handle 0x19523 prio 1 bpf")
        let queueBefore = try queueOnP1()

        // The listener's first SYN goes to the kernel, which answers it (and keeps its overflow
        // mark); XDP delivers it, and the client's neighbour entry is made on the way back.
        let first = try connectThroughDirector()
        defer { close(first) }
        echo(first, 0)
        let before = try lab.stats("p1")
        XCTAssertEqual(try before.value("fast_path_cookies_sent"), 0, "the kernel's SYN")

        let second = try lab.inside("c") { try LabSockets.connectTCP(to: .v4(Lab.vip), port: 80) }
        defer { close(second) }
        for index in 1...3 { echo(second, index) }
        let after = try lab.stats("p1")
        XCTAssertEqual(try after.value("fast_path_cookies_sent"), 1, "answered in XDP: \(after)")
        XCTAssertEqual(
            try after.value("fast_path_accepted_syn_cookie") - before.value("fast_path_accepted_syn_cookie"), 1,
            "its ACK taken as the cookie: \(after)")
        XCTAssertEqual(try queueOnP1().idSequence, queueBefore.idSequence, "the queue saw none of it")
    }
}

extension FastPathLifecycleTests {
    /// A SYN whose route back leaves by the arrival interface as the kernel's routing sees it,
    /// while the daemon's reply route still leaves by another (the route changed, and the daemon,
    /// stopped here, has not read it yet): tc answers it, and XDP hands it on before asking the
    /// kernel for a cookie (each cookie given counts in TCPReqQFullDoCookies, which operators
    /// watch: one SYN counts once).
    func testXDPLeavesASYNWhoseReplyRouteLeavesElsewhereToTcWithoutACookie() throws {
        let version = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current))
        guard version >= (5, 13) else { return }  // no XDP entry point
        let p1 = lab.namespace("p1")
        // A client outside the peers' prefix (the routes to the peers choose the interfaces).
        let client = IPv4Address("198.19.5.1")!
        try letXDPAnswer(client)
        try Lab.shell(
            """
            ip -n \(p1) link add elsewhere type veth peer name elsewhere-peer && \
            ip -n \(p1) link set elsewhere up && ip -n \(p1) link set elsewhere-peer up && \
            ip -n \(p1) route add \(client)/32 dev elsewhere
            """)
        let daemon = try startXDPResponder()
        defer {
            kill(daemon.processIdentifier, SIGCONT)
            daemon.terminate()
            daemon.waitUntilExit()
        }
        let doCookies = { try self.lab.tcpExt("TCPReqQFullDoCookies") }
        func syn(_ port: UInt16) throws {
            let segment = PacketBuilder.tcp(
                source: .v4(client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 80,
                flags: .syn, sequence: 1000, options: [2, 4, 0x05, 0xb4])
            try sendGUE(lab, from: "d", source: Lab.director, sourcePort: port, to: Lab.p1, inner: segment, hops: [])
        }
        // The listener's first SYN goes to the kernel, which gives its own cookie (syncookies=2).
        try syn(41001)
        try lab.waitFor("the kernel's cookie") { try doCookies() >= 1 }
        let (cookies, sent) = (try doCookies(), try lab.stats("p1").value("fast_path_cookies_sent"))

        // The route moves to eth0 while the daemon cannot follow.
        kill(daemon.processIdentifier, SIGSTOP)
        try Lab.shell("ip -n \(p1) route replace \(client)/32 dev eth0")
        try syn(41002)
        try lab.waitFor("tc's cookie") { try doCookies() > cookies }
        usleep(200_000)
        XCTAssertEqual(try doCookies() - cookies, 1, "one SYN, one cookie asked of the kernel")
        kill(daemon.processIdentifier, SIGCONT)
        XCTAssertEqual(try lab.stats("p1").value("fast_path_cookies_sent"), sent + 1, "answered by tc")
    }
}

extension FastPathLifecycleTests {
    /// The responder's route back is the one the kernel's own output takes: a route dead to the
    /// kernel (its link without carrier, on an interface that ignores such routes, as hosts of a
    /// routing daemon set them) is passed over for the next, so a SYN the kernel would answer by
    /// eth0 is answered by eth0, not sent to the dead link.
    func testTheRespondersRouteBackPassesOverARouteTheKernelIgnores() throws {
        try assertTheRespondersRouteBackIsEth0(
            prepare: "sysctl -qw net.ipv4.conf.elsewhere.ignore_routes_with_linkdown=1", elsewhere: "dev elsewhere",
            shown: { $0.contains("dead") })
    }

    /// A route for one TOS only carries only that TOS's packets; a SYN-ACK (TOS 0, the kernel's
    /// and the responder's) takes the route without one, however low the other's metric.
    func testTheRespondersRouteBackPassesOverARouteForOneTOS() throws {
        try assertTheRespondersRouteBackIsEth0(
            prepare: "ip link set elsewhere-peer up", elsewhere: "tos 0x10 dev elsewhere",
            shown: { $0.contains("tos") })
    }

    /// A change of ignore_routes_with_linkdown changes the kernel's output at once, with no route
    /// event (a dump computes a route's `dead` from the setting): the responder reads its routes
    /// again on the setting's netconf event.
    func testTheRespondersRouteBackFollowsIgnoreRoutesWithLinkdown() throws {
        try assertTheRespondersRouteBackIsEth0(
            prepare: "true", elsewhere: "dev elsewhere", shown: { $0.contains("linkdown") && !$0.contains("dead") },
            afterStart: { p1 in
                try Lab.shell("ip netns exec \(p1) sysctl -qw net.ipv4.conf.elsewhere.ignore_routes_with_linkdown=1")
                // The monitor reads routes at most once a second, at its next poll after an event.
                usleep(2_500_000)
            })
    }

    /// Adds p1's link `elsewhere` (its peer down), runs `prepare` in p1, and routes a client
    /// outside the peers' prefix by `elsewhere` (a route's options, metric 10) and by eth0
    /// (metric 20); checks the route as `ip` shows it (`shown`), starts the responder (then
    /// `afterStart`), and checks that the kernel and the XDP responder both answer that client's
    /// SYNs by eth0.
    private func assertTheRespondersRouteBackIsEth0(
        prepare: String, elsewhere: String, shown: (String) -> Bool, afterStart: (String) throws -> Void = { _ in }
    ) throws {
        let version = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current))
        guard version >= (5, 13) else { return }  // no XDP entry point
        let (p1, c) = (lab.namespace("p1"), lab.namespace("c"))
        let client = IPv4Address("198.19.5.1")!  // outside the peers' prefix
        try letXDPAnswer(client)
        try Lab.shell(
            """
            ip -n \(c) addr add \(client)/32 dev eth0 && \
            ip -n \(p1) link add elsewhere type veth peer name elsewhere-peer && ip -n \(p1) link set elsewhere up && \
            ip netns exec \(p1) \(prepare) && \
            ip -n \(p1) route add \(client)/32 \(elsewhere) metric 10 && \
            ip -n \(p1) route add \(client)/32 dev eth0 metric 20
            """)
        let route = try Lab.shell("ip -n \(p1) route show \(client)/32")
        XCTAssertTrue(shown(route), route)
        let (empty, _, pass) = try EmptyPrograms.load()
        defer { withExtendedLifetime(empty) {} }
        try lab.inside("sw") { try NativeXDP.attach(programFD: pass, interface: "\(lab.prefix)-p1", replacing: nil) }
        let daemon = try startXDPResponder()
        defer { daemon.terminate(); daemon.waitUntilExit() }
        try afterStart(p1)
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        func answered(_ port: UInt16) throws -> Bool {
            let segment = PacketBuilder.tcp(
                source: .v4(client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 80,
                flags: .syn, sequence: 1000, options: [2, 4, 0x05, 0xb4])
            try sendGUE(lab, from: "d", source: Lab.director, sourcePort: port, to: Lab.p1, inner: segment, hops: [])
            return capture.first(within: 3) { $0.ipv4TCP.map { $0.0 == Lab.vip && $0.3 == port } ?? false } != nil
        }
        XCTAssertTrue(try answered(41001), "the kernel answers its SYN by eth0")
        let sent = try lab.stats("p1").value("fast_path_cookies_sent")
        XCTAssertTrue(try answered(41002), "the responder's SYN-ACK leaves by eth0 too")
        XCTAssertEqual(try lab.stats("p1").value("fast_path_cookies_sent"), sent + 1, lab.log(of: daemon))
    }
}

extension FastPathLifecycleTests {
    /// Whether p1's XDP program has a listener to serve: the monitor says a listener is active
    /// before the program's map has it, and a SYN between the two goes to the kernel without
    /// spending the listener's pass.
    private func programServesAListener() throws -> Bool {
        guard let id = try xdpOnP1() else { return false }
        let maps = try BPF.openMaps(ofProgram: id)
        let listeners = try XCTUnwrap(maps["fp_listeners"])
        return !FastPathMaps.keys(of: listeners, size: MemoryLayout<fp_listener_key>.size).isEmpty
    }

    /// What XDP needs on p1 to answer a SYN from `client`: the kernel's cookies without an
    /// overflow (tcp_syncookies=2, so `always` serves the echo listener at once), forwarding on
    /// eth0 (bpf_fib_lookup answers only there), and the client's neighbour entry with the client
    /// namespace's MAC (XDP answers only where the route back's neighbour is known).
    func letXDPAnswer(_ client: IPv4Address) throws {
        let p1 = lab.namespace("p1")
        let clientMAC = try Lab.linkAddress(in: lab.namespace("c"))
        try Lab.shell(
            """
            ip netns exec \(p1) sysctl -qw net.ipv4.tcp_syncookies=2 && \
            ip netns exec \(p1) sysctl -qw net.ipv4.conf.eth0.forwarding=1 && \
            ip -n \(p1) neigh replace \(client) lladdr \(clientMAC) dev eth0 nud permanent
            """)
    }

    /// second-chance on p1 deciding in XDP, which may send (`--xdp-forward on`), its responder
    /// serving the VIP's listener at once (`always`; one SYN every ten minutes left to the kernel),
    /// once it says so.
    func startXDPResponder() throws -> Process {
        let daemon = try lab.start(
            "p1", "second-chance",
            arguments + [
                "--fast-path", "xdp", "--xdp-forward", "on", "--syn-cookies", "always", "--cookie-pass-ms", "600000",
            ])
        do {
            try Lab.waitFor("the responder", seconds: Self.startup, context: { self.lab.log(of: daemon) }) {
                guard self.lab.log(of: daemon).contains("serving queue"), try self.xdpOnP1() != nil else {
                    return false
                }
                let active = try readControlSocket(self.lab.controlPath("p1")).split(separator: "\n").contains {
                    $0.hasPrefix("listener \(Lab.vip):80 ") && $0.contains(" active 1")
                }
                return try active && self.programServesAListener()
            }
        } catch {
            daemon.terminate()
            daemon.waitUntilExit()
            throw error
        }
        return daemon
    }
}
