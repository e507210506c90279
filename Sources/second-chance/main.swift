import ArgumentParser
import Glibc
import ProxysideCore
import ProxysideSystem

@main
struct SecondChance: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "second-chance",
        abstract: "Gives GLB GUE packets a second chance: take them here if this host owns the flow, else forward them to the next hop.",
        subcommands: [Run.self, Stats.self, Doctor.self])
}

func log(_ message: String) {
    FileHandleStandardError.write("second-chance: \(message)\n")
}

enum FileHandleStandardError {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = Glibc.write(2, &bytes, bytes.count)
    }
}

struct ValidationFailure: Error, CustomStringConvertible {
    let description: String
}

extension IPv4Address: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

func defaultControlPath(queue: UInt16) -> String { "/run/second-chance/queue-\(queue).sock" }

/// One or more prefixes, comma-separated (so one environment variable can carry a list).
func parsePrefixes(_ text: String) throws -> [IPv4Prefix] {
    try text.split(separator: ",", omittingEmptySubsequences: false).map { part in
        guard let prefix = IPv4Prefix(part) else {
            throw ValidationError("'\(part)' is not an IPv4 prefix (ADDRESS/LENGTH with no host bits set, or one ADDRESS)")
        }
        return prefix
    }
}

/// An operator's milliseconds in nanoseconds, refused above `limit` instead of overflowing.
func nanoseconds(milliseconds value: UInt64, _ flag: String, limit: UInt64) throws -> UInt64 {
    guard value <= limit else { throw ValidationError("\(flag) is at most \(limit)") }
    return value * 1_000_000
}

func parseEndpoint(_ text: String) throws -> (IPv4Address, UInt16) {
    guard let colon = text.lastIndex(of: ":"), let address = IPv4Address(text[..<colon]),
        let port = UInt16(text[text.index(after: colon)...])
    else { throw ValidationFailure(description: "expected ADDRESS:PORT, got '\(text)'") }
    return (address, port)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Process GUE packets from NFQUEUE.")

    @Option(name: .customLong("queue"), help: "NFQUEUE number; repeat for --queue-balance ranges (one thread each).")
    var queues: [UInt16] = []

    @Option(name: .customLong("self"), help: "This proxy's IPv4 address: the source of forwarded packets.")
    var selfAddress: IPv4Address

    @Option(name: .customLong("allow-source"),
            help: ArgumentHelp("GUE is read only from these IPv4 prefixes (repeat, or separate with commas): the directors, their health checkers and the proxies. Required; 0.0.0.0/0 hears every host.", valueName: "CIDR"),
            transform: parsePrefixes)
    var allowSourceLists: [[IPv4Prefix]] = []
    var allowSources: [IPv4Prefix] { allowSourceLists.flatMap { $0 } }

    @Option(name: .customLong("allow-hop"),
            help: ArgumentHelp("Packets are forwarded only to next hops in these prefixes (repeat, or separate with commas; default: the --allow-source prefixes). Loopback, multicast and broadcast never are.", valueName: "CIDR"),
            transform: parsePrefixes)
    var allowHopLists: [[IPv4Prefix]] = []
    var allowHops: [IPv4Prefix] { allowHopLists.flatMap { $0 } }

    @Option(help: "GUE listing more hops than this is dropped (glb-director lists 1 or 3).")
    var maxHops: UInt8 = PeerPolicy.defaultMaximumHops

    @Option(help: "Packets the kernel holds for each queue while second-chance is busy (NFQA_CFG_QUEUE_MAXLEN); beyond it the kernel drops them, counted in queue_dropped.")
    var queueMaxlen: UInt32 = 8192

    @Flag(help: "When a queue is full, the kernel accepts packets instead of dropping them (NFQA_CFG_F_FAIL_OPEN): with fou they are decapsulated unchecked, without fou they reach a closed UDP port and are lost.")
    var failOpen = false

    @Option(help: "auto (kernel if fou decapsulates GUE on --gue-port), userspace or kernel.")
    var decap: String = "auto"

    @Option(help: "The GUE UDP port.")
    var guePort: UInt16 = GUEPacket.port

    @Option(help: "Look sockets up in this network namespace (name under /run/netns, or a path).")
    var netns: String?

    @Option(help: "Serve Prometheus metrics on ADDRESS:PORT.")
    var metrics: String?

    @Option(help: "Control socket for `second-chance stats` (default /run/second-chance/queue-FIRST.sock).")
    var control: String?

    @Option(help: "How long a connected flow's lookup is reused, in milliseconds (0: ask the kernel per packet).")
    var flowCacheMs: UInt64 = 1000

    @Option(help: "How long a 'not here' lookup is reused, in milliseconds (0: ask the kernel per packet). A SYN or cookie ACK taken on any queue thread voids it for its flow.")
    var negativeCacheMs: UInt64 = 1000

    @Option(help: "How forwarded packets leave: raw (a raw socket; needs nothing of the host) or kernel (the kernel forwards the rewritten packet: faster; needs ip_forward=1 and accept_local=1, see doctor --forward kernel).")
    var forward: String = "raw"

    @Option(help: "Verdicts sent to the kernel per batch at most.")
    var batch: Int = 64

    @Flag(help: "Do not recognise SYN-cookie ACKs (no BPF; also turns the responder off).")
    var noCookieCheck = false

    @Option(help: "SYN-cookie responder: auto (a listener's SYNs are answered while its SYN queue overflows), off, or always (needs net.ipv4.tcp_syncookies=2).")
    var synCookies: String = "auto"

    @Option(help: "Responder: activate when a listener's SYN queue holds this share of its backlog (percent).")
    var cookieActivatePercent: UInt32 = 100

    @Option(help: "Responder: deactivate once the SYN queue stays below this share (percent)...")
    var cookieDeactivatePercent: UInt32 = 50

    @Option(help: "...for this long (milliseconds).")
    var cookieHoldMs: UInt64 = 5000

    @Option(help: "Responder: how often listeners are scanned through sock_diag (milliseconds; overflow counters trigger a scan at once).")
    var listenerScanMs: UInt64 = 200

    @Option(help: "Responder: while active, one SYN per listener and interval still goes to the kernel, to keep its overflow mark (milliseconds).")
    var cookiePassMs: UInt64 = 1000

    func validate() throws {
        guard !allowSources.isEmpty else {
            throw ValidationError("give at least one --allow-source CIDR: the directors and proxies whose GUE is heard (--allow-source 0.0.0.0/0 hears every host)")
        }
        guard !queues.isEmpty else { throw ValidationError("give at least one --queue") }
        guard queueMaxlen >= 1 else { throw ValidationError("--queue-maxlen is at least 1") }
        // Every duration is multiplied into nanoseconds: refuse what would overflow, and what no one means.
        _ = try durations()
        guard Set(queues).count == queues.count else { throw ValidationError("a --queue is given twice") }
        guard ["auto", "userspace", "kernel"].contains(decap) else { throw ValidationError("--decap is auto, userspace or kernel") }
        guard ForwardingMode(rawValue: forward) != nil else { throw ValidationError("--forward is raw or kernel") }
        guard (1...NetfilterQueue.maximumBatch).contains(batch) else { throw ValidationError("--batch is 1...\(NetfilterQueue.maximumBatch)") }
        if let metrics { _ = try parseEndpoint(metrics) }
        guard ResponderMode(rawValue: synCookies) != nil else { throw ValidationError("--syn-cookies is auto, off or always") }
        guard cookieDeactivatePercent <= cookieActivatePercent, (1...100).contains(cookieActivatePercent) else {
            throw ValidationError("--cookie-activate-percent is 1...100 and at least --cookie-deactivate-percent")
        }
        guard listenerScanMs >= 10, cookiePassMs >= 10 else { throw ValidationError("--listener-scan-ms and --cookie-pass-ms are at least 10") }
    }

    /// The operator's durations in nanoseconds, each refused above a day (an hour for the caches).
    func durations() throws -> (flowCache: UInt64, negativeCache: UInt64, hold: UInt64, scan: UInt64, pass: UInt64) {
        let hour: UInt64 = 3_600_000, day: UInt64 = 86_400_000
        return (try nanoseconds(milliseconds: flowCacheMs, "--flow-cache-ms", limit: hour),
                try nanoseconds(milliseconds: negativeCacheMs, "--negative-cache-ms", limit: hour),
                try nanoseconds(milliseconds: cookieHoldMs, "--cookie-hold-ms", limit: day),
                try nanoseconds(milliseconds: listenerScanMs, "--listener-scan-ms", limit: day),
                try nanoseconds(milliseconds: cookiePassMs, "--cookie-pass-ms", limit: day))
    }

    /// The SYN-cookie responder's monitor, unless it is off or cannot work here.
    func makeMonitor(oracle: SynCookieOracle?) throws -> ListenerMonitor? {
        var mode = ResponderMode(rawValue: synCookies)!
        if mode != .off && oracle == nil {
            guard mode == .auto else { throw ValidationFailure(description: "--syn-cookies always needs the BPF cookie programs (see the warning above)") }
            log("warning: SYN-cookie responder off: no BPF cookie programs")
            mode = .off
        }
        guard mode != .off else { return nil }
        var policy = OverflowPolicy()
        policy.activatePercent = cookieActivatePercent
        policy.deactivatePercent = cookieDeactivatePercent
        let durations = try durations()
        policy.holdNanoseconds = durations.hold
        let configuration = ResponderConfiguration(mode: mode, policy: policy, scanIntervalNanoseconds: durations.scan,
                                                   passIntervalNanoseconds: durations.pass)
        do {
            let monitor = try ListenerMonitor(configuration: configuration, namespace: netns, log: { log($0) })
            if monitor.settings.syncookies == 1 && !monitor.settings.timestampsEncodable {
                log("note: net.ipv4.tcp_timestamps=\(monitor.settings.timestamps): cookie handshakes from the responder carry no timestamp, so no window scaling or SACK (set it to 2 to keep them)")
            }
            return monitor
        } catch {
            throw ValidationFailure(description: "\(error)")
        }
    }

    func run() throws {
        let mode: DecapsulationMode
        switch decap {
        case "kernel": mode = .kernel
        case "userspace": mode = .userspace
        default:
            let fou = (try? FouStatus.query(port: guePort)) ?? .unavailable
            mode = fou == .gue ? .kernel : .userspace
            log("decapsulation: \(mode.rawValue) (\(fou))")
        }
        var oracle: SynCookieOracle?
        if !noCookieCheck {
            do { oracle = try SynCookieOracle() } catch {
                log("warning: SYN-cookie ACKs will not be recognised: \(error)")
            }
        }
        let forwarding = ForwardingMode(rawValue: forward)!
        if forwarding == .kernel {
            let problems = HostChecks.kernelForwarding().filter { $0.level == .fail }
            guard problems.isEmpty else {
                throw ValidationFailure(description: "--forward kernel: " + problems.map(\.line).joined(separator: "\n"))
            }
        }
        if allowSources.contains(.everything) {
            log("warning: --allow-source 0.0.0.0/0: GUE from any host is read, and any host that can reach UDP \(guePort) chooses where this proxy forwards (within --allow-hop)")
        }
        let peers = PeerPolicy(sources: allowSources, hops: allowHops.isEmpty ? nil : allowHops, maximumHops: maxHops)
        let watcher: LocalAddressWatcher
        do {
            // Forwarded packets leave with --self as their source: it must be this host's own.
            guard try LocalAddressWatcher.dump().ipv4.contains(selfAddress) else {
                throw ValidationFailure(description: "--self \(selfAddress) is not an address of this host")
            }
            let namespaces: [NetworkNamespace?] = [nil] + (try netns.map { [try NetworkNamespace(nameOrPath: $0)] } ?? [])
            watcher = try LocalAddressWatcher(namespaces: namespaces, log: { log($0) })
        } catch let error as ValidationFailure {
            throw error
        } catch {
            throw ValidationFailure(description: "\(error)")
        }
        let durations = try durations()
        let configuration = SecondChanceConfiguration(
            selfAddress: selfAddress, peers: peers, decapsulation: mode, namespace: netns,
            cacheLifetimeNanoseconds: durations.flowCache, negativeCacheLifetimeNanoseconds: durations.negativeCache,
            batchSize: batch, checkCookies: !noCookieCheck, forwarding: forwarding, queueMaximumLength: queueMaxlen, failOpen: failOpen)

        let stop = try EventFD()
        try Signals.install(shutdown: stop)
        let monitor = try makeMonitor(oracle: configuration.checkCookies ? oracle : nil)
        let workers: [SecondChanceWorker]
        do {
            // Each queue thread gets its own programs: a test run uses one scratch buffer per oracle.
            let epochs = FlowEpochs()
            workers = try queues.enumerated().map { index, queue in
                let threadOracle = index == 0 ? oracle : try oracle.map { _ in try SynCookieOracle() }
                return try SecondChanceWorker(queueNumber: queue, configuration: configuration, addresses: watcher.board, oracle: threadOracle,
                                              monitor: monitor, epochs: epochs)
            }
        } catch {
            throw ValidationFailure(description: "\(error)")
        }

        let controlPath = control ?? defaultControlPath(queue: queues[0])
        if let slash = controlPath.lastIndex(of: "/"), slash != controlPath.startIndex {
            mkdir(String(controlPath[..<slash]), 0o755)
        }
        let server = try StatsServer(metrics: try metrics.map(parseEndpoint), controlPath: controlPath) { format in
            let values = CounterBlock.sum(workers.map(\.counters))
            let kernel = ProcFile.kernelQueueStatistics()
            let queues = workers.map { worker in
                QueueReport(queue: worker.queue.number, packets: worker.counters.value(.total),
                            receiveErrors: worker.queue.receiveErrors.load(ordering: .relaxed), kernel: kernel[worker.queue.number])
            }
            switch format {
            case .prometheus: return CounterReport.prometheus(values, queues: queues) + (monitor.map(ResponderReport.prometheus) ?? "")
            case .text: return CounterReport.text(values, queues: queues) + (monitor.map(ResponderReport.text) ?? "")
            }
        }
        let serverThread = try WorkerThread { server.serve(stop: stop) }
        let monitorThread = try monitor.map { monitor in try WorkerThread { monitor.run(stop: stop) } }
        let watcherThread = try WorkerThread { watcher.run(stop: stop) }
        let local = watcher.addresses
        log("serving queue(s) \(queues.map(String.init).joined(separator: ",")) as \(selfAddress), control \(controlPath)"
            + "; hearing \(peers.sources.prefixes.map(\.description).joined(separator: ",")), hops \(peers.hops.prefixes.map(\.description).joined(separator: ","))"
            + "; delivering to \(local.ipv4.count) IPv4 and \(local.ipv6.count) IPv6 local addresses"
            + (metrics.map { ", metrics http://\($0)/metrics" } ?? ""))

        let failures = FailureList()
        let threads = try workers.map { worker in
            try WorkerThread {
                do { try worker.run(stop: stop) } catch {
                    failures.append("queue \(worker.queue.number): \(error)")
                    stop.signal()
                }
            }
        }
        threads.forEach { $0.join() }
        stop.signal()
        serverThread.join()
        monitorThread?.join()
        watcherThread.join()
        if let failure = failures.first { throw ValidationFailure(description: failure) }
        log("stopped; all read packets answered")
    }
}

/// Errors reported by worker threads.
final class FailureList: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var items: [String] = []
    init() { pthread_mutex_init(&lock, nil) }
    func append(_ item: String) {
        pthread_mutex_lock(&lock)
        items.append(item)
        pthread_mutex_unlock(&lock)
    }
    var first: String? {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return items.first
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a running daemon's counters.")

    @Option(help: "The daemon's first queue (to find its default control socket).")
    var queue: UInt16 = 0

    @Option(help: "The daemon's control socket.")
    var control: String?

    func run() throws {
        do {
            print(try readControlSocket(control ?? defaultControlPath(queue: queue)), terminator: "")
        } catch {
            throw ValidationFailure(description: "\(error)")
        }
    }
}

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check this host's setup and say how to fix what is wrong.")

    @Option(name: .customLong("queue")) var queues: [UInt16] = [0]
    @Option var guePort: UInt16 = GUEPacket.port
    @Option var netns: String?
    @Option(help: "The forwarding mode to check the host for: raw or kernel.") var forward: String = "raw"
    @Option(name: .customLong("allow-source"), help: ArgumentHelp("The daemon's --allow-source, to check it too.", valueName: "CIDR"),
            transform: parsePrefixes)
    var allowSourceLists: [[IPv4Prefix]] = []

    func run() throws {
        guard let mode = ForwardingMode(rawValue: forward) else { throw ValidationError("--forward is raw or kernel") }
        let checks = HostChecks.run(port: guePort, queues: queues, namespace: netns, forwarding: mode,
                                    allowedSources: allowSourceLists.isEmpty ? nil : allowSourceLists.flatMap { $0 })
        for check in checks { print(check.line) }
        if checks.contains(where: { $0.level == .fail }) { throw ExitCode(1) }
    }
}
