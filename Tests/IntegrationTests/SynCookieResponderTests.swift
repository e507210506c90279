import Foundation
import Glibc
import LabKit
import LinuxSys
import Logging
import NetTypes
import SecondChance
import Synchronization
import Telemetry
import XCTest

/// The SYN-cookie responder on P1: a listener with backlog 16 that does not accept, flooded with
/// spoofed SYNs (their SYN-ACKs die on the bridge, so no RST frees the queue), and a real client
/// through the director.
final class SynCookieResponderTests: XCTestCase {
    var lab: Lab!
    var listener: Int32 = -1
    static let port: UInt16 = 8080
    static let spoofed = "198.18.200.1"
    static let spoofed6 = "2001:2:0:200::1"

    override func setUpWithError() throws {
        lab = try Lab(prefix: "psck")
        let table = lab.directory.appendingPathComponent("table").path
        try "\(Lab.p1)\n".write(toFile: table, atomically: true, encoding: .utf8)
        let director = try lab.start(
            "d", "glb-lab", ["director", "--self", Lab.director.description, "--table", table])
        try lab.waitFor("the director") { lab.log(of: director).contains("director: serving queue") }
    }

    override func tearDown() {
        if listener >= 0 { close(listener) }
        lab?.tearDown()
    }

    /// Records follow the listeners that exist: 3000 listeners, closed and replaced by 3000 others,
    /// are all served in `always` mode (the records of the first ones kept, the 4096 records of
    /// the old cap were used up and none of the last 1904 was served).
    func testResponderRecordsFollowTheListenersThatExist() throws {
        ResourceLimits.raiseOpenFiles()
        try sysctl("p1", "net.ipv4.tcp_syncookies=2")
        let monitor = try ListenerMonitor(
            configuration: ResponderConfiguration(mode: .always), namespace: lab.namespace("p1"),
            logger: Logger(label: "test"))
        for round in 0..<2 {
            let ports = (0..<3000).map { UInt16(20000 + round * 5000 + $0) }
            let fds = try lab.inside("p1") {
                try ports.map { try LabSockets.listenTCP(on: .v4(Lab.p1), port: $0, backlog: 16) }
            }
            defer { fds.forEach { close($0) } }
            monitor.scan(now: MonotonicClock.nanoseconds())
            let served = monitor.board.snapshot().listeners
            XCTAssertEqual(
                ports.filter { served[ListenerKey(address: .v4(Lab.p1), port: $0)] != nil }.count, 3000,
                "round \(round)")
            XCTAssertLessThanOrEqual(monitor.board.recordCount, 3001, "records of listeners gone are not kept")
        }
    }

    /// A listener that sets a DSCP (IP_TOS; IPV6_TCLASS on an IPv6 socket) is left to the kernel,
    /// even in `always` mode: the kernel's SYN-ACK carries that DSCP and takes the routes for its
    /// TOS, the responder's would carry none and take the routes for none. Read through sock_diag.
    func testAListenerThatSetsADSCPIsLeftToTheKernel() throws {
        try sysctl("p1", "net.ipv4.tcp_syncookies=2")
        let monitor = try ListenerMonitor(
            configuration: ResponderConfiguration(mode: .always), namespace: lab.namespace("p1"),
            logger: Logger(label: "test"))
        let (plain, marked, marked6) = try lab.inside("p1") {
            (
                try LabSockets.listenTCP(on: .v4(Lab.vip), port: 8081),
                try LabSockets.listenTCP(on: .v4(Lab.vip), port: 8082),
                try LabSockets.listenTCP(on: .v6(Lab.vip6), port: 8083)
            )
        }
        defer { [plain, marked, marked6].forEach { close($0) } }
        var tos: Int32 = 0x28  // AF11
        XCTAssertEqual(setsockopt(marked, Int32(IPPROTO_IP), IP_TOS, &tos, 4), 0)
        XCTAssertEqual(setsockopt(marked6, Int32(IPPROTO_IPV6), IPV6_TCLASS, &tos, 4), 0)
        monitor.scan(now: MonotonicClock.nanoseconds())
        let served = Set(monitor.board.snapshot().listeners.keys.map(\.port))
        XCTAssertTrue(served.contains(8081), "\(served)")
        XCTAssertFalse(served.contains(8082), "IP_TOS: \(served)")
        XCTAssertFalse(served.contains(8083), "IPV6_TCLASS: \(served)")
        tos = 0
        XCTAssertEqual(setsockopt(marked, Int32(IPPROTO_IP), IP_TOS, &tos, 4), 0)
        monitor.scan(now: MonotonicClock.nanoseconds())
        XCTAssertTrue(monitor.board.snapshot().listeners.keys.contains { $0.port == 8082 }, "served once unmarked")
    }

    /// A local user who opens, marks and closes listeners in a loop makes the monitor say so at
    /// most once a second, not once a listener.
    func testMarkedListenersInALoopCannotFloodTheLog() throws {
        try sysctl("p1", "net.ipv4.tcp_syncookies=2")
        let lines = LineCounter()
        let monitor = try ListenerMonitor(
            configuration: ResponderConfiguration(mode: .always), namespace: lab.namespace("p1"),
            logger: Logger(label: "test") { _ in lines })
        let start = MonotonicClock.nanoseconds()
        for round in 0..<3 {
            let fds = try lab.inside("p1") {
                try (0..<20).map { try LabSockets.listenTCP(on: .v4(Lab.vip), port: UInt16(9000 + round * 20 + $0)) }
            }
            for fd in fds {
                var tos: Int32 = 0x28
                XCTAssertEqual(setsockopt(fd, Int32(IPPROTO_IP), IP_TOS, &tos, 4), 0)
            }
            monitor.scan(now: MonotonicClock.nanoseconds())
            fds.forEach { close($0) }
        }
        let seconds = (MonotonicClock.nanoseconds() - start) / 1_000_000_000 + 1
        let said = lines.lines.withLock { $0 }.filter { $0.contains("left to the kernel") }
        XCTAssertGreaterThanOrEqual(said.count, 1, "said at all")
        XCTAssertLessThanOrEqual(UInt64(said.count), seconds, "60 marked listeners in \(seconds) s: \(said)")
    }

    func sysctl(_ host: String, _ setting: String) throws {
        try Lab.shell("ip netns exec \(lab.namespace(host)) sysctl -qw \(setting)")
    }

    func listen(_ address: IPAddress, backlog: Int32 = 16) throws {
        listener = try lab.inside("p1") { try LabSockets.listenTCP(on: address, port: Self.port, backlog: backlog) }
    }

    func startSecondChance(_ extra: [String] = []) throws {
        // `always` promises every SYN an answer: without the queue's cookie helpers (before Linux
        // 6.0) only a fast path that must load keeps it.
        let fastPath =
            Lab.fastPathOn && extra.contains("always") && !extra.contains("--fast-path") ? ["--fast-path", "tc"] : []
        try lab.startSecondChance(
            "p1", Lab.p1, extra: ["--listener-scan-ms", "50", "--cookie-hold-ms", "500"] + fastPath + extra)
    }

    /// The responder's line for the test listener: field -> value.
    func listenerStats(_ address: String) throws -> [String: UInt64] {
        let text = try readControlSocket(lab.controlPath("p1"))
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("listener \(address) ") }) else {
            return [:]
        }
        let words = line.split(separator: " ").dropFirst(2).map(String.init)
        var out: [String: UInt64] = [:]
        for index in stride(from: 0, to: words.count - 1, by: 2) { out[words[index]] = UInt64(words[index + 1]) }
        return out
    }

    func flood(_ count: Int, rate: Int = 4000, ipv6: Bool = false, firstPort: UInt16 = 20000) throws {
        let (status, output) = try lab.runToEnd(
            "c", "glb-lab", floodArguments(count, rate: rate, ipv6: ipv6, firstPort: firstPort))
        XCTAssertEqual(status, 0, output)
    }

    /// glb-lab blast's arguments for `count` SYNs from spoofed clients (at most 200 s).
    func floodArguments(_ count: Int, rate: Int, ipv6: Bool = false, firstPort: UInt16 = 20000) -> [String] {
        [
            "blast", "--to", Lab.p1.description, "--client", ipv6 ? Self.spoofed6 : Self.spoofed,
            "--vip", ipv6 ? Lab.vip6.description : Lab.vip.description, "--vip-port", String(Self.port),
            "--count", String(count), "--flows", String(count), "--first-port", String(firstPort),
            "--spoof-addresses", "200", "--rate", String(rate), "--max-seconds", "200",
        ]
    }

    /// tcp_info fields of a connected socket: (snd_wscale, rcv_wscale, snd_wnd).
    func windowInfo(_ fd: Int32) -> (sendScale: UInt8, receiveScale: UInt8, sendWindow: UInt32) {
        var info = [UInt8](repeating: 0, count: 256)
        var length = socklen_t(info.count)
        getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, &info, &length)
        let window = length >= 232 ? info.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 228, as: UInt32.self) } : 0
        return (info[6] & 0x0f, info[6] >> 4, window)
    }

    /// Connects from the client through the director, sends `bytes` while the listener accepts and
    /// reads them, and returns both ends' window facts after the transfer.
    func connectAndTransfer(to vip: IPAddress, bytes: Int) throws -> (
        client: (UInt8, UInt8, UInt32), server: (UInt8, UInt8, UInt32)
    ) {
        let client = try lab.inside("c") { try LabSockets.connectTCP(to: vip, port: Self.port, timeoutSeconds: 5) }
        defer { close(client) }
        let accepted = try acceptConnection(listener)
        defer { close(accepted) }
        SocketOptions.setTimeouts(accepted, seconds: 5)
        let received = ReceivedBytes()
        let reader = try WorkerThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = recv(accepted, &buffer, buffer.count, 0)
                if count <= 0 { break }
                received.add(count)
            }
        }
        XCTAssertTrue(SocketIO.sendAll(client, [UInt8](repeating: 0x5a, count: bytes)), "sending \(bytes) bytes")
        let clientWindow = windowInfo(client)
        shutdown(client, Int32(SHUT_WR))
        reader.join()
        XCTAssertEqual(received.value, bytes, "every byte reached the listener's connection")
        return (clientWindow, windowInfo(accepted))
    }

    /// Waits for the listener's state, then until the flood's last queued packets are handled.
    func waitUntilActive(_ address: String, _ active: Bool = true, seconds: Double = 10) throws {
        try lab.waitFor("responder \(active ? "on" : "off") for \(address)", seconds: seconds) {
            try listenerStats(address)["active"] == (active ? 1 : 0)
        }
        var last = try lab.stats("p1")["total_packets"]
        try lab.waitFor("the queue to go quiet") {
            usleep(200_000)
            let now = try lab.stats("p1")["total_packets"]
            defer { last = now }
            return now == last
        }
    }

    /// Floods the listener until the responder serves it, then spends its one SYN for the kernel
    /// (with --cookie-pass-ms 60000, the next SYN is answered): the first SYN once served goes to
    /// the kernel, and the flood may have ended before the responder began (a slow machine).
    func floodUntilServed(_ listenerName: String, ipv6: Bool = false) throws {
        try flood(400, ipv6: ipv6)
        try waitUntilActive(listenerName)
        try flood(1, ipv6: ipv6, firstPort: 39000)
        try waitUntilActive(listenerName)
    }

    func checkCookieHandshake(vip: IPAddress, listenerName: String, ipv6: Bool) throws {
        try floodUntilServed(listenerName, ipv6: ipv6)
        let before = try lab.stats("p1")
        let recvBefore = try lab.tcpExt("SyncookiesRecv"), sentBefore = try lab.tcpExt("SyncookiesSent")
        let windows = try connectAndTransfer(to: vip, bytes: 4 << 20)
        let after = try lab.stats("p1")
        // The answered GUE SYN was dropped: the kernel, whose queue is full, made no cookie of its own.
        XCTAssertEqual(
            try lab.tcpExt("SyncookiesSent"), sentBefore, "the SYN the responder answered never reached the kernel")

        // A SYN retransmitted before its SYN-ACK arrived is answered again: one or two, not none or many.
        XCTAssertTrue(
            (1...2).contains(try after.value("cookies_sent") - before.value("cookies_sent")),
            "the client's SYN was answered by the responder: \(after)")
        XCTAssertEqual(
            try after.value("accepted_syn_cookie") - before.value("accepted_syn_cookie"), 1,
            "its ACK was taken as a cookie ACK")
        XCTAssertEqual(
            try after.value("syn_cookie_checks") - before.value("syn_cookie_checks"), 1, "no later packet was checked")
        XCTAssertGreaterThan(
            try after.value("accepted_established") - before.value("accepted_established"), 100,
            "the data went to the connection")
        XCTAssertGreaterThan(try lab.tcpExt("SyncookiesRecv"), recvBefore, "the kernel validated the cookie")
        XCTAssertEqual(try listenerStats(listenerName)["cookie_acks_valid"], 1)
        // With the tc program, the kernel's path answered: the queue never saw the SYN.
        if Lab.fastPathOn {
            XCTAssertEqual(
                try after.value("fast_path_cookies_sent") - before.value("fast_path_cookies_sent"),
                try after.value("cookies_sent") - before.value("cookies_sent"), "every answer came from the tc program")
            XCTAssertEqual(try after.value("queue_0_packets"), try before.value("queue_0_packets"), "nothing went up")
        }
        // The scale we advertised is the one the kernel gave the child, and the window is used in full.
        XCTAssertEqual(windows.client.0, windows.server.1, "client's send scale == server's receive scale")
        XCTAssertEqual(windows.server.0, windows.client.1, "server's send scale == client's receive scale")
        XCTAssertGreaterThan(windows.server.1, 0, "window scaling survived the cookie")
        XCTAssertGreaterThan(windows.client.2, 65535, "the client may send more than 64 KiB unacknowledged")
    }

    /// Starts second-chance on P1, floods the IPv4 listener until the responder serves it, then
    /// connects once (answered by the responder) and moves 1 MiB.
    func floodThenConnectWithOurCookie() throws -> (client: (UInt8, UInt8, UInt32), server: (UInt8, UInt8, UInt32)) {
        try startSecondChance(["--cookie-pass-ms", "60000"])
        try floodUntilServed("\(Lab.vip):\(Self.port)")
        let before = try lab.stats("p1").value("cookies_sent")
        let windows = try connectAndTransfer(to: .v4(Lab.vip), bytes: 1 << 20)
        XCTAssertTrue(
            (1...2).contains(try lab.stats("p1").value("cookies_sent") - before),
            "the client's SYN was answered by the responder (once, or again for a retransmission)")
        return windows
    }

    /// `glb-lab cookie-cost`, the measure of the responder's BPF runs, gets a cookie for every SYN
    /// at every batch size it times (it fails otherwise) and prints one row per size.
    func testCookieCostTimesEveryBatchSize() throws {
        let output = try Lab.shell(Lab.binaries.appendingPathComponent("glb-lab").path + " cookie-cost --runs 20")
        let rows = output.split(separator: "\n").dropFirst().map { $0.split(separator: "\t").compactMap { Int($0) } }
        XCTAssertEqual(rows.map { $0.first }, [1, 2, 4, 8, 16, 32], output)
        XCTAssertTrue(rows.allSatisfy { $0.count == 3 && $0[1] > 0 }, output)
    }

    func testResponderAnswersAnOverflowingListenerAndTheKernelTakesItsCookies() throws {
        try sysctl("p1", "net.ipv4.tcp_timestamps=2")
        try listen(.v4(Lab.vip))
        try startSecondChance(["--cookie-pass-ms", "60000"])
        try checkCookieHandshake(vip: .v4(Lab.vip), listenerName: "\(Lab.vip):\(Self.port)", ipv6: false)
        let log = lab.processes.map { lab.log(of: $0.process) }.joined()
        XCTAssertTrue(log.contains("SYN cookies on for \(Lab.vip):\(Self.port)"), log)
        // Before Linux 6.0 (the kernel lab's 5.10) the queue cannot compute cookies: the program answers alone.
        if (try? SynCookieOracle()) != nil {
            XCTAssertTrue(log.contains("SYN-ACKs leave through the raw socket"), log)
        } else {
            XCTAssertTrue(Lab.fastPathOn && log.contains("SYN-cookie responder: auto (the tc program's only"), log)
        }
    }

    /// Where the kernel forwards for second-chance, the queue's responder makes the SYN-ACK replace
    /// the queued SYN in its verdict: it leaves through the forwarding path (counted in Ip
    /// ForwDatagrams), not a raw socket; the client gets the kernel's TTL and the kernel still
    /// takes the cookie. (The queue's responder: the tc program would answer the SYN first.)
    func testWhereTheKernelForwardsTheSYNACKIsTheSYNsVerdict() throws {
        try sysctl("p1", "net.ipv4.tcp_timestamps=2")
        try enableKernelForwarding()
        try listen(.v4(Lab.vip))
        try startSecondChance(["--cookie-pass-ms", "60000", "--forward", "kernel", "--fast-path", "off"])
        try flood(400)
        try waitUntilActive("\(Lab.vip):\(Self.port)")
        func forwarded() throws -> UInt64 {
            let text = try lab.inside("p1") {
                try String(contentsOfFile: "/proc/thread-self/net/snmp", encoding: .utf8)
            }
            return try XCTUnwrap(ProcFile.counter("ForwDatagrams", section: "Ip", in: text))
        }
        let forwardedBefore = try forwarded(), sentBefore = try lab.stats("p1").value("cookies_sent")
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        _ = try connectAndTransfer(to: .v4(Lab.vip), bytes: 1 << 20)
        let answered = try lab.stats("p1").value("cookies_sent") - sentBefore
        XCTAssertTrue((1...2).contains(answered), "the client's SYN was answered by the responder")
        XCTAssertEqual(try forwarded() - forwardedBefore, answered, "each SYN-ACK went by the forwarding path")
        let synAck = try XCTUnwrap(
            capture.first { $0.ipv4TCP.map { $0.0 == Lab.vip && $0.4.contains([.syn, .ack]) } ?? false })
        XCTAssertEqual(synAck[8], 64, "the client sees the kernel's TTL")
        XCTAssertEqual(try listenerStats("\(Lab.vip):\(Self.port)")["cookie_acks_valid"], 1)
        let log = lab.processes.map { lab.log(of: $0.process) }.joined()
        XCTAssertTrue(log.contains("IPv4 SYN-ACKs replace their SYN in its verdict"), log)
    }

    /// An application that fixed SO_RCVBUF caps the child's window, and so its window scale.
    func testListenerWithFixedReceiveBufferGetsTheKernelsWindowScale() throws {
        try sysctl("p1", "net.ipv4.tcp_timestamps=2")
        listener = try lab.inside("p1") {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var size: Int32 = 262_144
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            let bound = SocketAddress(.v4(Lab.vip), port: Self.port).withSockaddr { bind(fd, $0, $1) }
            guard bound == 0, Glibc.listen(fd, 16) == 0 else { throw SystemError("listen with SO_RCVBUF") }
            return fd
        }
        let windows = try floodThenConnectWithOurCookie()
        XCTAssertEqual(windows.server.1, 3, "sk_rcvbuf 512 KiB: full space 2^18, scale 3")
        XCTAssertEqual(windows.client.0, windows.server.1)
    }

    func testIPv6ListenerOverIPv4GUE() throws {
        try sysctl("p1", "net.ipv4.tcp_timestamps=2")
        try listen(.v6(Lab.vip6))
        try startSecondChance(["--cookie-pass-ms", "60000"])
        try checkCookieHandshake(vip: .v6(Lab.vip6), listenerName: "[\(Lab.vip6)]:\(Self.port)", ipv6: true)
    }

    /// With tcp_timestamps=1 the reply carries no timestamp, so the kernel decodes no options: both
    /// ends must agree on no window scaling.
    func testWithSecretTimestampOffsetsTheHandshakeCarriesNoOptions() throws {
        try sysctl("p1", "net.ipv4.tcp_timestamps=1")
        try listen(.v4(Lab.vip))
        let windows = try floodThenConnectWithOurCookie()
        XCTAssertEqual(windows.client.0, 0)
        XCTAssertEqual(windows.server.1, 0)
        XCTAssertEqual(windows.server.0, 0)
    }

    func testResponderStaysOffWithoutOverflow() throws {
        try sysctl("p1", "net.ipv4.tcp_timestamps=2")
        try listen(.v4(Lab.vip))
        try startSecondChance()
        let sent = try lab.tcpExt("SyncookiesSent")
        let windows = try connectAndTransfer(to: .v4(Lab.vip), bytes: 256 << 10)
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["cookies_sent"], 0, "the kernel answered the SYN")
        XCTAssertEqual(stats["accepted_syn"], 1)
        XCTAssertEqual(try lab.tcpExt("SyncookiesSent"), sent, "and not with a cookie")
        XCTAssertEqual(try listenerStats("\(Lab.vip):\(Self.port)"), [:], "the listener never overflowed")
        XCTAssertEqual(windows.client.0, windows.server.1)
    }

    /// A SYN-ACK's source is its SYN's destination: a wildcard listener the responder serves must
    /// never make it answer for an address this host does not own.
    func testAWildcardListenerNeverMakesTheResponderAnswerForAForeignAddress() throws {
        try checkWildcardListenerAnswersOnlyLocalAddresses(["--forward", "raw"])
    }

    /// The same attack where SYN-ACKs replace their SYN in its verdict and the kernel forwards them.
    func testAWildcardListenerNeverMakesTheResponderAnswerForAForeignAddressInAVerdict() throws {
        try enableKernelForwarding()
        try checkWildcardListenerAnswersOnlyLocalAddresses(["--forward", "kernel"])
    }

    func enableKernelForwarding() throws {
        for setting in [
            "net.ipv4.ip_forward=1", "net.ipv4.conf.eth0.accept_local=1", "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ] {
            try sysctl("p1", setting)
        }
    }

    func checkWildcardListenerAnswersOnlyLocalAddresses(_ extra: [String]) throws {
        try listen(.v4(IPv4Address(0)))
        try startSecondChance(["--cookie-pass-ms", "60000"] + extra)
        try floodUntilServed("0.0.0.0:\(Self.port)")
        let capture = try lab.inside("d") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        let before = try lab.stats("p1")
        func synAck(from source: IPv4Address, port: UInt16) -> [UInt8]? {
            capture.first(within: 2) { packet in
                guard let tcp = packet.ipv4TCP else { return false }
                return tcp.0 == source && tcp.3 == port && tcp.4.contains([.syn, .ack])
            }
        }
        // For the client's address, which P1 does not own: refused before the responder sees it.
        let foreign = PacketBuilder.tcp(
            source: .v4(Lab.director), sourcePort: 42000, destination: .v4(Lab.client),
            destinationPort: Self.port, flags: .syn, sequence: 77)
        try sendGUE(lab, sourcePort: 31001, to: Lab.p1, inner: foreign, hops: [])
        try lab.waitFor("the foreign SYN to be refused") {
            try lab.stats("p1")["dropped_not_local_destination"] == before.value("dropped_not_local_destination") + 1
        }
        XCTAssertNil(synAck(from: Lab.client, port: 42000), "a SYN-ACK left P1 with a source it does not own")
        XCTAssertEqual(try lab.stats("p1")["cookies_sent"], before["cookies_sent"])
        // The same listener still gets its SYNs for the VIP answered.
        let local = PacketBuilder.tcp(
            source: .v4(Lab.director), sourcePort: 42001, destination: .v4(Lab.vip),
            destinationPort: Self.port, flags: .syn, sequence: 78)
        try sendGUE(lab, sourcePort: 31002, to: Lab.p1, inner: local, hops: [])
        XCTAssertNotNil(synAck(from: Lab.vip, port: 42001), "the VIP's SYN was answered")
        // A reply is counted once its send returned: it can arrive first.
        try lab.waitFor("the cookie to be counted") {
            try lab.stats("p1").value("cookies_sent") == before.value("cookies_sent") + 1
        }
    }

    func testInvalidCookieACKIsForwardedNotTaken() throws {
        try listen(.v4(Lab.vip))
        try startSecondChance()
        try lab.startSecondChance("p2", Lab.p2)
        try flood(400)
        try waitUntilActive("\(Lab.vip):\(Self.port)")
        let ack = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 41000, destination: .v4(Lab.vip), destinationPort: Self.port,
            flags: .ack, sequence: 5000, acknowledgement: 0x1234_5678)
        try sendGUE(lab, sourcePort: 31000, to: Lab.p1, inner: ack, hops: [Lab.p2])
        try lab.waitFor("the ACK on P2") { try lab.stats("p2")["total_packets"] == 1 }
        let p1 = try lab.stats("p1")
        XCTAssertEqual(p1["cookie_acks_invalid"], 1)
        XCTAssertEqual(p1["forwarded"], 1)
        XCTAssertEqual(p1["accepted_syn_cookie"], 0)
        XCTAssertEqual(try listenerStats("\(Lab.vip):\(Self.port)")["cookie_acks_invalid"], 1)
        XCTAssertEqual(
            try lab.stats("p2")["accepted_last_resort"], 1, "the last hop takes it (and its kernel refuses it)")
    }

    /// --cookie-deactivate-percent 0: a queue can never be below none of its backlog, so the
    /// responder stays on after the queue drained (the default 50% turns it off: the test below).
    func testDeactivationFollowsThePercentage() throws {
        try sysctl("p1", "net.ipv4.tcp_synack_retries=1")
        try listen(.v4(Lab.vip))
        try startSecondChance(["--cookie-deactivate-percent", "0"])
        try flood(400)
        try waitUntilActive("\(Lab.vip):\(Self.port)")
        try lab.waitFor("the SYN queue to drain", seconds: 20) {
            try !Lab.shell("ip netns exec \(lab.namespace("p1")) ss -tanH state syn-recv").contains(":\(Self.port)")
        }
        // Four times --cookie-hold-ms (500 ms) of scans every 50 ms, each seen done: the monitor
        // had every chance to turn it off, however slowly this machine ran it.
        // (Scans an overflow starts come sooner: the time counts too.)
        let scanned = try lab.stats("p1").value("listener_scans")
        let drained = MonotonicClock.nanoseconds()
        try lab.waitFor("40 more scans, 2 s after the queue drained") {
            try lab.stats("p1").value("listener_scans") >= scanned + 40
                && MonotonicClock.nanoseconds() - drained >= 2_000_000_000
        }
        XCTAssertEqual(try listenerStats("\(Lab.vip):\(Self.port)")["active"], 1, "still on with an empty queue")
    }

    /// A SYN queue is counted at every scan while its listener is served, and at every rise of
    /// the overflow counters: by the listener probe, one test run per listener, never by walking
    /// every established socket of the host (most of the monitor's CPU during a flood, BENCHMARKS.md).
    /// What the probe cannot read as itself is walked: an SO_REUSEPORT group (the probe finds one
    /// member), a listener bound to a device (a local user's, on the listener's port, would
    /// otherwise answer the probe in its place).
    func testSYNQueuesAreReadByTheProbeAndOnlyWhatItCannotReadIsWalked() throws {
        try listen(.v4(Lab.vip))
        try startSecondChance(["--syn-cookies", "off"])  // the kernel answers: its SYN queue fills
        try flood(400)
        let key = ListenerKey(address: .v4(Lab.vip), port: Self.port)
        let walked = try SockDiag(namespace: NetworkNamespace(nameOrPath: lab.namespace("p1")))
            .dumpListeners(requestSockets: true).first { $0.key == key }
        XCTAssertGreaterThanOrEqual(
            walked?.requestSockets ?? 0, 16, "the flood filled the SYN queue: \(String(describing: walked))")
        // A monitor that has seen nothing yet: what it serves, it counted at this one scan.
        func scanned() throws -> ListenerMonitor {
            let monitor = try ListenerMonitor(
                configuration: ResponderConfiguration(mode: .auto), namespace: lab.namespace("p1"),
                logger: Logger(label: "test"))
            monitor.scan(now: MonotonicClock.nanoseconds(), overflowed: true)
            return monitor
        }
        let probed = try scanned()
        XCTAssertNotNil(probed.board.snapshot().listeners[key], "the probe read the full SYN queue")
        XCTAssertEqual(probed.requestWalks, 0, "nothing was walked")

        for (name, members, device) in [("bound to a device", 1, "lo"), ("an SO_REUSEPORT group", 2, nil)] {
            let sockets = try lab.inside("p1") {
                try (0..<members).map { _ in
                    try LabSockets.listenTCP(
                        on: .v4(Lab.vip), port: Self.port + 1, backlog: 16, reusePort: true, device: device)
                }
            }
            defer { sockets.forEach { close($0) } }
            let monitor = try scanned()
            XCTAssertEqual(monitor.requestWalks, 1, "\(name): walked")
            XCTAssertNotNil(monitor.board.snapshot().listeners[key], "\(name): the walk counted the full queue")
        }
    }

    func testResponderTurnsOffAfterTheQueueDrains() throws {
        // Request sockets of the spoofed SYNs expire after one SYN-ACK retransmission (about 3 s).
        try sysctl("p1", "net.ipv4.tcp_synack_retries=1")
        try listen(.v4(Lab.vip))
        try startSecondChance()
        try flood(400)
        try waitUntilActive("\(Lab.vip):\(Self.port)")
        try waitUntilActive("\(Lab.vip):\(Self.port)", false, seconds: 20)
        let before = try lab.stats("p1")
        _ = try connectAndTransfer(to: .v4(Lab.vip), bytes: 64 << 10)
        let after = try lab.stats("p1")
        XCTAssertEqual(after["cookies_sent"], before["cookies_sent"], "the kernel answers again")
        XCTAssertEqual(try after.value("accepted_syn") - before.value("accepted_syn"), 1)
        let log = lab.processes.map { lab.log(of: $0.process) }.joined()
        XCTAssertTrue(log.contains("SYN cookies off for \(Lab.vip):\(Self.port): SYN queue"), log)
    }

    /// The client's data right behind its cookie ACK, both in one batch (the daemon is stopped while
    /// they queue): the data must go to the connection the ACK makes, not by the hop list.
    func testDataInTheSameBatchAsItsCookieACKReachesTheConnection() throws {
        try listen(.v4(Lab.vip))
        try startSecondChance(["--cookie-pass-ms", "60000"])
        try floodUntilServed("\(Lab.vip):\(Self.port)")
        // The client's own stack knows nothing of this handshake: its RSTs would end it.
        try Lab.shell("ip netns exec \(lab.namespace("c")) iptables -A OUTPUT -p tcp --tcp-flags RST RST -j DROP")
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        func segment(_ flags: TCPFlags, seq: UInt32, ack: UInt32 = 0, payload: [UInt8] = []) -> [UInt8] {
            PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: 43000, destination: .v4(Lab.vip), destinationPort: Self.port,
                flags: flags,
                sequence: seq, acknowledgement: ack, options: flags == .syn ? [2, 4, 0x05, 0xb4] : [], payload: payload)
        }
        try sendGUE(lab, sourcePort: 31100, to: Lab.p1, inner: segment(.syn, seq: 1000), hops: [Lab.p2])
        let synAck = try XCTUnwrap(
            capture.first {
                $0.ipv4TCP.map { $0.0 == Lab.vip && $0.3 == 43000 && $0.4.contains([.syn, .ack]) } ?? false
            }?.ipv4TCP)
        XCTAssertEqual(try lab.stats("p1").value("cookies_sent") > 0, true)
        let daemon = try XCTUnwrap(lab.processes.last { $0.name == "p1 second-chance" && $0.process.isRunning }).process
        try stopProcess(daemon.processIdentifier)
        try sendGUE(
            lab, sourcePort: 31100, to: Lab.p1, inner: segment(.ack, seq: 1001, ack: synAck.5 &+ 1), hops: [Lab.p2])
        try sendGUE(
            lab, sourcePort: 31100, to: Lab.p1,
            inner: segment([.ack, .psh], seq: 1001, ack: synAck.5 &+ 1, payload: Array("hello".utf8)),
            hops: [Lab.p2])
        kill(daemon.processIdentifier, SIGCONT)
        let accepted = try acceptConnection(listener)
        defer { close(accepted) }
        SocketOptions.setTimeouts(accepted, seconds: 5)
        XCTAssertEqual(
            LabSockets.receiveExactly(accepted, 5), Array("hello".utf8), "the data reached the new connection")
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["accepted_syn_cookie"], 1)
        XCTAssertEqual(stats["forwarded"], 0, "nothing went by the hop list: \(stats)")
    }

    /// A listener whose accept queue is full is left to the kernel: the responder answers none of
    /// its SYNs (a connection it made could not be queued).
    func testAListenerWithAFullAcceptQueueIsLeftToTheKernel() throws {
        // Its one SYN for the kernel spent first: else the first connection's could be that one.
        try serveAFloodedListener()
        // 17 connections the listener (backlog 16) never accepts: its accept queue is over full.
        var clients: [Int32] = []
        defer { clients.forEach { close($0) } }
        for _ in 0..<17 {
            clients.append(
                try lab.inside("c") { try LabSockets.connectTCP(to: .v4(Lab.vip), port: Self.port, timeoutSeconds: 5) })
        }
        try lab.waitFor("the monitor to see the full accept queue") {
            try readControlSocket(lab.controlPath("p1")).split(separator: "\n").contains {
                $0.hasPrefix("listener \(Lab.vip):\(Self.port) ")
            }
                && (try listenerStats("\(Lab.vip):\(Self.port)")["cookies_sent"] ?? 0) >= 17
        }
        // Scans completed since: the monitor has published the full accept queue.
        let scanned = try lab.stats("p1").value("listener_scans")
        try lab.waitFor("two more scans") { try lab.stats("p1").value("listener_scans") >= scanned + 2 }
        let before = try lab.stats("p1").value("cookies_sent")
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        // A source port above the ephemeral range: no connection of the client's can share it.
        let syn = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 61100, destination: .v4(Lab.vip), destinationPort: Self.port,
            flags: .syn,
            sequence: 1, options: [2, 4, 0x05, 0xb4])
        try sendGUE(lab, sourcePort: 31101, to: Lab.p1, inner: syn, hops: [])
        try lab.waitFor("the SYN") { try lab.stats("p1").value("accepted_syn") > 0 }
        XCTAssertEqual(try lab.stats("p1").value("cookies_sent"), before, "the responder left the SYN to the kernel")
        XCTAssertNil(
            capture.first(within: 1) { $0.ipv4TCP.map { $0.0 == Lab.vip && $0.3 == 61100 } ?? false },
            "and the kernel dropped it")
    }

    /// The IPv4 listener flooded until the responder serves it, its one SYN for the kernel spent.
    func serveAFloodedListener() throws {
        try listen(.v4(Lab.vip))
        try startSecondChance(["--cookie-pass-ms", "60000"])
        try floodUntilServed("\(Lab.vip):\(Self.port)")
    }

    /// A SYN queue that filled before the daemon started, with no SYN since, is served: the
    /// monitor's first scan counts request sockets though no overflow counter rises after it.
    /// (A restart: the daemon before it had the responder off.)
    func testAQueueFullBeforeTheDaemonStartsIsServed() throws {
        try listen(.v4(Lab.vip))
        try startSecondChance(["--syn-cookies", "off"])
        try flood(400)
        XCTAssertGreaterThan(try lab.tcpExt("TCPReqQFullDoCookies"), 0, "the flood filled the SYN queue")
        try lab.stopSecondChance("p1")
        try startSecondChance()
        try waitUntilActive("\(Lab.vip):\(Self.port)")
    }

    /// A SYN the kernel would drop (a wrong checksum, a header length past its packet's end) or
    /// one with data is never answered, while the listener's good SYNs are: on the tc path and
    /// on the queue's (the `--fast-path off` round).
    func testASYNTheKernelWouldDropIsNeverAnswered() throws {
        try serveAFloodedListener()
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        func answered(_ port: UInt16, within seconds: Double) -> Bool {
            capture.first(within: seconds) {
                $0.ipv4TCP.map { $0.0 == Lab.vip && $0.3 == port && $0.4.contains([.syn, .ack]) } ?? false
            } != nil
        }
        let good = { (port: UInt16) in
            PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: Self.port,
                flags: .syn, sequence: 9, options: [2, 4, 5, 0xb4])
        }
        // The queue's responder counts a reply after the batch that sent it: the SYN-ACK can
        // arrive first, so each count is awaited rather than read once.
        let before = try lab.stats("p1").value("cookies_sent")
        try sendGUE(lab, sourcePort: 31200, to: Lab.p1, inner: good(43200), hops: [])
        XCTAssertTrue(answered(43200, within: 5), "a good SYN is answered")
        try lab.waitFor("the good SYN's cookie counted") { try lab.stats("p1").value("cookies_sent") > before }
        let sent = try lab.stats("p1").value("cookies_sent")

        var badTCP = good(43201)
        badTCP[36] ^= 0x5a
        var badIP = good(43202)
        badIP[10] ^= 0x5a
        let longHeader =
            PacketBuilder.tcp(
                source: .v4(Lab.client), sourcePort: 43203, destination: .v4(Lab.vip), destinationPort: Self.port,
                flags: .syn, sequence: 9, dataOffset: 15) + [UInt8](repeating: 0, count: 40)
        let withData = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 43204, destination: .v4(Lab.vip), destinationPort: Self.port,
            flags: .syn, sequence: 9, options: [2, 4, 5, 0xb4], payload: [1, 2, 3, 4])
        for (index, inner) in [badTCP, badIP, longHeader, withData].enumerated() {
            try sendGUE(lab, sourcePort: 31201 + UInt16(index), to: Lab.p1, inner: inner, hops: [])
        }
        try sendGUE(lab, sourcePort: 31205, to: Lab.p1, inner: good(43205), hops: [])
        // Every SYN-ACK up to the last good SYN's: none for the damaged ones before it.
        var answeredPorts: Set<UInt16> = []
        XCTAssertNotNil(
            capture.first(within: 5) {
                guard let tcp = $0.ipv4TCP, tcp.0 == Lab.vip, tcp.4.contains([.syn, .ack]) else { return false }
                answeredPorts.insert(tcp.3)
                return tcp.3 == 43205
            }, "the good SYN sent after them is answered")
        // TCP drops a wrong TCP checksum and a header past the packet on every path. The inner IPv4
        // header's checksum is checked by ip_rcv where the inner packet passes it (the tc
        // program's delivery, fou); decapsulated by the daemon it does not, and TCP answers that
        // SYN itself (its own cookie: the responder's count above says it never did).
        let dropped: Set<UInt16> = Lab.fastPathOn || Lab.kernelDecapsulation ? [43201, 43202, 43203] : [43201, 43203]
        XCTAssertTrue(answeredPorts.isDisjoint(with: dropped), "the kernel dropped them: \(answeredPorts)")
        try lab.waitFor("the last good SYN's cookie counted") { try lab.stats("p1").value("cookies_sent") > sent }
        XCTAssertEqual(try lab.stats("p1").value("cookies_sent"), sent + 1, "only the good SYN had a cookie")
    }

    /// Both responders answer a SYN before netfilter's INPUT chain sees it: a source an INPUT rule
    /// refuses learns that an overflowing listener exists (a SYN-ACK), and gets no connection, as
    /// its cookie ACK meets INPUT like any packet; the rule gone, the same handshake connects.
    func testASourceThatINPUTRefusesGetsNoConnectionFromACookie() throws {
        try serveAFloodedListener()
        // The client's own stack knows nothing of these handshakes: its RSTs would end them.
        try Lab.shell("ip netns exec \(lab.namespace("c")) iptables -A OUTPUT -p tcp --tcp-flags RST RST -j DROP")
        let rule = "INPUT -p tcp -s \(Lab.client) --dport \(Self.port) -j DROP"
        try Lab.shell("ip netns exec \(lab.namespace("p1")) iptables -I \(rule)")
        let capture = try lab.inside("c") { try Capture(protocol: Int32(IPPROTO_TCP)) }
        func handshake(_ port: UInt16) throws {
            func segment(_ flags: TCPFlags, ack: UInt32 = 0) -> [UInt8] {
                PacketBuilder.tcp(
                    source: .v4(Lab.client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: Self.port,
                    flags: flags, sequence: flags == .syn ? 5000 : 5001, acknowledgement: ack,
                    options: flags == .syn ? [2, 4, 0x05, 0xb4] : [])
            }
            let cookies = try lab.stats("p1").value("accepted_syn_cookie")
            try sendGUE(lab, sourcePort: port, to: Lab.p1, inner: segment(.syn), hops: [Lab.p2])
            let synAck = try XCTUnwrap(
                capture.first {
                    $0.ipv4TCP.map { $0.0 == Lab.vip && $0.3 == port && $0.4.contains([.syn, .ack]) } ?? false
                }?.ipv4TCP, "port \(port): the responder answers before INPUT")
            let ack = segment(.ack, ack: synAck.5 &+ 1)
            try sendGUE(lab, sourcePort: port, to: Lab.p1, inner: ack, hops: [Lab.p2])
            try lab.waitFor("the cookie ACK taken") {
                try lab.stats("p1").value("accepted_syn_cookie") == cookies + 1
            }
        }
        try handshake(43300)
        XCTAssertThrowsError(try acceptConnection(listener, within: 1), "INPUT dropped the cookie ACK")
        try Lab.shell("ip netns exec \(lab.namespace("p1")) iptables -D \(rule)")
        try handshake(43301)
        let accepted = try acceptConnection(listener)
        close(accepted)
    }

    /// --syn-cookies off: an overflowing listener is the kernel's alone, and its cookies still work.
    func testResponderOffLeavesTheKernelToAnswer() throws {
        try listen(.v4(Lab.vip))
        try startSecondChance(["--syn-cookies", "off"])
        try flood(400)
        let sent = try lab.tcpExt("SyncookiesSent")
        _ = try connectAndTransfer(to: .v4(Lab.vip), bytes: 64 << 10)
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["cookies_sent"], 0)
        XCTAssertGreaterThan(try lab.tcpExt("SyncookiesSent"), sent, "the kernel answered with its own cookie")
        XCTAssertEqual(try listenerStats("\(Lab.vip):\(Self.port)"), [:], "no listener is watched")
    }

    /// --syn-cookies always (with tcp_syncookies=2): SYNs are answered with no overflow at all. The
    /// kernel still wants a recent cookie of its own before it takes one: the first SYN goes to it.
    func testResponderAlwaysAnswersWithoutOverflow() throws {
        try sysctl("p1", "net.ipv4.tcp_syncookies=2")
        try listen(.v4(Lab.vip))
        try startSecondChance(["--syn-cookies", "always", "--cookie-pass-ms", "60000"])
        try waitUntilActive("\(Lab.vip):\(Self.port)")
        _ = try connectAndTransfer(to: .v4(Lab.vip), bytes: 64 << 10)
        XCTAssertGreaterThanOrEqual(
            try listenerStats("\(Lab.vip):\(Self.port)").value("syns_passed_to_kernel"), 1,
            "the kernel got a SYN to answer")
        _ = try connectAndTransfer(to: .v4(Lab.vip), bytes: 64 << 10)
        let stats = try lab.stats("p1")
        XCTAssertTrue(
            (1...2).contains(try stats.value("cookies_sent")),
            "the second connection's SYN was answered by the responder: \(stats)")
        // Both ACKs carried cookies (with tcp_syncookies=2 the kernel's answer is one too).
        XCTAssertEqual(stats["accepted_syn_cookie"], 2)
    }

    /// The SYN-ACK offers the MSS the kernel's own would (the route back's advmss), not the
    /// client's: on a path that leaves room for GUE, the client's segments fit. The kernel's
    /// answer to the first SYN and the responder's to the second agree.
    func testTheCookieSYNACKAdvertisesTheRoutesMSS() throws {
        try sysctl("p1", "net.ipv4.tcp_syncookies=2")
        try Lab.shell(
            """
            ip -n psck-p1 route replace 198.18.0.0/24 dev eth0 mtu 1400 advmss 1360 && \
            ip -n psck-p1 -6 route replace 2001:2::/64 dev eth0 metric 256 mtu 1400
            """)
        try listen(.v4(Lab.vip))
        let listener6 = try lab.inside("p1") { try LabSockets.listenTCP(on: .v6(Lab.vip6), port: Self.port) }
        defer { close(listener6) }
        // A listener that clamps the MSS itself (HAProxy's `mss`): TCP_MAXSEG set before listen().
        let clamped = try lab.inside("p1") { () throws -> Int32 in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var mss: Int32 = 1200
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_MAXSEG, &mss, 4)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = (Self.port + 1).bigEndian
            address.sin_addr.s_addr = Lab.vip.value.bigEndian
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard bound == 0, Glibc.listen(fd, 16) == 0 else { throw SystemError("listen") }
            return fd
        }
        defer { close(clamped) }
        try startSecondChance(["--syn-cookies", "always", "--cookie-pass-ms", "60000"])
        try waitUntilActive("\(Lab.vip):\(Self.port)")
        try waitUntilActive("\(Lab.vip):\(Self.port + 1)")
        func clientMSS(_ vip: IPAddress, _ server: Int32, port: UInt16 = Self.port) throws -> Int32 {
            let client = try lab.inside("c") { try LabSockets.connectTCP(to: vip, port: port, timeoutSeconds: 5) }
            defer { close(client) }
            close(try acceptConnection(server))
            var mss: Int32 = 0
            var length = socklen_t(4)
            getsockopt(client, Int32(IPPROTO_TCP), TCP_MAXSEG, &mss, &length)
            return mss
        }
        let before = try lab.stats("p1").value("cookies_sent")
        // The kernel's SYN-ACK (the listener's first SYN goes to it), then the responder's.
        XCTAssertLessThanOrEqual(try clientMSS(.v4(Lab.vip), listener), 1360, "the kernel's SYN-ACK")
        XCTAssertEqual(try clientMSS(.v4(Lab.vip), listener), 1360, "the responder's SYN-ACK offers the route's advmss")
        XCTAssertLessThanOrEqual(try clientMSS(.v6(Lab.vip6), listener6), 1340)
        XCTAssertEqual(try clientMSS(.v6(Lab.vip6), listener6), 1340, "IPv6: the route's MTU less 60")
        XCTAssertLessThanOrEqual(try clientMSS(.v4(Lab.vip), clamped, port: Self.port + 1), 1200)
        XCTAssertEqual(
            try clientMSS(.v4(Lab.vip), clamped, port: Self.port + 1), 1200, "the listener's TCP_MAXSEG clamps it")
        XCTAssertEqual(try lab.stats("p1").value("cookies_sent") - before, 3, "one SYN of each listener was answered")
        _ = try connectAndTransfer(to: .v4(Lab.vip), bytes: 1 << 20)
    }

    /// A SYN retransmitted while the kernel holds its request socket (it answered the first one
    /// itself) is the kernel's to answer: a cookie would give the client an ISN the request does not
    /// know, and its ACK a reset. The tc program looks the 4-tuple up first: it decides here in the
    /// `--fast-path off` round too (the queue's responder does not look SYNs up).
    func testASYNWhoseRequestTheKernelHoldsIsLeftToIt() throws {
        try listen(.v4(Lab.vip))
        // Served until the test ends (a slow machine may see the queue drain for a moment).
        try startSecondChance(["--fast-path", "tc", "--cookie-pass-ms", "60000", "--cookie-hold-ms", "60000"])
        try flood(400)
        try waitUntilActive("\(Lab.vip):\(Self.port)")
        // The requests that filled the queue before the responder began: their flows' SYNs come again.
        let held = try Lab.shell("ip netns exec psck-p1 ss -Htn state syn-recv").split(separator: "\n")
            .compactMap { line -> (IPv4Address, UInt16)? in
                guard let peer = line.split(separator: " ").last, let colon = peer.lastIndex(of: ":"),
                    let address = IPv4Address(String(peer[..<colon])),
                    let port = UInt16(peer[peer.index(after: colon)...])
                else { return nil }
                return (address, port)
            }
        let (address, port) = try XCTUnwrap(held.first, "the kernel holds requests")
        // The listener's first SYN once served goes to the kernel (its overflow mark): a new flow's
        // takes that turn, whether the flood's last SYNs came before or after the responder began.
        let primer = PacketBuilder.tcp(
            source: .v4(address), sourcePort: 64999, destination: .v4(Lab.vip), destinationPort: Self.port, flags: .syn,
            sequence: 1, options: [2, 4, 5, 0xb4])
        let primed = try lab.stats("p1").value("fast_path_total_packets")
        try sendGUE(lab, sourcePort: 31002, to: Lab.p1, inner: primer, hops: [])
        try lab.waitFor("the first SYN to be decided") {
            try lab.stats("p1").value("fast_path_total_packets") > primed
        }
        let before = try lab.stats("p1")
        let retransmitted = PacketBuilder.tcp(
            source: .v4(address), sourcePort: port, destination: .v4(Lab.vip), destinationPort: Self.port, flags: .syn,
            sequence: 1, options: [2, 4, 5, 0xb4])
        try sendGUE(lab, sourcePort: 31003, to: Lab.p1, inner: retransmitted, hops: [])
        let fresh = PacketBuilder.tcp(
            source: .v4(address), sourcePort: 65000, destination: .v4(Lab.vip), destinationPort: Self.port, flags: .syn,
            sequence: 1, options: [2, 4, 5, 0xb4])
        try sendGUE(lab, sourcePort: 31004, to: Lab.p1, inner: fresh, hops: [])
        try lab.waitFor("both SYNs to be decided") {
            try lab.stats("p1").value("fast_path_total_packets") >= before.value("fast_path_total_packets") + 2
        }
        let after = try lab.stats("p1")
        XCTAssertEqual(
            try after.value("fast_path_accepted_syn") - before.value("fast_path_accepted_syn"), 1,
            "the retransmitted SYN went to the kernel: \(after)")
        XCTAssertEqual(
            try after.value("fast_path_cookies_sent") - before.value("fast_path_cookies_sent"), 1,
            "the new flow's SYN was answered: \(after)")
    }

    /// --no-cookie-check: no BPF, no responder, and an ACK of a kernel cookie is not recognised
    /// (here the only proxy takes it last).
    func testNoCookieCheckRecognisesNoCookieACK() throws {
        try listen(.v4(Lab.vip))
        try startSecondChance(["--no-cookie-check"])
        try flood(400)
        let sent = try lab.tcpExt("SyncookiesSent")
        _ = try connectAndTransfer(to: .v4(Lab.vip), bytes: 64 << 10)
        let stats = try lab.stats("p1")
        XCTAssertGreaterThan(try lab.tcpExt("SyncookiesSent"), sent, "the kernel issued the cookie")
        XCTAssertEqual(stats["syn_cookie_checks"], 0)
        XCTAssertEqual(stats["accepted_syn_cookie"], 0)
        XCTAssertEqual(stats["cookies_sent"], 0)
        XCTAssertGreaterThan(try stats.value("accepted_last_resort"), 0, "the cookie ACK went by the hop list")
    }

    /// --cookie-activate-percent: 10 request sockets on a backlog of 16 are enough at 50%.
    func testActivationFollowsThePercentage() throws {
        try listen(.v4(Lab.vip))
        try startSecondChance(["--cookie-activate-percent", "50", "--cookie-deactivate-percent", "25"])
        try flood(10, rate: 1000)
        try waitUntilActive("\(Lab.vip):\(Self.port)")
        let log = lab.processes.map { lab.log(of: $0.process) }.joined()
        XCTAssertTrue(log.contains("SYN cookies on for \(Lab.vip):\(Self.port)"), log)
    }

    /// A rise of the kernel's overflow counters starts a scan at once, whatever --listener-scan-ms.
    func testOverflowCountersTriggerAScanAtOnce() throws {
        try listen(.v4(Lab.vip))
        try lab.startSecondChance("p1", Lab.p1, extra: ["--listener-scan-ms", "60000", "--cookie-hold-ms", "500"])
        try flood(400)
        try waitUntilActive("\(Lab.vip):\(Self.port)", seconds: 15)
    }

    /// The kernel accepts cookies only within two minutes of its own last one; a flood longer than
    /// that must not make it refuse the responder's cookies. The client connects while the flood
    /// still runs, more than two minutes after the responder began: once a flood ends, the queue
    /// drains, and the responder rightly stops (and the kernel's cookie helper refuses a queue
    /// that is not full), so a client after the flood meets the kernel alone, however slowly the
    /// machine got there. Slow: runs with PROXYSIDE_SLOW_TESTS=1.
    func testCookiesStillAcceptedAfterMoreThanTwoMinutesOfFlood() throws {
        guard ProcessInfo.processInfo.environment["PROXYSIDE_SLOW_TESTS"] == "1" else {
            throw XCTSkip("slow (135 s): set PROXYSIDE_SLOW_TESTS=1")
        }
        try sysctl("p1", "net.ipv4.tcp_timestamps=2")
        try listen(.v4(Lab.vip))
        try startSecondChance()
        // 180 s at 200 SYN/s from 36000 spoofed flows (bounded in count and time), in the background.
        let sender = try lab.start("c", "glb-lab", floodArguments(36000, rate: 200))
        defer { sender.terminate() }
        try lab.waitFor("responder on", seconds: 15) { try listenerStats("\(Lab.vip):\(Self.port)")["active"] == 1 }
        let began = Date()
        while Date().timeIntervalSince(began) < 125 {
            guard sender.isRunning else { return XCTFail("the flood ended before the client connected") }
            sleep(1)
        }
        try lab.waitFor("responder on", seconds: 10) { try listenerStats("\(Lab.vip):\(Self.port)")["active"] == 1 }
        let before = try lab.stats("p1")
        let recvBefore = try lab.tcpExt("SyncookiesRecv")
        // Only the client completes handshakes (the flood's sources are spoofed), so an ACK with a
        // valid cookie is the client's: its SYN was answered from a cookie, and the kernel took the
        // connection. The client's SYN may be the one let through to the kernel; a few settle it.
        var answered = false
        for _ in 0..<3 where !answered {
            _ = try connectAndTransfer(to: .v4(Lab.vip), bytes: 256 << 10)
            answered = try lab.stats("p1").value("accepted_syn_cookie") > before.value("accepted_syn_cookie")
        }
        XCTAssertTrue(answered, "a client answered with a cookie after 125 s of flood, its ACK taken")
        XCTAssertTrue(sender.isRunning, "the client connected during the flood")
        XCTAssertGreaterThan(try lab.tcpExt("SyncookiesRecv"), recvBefore, "the kernel accepted the cookie")
        XCTAssertGreaterThan(
            try listenerStats("\(Lab.vip):\(Self.port)").value("syns_passed_to_kernel"), 100,
            "about one SYN a second went to the kernel")
    }
}

final class ReceivedBytes: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var total = 0
    init() { pthread_mutex_init(&lock, nil) }
    func add(_ count: Int) {
        pthread_mutex_lock(&lock)
        total += count
        pthread_mutex_unlock(&lock)
    }
    var value: Int {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return total
    }
}

/// Keeps the messages a logger writes.
final class LineCounter: LogHandler, @unchecked Sendable {
    let lines = Mutex<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) { lines.withLock { $0.append(event.message.description) } }
}
