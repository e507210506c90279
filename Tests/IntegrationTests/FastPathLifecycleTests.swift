import Foundation
import Glibc
import LabKit
import LabPrograms
import LinuxSys
import NetTypes
import SecondChance
import SecondChanceCore
import Telemetry
import XCTest

/// The tc program across the daemon's life: established flows go on being decided in the kernel
/// while second-chance is killed and down, a restart and a re-exec adopt the program's maps, a
/// clean stop removes it, and `--fast-path off` removes one an earlier daemon left.
final class FastPathLifecycleTests: XCTestCase {
    var lab: Lab!

    override func setUpWithError() throws {
        lab = try Lab(prefix: "psfl")
        try lab.startEcho("p1")
        Self.lockedMemoryAsTheUnits()
    }

    /// The units' LimitMEMLOCK=infinity, for every daemon this test starts (they inherit it):
    /// before 5.11 the kernel charges BPF maps and programs to the locked-memory limit, and a
    /// daemon with the unit's capabilities (no CAP_SYS_RESOURCE) cannot raise it itself. Where
    /// this process cannot either, the soft limit goes up to the hard one.
    static func lockedMemoryAsTheUnits() {
        let resource = Int32(__RLIMIT_MEMLOCK.rawValue)
        var limit = rlimit(rlim_cur: rlim_t.max, rlim_max: rlim_t.max)  // RLIM_INFINITY
        guard setrlimit(resource, &limit) != 0, getrlimit(resource, &limit) == 0 else { return }
        limit.rlim_cur = limit.rlim_max
        setrlimit(resource, &limit)
    }

    override func tearDown() { lab?.tearDown() }

    /// How long a daemon may take to start and load its programs (Lab.waitScale times that in the
    /// kernel lab's software emulation, where the verifier alone takes seconds, and a start with
    /// the listener probe took over 50 s on 5.10 beside other guests).
    static let startup: Double = 20
    /// A re-exec loads and verifies the programs twice: its check of the new image, then the new
    /// image's start.
    static let reexec: Double = 2 * startup

    var arguments: [String] {
        ["run", "--queue", "0", "--self", Lab.p1.description, "--control", lab.controlPath("p1")] + Lab.labPeers
    }

    func filterOnP1() throws -> String {
        try Lab.shell("ip netns exec \(lab.namespace("p1")) tc filter show dev eth0 ingress")
    }

    /// A connection from the client to the VIP through the lab's director (GUE to p1).
    func connectThroughDirector() throws -> Int32 {
        let table = lab.directory.appendingPathComponent("table").path
        try "\(Lab.p1)\n".write(toFile: table, atomically: true, encoding: .utf8)
        let director = try lab.start(
            "d", "glb-lab", ["director", "--self", Lab.director.description, "--table", table])
        try lab.waitFor("the director", seconds: Self.startup) {
            lab.log(of: director).contains("director: serving queue")
        }
        return try lab.inside("c") { try LabSockets.connectTCP(to: .v4(Lab.vip), port: 80) }
    }

    func echo(_ fd: Int32, _ index: Int) {
        let message = Array("message \(index)\n".utf8)
        XCTAssertTrue(SocketIO.sendAll(fd, message))
        XCTAssertEqual(LabSockets.receiveExactly(fd, message.count), message, "echo \(index)")
    }

    func retransmissions(_ host: String) throws -> UInt64 {
        let snmp = try Lab.shell("ip netns exec \(lab.namespace(host)) cat /proc/net/snmp")
        return ProcFile.counter("RetransSegs", section: "Tcp", in: snmp) ?? 0
    }

    func queueOnP1() throws -> KernelQueueStatistics {
        let text = try Lab.shell("ip netns exec \(lab.namespace("p1")) cat /proc/net/netfilter/nfnetlink_queue")
        return try XCTUnwrap(KernelQueueStatistics.parse(text)[0], "queue 0 is bound: \(text)")
    }

    func testEstablishedFlowsKeepMovingWhileTheDaemonIsKilledAndDown() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let first = try lab.start("p1", "second-chance", arguments, environment: ["NOTIFY_SOCKET": manager.path])
        // The queue, its replay guard and the control socket; the programs and maps beside them
        // (auto puts the XDP entry point beside tc from Linux 5.12).
        let xdp = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current)) >= (5, 12)
        try manager.collect(seconds: Self.startup) {
            $0.isReady && $0.sockets.count == 3
                && $0.store.filter { $0.name == FastPathHandles.storeName }.count
                    == FastPathMap.allCases.count + (xdp ? 2 : 1)
        }
        let program = try filterOnP1()
        XCTAssertTrue(program.contains("second_chance_f"), program)

        let fd = try connectThroughDirector()
        defer { close(fd) }
        for index in 0..<5 { echo(fd, index) }
        let decidedBefore = try lab.stats("p1").value("fast_path_accepted_established")
        XCTAssertGreaterThan(decidedBefore, 0, "the flow's packets are decided in the kernel")

        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        // The queue stays bound in the service manager's store; the program stays attached.
        let queueBefore = try queueOnP1()
        let (clientRetransmits, proxyRetransmits) = (try retransmissions("c"), try retransmissions("p1"))
        let deadline = Date().addingTimeInterval(3)
        var index = 5
        while Date() < deadline {
            echo(fd, index)
            index += 1
            usleep(100_000)
        }
        XCTAssertGreaterThan(index, 25, "the flow kept moving while no daemon ran")
        let queueAfter = try queueOnP1()
        XCTAssertEqual(queueAfter.idSequence, queueBefore.idSequence, "no packet of the flow reached the queue")
        XCTAssertEqual(queueAfter.waiting, 0)
        XCTAssertEqual(try retransmissions("c"), clientRetransmits, "the client retransmitted nothing")
        XCTAssertEqual(try retransmissions("p1"), proxyRetransmits, "the proxy retransmitted nothing")
        XCTAssertEqual(try filterOnP1(), program, "the program is the one the killed daemon attached")

        // The restart takes the stored queue and the program's maps: the counts go on.
        let restartLog = lab.directory.appendingPathComponent("restarted.log").path
        let pid = try manager.restartService(
            "second-chance", arguments, inside: lab.namespace("p1"), log: restartLog)
        defer { kill(pid, SIGTERM); _ = Spawn.wait(pid) }
        try lab.waitFor("the restarted daemon", seconds: Self.startup) {
            // "tc on eth0", or "XDP (native) and tc on eth0" where auto puts XDP beside it.
            ((try? String(contentsOfFile: restartLog, encoding: .utf8)) ?? "").contains("tc on eth0 (program")
        }
        let restarted = (try? String(contentsOfFile: restartLog, encoding: .utf8)) ?? ""
        XCTAssertTrue(restarted.contains("maps adopted from program"), restarted)
        XCTAssertTrue(restarted.contains("after a restart"), restarted)
        // Where auto had put XDP beside tc, the restart replaced it through the stored descriptor.
        XCTAssertEqual(restarted.contains("XDP (native) and tc on eth0"), xdp, restarted)
        XCTAssertFalse(restarted.contains("XDP not attached"), restarted)
        echo(fd, index)
        XCTAssertGreaterThanOrEqual(
            try lab.stats("p1").value("fast_path_accepted_established"), decidedBefore + UInt64(index - 5),
            "the counters the program kept while no daemon ran")
    }

    /// A restart with fewer interfaces than its predecessor had (a route, or a flag, gone): what
    /// the killed daemon attached where the new one does not attach is taken off, known by the
    /// descriptors the store kept; where both attach it is replaced.
    func testARestartTakesItsPredecessorsProgramsOffInterfacesItNoLongerUses() throws {
        let p1 = lab.namespace("p1")
        try Lab.shell("ip -n \(p1) link add x9a type veth peer name x9b && ip -n \(p1) link set x9a up")
        try Lab.shell("ip -n \(p1) link set x9b up")
        func onX9a() throws -> (tc: Bool, xdp: UInt32?) {
            let filter = try Lab.shell("ip netns exec \(p1) tc filter show dev x9a ingress 2>&1 || true")
            return (filter.contains("second_chance_f"), try lab.inside("p1") { NativeXDP.program(on: "x9a") })
        }
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let first = try lab.start(
            "p1", "second-chance", arguments + ["--fast-path-interface", "eth0", "--fast-path-interface", "x9a"],
            environment: ["NOTIFY_SOCKET": manager.path])
        try manager.collect(seconds: Self.startup) {
            $0.isReady && $0.store.contains { $0.name == FastPathHandles.storeName }
        }
        let xdp = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current)) >= (5, 12)
        XCTAssertTrue(try onX9a().tc)
        XCTAssertEqual(try onX9a().xdp != nil, xdp)
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()

        let restartLog = lab.directory.appendingPathComponent("restarted.log").path
        let pid = try manager.restartService(
            "second-chance", arguments + ["--fast-path-interface", "eth0"], inside: p1, log: restartLog)
        defer { kill(pid, SIGTERM); _ = Spawn.wait(pid) }
        try lab.waitFor("the restarted daemon", seconds: Self.startup) {
            ((try? String(contentsOfFile: restartLog, encoding: .utf8)) ?? "").contains("tc on eth0 (program")
        }
        let after = try onX9a()
        XCTAssertFalse(after.tc, "the predecessor's tc program is off x9a")
        XCTAssertNil(after.xdp, "the predecessor's XDP entry point is off x9a")
        XCTAssertTrue(try filterOnP1().contains("second_chance_f"))
        XCTAssertEqual(try xdpOnP1() != nil, xdp)
    }

    func testAReexecReplacesTheProgramInPlaceAndACleanStopRemovesIt() throws {
        let daemon = try lab.start("p1", "second-chance", arguments)
        try lab.waitFor("the program", seconds: Self.startup) {
            try self.filterOnP1().contains("second_chance_f") && self.lab.log(of: daemon).contains("serving queue")
        }
        let fd = try connectThroughDirector()
        defer { close(fd) }
        echo(fd, 0)
        let queueBefore = try queueOnP1()
        let before = try lab.stats("p1")
        kill(daemon.processIdentifier, SIGUSR1)
        // One read may go unanswered within its own bound while the new image loads and verifies
        // its programs (far slower under emulation, on one CPU); the wait's deadline bounds the re-exec.
        try lab.waitFor("the re-exec", seconds: Self.reexec) { (try? self.lab.stats("p1"))?["reexecs"] == 1 }
        for index in 1..<20 { echo(fd, index) }
        XCTAssertEqual(try queueOnP1().idSequence, queueBefore.idSequence, "no packet of the flow reached the queue")
        let after = try lab.stats("p1")
        XCTAssertGreaterThanOrEqual(
            try after.value("fast_path_accepted_established"),
            try before.value("fast_path_accepted_established") + 19, "the new program kept the maps' counts")
        XCTAssertTrue(lab.log(of: daemon).contains("after the re-exec"), lab.log(of: daemon))

        daemon.terminate()
        daemon.waitUntilExit()
        XCTAssertFalse(try filterOnP1().contains("second_chance_f"), "a clean stop removes the program")
    }

    func xdpOnP1() throws -> UInt32? { try lab.inside("p1") { NativeXDP.program(on: "eth0") } }

    /// --fast-path xdp: the XDP entry point goes into p1's driver beside tc and decides the flow's
    /// packets itself (with tc's filter taken away, the flow still moves and nothing reaches the
    /// queue); a re-exec replaces it in place with the maps adopted; a clean stop removes it; and
    /// a start with --fast-path tc removes one an earlier daemon left.
    /// Before Linux 5.12 (bpf_check_mtu) the XDP entry point does not load: a start that asks for
    /// it fails, and leaves nothing attached; the default (auto) attaches tc alone.
    func testXDPDecidesLocalPacketsAndIsReplacedInPlaceAndRemoved() throws {
        let version = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current))
        guard version >= (5, 12) else {
            let refused = try lab.runToEnd("p1", "second-chance", arguments + ["--fast-path", "xdp"])
            XCTAssertNotEqual(refused.status, 0, refused.output)
            XCTAssertTrue(refused.output.contains("--fast-path xdp:"), refused.output)
            XCTAssertFalse(try filterOnP1().contains("second_chance_f"), "all or none")
            XCTAssertNil(try xdpOnP1())
            // The default (auto) puts tc alone there, and says why.
            let auto = try lab.start("p1", "second-chance", arguments)
            defer { auto.terminate(); auto.waitUntilExit() }
            try lab.waitFor("tc alone", seconds: Self.startup) {
                lab.log(of: auto).contains("fast path: tc on eth0 (program")
            }
            // Known by probing the helper, not by having the verifier refuse the whole entry point.
            XCTAssertTrue(
                lab.log(of: auto).contains(
                    "the XDP entry point does not load here, tc decides alone: the kernel lets "
                        + "no XDP program call bpf_check_mtu"), lab.log(of: auto))
            XCTAssertNil(try xdpOnP1())
            return
        }
        let daemon = try lab.start("p1", "second-chance", arguments + ["--fast-path", "xdp"])
        // The programs attach before the control socket is bound: the daemon serves once it says so.
        try lab.waitFor("the XDP entry point", seconds: Self.startup) {
            try self.xdpOnP1() != nil && self.lab.log(of: daemon).contains("serving queue")
        }
        let first = try XCTUnwrap(try xdpOnP1())
        XCTAssertTrue(try filterOnP1().contains("second_chance_f"), "tc beside it")
        let fd = try connectThroughDirector()
        defer { close(fd) }
        echo(fd, 0)
        let status = try readControlSocket(lab.controlPath("p1"))
        XCTAssertTrue(status.contains("XDP (native) and tc on eth0"), status)
        kill(daemon.processIdentifier, SIGUSR1)
        try Lab.waitFor("the re-exec", seconds: Self.reexec, context: { self.lab.log(of: daemon) }) {
            (try? self.lab.stats("p1"))?["reexecs"] == 1
        }
        let second = try XCTUnwrap(try xdpOnP1())
        XCTAssertNotEqual(second, first, "a new program in the same place")
        XCTAssertTrue(lab.log(of: daemon).contains("XDP (native) and tc on eth0"), lab.log(of: daemon))
        XCTAssertTrue(lab.log(of: daemon).contains("after the re-exec"), lab.log(of: daemon))

        // tc's filter gone, XDP alone decides the flow: it moves, and the queue sees none of it.
        try Lab.shell(
            "tc -n \(lab.namespace("p1")) filter del dev eth0 ingress handle 0x19523 prio 1 bpf")
        let queueBefore = try queueOnP1()
        let before = try lab.stats("p1").value("fast_path_accepted_established")
        for index in 1..<20 { echo(fd, index) }
        XCTAssertEqual(try queueOnP1().idSequence, queueBefore.idSequence, "no packet of the flow reached the queue")
        XCTAssertGreaterThanOrEqual(
            try lab.stats("p1").value("fast_path_accepted_established"), before + 19, "decided in XDP")

        daemon.terminate()
        daemon.waitUntilExit()
        XCTAssertNil(try xdpOnP1(), "a clean stop removes it")

        // One left by a daemon that was killed, removed by a start that does not want it.
        let killed = try lab.start("p1", "second-chance", arguments + ["--fast-path", "xdp"])
        try lab.waitFor("the XDP entry point again", seconds: Self.startup) { try self.xdpOnP1() != nil }
        kill(killed.processIdentifier, SIGKILL)
        killed.waitUntilExit()
        let tcOnly = try lab.start("p1", "second-chance", arguments + ["--fast-path", "tc"])
        try lab.waitFor("the tc-only start", seconds: Self.startup) { lab.log(of: tcOnly).contains("serving queue") }
        XCTAssertNil(try xdpOnP1(), "removed by a start with --fast-path tc")
        tcOnly.terminate()
        tcOnly.waitUntilExit()
    }

    /// --xdp-forward: XDP sends a forward back out of the interface it arrived on (XDP_TX). By
    /// default p1's veth keeps its forwards in tc (its XDP_TX reaches the switch only while the
    /// switch's end runs an XDP program); with one there and `on`, a forward to p2 goes from XDP
    /// alone: with tc's filter taken away it arrives rewritten, and the queue sees none of it.
    /// Before XDP loads (5.12), the flag changes nothing: tc alone, as ever.
    func testXDPSendsForwardsBackOutOnlyWhereAllowed() throws {
        let version = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current))
        guard version >= (5, 13) else {
            let daemon = try lab.start("p1", "second-chance", arguments + ["--xdp-forward", "on"])
            defer { daemon.terminate(); daemon.waitUntilExit() }
            try lab.waitFor("tc alone", seconds: Self.startup) { lab.log(of: daemon).contains("fast path: tc on eth0") }
            return
        }
        let auto = try lab.start("p1", "second-chance", arguments)
        try Lab.waitFor("XDP by default", seconds: Self.startup, context: { self.lab.log(of: auto) }) {
            self.lab.log(of: auto).contains("fast path: XDP (native) and tc on eth0")
        }
        XCTAssertTrue(lab.log(of: auto).contains("forwards and cookie answers in tc"), lab.log(of: auto))
        let doctor = try lab.runToEnd("p1", "second-chance", ["doctor", "--queue", "0"] + Lab.labPeers).output
        XCTAssertTrue(doctor.contains("eth0 is a veth: its forwards stay in tc unless --xdp-forward on"), doctor)
        auto.terminate()
        auto.waitUntilExit()

        // A program on the switch's end that passes everything: the frames XDP sends have a ring there.
        let (empty, _, pass) = try EmptyPrograms.load()
        defer { withExtendedLifetime(empty) {} }
        try lab.inside("sw") { try NativeXDP.attach(programFD: pass, interface: "\(lab.prefix)-p1", replacing: nil) }
        let daemon = try lab.start("p1", "second-chance", arguments + ["--fast-path", "xdp", "--xdp-forward", "on"])
        defer { daemon.terminate(); daemon.waitUntilExit() }
        try Lab.waitFor("the XDP entry point", seconds: Self.startup, context: { self.lab.log(of: daemon) }) {
            self.lab.log(of: daemon).contains("serving queue")
        }
        XCTAssertTrue(lab.log(of: daemon).contains("forwards and cookie answers in XDP"), lab.log(of: daemon))
        try Lab.shell("tc -n \(lab.namespace("p1")) filter del dev eth0 ingress handle 0x19523 prio 1 bpf")
        // p2's neighbour entry, which the FIB answers with, and forwarding on eth0, without which
        // it does not answer (and XDP and tc send the forward up).
        try Lab.shell("ip netns exec \(lab.namespace("p1")) sysctl -qw net.ipv4.conf.eth0.forwarding=1")
        let p2MAC = try Lab.linkAddress(in: lab.namespace("p2"))
        try Lab.shell("ip -n \(lab.namespace("p1")) neigh replace \(Lab.p2) lladdr \(p2MAC) dev eth0 nud permanent")
        let capture = try lab.inside("p2") { try Capture(protocol: Int32(IPPROTO_UDP)) }
        let queueBefore = try queueOnP1()
        let before = try lab.stats("p1").value("fast_path_forwarded")
        // An ACK of no flow, to a port nothing listens on: p1 forwards it to p2.
        let inner = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 40123, destination: .v4(Lab.vip), destinationPort: 81, flags: .ack)
        try sendGUE(
            lab, from: "d", source: Lab.director, sourcePort: 40000, to: Lab.p1, inner: inner, hops: [Lab.p2],
            zeroChecksum: true)
        let fromP1: ([UInt8]) -> Bool = { packet in
            packet.count > 36 && packet.be32(12) == Lab.p1.value && packet.be16(22) == GUEPacket.port
        }
        let forwarded = try XCTUnwrap(capture.first(where: fromP1), "the forward reached p2")
        XCTAssertEqual(forwarded.be32(16), Lab.p2.value)
        XCTAssertEqual(forwarded[34], 1, "the next hop moved on")
        XCTAssertEqual(forwarded.be16(26), 0, "no UDP checksum stays none")
        XCTAssertEqual(Array(forwarded.suffix(inner.count)), inner)
        XCTAssertEqual(try queueOnP1().idSequence, queueBefore.idSequence, "the queue saw none of it")
        XCTAssertEqual(try lab.stats("p1").value("fast_path_forwarded"), before + 1)
    }

    /// What runs a daemon with the shipped unit's capabilities (its CapabilityBoundingSet=; its
    /// LimitMEMLOCK= is `lockedMemoryAsTheUnits`).
    static let unitCapabilities = [
        "/usr/bin/setpriv", "--bounding-set=-all,+net_admin,+net_raw,+bpf,+perfmon", "--no-new-privs",
    ]

    /// Before Linux 5.12 (bpf_check_mtu) the XDP entry point does not load: with the unit's
    /// capabilities too, a start that asks for it fails and leaves nothing attached.
    func checkXDPRefusedUnderTheUnit() throws {
        let refused = try lab.start(
            "p1", program: Self.unitCapabilities[0],
            Array(Self.unitCapabilities.dropFirst()) + [Lab.binaries.appendingPathComponent("second-chance").path]
                + arguments + ["--fast-path", "xdp"])
        refused.waitUntilExit()
        XCTAssertNotEqual(refused.terminationStatus, 0, lab.log(of: refused))
        XCTAssertTrue(lab.log(of: refused).contains("--fast-path xdp:"), lab.log(of: refused))
        XCTAssertFalse(try filterOnP1().contains("second_chance_f"), "all or none")
        XCTAssertNil(try xdpOnP1())
    }

    /// Another XDP program in p1's driver (one that passes everything), then one in generic mode:
    /// the default (auto) leaves each where it is and attaches tc behind it, and says so, as doctor
    /// does; a clean stop leaves it too.
    func testAnotherXDPProgramIsLeftInPlaceAndWarnedOf() throws {
        let (object, _, other) = try EmptyPrograms.load()
        try withExtendedLifetime(object) {
            try lab.inside("p1") { try NativeXDP.attach(programFD: other, interface: "eth0", replacing: nil) }
            try checkTheOtherXDPProgram(try XCTUnwrap(try xdpOnP1()), mode: "")
            try lab.inside("p1") { try NativeXDP.detach(programFD: other, from: "eth0") }
            // iproute2 attaches in generic mode what a pin names.
            let bpffs = try mountBPFFilesystem()
            defer { _ = try? Lab.shell("umount \(bpffs)") }
            let pin = bpffs + "/generic"
            try BPF.pin(other, at: pin)
            try Lab.shell("ip -n \(lab.namespace("p1")) link set dev eth0 xdpgeneric pinned \(pin)")
            let generic = try XCTUnwrap(try lab.inside("p1") { NativeXDP.genericProgram(on: "eth0") })
            try checkTheOtherXDPProgram(generic, mode: "generic ")
            try Lab.shell("ip -n \(lab.namespace("p1")) link set dev eth0 xdpgeneric off")
        }
    }

    func checkTheOtherXDPProgram(_ other: UInt32, mode: String) throws {
        let daemon = try lab.start("p1", "second-chance", arguments)
        try lab.waitFor("tc", seconds: Self.startup) { lab.log(of: daemon).contains("fast path: tc on eth0 (program") }
        let log = lab.log(of: daemon)
        XCTAssertTrue(
            log.contains(
                "warning: fast path: another \(mode)XDP program (\(other)) runs on eth0 before the tc program"),
            log)
        let doctor = try lab.runToEnd("p1", "second-chance", ["doctor", "--queue", "0"] + Lab.labPeers).output
        let finding =
            mode.isEmpty
            ? "eth0: another XDP program (\(other)) runs in the driver"
            : "eth0: a generic-mode XDP program (\(other)) runs before"
        XCTAssertTrue(doctor.contains(finding), doctor)
        daemon.terminate()
        daemon.waitUntilExit()
        let left = try lab.inside("p1") {
            mode.isEmpty ? NativeXDP.program(on: "eth0") : NativeXDP.genericProgram(on: "eth0")
        }
        XCTAssertEqual(left, other, "a clean stop leaves it")
        XCTAssertFalse(try filterOnP1().contains("second_chance_f"))
    }

    /// A bpffs of the test's own, which `startUnderTheUnit` puts at the daemon's /sys/fs/bpf.
    func mountBPFFilesystem() throws -> String {
        let bpffs = lab.directory.appendingPathComponent("bpffs").path
        try FileManager.default.createDirectory(atPath: bpffs, withIntermediateDirectories: true)
        try Lab.shell("mount -t bpf bpf \(bpffs)")
        return bpffs
    }

    /// second-chance on p1 with the unit's capabilities, `bpffs` at its /sys/fs/bpf; `base` in
    /// place of the lab's arguments (queue 0).
    func startUnderTheUnit(bpffs: String, base: [String]? = nil, _ extra: [String]) throws -> Process {
        try lab.start(
            "p1", program: "/bin/sh",
            ["-c", "mount --bind \(bpffs) /sys/fs/bpf && exec \"$0\" \"$@\""] + Self.unitCapabilities
                + [Lab.binaries.appendingPathComponent("second-chance").path] + (base ?? arguments) + extra)
    }

    /// Pins where builds before one directory per instance left them (the namespace's, shared by
    /// every instance) name the programs a stopped first instance left deciding on eth0; a second
    /// instance (queue 1) starting on another interface takes them for nothing it may remove:
    /// eth0 keeps its programs through its start and its stop.
    func testWithTheUnitsCapabilitiesAnotherInstanceLeavesWhatTheSharedPinsName() throws {
        let xdp = try XCTUnwrap(KernelRelease.version(of: KernelRelease.current)) >= (5, 12)
        let mode = ["--fast-path", xdp ? "xdp" : "tc"]
        let bpffs = try mountBPFFilesystem()
        defer { _ = try? Lab.shell("umount \(bpffs)") }
        let first = try startUnderTheUnit(bpffs: bpffs, mode + ["--fast-path-stop", "keep"])
        try Lab.waitFor("the first instance", seconds: Self.startup, context: { lab.log(of: first) }) {
            lab.log(of: first).contains("serving queue")
        }
        first.terminate()
        first.waitUntilExit()
        let instance = try Lab.shell("find \(bpffs) -type d -name queue-0").trimmingCharacters(
            in: .whitespacesAndNewlines)
        XCTAssertFalse(instance.isEmpty, lab.log(of: first))
        try Lab.shell("mv \(instance)/* \(instance)/.. && rmdir \(instance)")
        let (filter, program) = (try filterOnP1(), try xdpOnP1())
        XCTAssertTrue(filter.contains("second_chance_f"))
        XCTAssertEqual(program != nil, xdp)

        let p1 = lab.namespace("p1")
        try Lab.shell("ip -n \(p1) link add x9a type veth peer name x9b && ip -n \(p1) link set x9a up")
        try Lab.shell("ip -n \(p1) link set x9b up")
        let control = lab.directory.appendingPathComponent("second.sock").path
        let second = try startUnderTheUnit(
            bpffs: bpffs,
            base: ["run", "--queue", "1", "--self", Lab.p1.description, "--control", control] + Lab.labPeers,
            mode + ["--fast-path-interface", "x9a"])
        try Lab.waitFor("the second instance", seconds: Self.startup, context: { lab.log(of: second) }) {
            lab.log(of: second).contains("serving queue")
        }
        XCTAssertEqual(try filterOnP1(), filter, lab.log(of: second))
        XCTAssertEqual(try xdpOnP1(), program, lab.log(of: second))
        second.terminate()
        second.waitUntilExit()
        XCTAssertEqual(try filterOnP1(), filter, lab.log(of: second))
        XCTAssertEqual(try xdpOnP1(), program, lab.log(of: second))
    }

    /// Pins in a directory another local user made (a bpffs mounted by hand lets anyone make one
    /// at its top) are neither written nor believed; and an XDP attach that fails on one interface
    /// (a bridge runs no native XDP) takes this daemon's program off the others again, by its own
    /// descriptor, which is all the unit's capabilities allow.
    func testWithTheUnitsCapabilitiesNoOneElsesPinsAreBelievedAndAFailedAttachLeavesNoXDP() throws {
        guard try XCTUnwrap(KernelRelease.version(of: KernelRelease.current)) >= (5, 12) else {
            return try checkXDPRefusedUnderTheUnit()
        }
        let bpffs = try mountBPFFilesystem()
        defer { _ = try? Lab.shell("umount \(bpffs)") }
        try Lab.shell(
            "chmod 1777 \(bpffs) && setpriv --reuid=65534 --regid=65534 --clear-groups mkdir -m 777 \(bpffs)/proxyside")
        let daemon = try startUnderTheUnit(bpffs: bpffs, ["--fast-path", "xdp"])
        try lab.waitFor("the daemon", seconds: Self.startup) { lab.log(of: daemon).contains("serving queue") }
        XCTAssertTrue(lab.log(of: daemon).contains("fast path: not pinned"), lab.log(of: daemon))
        XCTAssertEqual(
            try Lab.shell("find \(bpffs)/proxyside -type f | wc -l").trimmingCharacters(in: .whitespacesAndNewlines),
            "0")
        daemon.terminate()
        daemon.waitUntilExit()
        XCTAssertNil(try xdpOnP1())

        try Lab.shell(
            "ip -n \(lab.namespace("p1")) link add br9 type bridge && ip -n \(lab.namespace("p1")) link set br9 up")
        let refused = try startUnderTheUnit(
            bpffs: bpffs, ["--fast-path", "xdp", "--fast-path-interface", "eth0", "--fast-path-interface", "br9"])
        refused.waitUntilExit()
        XCTAssertNotEqual(refused.terminationStatus, 0, lab.log(of: refused))
        XCTAssertTrue(lab.log(of: refused).contains("--fast-path xdp:"), lab.log(of: refused))
        XCTAssertNil(try xdpOnP1(), "all or none: \(lab.log(of: refused))")
        XCTAssertFalse(try filterOnP1().contains("second_chance_f"))
    }

    /// With the unit's capabilities and a bpffs at /sys/fs/bpf (systemd mounts one): a stop that
    /// leaves the programs deciding (--fast-path-stop keep) hands nothing on, and the next start
    /// opens the pins instead: it adopts the maps and replaces the XDP entry point in place.
    func testWithTheUnitsCapabilitiesAStartAfterAKeepingStopTakesThePinnedProgramsOver() throws {
        guard try XCTUnwrap(KernelRelease.version(of: KernelRelease.current)) >= (5, 12) else {
            return try checkXDPRefusedUnderTheUnit()
        }
        let bpffs = try mountBPFFilesystem()
        defer { _ = try? Lab.shell("umount \(bpffs)") }
        func start(_ extra: [String]) throws -> Process {
            let daemon = try startUnderTheUnit(bpffs: bpffs, ["--fast-path", "xdp"] + extra)
            try lab.waitFor("the daemon", seconds: Self.startup) { lab.log(of: daemon).contains("serving queue") }
            return daemon
        }
        let kept = try start(["--fast-path-stop", "keep"])
        XCTAssertTrue(lab.log(of: kept).contains("pinned in /sys/fs/bpf/proxyside"), lab.log(of: kept))
        let original = try XCTUnwrap(try xdpOnP1())
        kept.terminate()
        kept.waitUntilExit()
        XCTAssertEqual(try xdpOnP1(), original, "left deciding")

        let next = try start(["--fast-path-stop", "keep"])
        XCTAssertTrue(lab.log(of: next).contains("maps adopted from program"), lab.log(of: next))
        let replaced = try XCTUnwrap(try xdpOnP1())
        XCTAssertNotEqual(replaced, original, lab.log(of: next))
        next.terminate()
        next.waitUntilExit()

        // Pins where a build before one directory per instance left them, in the namespace's: an
        // upgrade takes them over as well, and leaves none there.
        let instance = try Lab.shell("find \(bpffs) -type d -name queue-0").trimmingCharacters(
            in: .whitespacesAndNewlines)
        XCTAssertFalse(instance.isEmpty)
        try Lab.shell("mv \(instance)/* \(instance)/.. && rmdir \(instance)")
        let upgraded = try start([])
        XCTAssertTrue(lab.log(of: upgraded).contains("maps adopted from program"), lab.log(of: upgraded))
        XCTAssertNotEqual(try xdpOnP1(), replaced, lab.log(of: upgraded))
        XCTAssertEqual(
            try Lab.shell("find \(instance)/.. -maxdepth 1 -type f | wc -l").trimmingCharacters(
                in: .whitespacesAndNewlines), "0")
        upgraded.terminate()
        upgraded.waitUntilExit()
        XCTAssertNil(try xdpOnP1(), "a clean stop removes it")
    }

    /// The shipped unit's capabilities (setpriv's bounding set as the unit's
    /// CapabilityBoundingSet=): without CAP_SYS_ADMIN no program or map opens by id. A re-exec and
    /// a restart after a crash still know the XDP entry point and the tc program they find for
    /// their predecessor's, by the descriptors it handed over (across exec(2), and in the fd
    /// store), adopt its maps and replace both in place; a clean stop removes them.
    func testWithTheUnitsCapabilitiesAReexecAndARestartReplaceXDPAndAStopRemovesIt() throws {
        guard try XCTUnwrap(KernelRelease.version(of: KernelRelease.current)) >= (5, 12) else {
            return try checkXDPRefusedUnderTheUnit()
        }
        let unit = Self.unitCapabilities
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let xdpArguments = arguments + ["--fast-path", "xdp"]
        let first = try lab.start(
            "p1", program: unit[0],
            Array(unit.dropFirst()) + [Lab.binaries.appendingPathComponent("second-chance").path]
                + xdpArguments, environment: ["NOTIFY_SOCKET": manager.path])
        let xdpName = String(FastPathObject.xdpName.prefix(15))
        try manager.collect(seconds: Self.startup) { $0.isReady && $0.storedPrograms[xdpName] != nil }
        // NET_ADMIN, NET_RAW (bits 12, 13), PERFMON, BPF (38, 39), as the unit's daemon has them.
        let capabilities = try Lab.shell("grep CapEff /proc/\(first.processIdentifier)/status")
        XCTAssertTrue(capabilities.contains("000000c000003000"), capabilities)
        let original = try XCTUnwrap(try xdpOnP1())
        let fd = try connectThroughDirector()
        defer { close(fd) }
        echo(fd, 0)
        let before = try lab.stats("p1").value("fast_path_accepted_established")

        kill(first.processIdentifier, SIGUSR1)
        try Lab.waitFor("the re-exec", seconds: Self.reexec, context: { self.lab.log(of: first) }) {
            (try? self.lab.stats("p1"))?["reexecs"] == 1
        }
        let reexecuted = try XCTUnwrap(try xdpOnP1(), lab.log(of: first))
        XCTAssertNotEqual(reexecuted, original, "a new XDP program in the old one's place")
        let log = lab.log(of: first)
        XCTAssertTrue(log.contains("XDP (native) and tc on eth0") && log.contains("after the re-exec"), log)
        for index in 1..<10 { echo(fd, index) }
        XCTAssertGreaterThanOrEqual(
            try lab.stats("p1").value("fast_path_accepted_established"), before + 9, "the maps' counts carried on")

        // A crash: the restart finds the programs and maps in the store.
        try manager.collect(seconds: Self.startup) { $0.storedPrograms[xdpName] == reexecuted }
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        let restartLog = lab.directory.appendingPathComponent("restarted.log").path
        let pid = try manager.restartService(
            "second-chance", xdpArguments, inside: lab.namespace("p1"), log: restartLog, wrapper: unit)
        try lab.waitFor("the restarted daemon", seconds: Self.startup) {
            ((try? String(contentsOfFile: restartLog, encoding: .utf8)) ?? "").contains("serving queue")
        }
        let restarted = (try? String(contentsOfFile: restartLog, encoding: .utf8)) ?? ""
        XCTAssertTrue(
            restarted.contains("maps adopted from program") && restarted.contains("after a restart"), restarted)
        let replaced = try XCTUnwrap(try xdpOnP1())
        XCTAssertNotEqual(replaced, reexecuted, restarted)
        echo(fd, 10)

        kill(pid, SIGTERM)
        XCTAssertEqual(Spawn.wait(pid), 0)
        XCTAssertNil(try xdpOnP1(), "a clean stop removes it")
        XCTAssertFalse(try filterOnP1().contains("second_chance_f"), "and the tc program")
    }

    /// Two instances on one interface (queues 0 and 1): the second takes the filter's place over.
    /// A clean stop of the first leaves the second's program attached and pinned, and the second's
    /// own stop removes it.
    func testACleanStopRemovesOnlyItsOwnProgram() throws {
        let first = try lab.start("p1", "second-chance", arguments)
        try lab.waitFor("the first program", seconds: Self.startup) {
            try self.filterOnP1().contains("second_chance_f")
        }
        let control = lab.directory.appendingPathComponent("p1-queue1.sock").path
        let second = try lab.start(
            "p1", "second-chance",
            ["run", "--queue", "1", "--self", Lab.p1.description, "--control", control] + Lab.labPeers)
        try Lab.waitFor("the second instance", seconds: Self.startup, context: { lab.log(of: second) }) {
            lab.log(of: second).contains("serving queue")
        }
        let secondStatus = try lab.runToEnd("p1", "second-chance", ["stats", "--control", control]).output
        let program = try XCTUnwrap(
            secondStatus.split(separator: "\n").first { $0.hasPrefix("fast_path: ") && $0.contains("tc on") }.flatMap {
                $0.split(separator: " ").drop { $0 != "(program" }.dropFirst().first.map { $0.filter(\.isNumber) }
            }, secondStatus)
        var filter = try filterOnP1()
        XCTAssertTrue(filter.contains("id \(program)"), filter)

        first.terminate()
        first.waitUntilExit()
        filter = try filterOnP1()
        XCTAssertTrue(filter.contains("id \(program)"), "the second's program stays: \(filter)")
        XCTAssertTrue(lab.log(of: first).contains("carry another program now"), lab.log(of: first))
        second.terminate()
        second.waitUntilExit()
        XCTAssertFalse(try filterOnP1().contains("second_chance_f"), "its own stop removes it")
    }

    /// The program parses an Ethernet header: an L3 device (a tun here, as WireGuard or ipip) the
    /// peers' routes leave by is left to the queue, and one named with --fast-path-interface is
    /// refused.
    func testTheProgramAttachesOnlyWhereFramesCarryAnEthernetHeader() throws {
        let p1 = lab.namespace("p1")
        try Lab.shell(
            """
            { test -e /dev/net/tun || modprobe tun; } && \
            ip -n \(p1) tuntap add mode tun name tun9 && ip -n \(p1) addr add 198.18.4.254/24 dev tun9 && \
            ip -n \(p1) link set tun9 up
            """)
        let base = ["run", "--queue", "0", "--self", Lab.p1.description, "--control", lab.controlPath("p1")]
        let daemon = try lab.start("p1", "second-chance", base + ["--allow-source", "198.18.0.0/24,198.18.4.0/24"])
        try lab.waitFor("the daemon", seconds: Self.startup) { lab.log(of: daemon).contains("serving queue") }
        let log = lab.log(of: daemon)
        XCTAssertTrue(log.contains("fast path: tun9 is not an Ethernet device; its GUE is decided from NFQUEUE"), log)
        XCTAssertTrue(log.contains("tc on eth0 (program"), log)
        XCTAssertTrue(try filterOnP1().contains("second_chance_f"))
        let tun = try Lab.shell("ip netns exec \(p1) tc filter show dev tun9 ingress 2>&1 || true")
        XCTAssertFalse(tun.contains("second_chance_f"), tun)
        daemon.terminate()
        daemon.waitUntilExit()

        let named = try lab.start(
            "p1", "second-chance", base + Lab.labPeers + ["--fast-path", "tc", "--fast-path-interface", "tun9"])
        try lab.waitFor("the refusal", seconds: Self.startup) { !named.isRunning }
        XCTAssertNotEqual(named.terminationStatus, 0, lab.log(of: named))
        XCTAssertTrue(lab.log(of: named).contains("tun9 is not an Ethernet device"), lab.log(of: named))
        // What a re-exec runs first: the new image refuses such a configuration before it replaces
        // the running one, and takes one it can attach with.
        let checked = try lab.runToEnd(
            "p1", "second-chance",
            base + Lab.labPeers + ["--fast-path", "tc", "--fast-path-interface", "tun9", "--check"])
        XCTAssertEqual(checked.status, 78, checked.output)
        XCTAssertTrue(checked.output.contains("tun9 is not an Ethernet device"), checked.output)
        let good = try lab.runToEnd(
            "p1", "second-chance",
            base + Lab.labPeers + ["--fast-path", "tc", "--fast-path-interface", "eth0", "--check"])
        XCTAssertEqual(good.status, 0, good.output)
    }

    func testFastPathOffRemovesAProgramAnEarlierDaemonLeft() throws {
        let kept = try lab.start("p1", "second-chance", arguments + ["--fast-path-stop", "keep"])
        try lab.waitFor("the program", seconds: Self.startup) { try self.filterOnP1().contains("second_chance_f") }
        kept.terminate()
        kept.waitUntilExit()
        XCTAssertTrue(try filterOnP1().contains("second_chance_f"), "--fast-path-stop keep leaves it deciding")

        let off = try lab.start("p1", "second-chance", arguments + ["--fast-path", "off"])
        try lab.waitFor("the daemon", seconds: Self.startup) { lab.log(of: off).contains("serving queue") }
        XCTAssertFalse(try filterOnP1().contains("second_chance_f"), "the earlier daemon's program is gone")
        XCTAssertTrue(try lab.stats("p1").isEmpty == false)
        let status = try lab.runToEnd("p1", "second-chance", ["stats", "--control", lab.controlPath("p1")])
        XCTAssertTrue(status.output.contains("fast_path: off (--fast-path off)"), status.output)
    }
}
