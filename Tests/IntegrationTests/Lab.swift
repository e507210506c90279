import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import Telemetry
import XCTest

/// The lab topology (examples/lab/topology.sh) with second-chance and echo services on both proxies.
/// Everything it starts is stopped and its namespaces deleted in `tearDown`, also after a failure.
final class Lab {
    static let client = IPv4Address("198.18.0.1")!
    static let director = IPv4Address("198.18.0.2")!
    static let p1 = IPv4Address("198.18.0.11")!
    static let p2 = IPv4Address("198.18.0.12")!
    static let vip = IPv4Address("198.19.0.10")!
    static let client6 = IPv6Address("2001:2::1")!
    static let vip6 = IPv6Address("2001:2:0:ff::10")!
    /// Most tests send GUE from the client (and extra client addresses) as if it were the director:
    /// the whole lab subnet is a peer for them. The trust-boundary tests name the real peers.
    static let labPeers = ["--allow-source", "198.18.0.0/24"]
    /// The suite runs once with the daemons' default (the tc fast path) and once with
    /// PROXYSIDE_FAST_PATH=off (NFQUEUE alone); tests of the queue itself say --fast-path off.
    static let fastPathChoice =
        ProcessInfo.processInfo.environment["PROXYSIDE_FAST_PATH"].map { ["--fast-path", $0] } ?? []
    static var fastPathOn: Bool { ProcessInfo.processInfo.environment["PROXYSIDE_FAST_PATH"] != "off" }
    /// The kernel lab runs suites again on Debian's kernels with what this machine lacks:
    /// PROXYSIDE_FOU=1 sets the proxies up for kernel decapsulation (fou on the GUE port, tunl0 and
    /// sit0 up), and the daemons' `--decap auto` must then choose it; PROXYSIDE_RULES=nft replaces
    /// the topology's iptables rules with the shipped examples/iptables/proxyside.nft.
    static var kernelDecapsulation: Bool { ProcessInfo.processInfo.environment["PROXYSIDE_FOU"] == "1" }
    static var nftRules: Bool { ProcessInfo.processInfo.environment["PROXYSIDE_RULES"] == "nft" }

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    /// Where `swift build` put the executables: beside the test bundle, unless PROXYSIDE_BIN says otherwise.
    static var binaries: URL {
        if let path = ProcessInfo.processInfo.environment["PROXYSIDE_BIN"] { return URL(fileURLWithPath: path) }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    let prefix: String
    let directory: URL
    private(set) var processes: [(name: String, process: Process, log: URL)] = []

    init(prefix: String) throws {
        // A test that cannot run fails, saying why: a skip would pass for a test that never ran.
        guard geteuid() == 0 else {
            throw LabError("needs root for network namespaces and NFQUEUE (scripts/test.sh runs as root)")
        }
        // scripts/test.sh removes what an interrupted run left by this shape of name.
        precondition(Lab.isTestPrefix(prefix), "a lab's prefix is ps and two letters: \(prefix)")
        self.prefix = prefix
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("proxyside-\(prefix)-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        // Tests send GUE from the client too; the daemons' --allow-source decides (Lab.labPeers).
        try Lab.shell(
            "LAB_PEERS=198.18.0.0/24 " + Lab.packageRoot.appendingPathComponent("examples/lab/topology.sh").path
                + " up \(prefix)")
        for proxy in ["p1", "p2"] {
            let ns = "\(prefix)-\(proxy)"
            if Lab.nftRules {
                // The shipped file, unchanged, then its set filled in as its comment asks (its
                // example peers replaced by the whole lab subnet, as the topology's iptables rules allow).
                let rules = Lab.packageRoot.appendingPathComponent("examples/iptables/proxyside.nft").path
                try Lab.shell(
                    """
                    ip netns exec \(ns) iptables -t raw -F PREROUTING && ip netns exec \(ns) nft -f \(rules) && \
                    ip netns exec \(ns) nft flush set ip proxyside glb_peers && \
                    ip netns exec \(ns) nft add element ip proxyside glb_peers '{ 198.18.0.0/24 }'
                    """)
            }
            if Lab.kernelDecapsulation {
                // glb-director's proxy setup: fou hands IPv4 to tunl0 and IPv6 to sit0, which must be up.
                try Lab.shell(
                    """
                    ip -n \(ns) fou add port \(GUEPacket.port) gue && ip -n \(ns) link set tunl0 up && \
                    ip -n \(ns) link set sit0 up && \
                    ip netns exec \(ns) sysctl -qw net.ipv4.conf.tunl0.rp_filter=0 net.ipv4.conf.all.rp_filter=0
                    """)
            }
        }
    }

    func namespace(_ host: String) -> String { "\(prefix)-\(host)" }

    /// "ps" and two lowercase letters: the names scripts/test.sh cleans up after an interrupted run.
    static func isTestPrefix(_ prefix: String) -> Bool {
        prefix.count == 4 && prefix.hasPrefix("ps") && prefix.dropFirst(2).allSatisfy { ("a"..."z").contains($0) }
    }

    /// A counter of the host's /proc/net/snmp (Tcp, Ip) or netstat (TcpExt) by its name.
    func tcpExtOrIP(_ host: String, _ name: String) throws -> UInt64 {
        try inside(host) {
            for (file, section) in [("snmp", "Tcp"), ("snmp", "Ip"), ("netstat", "TcpExt")] {
                let text = try String(contentsOfFile: "/proc/thread-self/net/\(file)", encoding: .utf8)
                if let value = ProcFile.counter(name, section: section, in: text) { return value }
            }
            throw LabError("no counter \(name)")
        }
    }

    func controlPath(_ host: String) -> String { directory.appendingPathComponent("\(host).sock").path }

    /// Starts a binary from the build inside a host's namespace.
    @discardableResult
    func start(_ host: String, _ binary: String, _ arguments: [String], environment: [String: String]? = nil) throws
        -> Process
    {
        try start(host, program: Lab.binaries.appendingPathComponent(binary).path, arguments, environment: environment)
    }

    /// Starts the program at `path` inside a host's namespace; it is named by its file name.
    @discardableResult
    func start(_ host: String, program path: String, _ arguments: [String], environment: [String: String]? = nil) throws
        -> Process
    {
        let binary = URL(fileURLWithPath: path).lastPathComponent
        let log = directory.appendingPathComponent("\(host)-\(binary)-\(processes.count).log")
        let process = try Lab.launch(inside: namespace(host), [path] + arguments, log: log, environment: environment)
        processes.append((host + " " + binary, process, log))
        return process
    }

    /// Runs `command` in a network namespace, its output (both streams) in `log`.
    static func launch(inside namespace: String, _ command: [String], log: URL, environment: [String: String]? = nil)
        throws -> Process
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip", "netns", "exec", namespace] + command
        if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    /// GET over HTTP/1.0 from the calling thread's namespace: the whole response, headers included.
    static func httpGet(_ address: IPAddress, port: UInt16, path: String = "/metrics") throws -> String {
        let fd = try LabSockets.connectTCP(to: address, port: port)
        defer { close(fd) }
        _ = SocketIO.sendAll(fd, Array("GET \(path) HTTP/1.0\r\n\r\n".utf8))
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            out += buffer[0..<count]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Runs a binary from the build inside a host's namespace to its end: (exit status, output).
    func runToEnd(_ host: String, _ binary: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = try start(host, binary, arguments)
        process.waitUntilExit()
        return (process.terminationStatus, log(of: process))
    }

    func startSecondChance(_ host: String, _ selfAddress: IPv4Address, extra: [String] = []) throws {
        try? FileManager.default.removeItem(atPath: controlPath(host))
        let daemon = try start(
            host, "second-chance",
            ["run", "--queue", "0", "--self", selfAddress.description, "--control", controlPath(host)]
                + (extra.contains("--allow-source") ? [] : Lab.labPeers)
                + (extra.contains("--fast-path") ? [] : Lab.fastPathChoice) + extra)
        // A daemon that refused to start fails the wait at once; either way its log says why.
        try Lab.waitFor("second-chance control socket on \(host)", seconds: 10, context: { self.log(of: daemon) }) {
            guard daemon.isRunning else { throw LabError("second-chance on \(host) exited: \(self.log(of: daemon))") }
            return FileManager.default.fileExists(atPath: self.controlPath(host))
        }
        if Lab.kernelDecapsulation && !extra.contains("--decap") {
            let log = processes.filter { $0.name == "\(host) second-chance" }.map { self.log(of: $0.process) }.joined()
            guard log.contains("decapsulation: kernel") else {
                throw LabError("with fou on the port, --decap auto did not choose the kernel: \(log)")
            }
        }
    }

    /// Every route of the host's eth0 advertises at most these MSS values (advmss).
    func clampRoutes(_ host: String, ipv4: Int, ipv6: Int) throws {
        for (family, mss) in [("-4", ipv4), ("-6", ipv6)] {
            try Lab.shell(
                """
                ip -n \(namespace(host)) \(family) route show dev eth0 | while read -r route; do \
                    ip -n \(namespace(host)) \(family) route change $route dev eth0 advmss \(mss); done
                """)
        }
    }

    /// Sends `signal` to the host's second-chance and waits until it has exited.
    func stopSecondChance(_ host: String, signal: Int32 = SIGTERM) throws {
        for entry in processes where entry.name == "\(host) second-chance" && entry.process.isRunning {
            // `ip netns exec` execs the daemon: the process is the daemon itself.
            kill(entry.process.processIdentifier, signal)
            try Lab.waitFor("second-chance on \(host) to exit", seconds: 10) { !entry.process.isRunning }
        }
    }

    /// Stops the host's second-chance and starts it again with `extra` flags.
    func restartSecondChance(_ host: String, _ selfAddress: IPv4Address, extra: [String]) throws {
        for entry in processes where entry.name == "\(host) second-chance" && entry.process.isRunning {
            entry.process.terminate()
            entry.process.waitUntilExit()
        }
        try startSecondChance(host, selfAddress, extra: extra)
    }

    /// Both proxies as most tests want them: an echo service on the VIP and second-chance on each.
    func startProxies(extra: [String] = []) throws {
        for host in ["p1", "p2"] { try startEcho(host) }
        try startSecondChance("p1", Lab.p1, extra: extra)
        try startSecondChance("p2", Lab.p2, extra: extra)
    }

    func startEcho(_ host: String) throws {
        try start(host, "glb-lab", ["echo", "--listen", "\(Lab.vip):80", "--listen", "[\(Lab.vip6)]:80"])
    }

    func log(of process: Process) -> String {
        guard let entry = processes.first(where: { $0.process === process }) else { return "" }
        return (try? String(contentsOf: entry.log, encoding: .utf8)) ?? ""
    }

    /// A TcpExt counter of `host`'s namespace (its /proc/net/netstat).
    func tcpExt(_ name: String, _ host: String = "p1") throws -> UInt64 {
        let text = try inside(host) { try String(contentsOfFile: "/proc/thread-self/net/netstat", encoding: .utf8) }
        return try XCTUnwrap(ProcFile.counter(name, section: "TcpExt", in: text), name)
    }

    /// Counters of a proxy's second-chance, by short name.
    func stats(_ host: String) throws -> [String: UInt64] {
        try stats(fromControl: controlPath(host))
    }

    /// Counters from the control socket at `path`, by short name.
    func stats(fromControl path: String) throws -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for line in try readControlSocket(path).split(separator: "\n") {
            let parts = line.split(separator: ":")
            if parts.count == 2, let value = UInt64(parts[1].trimmingCharacters(in: .whitespaces)) {
                out[String(parts[0])] = value
            }
        }
        return out
    }

    /// Asserts a proxy's counters once they settle: a daemon counts a packet just after sending or
    /// accepting it, so a test that has seen the packet may read the counter a moment early.
    func assertStats(
        _ host: String, _ expected: [String: UInt64], file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let deadline = Lab.deadline(after: 2)
        var stats = try stats(host)
        while Date() < deadline, expected.contains(where: { stats[$0.key] ?? 0 != $0.value }) {
            usleep(20_000)
            stats = try self.stats(host)
        }
        // On a mismatch, every counter that moved: where the packets went instead.
        let moved = stats.filter { $0.value != 0 }.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        for (name, value) in expected.sorted(by: { $0.key < $1.key }) {
            XCTAssertEqual(
                stats[name] ?? 0, value, "\(host) \(name); moved: \(moved.joined(separator: " "))", file: file,
                line: line)
        }
    }

    /// Runs `body` on this thread inside a host's namespace; sockets made there stay there.
    func inside<T>(_ host: String, _ body: () throws -> T) throws -> T {
        try NetworkNamespace(nameOrPath: namespace(host)).run(body)
    }

    func tearDown() {
        for entry in processes where entry.process.isRunning {
            entry.process.terminate()
        }
        for entry in processes {
            let deadline = Lab.deadline(after: 5)
            while entry.process.isRunning && Date() < deadline { usleep(20_000) }
            if entry.process.isRunning { kill(entry.process.processIdentifier, SIGKILL) }
        }
        _ = try? Lab.shell(Lab.packageRoot.appendingPathComponent("examples/lab/topology.sh").path + " down \(prefix)")
        try? FileManager.default.removeItem(at: directory)
    }

    @discardableResult
    /// The link address of eth0 in `namespace` (aa:bb:cc:dd:ee:ff), as `ip -br link` shows it.
    static func linkAddress(in namespace: String) throws -> String {
        String(try shell("ip -n \(namespace) -br link show eth0").split(separator: " ").filter { !$0.isEmpty }[2])
    }

    static func shell(_ command: String) throws -> String {
        let (status, output) = try run("/bin/bash", ["-c", command])
        guard status == 0 else { throw LabError("`\(command)` failed (\(status)): \(output)") }
        return output
    }

    /// Runs `path` to its end in the test's own namespace: (exit status, both streams).
    static func run(_ path: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (
        status: Int32, output: String
    ) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if let environment { process.environment = environment }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    func waitFor(_ what: String, seconds: Double = 5, _ condition: () throws -> Bool) throws {
        try Lab.waitFor(what, seconds: seconds, condition)
    }

    /// How many times longer than here a wait may take. The kernel lab's guests run in software
    /// emulation, 10 to 20 times slower than this machine (`bindkeeper haproxy` has HAProxy
    /// running in 0.3 s here, 4-5 s there, against a 10 s wait), and `scripts/kernel-lab.sh` sets
    /// PROXYSIDE_WAIT_SCALE there. A wait bounds what should happen; it never measures it.
    static let waitScale =
        ProcessInfo.processInfo.environment["PROXYSIDE_WAIT_SCALE"].flatMap(Double.init).map {
            min(max($0, 1), 20)
        } ?? 1

    /// The end of a wait of `seconds` here: every wait in the tests ends at one of these, so that
    /// `waitScale` lengthens them all alike.
    static func deadline(after seconds: Double) -> Date { Date().addingTimeInterval(seconds * waitScale) }

    /// Polls `condition` every 20 ms, for `seconds` (times `waitScale`); the error names `what`
    /// and, when given, `context` (logs).
    static func waitFor(_ what: String, seconds: Double, context: () -> String = { "" }, _ condition: () throws -> Bool)
        throws
    {
        let deadline = deadline(after: seconds)
        while Date() < deadline {
            if try condition() { return }
            usleep(20_000)
        }
        throw LabError("timed out waiting for \(what)\n\(context())")
    }
}

extension Dictionary where Key == String, Value == UInt64 {
    /// A counter that must be there: its absence fails the test with the counters seen, instead of
    /// crashing the test process as a force-unwrap would.
    func value(_ name: String) throws -> UInt64 {
        guard let value = self[name] else { throw LabError("no counter \(name) in \(self)") }
        return value
    }
}

/// SIGSTOP, and wait until the process has really stopped: kill(2) returns before a process running
/// on another core is stopped, and it may read a packet or two meanwhile.
func stopProcess(_ pid: pid_t) throws {
    kill(pid, SIGSTOP)
    try Lab.waitFor("process \(pid) to stop", seconds: 5) {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        return stat.split(separator: ")").last?.split(separator: " ").first == "T"
    }
}

/// accept(2) that gives up after `seconds`: a test waiting for a connection that never comes fails
/// instead of hanging the suite.
func acceptConnection(_ listener: Int32, within seconds: Int32 = 5) throws -> Int32 {
    var ready = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
    let milliseconds = Int32(Lab.deadline(after: Double(seconds)).timeIntervalSinceNow * 1000)
    guard poll(&ready, 1, milliseconds) == 1 else { throw LabError("no connection to accept within \(seconds) s") }
    let fd = accept(listener, nil, nil)
    guard fd >= 0 else { throw LabError("accept: \(String(cString: strerror(errno)))") }
    return fd
}

struct LabError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A raw socket that sees copies of every packet of one IP protocol arriving in a namespace.
final class Capture {
    let fd: Int32
    let ipv6: Bool

    init(protocol proto: Int32, ipv6: Bool = false) throws {
        self.ipv6 = ipv6
        fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_RAW.rawValue), proto)
        guard fd >= 0 else { throw SystemError("raw socket") }
        SocketOptions.setTimeouts(fd, seconds: 1)
    }

    deinit { close(fd) }

    /// The first packet (IPv4: whole packet; IPv6: transport only, as the kernel gives it) that
    /// satisfies `match` within `seconds`.
    func first(within seconds: Double = 3, where match: ([UInt8]) -> Bool) -> [UInt8]? {
        let deadline = Lab.deadline(after: seconds)
        var buffer = [UInt8](repeating: 0, count: 65536)
        while Date() < deadline {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count > 0 {
                let packet = Array(buffer[0..<count])
                if match(packet) { return packet }
            }
        }
        return nil
    }

    /// Everything captured so far.
    func drain() -> [[UInt8]] {
        var out: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count <= 0 { return out }
            out.append(Array(buffer[0..<count]))
        }
    }
}

extension Array where Element == UInt8 {
    /// TCP fields of an IPv4 packet: (source, sourcePort, destination, destinationPort, flags, seq, ack,
    /// payloadLength).
    var ipv4TCP: (IPv4Address, UInt16, IPv4Address, UInt16, TCPFlags, UInt32, UInt32, Int)? {
        guard count >= 40, self[0] >> 4 == 4, self[9] == 6 else { return nil }
        let ihl = Int(self[0] & 0x0f) * 4
        guard count >= ihl + 20 else { return nil }
        let dataOffset = Int(self[ihl + 12] >> 4) * 4
        let payload = Int(be16(2)) - ihl - dataOffset
        return (
            IPv4Address(be32(12)), be16(ihl), IPv4Address(be32(16)), be16(ihl + 2), TCPFlags(rawValue: self[ihl + 13]),
            be32(ihl + 4), be32(ihl + 8), payload
        )
    }
}

extension Lab {
    static let outsideP1 = "198.18.3.11", outsideX = "198.18.3.1"

    /// An outside host X on a second link of P1's (xb; X's end is xa), carrying P1's default route,
    /// with the director's address as well: it sends what a spoofer elsewhere would. `tearDown`
    /// leaves it; the test removes namespace "x".
    func addOutsideHost() throws {
        let p1 = namespace("p1"), outside = namespace("x")
        try Lab.shell(
            """
            ip netns add \(outside) && ip -n \(outside) link set lo up && \
            ip -n \(outside) link add xa type veth peer name xb netns \(p1) && \
            ip -n \(outside) addr add \(Lab.outsideX)/24 dev xa && \
            ip -n \(outside) addr add \(Lab.director)/32 dev xa && \
            ip -n \(outside) link set xa up && ip -n \(p1) addr add \(Lab.outsideP1)/24 dev xb && \
            ip -n \(p1) link set xb up && ip -n \(p1) route add default via \(Lab.outsideX) dev xb && \
            ip -n \(outside) route add \(Lab.p1)/32 dev xa && ip -n \(outside) neigh replace \(Lab.p1) dev xa lladdr \
            $(ip -n \(p1) -o link show xb | sed 's/.*link.ether \\([^ ]*\\).*/\\1/')
            """)
    }
}

/// Sends GUE payloads from the client's namespace, as a director would (UDP to port 19523).
func sendGUE(
    _ lab: Lab, from host: String = "c", source: IPv4Address = Lab.client, sourcePort: UInt16, to proxy: IPv4Address,
    inner: [UInt8], hops: [IPv4Address], nextHop: UInt8 = 0, zeroChecksum: Bool = false, zeroCopy: Bool = false
) throws {
    try sendUDP(
        lab, from: host, source: source, sourcePort: sourcePort, to: proxy,
        payload: PacketBuilder.guePayload(inner: inner, hops: hops, nextHop: nextHop), zeroChecksum: zeroChecksum,
        zeroCopy: zeroCopy)
}

/// With `zeroCopy` (MSG_ZEROCOPY), the datagram's payload stays in the sender's pages: the skb
/// carries its headers alone in its linear part, the rest in page fragments, as many NICs deliver.
func sendUDP(
    _ lab: Lab, from host: String = "c", source: IPv4Address = Lab.client, sourcePort: UInt16, to proxy: IPv4Address,
    payload: [UInt8], zeroChecksum: Bool = false, zeroCopy: Bool = false
) throws {
    try lab.inside(host) {
        let fd = try LabSockets.bindUDP(.v4(source), port: sourcePort)
        defer { close(fd) }
        var one: Int32 = 1
        if zeroChecksum { setsockopt(fd, SOL_SOCKET, SO_NO_CHECK, &one, socklen_t(MemoryLayout<Int32>.size)) }
        let soZeroCopy: Int32 = 60, msgZeroCopy: Int32 = 0x400_0000  // asm-generic/socket.h, linux/socket.h
        if zeroCopy, setsockopt(fd, SOL_SOCKET, soZeroCopy, &one, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            throw SystemError("SO_ZEROCOPY")
        }
        let sent = SocketAddress(.v4(proxy), port: GUEPacket.port).withSockaddr { address, length in
            payload.withUnsafeBytes {
                sendto(fd, $0.baseAddress, $0.count, zeroCopy ? msgZeroCopy : 0, address, length)
            }
        }
        guard sent == payload.count else { throw SystemError("sendto GUE") }
    }
}
