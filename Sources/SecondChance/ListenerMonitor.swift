import CMnl
import Glibc
import LinuxSys
import Logging
import NetTypes
import SecondChanceCore
import Synchronization
import Telemetry

public struct ResponderConfiguration: Sendable {
    public var mode: ResponderMode
    public var policy: OverflowPolicy
    public var scanIntervalNanoseconds: UInt64
    /// While active, one SYN per listener and interval (per queue thread) still reaches the kernel,
    /// which answers it with its own cookie while the queue is full and so keeps its overflow mark.
    public var passIntervalNanoseconds: UInt64

    public init(
        mode: ResponderMode = .auto, policy: OverflowPolicy = OverflowPolicy(),
        scanIntervalNanoseconds: UInt64 = 200_000_000, passIntervalNanoseconds: UInt64 = 1_000_000_000
    ) {
        self.mode = mode
        self.policy = policy
        self.scanIntervalNanoseconds = scanIntervalNanoseconds
        self.passIntervalNanoseconds = passIntervalNanoseconds
    }
}

/// Watches the namespace's listeners through sock_diag and publishes the ones whose SYN queue
/// overflows (or all of them, in `always` mode). The netns counters of SYN-queue overflow make it
/// scan at once instead of waiting for the next interval.
///
/// `@unchecked Sendable`: the tracker, the settings and the readers belong to the thread that runs
/// `run` (and `init`); other threads read only `board`, `configuration` and `kernelCounter`, which
/// are immutable or atomic.
public final class ListenerMonitor: @unchecked Sendable {
    public let board = ResponderBoard()
    public let configuration: ResponderConfiguration
    private let sockDiag: SockDiag
    private let settingsReader: TCPSettingsReader
    private let netstatFD: Int32
    /// Route and link changes: the reply routes are read again (at most once a second).
    private let routeEvents: OpaquePointer
    private let namespace: NetworkNamespace?
    private var replyRoutes = ReplyRoutes()
    private var replyRoutesStale = true
    private var replyRoutesRead: UInt64 = 0
    /// Listeners' TCP_MAXSEG, by the tc object's probe (nil where it cannot load), read again
    /// every `userMSSLifetime`.
    private let probe: ListenerProbe?
    private var userMSS: [ListenerKey: (value: UInt16, read: UInt64)] = [:]
    /// Listeners the responder would serve but leaves to the kernel for their DSCP (logged once).
    private var markedListeners: Set<ListenerKey> = []
    private var markedLog = LogBudget(linesPerSecond: 1)
    static let userMSSLifetime: UInt64 = 10_000_000_000
    static let replyRoutesLifetime: UInt64 = 30_000_000_000
    private var tracker: ListenerOverflowTracker
    private var overflowSignal = OverflowSignal()
    /// The fast path's cookies sent (FP_COOKIES_SENT), once it runs: their share of the kernel's
    /// TCPReqQFullDoCookies is no news (`OverflowSignal`).
    private let ownCookies = Mutex<(@Sendable () -> UInt64?)?>(nil)
    /// SYN queues are to be counted at the next scan that succeeds: from the start (a queue may
    /// have filled before the daemon started, and no counter rise after) and after every rise.
    private var requestsUncounted = true
    private let logger: Logger
    public private(set) var settings: TCPHostSettings
    /// Listeners the responder would serve but has no record for (past `maximumRecords`), at the last scan.
    private var unservedListeners = 0
    /// TcpExt counters exported with the metrics (read on every poll).
    public static let kernelCounters = [
        "TCPReqQFullDoCookies", "TCPReqQFullDrop", "ListenOverflows", "SyncookiesSent", "SyncookiesRecv",
        "SyncookiesFailed",
    ]
    private let kernelValues = AtomicWords(count: kernelCounters.count)
    private let completedScans = Atomic<UInt64>(0)
    private let completedWalks = Atomic<UInt64>(0)

    public init(configuration: ResponderConfiguration, namespace: String?, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        let namespace = try namespace.map { try NetworkNamespace(nameOrPath: $0) }
        self.namespace = namespace
        // Netconf too: ignore_routes_with_linkdown changes which routes the kernel's output
        // takes (and which a dump calls dead) with no route event.
        let netconf = [RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF].reduce(UInt32(0)) { $0 | 1 << ($1.rawValue - 1) }
        routeEvents = try Netlink.open(
            NETLINK_ROUTE, name: "NETLINK_ROUTE",
            groups: UInt32(RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE) | netconf, namespace: namespace)
        let events = mnl_socket_get_fd(routeEvents)
        _ = fcntl(events, F_SETFL, fcntl(events, F_GETFL) | O_NONBLOCK)
        sockDiag = try SockDiag(namespace: namespace)
        do {
            probe = try ListenerProbe(namespace: namespace)
        } catch {
            probe = nil
            logger.warning(
                "warning: cannot load the listener probe (\(error)); cookie SYN-ACKs ignore listeners' TCP_MAXSEG")
        }
        settingsReader = try TCPSettingsReader(namespace: namespace)
        netstatFD = try namespace.run { open("/proc/thread-self/net/netstat", O_RDONLY | O_CLOEXEC) }
        guard netstatFD >= 0 else { throw SystemError("open /proc/net/netstat") }
        settings = settingsReader.read()
        for path in settingsReader.unreadable {
            logger.warning("warning: cannot read \(path); the responder assumes the kernel's default")
        }
        tracker = ListenerOverflowTracker(
            policy: configuration.policy, kernelNeedsOverflowMark: settings.syncookies != 2)
        if configuration.mode == .always && settings.syncookies != 2 {
            throw SystemError(
                "--syn-cookies always", errno: EINVAL,
                hint:
                    """
                    the kernel accepts cookies for listeners that did not overflow only with \
                    net.ipv4.tcp_syncookies=2 (now \(settings.syncookies))
                    """
            )
        }
        if configuration.mode != .off && settings.syncookies == 0 {
            throw SystemError(
                "--syn-cookies \(configuration.mode.rawValue)", errno: EINVAL,
                hint: "net.ipv4.tcp_syncookies=0: the kernel accepts no cookie; set it to 1 or use --syn-cookies off")
        }
    }

    deinit {
        close(netstatFD)
        mnl_socket_close(routeEvents)
    }

    public func kernelCounter(_ index: Int) -> UInt64 { kernelValues.load(index) }

    /// Scans that read the listeners and published what they found: one that rose shows the
    /// monitor alive, and everything before it seen.
    public var scans: UInt64 { completedScans.load(ordering: .relaxed) }

    /// Walks of the established sockets to count SYN queues the probe could not read.
    public var requestWalks: UInt64 { completedWalks.load(ordering: .relaxed) }

    /// Scans until `stop` is signalled: every scan interval, and at once when overflow counters rise.
    public func run(stop: EventFD) {
        var lastScan: UInt64 = 0
        let poll = min(configuration.scanIntervalNanoseconds, 50_000_000)
        var descriptors = [
            pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: mnl_socket_get_fd(routeEvents), events: Int16(POLLIN), revents: 0),
        ]
        while true {
            if Glibc.poll(&descriptors, 2, Int32(poll / 1_000_000)) > 0 {
                if descriptors[0].revents != 0 { return }
                if descriptors[1].revents != 0 { drainRouteEvents() }
            }
            let now = MonotonicClock.nanoseconds()
            let rose = readKernelCounters()
            if rose { requestsUncounted = true }
            if rose || now &- lastScan >= configuration.scanIntervalNanoseconds {
                lastScan = now
                scan(now: now, overflowed: requestsUncounted)
            }
        }
    }

    /// Whether the responder answers this listener's SYNs: in `always` mode, or while it
    /// overflows in `auto`; never for one that sets a DSCP (IP_TOS, IPV6_TCLASS). The kernel's
    /// SYN-ACK carries that DSCP and takes the routes for its TOS; the responder's carries none
    /// and takes the routes for none, so such a listener's SYNs are left to the kernel (said once).
    private func serves(_ key: ListenerKey, _ state: ListenerOverflowTracker.State, now: UInt64) -> Bool {
        let wanted = configuration.mode == .always || (configuration.mode == .auto && state.active)
        guard wanted, state.observation.dscp != 0 else {
            markedListeners.remove(key)
            return wanted
        }
        // A local user may open, mark and close listeners in a loop: these lines have a budget.
        if markedListeners.insert(key).inserted, let held = markedLog.admit(now: now) {
            logger.info(
                """
                SYN cookies left to the kernel for \(key): it sets DSCP \(state.observation.dscp >> 2) \
                (IP_TOS or IPV6_TCLASS), which the responder's SYN-ACKs would not carry\
                \(held > 0 ? " (\(held) more such lines held back)" : "")
                """)
        }
        return false
    }

    /// A served listener's TCP_MAXSEG, probed when first served and then every `userMSSLifetime`.
    private func listenerMSS(_ key: ListenerKey, now: UInt64) -> UInt16 {
        if let known = userMSS[key], now &- known.read < Self.userMSSLifetime { return known.value }
        let value = probe?.read(key)?.userMSS ?? 0
        userMSS[key] = (value, now)
        return value
    }

    /// Reads route and link notifications away: any of them (or lost ones, ENOBUFS) makes the
    /// reply routes stale.
    private func drainRouteEvents() {
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let count = recv(mnl_socket_get_fd(routeEvents), &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count > 0 || (count < 0 && errno == ENOBUFS) {
                replyRoutesStale = true
            } else if count == 0 || errno != EINTR {
                return
            }
        }
    }

    /// The reply routes, read again when routes, links or their netconf changed and a second has
    /// passed, and every `replyRoutesLifetime` whatever: a change of an IPv6 interface's own
    /// ignore_routes_with_linkdown sends no event (only `all` and `default` do).
    private func refreshReplyRoutes(now: UInt64) {
        let elapsed = now &- replyRoutesRead
        guard
            replyRoutesRead == 0 || (replyRoutesStale && elapsed >= 1_000_000_000)
                || elapsed >= Self.replyRoutesLifetime
        else { return }
        replyRoutesRead = now
        do {
            let table = try ReplyRoutesReader.read(namespace: namespace)
            replyRoutesStale = false
            if table.truncated && !replyRoutes.truncated {
                logger.warning(
                    """
                    warning: more than \(ReplyRoutes.maximumRoutes) routes of a family in the main table: its \
                    SYNs are left to the kernel to answer
                    """)
            }
            replyRoutes = table
        } catch {
            logger.info("reading the reply routes failed, keeping the last ones: \(error)")
        }
    }

    /// Reads the TcpExt counters; true when a SYN-queue or accept-queue overflow counter rose by
    /// more than the fast path's own cookies account for.
    private func readKernelCounters() -> Bool {
        guard let text = ProcFile.text(fd: netstatFD) else { return false }
        for (index, value) in ProcFile.counters(Self.kernelCounters, section: "TcpExt", in: text).enumerated() {
            if let value { kernelValues.store(index, value) }
        }
        // Read after the kernel's: an answer counted in it is counted there first. Without a
        // fast path, 0; nil when its counters could not be read.
        let own = ownCookies.withLock { $0 }.map { $0() } ?? 0
        return overflowSignal.rose(
            kernelCookies: kernelCounter(0), drops: kernelCounter(1) &+ kernelCounter(2), ownCookies: own)
    }

    /// Where the fast path's cookies sent are read (each one the kernel counted as
    /// TCPReqQFullDoCookies).
    public func countOwnCookies(_ read: @escaping @Sendable () -> UInt64?) { ownCookies.withLock { $0 = read } }

    /// The listeners, with their SYN queues where `countingRequests`: read by the probe, one
    /// test run per listener, where each is a single socket bound to no device and there are at
    /// most `probedListeners`; otherwise counted by sock_diag, which walks every established
    /// socket of the host (`requestWalks`). During a flood the monitor counts them at every scan,
    /// and that walk was most of its CPU.
    private func observe(countingRequests: Bool, now: UInt64) throws -> [ListenerObservation] {
        var listeners = try sockDiag.dumpListeners(requestSockets: false)
        guard countingRequests, !listeners.isEmpty else { return listeners }
        if let probe, listeners.count <= Self.probedListeners,
            listeners.allSatisfy({ $0.members == 1 && $0.boundDevice == 0 })
        {
            let readings = probe.read(listeners.map(\.key)).compactMap { $0 }
            // A listener the probe did not find as itself (gone, replaced, another socket
            // answering for it) is counted by the walk, with all the others.
            if readings.count == listeners.count {
                for (index, reading) in zip(listeners.indices, readings) {
                    listeners[index].requestSockets = reading.synQueue
                    userMSS[listeners[index].key] = (reading.userMSS, now)  // read in the same run
                }
                return listeners
            }
        }
        completedWalks.add(1, ordering: .relaxed)
        return try sockDiag.dumpListeners(requestSockets: true)
    }

    /// More listeners than this are counted by the walk: one test run each costs microseconds,
    /// the walk milliseconds on a host with many established sockets.
    static let probedListeners = 256

    /// Reads the listeners and publishes what the responder serves. Their SYN queues (request
    /// sockets) may cost a walk of every established socket (`observe`), so they are counted only
    /// where a count can change the outcome: while a listener is served, after the
    /// kernel's overflow counters rose (`overflowed`), or when activation comes before a full queue
    /// (`--cookie-activate-percent` below 100). Otherwise no SYN queue is full (a full one moves
    /// those counters), and the listeners alone are read: a busy proxy's idle scans cost next to
    /// nothing.
    public func scan(now: UInt64, overflowed: Bool = true) {
        settings = settingsReader.read()
        refreshReplyRoutes(now: now)
        tracker.kernelNeedsOverflowMark = settings.syncookies != 2
        let countRequests =
            overflowed || configuration.policy.activatePercent < 100 || tracker.states.values.contains { $0.active }
        let observations: [ListenerObservation]
        do { observations = try observe(countingRequests: countRequests, now: now) } catch {
            logger.info("listener scan failed, keeping the last one: \(error)")
            return
        }
        if countRequests { requestsUncounted = false }
        for event in tracker.update(observations, now: now) {
            switch event {
            case .activated(let observation) where observation.dscp != 0:
                break  // never served (`serves`)
            case .activated(let observation):
                board.record(for: observation.key)?.add(.activations)
                logger.info(
                    """
                    SYN cookies on for \(observation.key): SYN queue \
                    \(observation.requestSockets)/\(observation.backlog), accept queue \(observation.acceptQueue)
                    """
                )
            case .deactivated(let key, let reason):
                logger.info("SYN cookies off for \(key): \(reason)")
            }
        }
        board.retainRecords(for: tracker.states.keys)
        var published: [ListenerKey: ResponderListener] = [:]
        var unserved = 0
        for (key, state) in tracker.states {
            let serve = serves(key, state, now: now)
            let record = board.record(for: key, create: serve)
            record?.setActive(serve)
            if serve && record == nil { unserved += 1 }
            guard serve, let record else { continue }
            let observation = state.observation
            // A listener starts with tcp_rmem[1]; any other size was set with SO_RCVBUF, which the
            // kernel treats as a cap on the child's window. (Unknown: assume the default.)
            let receiveBuffer =
                observation.receiveBuffer == 0 ? settings.tcpReceiveMemoryDefault : observation.receiveBuffer
            let locked = receiveBuffer != settings.tcpReceiveMemoryDefault
            published[key] = ResponderListener(
                record: record,
                windowScale: TCPWindow.receiveScale(
                    listenerReceiveBuffer: receiveBuffer, receiveBufferLocked: locked, settings: settings),
                receiveBuffer: receiveBuffer,
                acceptQueueFull: observation.backlog > 0 && observation.acceptQueue >= observation.backlog,
                userMSS: listenerMSS(key, now: now))
        }
        userMSS = userMSS.filter { published[$0.key] != nil }
        markedListeners = markedListeners.filter { tracker.states[$0] != nil }
        board.publish(published, settings: settings, replyRoutes: replyRoutes)
        completedScans.add(1, ordering: .relaxed)
        if unserved != unservedListeners {
            unservedListeners = unserved
            if unserved > 0 {
                logger.warning(
                    """
                    warning: \(unserved) listeners to serve beyond \(ResponderBoard.maximumRecords): their SYNs go \
                    to the kernel
                    """)
            }
        }
    }
}
