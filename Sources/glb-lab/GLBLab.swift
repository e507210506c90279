import ArgumentParser
import CLinuxShims
import Glibc
import Logging
import LabKit
import LinuxSys
import NetTypes
import SecondChance
import SecondChanceCore
import Telemetry

@main
struct GLBLab: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "glb-lab",
        abstract: "Lab tools: a GLB director simulator, an echo service, long-lived clients, an HTTP connection load and a GUE sender.",
        subcommands: [Director.self, Echo.self, Clients.self, HTTPLoad.self, Blast.self, Watch.self, Supervise.self])
}

extension IPv4Address: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

let logger = Logger.process("glb-lab")

struct LabFailure: Error, CustomStringConvertible { let description: String }

func parseHostPort(_ text: String) throws -> (IPAddress, UInt16) {
    var host = Substring(text)
    guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
        throw LabFailure(description: "expected ADDRESS:PORT or [ADDRESS]:PORT, got '\(text)'")
    }
    host = text[..<colon]
    if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
    guard let address = IPAddress(host) else { throw LabFailure(description: "bad address in '\(text)'") }
    return (address, port)
}

/// Reads client packets for the VIPs from NFQUEUE and sends them GUE-encapsulated to the proxies the
/// rendezvous table picks (primary as destination, the rest as hops). SIGHUP re-reads the table.
struct Director: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "GLB director simulator (NFQUEUE in, GUE out).")

    @Option var queue: UInt16 = 1
    @Option(name: .customLong("self"), help: "The director's address: outer source of GUE packets.") var selfAddress: IPv4Address
    @Option(help: "Table file: lines 'PROXY-ADDRESS [active|draining]'.") var table: String
    @Option(help: "Proxies per flow (primary + hops).") var hops: Int = 2

    func run() throws {
        let stop = try EventFD()
        let reload = try EventFD()
        try Signals.install(shutdown: stop, reload: reload)
        var current = try loadTable()
        logger.info("director: \(current.proxies.map { "\($0.address) \($0.state.rawValue)" }.joined(separator: ", "))")
        let queue = try NetfilterQueue(number: queue)
        let sender = try RawIPSender()
        logger.info("director: serving queue \(queue.number)")
        var encapsulated = 0, dropped = 0
        var scratch: [UInt8] = []
        // SIGHUP is seen between packets or when the queue is idle, whichever comes first; either
        // way the reload is logged (tests wait for that line).
        func reloadIfAsked() {
            guard reload.consume() else { return }
            do {
                current = try loadTable()
                logger.info("director: table reloaded: \(current.proxies.map { "\($0.address) \($0.state.rawValue)" }.joined(separator: ", "))")
            } catch { logger.info("director: keeping the old table: \(error)") }
        }
        try queue.run(stop: stop, idle: reloadIfAsked) { packet in
            reloadIfAsked()
            guard let flow = Self.flow(UnsafeRawBufferPointer(packet)) else { dropped += 1; return .drop }
            let hash = RendezvousTable.flowHash(flow)
            let route = current.route(flowHash: hash)
            scratch = PacketBuilder.gue(
                from: selfAddress, to: route[0], sourcePort: UInt16(truncatingIfNeeded: hash) | 0x8000,
                inner: Array(packet), hops: Array(route.dropFirst()))
            scratch.withUnsafeBytes { _ = sender.sendIPv4($0) }
            encapsulated += 1
            return .drop
        }
        logger.info("director: stopped after \(encapsulated) packets (\(dropped) unparsable)")
    }

    func loadTable() throws -> RendezvousTable {
        guard let text = ProcFile.read(table) else { throw LabFailure(description: "cannot read \(table)") }
        return try RendezvousTable.parse(text, maximumHops: hops)
    }

    /// The client flow of a plain IPv4/IPv6 TCP or UDP packet.
    static func flow(_ bytes: UnsafeRawBufferPointer) -> FlowKey? {
        guard bytes.count >= 1 else { return nil }
        if bytes[0] >> 4 == 4, bytes.count >= 24 {
            let ihl = Int(bytes[0] & 0x0f) * 4
            let ports = bytes.count >= ihl + 4 ? (bytes.be16(ihl), bytes.be16(ihl + 2)) : (0, 0)
            return FlowKey(source: IPv4Address(bytes.be32(12)), sourcePort: ports.0, destination: IPv4Address(bytes.be32(16)), destinationPort: ports.1)
        }
        if bytes[0] >> 4 == 6, bytes.count >= 44 {
            return FlowKey(
                source: IPv6Address(high: bytes.be64(8), low: bytes.be64(16)), sourcePort: bytes.be16(40),
                destination: IPv6Address(high: bytes.be64(24), low: bytes.be64(32)), destinationPort: bytes.be16(42))
        }
        return nil
    }
}

/// A TCP echo service: one thread per connection, which is plenty for a lab.
struct Echo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "TCP echo service on ADDRESS:PORT (repeatable).")

    @Option(name: .customLong("listen")) var listens: [String]
    @Option(help: "listen(2) backlog.") var backlog: Int32 = 1024

    func run() throws {
        let stop = try EventFD()
        try Signals.install(shutdown: stop)
        let fds = try listens.map { spec -> Int32 in
            let (address, port) = try parseHostPort(spec)
            return try LabSockets.listenTCP(on: address, port: port, backlog: backlog)
        }
        logger.info("echo: listening on \(listens.joined(separator: ", "))")
        var pollfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) } + [pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0)]
        while true {
            guard poll(&pollfds, nfds_t(pollfds.count), -1) >= 0 || errno == EINTR else { break }
            if pollfds.last!.revents != 0 { break }
            for index in fds.indices where pollfds[index].revents != 0 {
                let client = accept(fds[index], nil, nil)
                guard client >= 0 else { continue }
                _ = try? WorkerThread {
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let count = recv(client, &buffer, buffer.count, 0)
                        if count <= 0 || !SocketAddress.sendAll(client, Array(buffer[0..<count])) { break }
                    }
                    close(client)
                }
            }
        }
    }
}

/// Long-lived clients: each keeps one connection and does an echo round trip every interval,
/// so a connection broken by a table change shows up as a failure.
struct Clients: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Long-lived echo clients; prints per-second totals.")

    @Option var target: String
    @Option var connections: Int = 8
    @Option var seconds: Int = 10
    @Option var intervalMs: Int = 100
    @Option(help: "Open this many new short connections per second too.") var newPerSecond: Int = 0
    @Option(help: "Bind the long-lived connections to this local address...") var source: IPv4Address?
    @Option(help: "...and to consecutive ports from this one.") var firstPort: UInt16 = 0

    func run() throws {
        let (address, port) = try parseHostPort(target)
        var fds = try (0..<connections).map { index -> Int32 in
            guard let source else { return try LabSockets.connectTCP(to: address, port: port) }
            return try LabSockets.connectTCP(to: address, port: port, from: .v4(source), localPort: firstPort &+ UInt16(index))
        }
        // A round trip or a new connection slower than 200 ms waited for a retransmission.
        var roundTrips = 0, failures = 0, newOK = 0, newFailed = 0, slow = 0, newSlow = 0
        let slowNanoseconds: UInt64 = 200_000_000
        let start = MonotonicClock.nanoseconds()
        let end = start + UInt64(seconds) * 1_000_000_000
        var nextNew = start
        var iteration = 0
        while MonotonicClock.nanoseconds() < end {
            for index in fds.indices where fds[index] >= 0 {
                let message = Array("ping \(iteration) \(index)\n".utf8)
                let sent = MonotonicClock.nanoseconds()
                if SocketAddress.sendAll(fds[index], message), LabSockets.receiveExactly(fds[index], message.count) == message {
                    roundTrips += 1
                    if MonotonicClock.nanoseconds() - sent > slowNanoseconds { slow += 1 }
                } else {
                    failures += 1
                    close(fds[index])
                    fds[index] = -1
                }
            }
            while newPerSecond > 0 && MonotonicClock.nanoseconds() >= nextNew {
                nextNew += 1_000_000_000 / UInt64(newPerSecond)
                let opened = MonotonicClock.nanoseconds()
                if let fd = try? LabSockets.connectTCP(to: address, port: port) {
                    let message = Array("new\n".utf8)
                    if SocketAddress.sendAll(fd, message), LabSockets.receiveExactly(fd, message.count) == message {
                        newOK += 1
                        if MonotonicClock.nanoseconds() - opened > slowNanoseconds { newSlow += 1 }
                    } else { newFailed += 1 }
                    close(fd)
                } else { newFailed += 1 }
            }
            iteration += 1
            usleep(UInt32(intervalMs * 1000))
        }
        for fd in fds where fd >= 0 { close(fd) }
        let alive = fds.filter { $0 >= 0 }.count
        print("clients: connections=\(connections) alive=\(alive) round_trips=\(roundTrips) failures=\(failures) slow=\(slow) new_ok=\(newOK) new_failed=\(newFailed) new_slow=\(newSlow)")
        if failures > 0 || newFailed > 0 { throw ExitCode(1) }
    }
}

/// New connections, continuously, each one HTTP request whose answer must be a 200: a connection
/// refused, reset or left unanswered while a server reloads counts as a failure. Bounded in time
/// and in count.
struct HTTPLoad: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "http-load", abstract: "Open new HTTP connections continuously; count failures by kind.")

    @Option var target: String
    @Option(help: "Connections in flight at once (one thread each).") var concurrency: Int = 4
    @Option var seconds: Int = 10
    @Option(help: "Stop after this many connections in all.") var maxConnections: Int = 1_000_000
    @Option(help: "Per-connection timeout.") var timeoutSeconds: Int = 3

    final class Tally: @unchecked Sendable {
        let lock = ThreadLock()
        var counts: [String: Int] = [:]
        func add(_ kind: String) { lock.locked { counts[kind, default: 0] += 1 } }
    }

    func run() throws {
        let (address, port) = try parseHostPort(target)
        let tally = Tally()
        let end = MonotonicClock.nanoseconds() + UInt64(seconds) * 1_000_000_000
        let budget = maxConnections, timeout = timeoutSeconds
        let started = Counter()
        let request = Array("GET / HTTP/1.0\r\nHost: lab\r\n\r\n".utf8)
        let threads = try (0..<max(1, concurrency)).map { _ in
            try WorkerThread {
                while MonotonicClock.nanoseconds() < end && started.next() <= budget {
                    tally.add(Self.attempt(address, port, request, timeout))
                }
            }
        }
        for thread in threads { thread.join() }
        let counts = tally.counts
        let attempts = counts.values.reduce(0, +), ok = counts["ok"] ?? 0
        let kinds = ["refused", "reset", "timeout", "short", "other"].map { "\($0)=\(counts[$0] ?? 0)" }.joined(separator: " ")
        print("http-load: attempts=\(attempts) ok=\(ok) failed=\(attempts - ok) \(kinds) per_second=\(attempts / max(1, seconds))")
    }

    static func attempt(_ address: IPAddress, _ port: UInt16, _ request: [UInt8], _ timeout: Int) -> String {
        let fd: Int32
        do { fd = try LabSockets.connectTCP(to: address, port: port, timeoutSeconds: timeout) } catch let error as SystemError {
            return error.errno == ECONNREFUSED ? "refused" : error.errno == EAGAIN || error.errno == ETIMEDOUT || error.errno == EINPROGRESS ? "timeout" : "other"
        } catch { return "other" }
        defer { close(fd) }
        guard SocketAddress.sendAll(fd, request) else { return errno == ECONNRESET || errno == EPIPE ? "reset" : "other" }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count == 0 { break }
            if count < 0 { return errno == ECONNRESET ? "reset" : errno == EAGAIN ? "timeout" : "other" }
            response += chunk[0..<count]
        }
        let status = String(decoding: response.prefix(12), as: UTF8.self)
        return status.hasPrefix("HTTP/1.") && status.hasSuffix(" 200") ? "ok" : "short"
    }
}

/// A mutex for the few counters threads share.
final class ThreadLock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}

/// Hands out 1, 2, 3, ... across threads.
final class Counter: @unchecked Sendable {
    private let lock = ThreadLock()
    private var value = 0
    func next() -> Int { lock.locked { value += 1; return value } }
}

/// Sends a bounded stream of GUE packets with sendmmsg, for benchmarks.
struct Blast: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send COUNT GUE packets (bounded in count and time) to a proxy.")

    @Option var to: IPv4Address
    @Option var count: Int = 1_000_000
    @Option var maxSeconds: Int = 20
    @Option(help: "syn, ack (flows from --client to the VIP) or forward (same, with --hop as next hop).") var kind: String = "syn"
    @Option(help: "The inner source (IPv4 or IPv6).") var client: String
    @Option(help: "The inner destination, of the client's family.") var vip: String
    @Option var vipPort: UInt16 = 80
    @Option(help: "Client source ports start here; --flows ports are used in turn.") var firstPort: UInt16 = 20000
    @Option var flows: Int = 64
    @Option var hop: IPv4Address?
    @Option(help: "Spoof the client address: flow N comes from --client + (N % this), for SYN floods.") var spoofAddresses: Int = 1
    @Option(help: "Packets per second at most (0: as fast as possible).") var rate: Int = 0

    func run() throws {
        guard (1...40000).contains(flows), count > 0, (1...65536).contains(spoofAddresses), rate >= 0 else {
            throw LabFailure(description: "--flows is 1...40000, --spoof-addresses 1...65536, --count positive, --rate not negative")
        }
        guard let clientAddress = IPAddress(client), let vipAddress = IPAddress(vip) else {
            throw LabFailure(description: "--client and --vip are IPv4 or IPv6 addresses")
        }
        let flags: TCPFlags = kind == "syn" ? .syn : .ack
        var hops: [IPv4Address] = []
        if kind == "forward" {
            guard case .v4(let vip4) = vipAddress else { throw LabFailure(description: "forward needs --hop or an IPv4 --vip") }
            hops = [hop ?? vip4]
        }
        // A real SYN's options, so that the responder's option handling is what gets measured.
        let synOptions: [UInt8] = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]
        let payloads: [[UInt8]] = (0..<flows).map { index in
            let offset = UInt32(index % spoofAddresses)
            let source: IPAddress = switch clientAddress {
            case .v4(let v4): .v4(IPv4Address(v4.value &+ offset))
            case .v6(let v6): .v6(IPv6Address(high: v6.high, low: v6.low &+ UInt64(offset)))
            }
            let inner = PacketBuilder.tcp(
                source: source, sourcePort: firstPort &+ UInt16(index), destination: vipAddress, destinationPort: vipPort,
                flags: flags, sequence: 1000 &+ UInt32(index) &* 7919, acknowledgement: kind == "syn" ? 0 : 1,
                options: kind == "syn" ? synOptions : [])
            return PacketBuilder.guePayload(inner: inner, hops: hops)
        }
        let fd = try LabSockets.bindUDP(.v4(IPv4Address(0)), port: 0)
        defer { close(fd) }
        var destination = sockaddr_in()
        destination.sin_family = sa_family_t(AF_INET)
        destination.sin_port = GUEPacket.port.bigEndian
        destination.sin_addr.s_addr = to.value.bigEndian
        let batch = 64
        let storage = payloads.map { payload -> UnsafeMutableRawBufferPointer in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: payload.count, alignment: 8)
            buffer.copyBytes(from: payload)
            return buffer
        }
        defer { storage.forEach { $0.deallocate() } }
        let destinations = [sockaddr_in](repeating: destination, count: batch)
        var buffers = [UnsafeMutableRawPointer?](repeating: nil, count: batch)
        var lengths = [Int](repeating: 0, count: batch)
        var sent = 0
        let start = MonotonicClock.nanoseconds()
        let deadline = start + UInt64(maxSeconds) * 1_000_000_000
        while sent < count && MonotonicClock.nanoseconds() < deadline {
            if rate > 0 {
                let due = start + UInt64(sent) * 1_000_000_000 / UInt64(rate)
                let now = MonotonicClock.nanoseconds()
                if due > now { usleep(UInt32(min(due - now, 100_000_000) / 1000)); continue }
            }
            let now = min(batch, rate > 0 ? max(1, rate / 100) : batch, count - sent)
            for index in 0..<now {
                let payload = storage[(sent + index) % storage.count]
                buffers[index] = payload.baseAddress
                lengths[index] = payload.count
            }
            let result = proxyside_send_batch_ipv4(fd, destinations, &buffers, &lengths, UInt32(now))
            if result > 0 { sent += Int(result) }
        }
        let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        print("blast: sent=\(sent) milliseconds=\(Int(seconds * 1000)) rate=\(Int(Double(sent) / seconds))")
    }
}

/// Measures a running second-chance the way nfq-baseline measures itself: packets handled and the
/// time from the first to the last, sampled from its control socket every 5 ms.
struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Time a second-chance run from its counters (first to last packet).")

    @Option var control: String
    @Option(help: "Stop after this long without a new packet, once packets have arrived.") var idleMs: Int = 1000
    @Option var maxSeconds: Int = 60

    func total() -> UInt64? {
        guard let text = try? readControlSocket(control) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("total_packets: ") {
            return UInt64(line.dropFirst("total_packets: ".count))
        }
        return nil
    }

    func run() throws {
        guard let start = total() else { throw LabFailure(description: "cannot read \(control)") }
        var last = start
        var firstChange: UInt64?, lastChange: UInt64 = 0
        let deadline = MonotonicClock.nanoseconds() + UInt64(maxSeconds) * 1_000_000_000
        while MonotonicClock.nanoseconds() < deadline {
            usleep(5000)
            let now = MonotonicClock.nanoseconds()
            guard let value = total() else { continue }
            if value != last {
                if firstChange == nil { firstChange = now }
                lastChange = now
                last = value
            } else if firstChange != nil && now - lastChange > UInt64(idleMs) * 1_000_000 {
                break
            }
        }
        let packets = last - start
        let seconds = Double(lastChange - (firstChange ?? lastChange)) / 1e9
        print("second-chance: packets=\(packets) milliseconds=\(Int(seconds * 1000)) rate=\(seconds > 0 ? Int(Double(packets) / seconds) : 0)")
    }
}
