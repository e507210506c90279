import ArgumentParser
import Glibc
import LinuxSys
import NetTypes
import ProxysideArguments
import SecondChance
import SecondChanceCore
import Synchronization
import Telemetry

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Process GUE packets from NFQUEUE.")

    @Option(name: .customLong("queue"), help: "NFQUEUE number; repeat for --queue-balance ranges (one thread each).")
    var queues: [UInt16] = []

    @Option(name: .customLong("self"), help: "This proxy's IPv4 address: the source of forwarded packets.")
    var selfAddress: IPv4Address

    @Option(
        name: .customLong("allow-source"),
        help: ArgumentHelp(
            """
            GUE is read only from these IPv4 prefixes (repeat, or separate with commas): the directors, their health \
            checkers and the proxies. Required; 0.0.0.0/0 hears every host.
            """,
            valueName: "CIDR"),
        transform: parsePrefixes)
    var allowSourceLists: [[IPv4Prefix]] = []
    var allowSources: [IPv4Prefix] { allowSourceLists.flatMap { $0 } }

    @Option(
        name: .customLong("allow-hop"),
        help: ArgumentHelp(
            """
            Packets are forwarded only to next hops in these prefixes (repeat, or separate with commas; default: the \
            --allow-source prefixes). Loopback, multicast and broadcast never are.
            """,
            valueName: "CIDR"),
        transform: parsePrefixes)
    var allowHopLists: [[IPv4Prefix]] = []
    var allowHops: [IPv4Prefix] { allowHopLists.flatMap { $0 } }

    @Option(help: "GUE listing more hops than this is dropped (glb-director lists 1 or 3).")
    var maxHops: UInt8 = PeerPolicy.defaultMaximumHops

    @Option(
        help:
            """
            Packets the kernel holds for each queue while second-chance is busy (NFQA_CFG_QUEUE_MAXLEN); beyond it \
            the kernel drops them, counted in queue_dropped.
            """
    )
    var queueMaxlen: UInt32 = NetfilterQueue.defaultMaximumLength

    @Flag(
        help:
            """
            When a queue is full, the kernel accepts packets instead of dropping them (NFQA_CFG_F_FAIL_OPEN): with \
            fou they are decapsulated unchecked, without fou they reach a closed UDP port and are lost.
            """
    )
    var failOpen = false

    @Option(help: "auto (kernel if fou decapsulates GUE on --gue-port), userspace or kernel.")
    var decap: DecapsulationChoice = .auto

    @Option(help: ArgumentHelp(PacketMark.help, valueName: "mark"))
    var fouMark: PacketMark = .default

    @Option(help: "The GUE UDP port.")
    var guePort: UInt16 = GUEPacket.port

    @Option(help: "Look sockets up in this network namespace (name under /run/netns, or a path).")
    var netns: String?

    @Option(help: "Serve Prometheus metrics on ADDRESS:PORT (IPv4).")
    var metrics: Endpoint?

    @Option(help: "Control socket for `second-chance stats` (default /run/second-chance/queue-FIRST.sock).")
    var control: String?

    @Option(help: "How long a connected flow's lookup is reused, in milliseconds (0: ask the kernel per packet).")
    var flowCacheMs: UInt64 = 1000

    @Option(
        help:
            """
            How long a 'not here' lookup is reused, in milliseconds (0: ask the kernel per packet). A SYN or cookie \
            ACK taken on any queue thread voids it for its flow.
            """
    )
    var negativeCacheMs: UInt64 = 1000

    @Option(
        help:
            """
            How forwarded packets leave: auto (kernel where the host allows it, else raw), raw (a raw socket; \
            needs nothing of the host) or kernel (the kernel forwards the rewritten packet: faster; needs \
            ip_forward=1, accept_local=1 and a forward path that lets it pass, see doctor --forward kernel).
            """
    )
    var forward: ForwardingChoice = .auto

    @Option(
        help:
            """
            Where packets are decided: auto (a tc program decides in the kernel what needs no userspace where it \
            loads and attaches, NFQUEUE the rest; otherwise NFQUEUE alone), tc (the same, or no start), xdp (an XDP \
            program in every interface's driver decides local packets and drops before an skb exists, the tc program \
            the rest; or no start) or off (NFQUEUE alone).
            """
    )
    var fastPath: FastPathChoice = .auto

    @Option(
        help:
            """
            Whether the XDP entry point sends forwards and SYN-cookie answers back out of the interface they arrived \
            on (XDP_TX): auto (where no interface is a veth, whose XDP_TX is lost unless its peer runs an XDP \
            program), on (every veth's peer runs one) or off (tc sends them).
            """
    )
    var xdpForward: XDPForwardChoice = .auto

    @Option(
        name: .customLong("fast-path-interface"),
        help: ArgumentHelp(
            "Attach the tc program at ingress of this interface (repeat; default: the routes' to --allow-source).",
            valueName: "NAME"))
    var fastPathInterfaces: [String] = []

    @Option(
        help: "What a clean stop does with the tc program: detach it, or keep it deciding for the next daemon.")
    var fastPathStop: FastPathStop = .detach

    @Option(help: "Verdicts sent to the kernel per batch at most.")
    var batch: Int = 64

    @Flag(help: "Do not recognise SYN-cookie ACKs (no BPF; also turns the responder off).")
    var noCookieCheck = false

    @Flag(
        help: """
            Read every flag, check what a start checks before it takes the queues (--self is this host's, \
            --netns exists, the durations; with --fast-path tc or xdp, the interfaces and the program's load), print \
            the version line and exit: 0 when a start would go on, 78 when not. A re-exec runs the new file \
            this way first.
            """)
    var check = false

    @Option(
        help:
            """
            SYN-cookie responder: auto (a listener's SYNs are answered while its SYN queue overflows), off, or always \
            (needs net.ipv4.tcp_syncookies=2).
            """
    )
    var synCookies: ResponderMode = .auto

    @Option(help: "Responder: activate when a listener's SYN queue holds this share of its backlog (percent).")
    var cookieActivatePercent: UInt32 = 100

    @Option(help: "Responder: deactivate once the SYN queue stays below this share (percent)...")
    var cookieDeactivatePercent: UInt32 = 50

    @Option(help: "...for this long (milliseconds).")
    var cookieHoldMs: UInt64 = 5000

    @Option(
        help:
            """
            Responder: how often listeners are scanned through sock_diag (milliseconds; overflow counters trigger a \
            scan at once).
            """
    )
    var listenerScanMs: UInt64 = 200

    @Option(
        help:
            """
            Responder: while active, one SYN per listener and interval still goes to the kernel, to keep its overflow \
            mark (milliseconds).
            """
    )
    var cookiePassMs: UInt64 = 1000

    @Option(
        help:
            """
            On a cold start (no queue taken over from an earlier process), look at the host as `doctor` does: off, \
            warn (log what is wrong) or fail (also refuse to start on a failed check).
            """
    )
    var preflight: PreflightChoice = .off

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard !allowSources.isEmpty else {
            throw ValidationError(
                """
                give at least one --allow-source CIDR: the directors and proxies whose GUE is heard (--allow-source \
                0.0.0.0/0 hears every host)
                """
            )
        }
        guard !queues.isEmpty else { throw ValidationError("give at least one --queue") }
        guard (1...NetfilterQueue.maximumLengthLimit).contains(queueMaxlen) else {
            throw ValidationError("--queue-maxlen is 1...\(NetfilterQueue.maximumLengthLimit)")
        }
        // Every duration is multiplied into nanoseconds: refuse what would overflow, and what no one means.
        _ = try durations()
        guard Set(queues).count == queues.count else { throw ValidationError("a --queue is given twice") }
        guard (1...NetfilterQueue.maximumBatch).contains(batch) else {
            throw ValidationError("--batch is 1...\(NetfilterQueue.maximumBatch)")
        }
        if let metrics, metrics.ipv4 == nil { throw ValidationError("--metrics takes an IPv4 ADDRESS:PORT") }
        guard cookieDeactivatePercent <= cookieActivatePercent, (1...100).contains(cookieActivatePercent) else {
            throw ValidationError("--cookie-activate-percent is 1...100 and at least --cookie-deactivate-percent")
        }
        guard listenerScanMs >= 10, cookiePassMs >= 10 else {
            throw ValidationError("--listener-scan-ms and --cookie-pass-ms are at least 10")
        }
    }

    /// The operator's durations in nanoseconds, each refused above a day (an hour for the caches).
    func durations() throws -> (flowCache: UInt64, negativeCache: UInt64, hold: UInt64, scan: UInt64, pass: UInt64) {
        let hour: UInt64 = 3_600_000, day: UInt64 = 86_400_000
        return (
            try nanoseconds(milliseconds: flowCacheMs, "--flow-cache-ms", limit: hour),
            try nanoseconds(milliseconds: negativeCacheMs, "--negative-cache-ms", limit: hour),
            try nanoseconds(milliseconds: cookieHoldMs, "--cookie-hold-ms", limit: day),
            try nanoseconds(milliseconds: listenerScanMs, "--listener-scan-ms", limit: day),
            try nanoseconds(milliseconds: cookiePassMs, "--cookie-pass-ms", limit: day)
        )
    }

    /// The SYN-cookie responder's monitor, unless the plan has it off.
    func makeMonitor(mode: ResponderMode) throws -> ListenerMonitor? {
        guard mode != .off else { return nil }
        var policy = OverflowPolicy()
        policy.activatePercent = cookieActivatePercent
        policy.deactivatePercent = cookieDeactivatePercent
        let durations = try durations()
        policy.holdNanoseconds = durations.hold
        let configuration = ResponderConfiguration(
            mode: mode, policy: policy, scanIntervalNanoseconds: durations.scan,
            passIntervalNanoseconds: durations.pass)
        let monitor = try ListenerMonitor(configuration: configuration, namespace: netns, logger: logger)
        if monitor.settings.syncookies == 1 && !monitor.settings.timestampsEncodable {
            logger.info(
                """
                note: net.ipv4.tcp_timestamps=\(monitor.settings.timestamps): cookie handshakes from the \
                responder carry no timestamp, so no window scaling or SACK (set it to 2 to keep them)
                """
            )
        }
        return monitor
    }

    /// What `--preflight` found; throws on a failed check under `fail`.
    func runPreflight(host: HostSnapshot) throws {
        let checks = Doctor.checks(
            options(keptForwarding: nil), host: host, queues: queues, netns: netns, maximumHops: maxHops)
        for check in checks where check.level == .warn || check.level == .fail {
            logger.warning("preflight: \(check.line)")
        }
        let failed = checks.filter { $0.level == .fail && $0.blocksStart }
        if preflight == .fail && !failed.isEmpty {
            logger.error(
                "preflight: \(failed.count) check(s) failed (see above, or run second-chance doctor); not starting")
            // EX_CONFIG: the unit does not restart into the same host (RestartPreventExitStatus=).
            throw ExitCode(Self.configurationExitStatus)
        }
        logger.info("preflight: \(checks.count) checks, \(failed.count) failed")
    }

    /// Serves; a start that fails after being handed stored queues lets them go: kept in the
    /// service manager's store they would stay bound, read by nobody, through every restart that
    /// fails the same way, so `--queue-bypass` would never apply and the packets the fast path
    /// sends up would wait and be dropped.
    func run() throws {
        LineLogHandler.setThreshold(logging.logLevel)
        if check { return try checkConfiguration() }
        let environment = ProgramImage.environment()
        let stored = Handover(environment: environment).names.filter { $0.hasPrefix("nfqueue-") }.sorted()
        let serving = Atomic<Bool>(false)
        do {
            try serve(serving: serving)
        } catch {
            // Only a start that never served: a failure after that (a queue thread's error) ends
            // a daemon whose queue the next start takes over, with what waits in it.
            guard !stored.isEmpty, !serving.load(ordering: .acquiring),
                let notifier = SDNotify(environment: environment)
            else { throw error }
            logger.error(
                """
                not starting (\(error)); letting the stored queue socket(s) go so that --queue-bypass applies \
                until a start succeeds: \(stored.joined(separator: ", "))
                """)
            for name in stored {
                notifier.removeStored(name: name, reportingTo: logger)
            }
            throw error
        }
    }

    /// Forwarded packets leave with --self as their source: it must be this host's own.
    func requireSelfAddress() throws {
        guard try LocalAddressWatcher.dump().ipv4.contains(selfAddress) else {
            throw CommandFailure("--self \(selfAddress) is not an address of this host")
        }
    }

    /// `--check`: what `serve` refuses before it takes any queue, without taking one.
    func checkConfiguration() throws {
        do {
            _ = try durations()
            try requireSelfAddress()
            if let netns { _ = try NetworkNamespace(nameOrPath: netns) }
            if fastPath.mustLoad { try checkFastPath() }
            // What would refuse a start: --forward kernel on a host that does not forward, the
            // responder's `always` without its programs. The firewall's rules only sway `auto`,
            // which never refuses, and are not dumped here (the check has 5 s).
            // Only `always` refuses without the cookie programs: they are loaded for it alone.
            let options = options(keptForwarding: .raw)
            let oracle = synCookies == .always ? loadOracle() : .failure(HostSnapshot.Failure("not needed"))
            _ = try plan(options, host: readHost(options, oracle: oracle, all: false))
        } catch {
            StandardError.write("Error: \(error)\n")
            throw ExitCode(Self.configurationExitStatus)
        }
        print(ProgramImage.versionLine("second-chance"))
    }

    /// `--fast-path tc` or `xdp` fails a start that cannot attach: the interfaces must be there and parse as
    /// Ethernet, and the kernel's verifier must take this image's program (loaded, then let go).
    /// `auto` would go on without it.
    func checkFastPath() throws {
        let interfaces = FastPath.interfaces(
            named: fastPathInterfaces, peerInterfaces: PeerInterfaces.of(allowSources)
        ).attach
        guard !interfaces.isEmpty else { throw CommandFailure("--fast-path \(fastPath): no interface to attach to") }
        for interface in interfaces where try !NetworkInterface.isEthernet(interface) {
            throw CommandFailure("--fast-path \(fastPath): \(interface) is not an Ethernet device")
        }
        do {
            _ = try FastPathObject(xdp: fastPath == .xdp)
        } catch {
            throw CommandFailure("--fast-path \(fastPath): \((error as? FastPathError)?.explained ?? "\(error)")")
        }
    }

    /// The flags that choose the daemon's modes (`doctor` takes the same).
    func options(keptForwarding: ForwardingMode?) -> DaemonOptions {
        var options = DaemonOptions()
        (options.decap, options.forward, options.synCookies) = (decap, forward, synCookies)
        (options.checkCookies, options.guePort) = (!noCookieCheck, guePort)
        (options.allowSources, options.fastPathInterfaces) = (allowSources, fastPathInterfaces)
        (options.fastPath, options.keptForwarding, options.fouMark) = (fastPath, keptForwarding, fouMark)
        return options
    }

    /// The parts of the host these options need, or all of it (`all`: a cold start's preflight
    /// reads it once, for the plan and the preflight alike); the cookie helpers as `oracle` loaded.
    func readHost(_ options: DaemonOptions, oracle: Result<SynCookieOracle, HostSnapshot.Failure>, all: Bool)
        -> HostSnapshot
    {
        let parts = all ? .all : DaemonPlan.parts(for: options).subtracting(.cookieHelpers)
        var host = HostSnapshot.read(parts, port: guePort, peers: allowSources, namespace: netns)
        host.cookieHelpers = oracle.map { _ in () }
        return host
    }

    /// The modes, chosen from the flags and the host, or the refusal as the command's failure.
    func plan(_ options: DaemonOptions, host: HostSnapshot) throws -> DaemonPlan {
        try DaemonPlan.make(options, host: host)
    }

    /// The cookie programs (one set; each queue thread loads its own), unless --no-cookie-check.
    func loadOracle() -> Result<SynCookieOracle, HostSnapshot.Failure> {
        guard !noCookieCheck else { return .failure(HostSnapshot.Failure("--no-cookie-check")) }
        return Result { try SynCookieOracle() }.mapError { HostSnapshot.Failure("\($0)") }
    }

    /// Everything a start says about its choices before it serves.
    func logChoices(_ plan: DaemonPlan, oracle: Result<SynCookieOracle, HostSnapshot.Failure>) {
        for line in plan.lines { logger.info("\(line)") }
        if case .failure(let failure) = oracle, !noCookieCheck {
            logger.warning("warning: SYN-cookie ACKs will not be recognised from the queue: \(failure)")
            if synCookies != .off && plan.responder == .off {
                logger.warning("warning: SYN-cookie responder off: no BPF cookie programs")
            }
        }
        if allowSources.contains(.everything) {
            logger.warning(
                """
                warning: --allow-source 0.0.0.0/0: GUE from any host is read, and any host that can reach UDP \
                \(guePort) chooses where this proxy forwards (within --allow-hop)
                """
            )
        }
    }

    /// The address watcher, once --self is known to be this host's.
    func makeWatcher(peers: PeerPolicy) throws -> LocalAddressWatcher {
        try requireSelfAddress()
        let namespaces: [NetworkNamespace?] = [nil] + (try netns.map { [try NetworkNamespace(nameOrPath: $0)] } ?? [])
        return try LocalAddressWatcher(namespaces: namespaces, peers: peers.sources.prefixes, logger: logger)
    }

    /// One worker per queue, each taking over its stored queue socket, if any.
    func makeWorkers(
        configuration: SecondChanceConfiguration, watcher: LocalAddressWatcher, oracle: SynCookieOracle?,
        monitor: ListenerMonitor?, handover: inout Handover
    ) throws -> [SecondChanceWorker] {
        // Each queue thread gets its own programs: a test run uses one scratch buffer per oracle.
        let epochs = FlowEpochs()
        return try queues.enumerated().map { index, queue in
            let threadOracle = index == 0 ? oracle : try oracle.map { _ in try SynCookieOracle() }
            return try SecondChanceWorker(
                queueNumber: queue, adopting: handover.claim(Handover.queueName(queue)),
                configuration: configuration, addresses: watcher.board, reversePaths: watcher.reversePaths,
                oracle: threadOracle, monitor: monitor, epochs: epochs)
        }
    }

    /// Each queue's count of restarts that found packets an earlier reader died with, kept across
    /// restarts under its own name.
    func installReplayGuards(_ workers: [SecondChanceWorker], handover: inout Handover) throws -> [(
        fd: Int32, name: String
    )] {
        try workers.map { worker in
            let name = ReplayGuard.storeName(queue: worker.queue.number)
            let counter: EventFD
            if let stored = handover.claim(name) {
                counter = try EventFD(adopting: stored)
            } else {
                counter = try EventFD()
            }
            worker.queue.replayGuard = ReplayGuard(counter: counter)
            return (counter.fd, name)
        }
    }

    func serve(serving: borrowing Atomic<Bool>) throws {
        let started = ContinuousClock.now
        let environment = ProgramImage.environment()
        var handover = Handover(environment: environment)
        let oracle = loadOracle()
        let options = options(keptForwarding: handover.keptForwarding)
        // A restart that takes the stored queue over skips the preflight: packets wait meanwhile,
        // and a rule dump of a large firewall is not what they should wait for.
        let preflightNow = preflight != .off && handover.coldStart(queues: queues.map(Handover.queueName))
        let host = readHost(options, oracle: oracle, all: preflightNow)
        let plan = try plan(options, host: host)
        logChoices(plan, oracle: oracle)
        let peers = PeerPolicy(sources: allowSources, hops: allowHops.isEmpty ? nil : allowHops, maximumHops: maxHops)
        let watcher = try makeWatcher(peers: peers)
        let durations = try durations()
        let configuration = SecondChanceConfiguration(
            selfAddress: selfAddress, peers: peers, decapsulation: plan.decapsulation, namespace: netns,
            cacheLifetimeNanoseconds: durations.flowCache, negativeCacheLifetimeNanoseconds: durations.negativeCache,
            batchSize: batch, checkCookies: !noCookieCheck, forwarding: plan.forwarding,
            queueMaximumLength: queueMaxlen, failOpen: failOpen, fouMark: fouMark)
        if preflightNow {
            try runPreflight(host: host)
        } else if preflight != .off {
            logger.info("preflight: skipped (taking over a bound queue)")
        }
        Handover.clearEnvironment()
        let signals = try DaemonSignals()
        var monitor = try makeMonitor(mode: plan.responder)
        if monitor != nil, (try? oracle.get()) != nil {
            logger.info(
                configuration.forwarding == .kernel
                    ? "SYN-cookie responder: IPv4 SYN-ACKs replace their SYN in its verdict (the kernel forwards them)"
                    : "SYN-cookie responder: SYN-ACKs leave through the raw socket")
        }
        let workers = try makeWorkers(
            configuration: configuration, watcher: watcher, oracle: try? oracle.get(), monitor: monitor,
            handover: &handover)
        let kernelPath = try startFastPath(
            peers: peers, peerInterfaces: plan.peerInterfaces, addresses: watcher.board,
            reversePaths: watcher.reversePaths, responder: monitor, handover: &handover)
        if monitor != nil, kernelPath.path == nil, (try? oracle.get()) == nil {
            logger.warning("warning: SYN-cookie responder off: neither the tc program nor the cookie programs loaded")
            monitor = nil
        }
        let replayCounters = try installReplayGuards(workers, handover: &handover)
        let report = DaemonReport(
            workers: workers, kernelPath: kernelPath, monitor: monitor, configuration: configuration,
            image: ImageReport(
                version: ProxysideVersion.number, build: ProgramImage.build, reexecs: handover.reexecs,
                adoptedQueues: workers.filter(\.queue.adopted).count, decapsulation: plan.decapsulation.rawValue,
                forwarding: plan.forwarding.rawValue, fastPath: kernelPath.path?.hook ?? "off",
                failOpen: configuration.failOpen))
        var endpoints = DaemonEndpoints(
            controlPath: control ?? defaultControlPath(queue: queues[0]), metrics: metrics, fastPathStop: fastPathStop)
        endpoints.startupSeconds = Int((ContinuousClock.now - started).components.seconds)
        let daemon = try QueueDaemon(
            endpoints: endpoints, plan: plan, queues: try QueueThreads(workers: workers, daemonStop: signals.stop),
            replayCounters: replayCounters, watcher: watcher, monitor: monitor, report: report, signals: signals,
            handover: &handover, environment: environment, logger: logger)
        try daemon.start()
        announce(peers: peers, local: watcher.addresses, adopted: report.image.adoptedQueues, daemon: daemon)
        serving.store(true, ordering: .releasing)
        try? daemon.notifier?.send("READY=1\nSTATUS=serving queue(s) \(queues.map(String.init).joined(separator: ","))")
        try daemon.serveUntilStopped()
    }

    /// The log's account of a start that now serves.
    func announce(peers: PeerPolicy, local: LocalAddresses, adopted: Int, daemon: QueueDaemon) {
        let sources = peers.sources.prefixes.map(\.description).joined(separator: ",")
        let hops = peers.hops.prefixes.map(\.description).joined(separator: ",")
        let metricsURL = metrics.map { ", metrics http://\($0)/metrics" } ?? ""
        logger.info(
            """
            serving queue(s) \(queues.map(String.init).joined(separator: ",")) as \(selfAddress), control \
            \(daemon.controlPath); hearing \(sources), hops \(hops); delivering to \(local.ipv4.count) IPv4 and \
            \(local.ipv6.count) IPv6 local addresses\(metricsURL)
            """
        )
        let took = adopted > 0 ? "; took over \(adopted) bound queue socket(s) with what they held" : ""
        logger.info("\(ProgramImage.versionLine("second-chance") + took)")
    }

    /// The fast path (tc, and XDP beside it), as `--fast-path` asks: attached, or why not (said once).
    func startFastPath(
        peers: PeerPolicy, peerInterfaces: [String], addresses: LocalAddressBoard, reversePaths: ReversePathBoard,
        responder: ListenerMonitor?, handover: inout Handover
    ) throws
        -> (path: FastPath?, status: String)
    {
        let candidates = fastPathInterfaces.isEmpty ? peerInterfaces : fastPathInterfaces
        let pins = FastPath.defaultPinDirectory(queue: queues[0])
        // What an earlier process attached: this one replaces or removes it, with its own descriptors.
        let handles = FastPathHandles.inherited(from: &handover, pinDirectory: pins)
        if xdpForward == .on, fastPath.xdp == .none {
            logger.warning("warning: --xdp-forward on does nothing with --fast-path \(fastPath): no XDP program runs")
        }
        guard fastPath != .off else {
            // A filter an earlier process kept (--fast-path-stop keep, or a crash) must not decide for this one.
            FastPath.remove(interfaces: candidates, pinDirectory: pins, handles: handles, logger: logger)
            logger.info("fast path: off (--fast-path off); every packet is decided from NFQUEUE")
            return (nil, "off (--fast-path off)")
        }
        let (interfaces, notEthernet) = FastPath.interfaces(named: fastPathInterfaces, peerInterfaces: peerInterfaces)
        for interface in notEthernet {
            logger.info("fast path: \(interface) is not an Ethernet device; its GUE is decided from NFQUEUE")
        }
        let settings = FastPathSettings(
            selfAddress: selfAddress, peers: peers, guePort: guePort, checkCookies: !noCookieCheck,
            lookupsElsewhere: netns != nil)
        do {
            let path = try FastPath(
                settings: settings, local: addresses.snapshot().value, reversePaths: reversePaths.snapshot().value,
                interfaces: interfaces, xdp: fastPath.xdp, xdpForward: xdpForward, pinDirectory: pins, handles: handles,
                logger: logger)
            // Stored at once: a start that fails from here on (or a crash) leaves the next one
            // the descriptors of what is attached, not of what this one replaced.
            let notifier = SDNotify(environment: ProgramImage.environment())
            let stored = notifier?.replaceStored(
                path.handedOn, name: FastPathHandles.storeName, watched: false, reportingTo: logger)
            if stored == false {
                logger.warning("warning: fast path: a restart after a crash may not find these programs for its own")
            }
            // From now on the watcher writes every change into the maps as it publishes it; one that
            // came between the first write and this reaches them here.
            addresses.observe { path.addressesChanged($1, generation: $0, logger: logger) }
            let current = addresses.snapshot()
            path.addressesChanged(current.value, generation: current.generation, logger: logger)
            reversePaths.observe { path.reversePathsChanged($1, generation: $0, logger: logger) }
            let ways = reversePaths.snapshot()
            path.reversePathsChanged(ways.value, generation: ways.generation, logger: logger)
            if let responder {
                let interval = responder.configuration.passIntervalNanoseconds
                responder.board.observe { snapshot, records in
                    path.responderChanged(
                        snapshot, records: records, passIntervalNanoseconds: interval, logger: logger)
                }
                responder.countOwnCookies { path.cookiesSent() }
            }
            let how = path.adoptedFrom == nil ? "" : (handover.reexecuted ? " after the re-exec" : " after a restart")
            logger.info("fast path: \(path.summary)\(how); NFQUEUE decides what it sends up")
            return (path, path.summary)
        } catch {
            // A program an earlier daemon left must not go on deciding with maps nobody keeps current.
            FastPath.remove(interfaces: candidates, pinDirectory: pins, handles: handles, logger: logger)
            let why = (error as? FastPathError)?.explained ?? "\(error)"
            guard fastPath == .auto else { throw CommandFailure("--fast-path \(fastPath): \(why)") }
            logger.warning("warning: fast path off, every packet is decided from NFQUEUE: \(why)")
            return (nil, "off (\(error))")
        }
    }

    /// The exit status of a failed preflight (sysexits' EX_CONFIG).
    static let configurationExitStatus: Int32 = 78
}
