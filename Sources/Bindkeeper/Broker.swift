import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import LinuxSys
import Logging
import NetTypes
import Synchronization
import Telemetry

public struct BrokerOptions: Sendable {
    public var controlPath: String
    public var policy: Policy
    /// listen(2) backlog when a request names none; the kernel caps it at somaxconn.
    public var defaultBacklog: Int32 = 65535
    public var maximumClients = 4096
    /// A client whose message stays incomplete this long is cut off (it holds a slot, not the loop).
    public var stalledMessageSeconds: UInt64 = 10
    /// A client that sends no whole request for this long is cut off (it may not hold a slot forever).
    public var idleSeconds: UInt64 = 60
    /// Connections one uid may hold; beyond it a new one is closed at once.
    public var maximumClientsPerUser = 64
    /// Sockets one uid (not root, not the broker's) may have created.
    public var maximumSocketsPerUser = 256
    /// Replies a client has not read, in bytes, before it is cut off.
    public var maximumUnreadReplies = 1 << 20
    public var metrics: Endpoint?

    public init(controlPath: String, policy: Policy) {
        self.controlPath = controlPath
        self.policy = policy
    }
}

/// The socket broker: owns every socket it binds, hands the same kernel socket to every client that
/// asks (SCM_RIGHTS), serves many clients from one poll loop (non-blocking, bounded per client), and
/// keeps its sockets across re-exec and, under systemd, across crashes (the fd store).
///
/// `@unchecked Sendable`: all state belongs to the thread that runs `run`; the metrics thread only
/// calls `snapshot`, which reads `published` under its Mutex.
public final class Broker: @unchecked Sendable {
    struct Entry {
        var request: BindRequest
        var fd: Int32
        var handedOut: UInt64
        var backlog: BacklogReport?
        /// Whose request made it; nil when unknown (recovered from the fd store).
        var creator: UInt32?
    }

    /// SO_PEERCRED: who connected (uid 0 and the broker's own uid may do anything).
    struct Peer {
        var pid: Int32 = 0
        var uid = UInt32.max
        var gid = UInt32.max
    }

    final class Client {
        let fd: Int32
        var reader: RequestReader
        /// Replies not yet sent, each with its own duplicates of the sockets it hands over: a
        /// release, or a socket closed and its number reused meanwhile, cannot change what a reply
        /// carries. The broker closes them once sent or dropped.
        var outbox: [(bytes: [UInt8], offset: Int, fds: [Int32])] = []
        var unread = 0
        var incompleteSince: UInt64?
        /// When it connected or last sent a whole request.
        var lastRequest = MonotonicClock.nanoseconds()
        var closing = false
        /// Whole requests are still buffered: served next turn, and nothing more is read meanwhile.
        var backlogged = false
        var peer = Peer()

        init(fd: Int32, wire: Wire? = nil, pending: [UInt8] = []) {
            self.fd = fd
            reader = RequestReader(wire: wire)
            reader.append(pending)
            var pid: Int32 = 0, uid = UInt32.max, gid = UInt32.max
            if proxyside_peer_credentials(fd, &pid, &uid, &gid) == 0 { peer = Peer(pid: pid, uid: uid, gid: gid) }
        }
    }

    public struct Statistics: Sendable {
        public var binds = 0, bindsCreated = 0, bindErrors = 0, denied = 0, conflicts = 0, badRequests = 0,
            released = 0,
            steers = 0
        public var clientsAccepted = 0, clientsConnected = 0, clientsCutOff = 0, incompleteAtEOF = 0
        /// Connections refused for --max-clients-per-user, idle clients cut off, binds refused for
        /// --max-sockets-per-user.
        public var clientsOverLimit = 0, clientsIdle = 0, socketLimitRefusals = 0
        public var reexecs = 0
        public var sockets: [SocketStatistics] = []
        /// Who holds the broker's sockets (`Broker.readHoldings`), or nil and why it is unknown.
        public var holders: HoldingsReport?
        public var holdersUnknown: String?
    }

    /// One socket's line in the metrics: the broker's count and, for a TCP listener, the kernel's
    /// (read at most once a second: `kernelCountersRead`).
    public struct SocketStatistics: Sendable {
        public var key: String
        public var handedOut: UInt64
        /// SYNs and handshakes the socket dropped (its own `sk_drops`), since it was made: the
        /// kernel socket, and so the count, outlives re-execs and restarts.
        public var listenDrops: UInt32?
        public var acceptQueue: (waiting: UInt32, limit: UInt32)?
        /// Request sockets on the listener's address and port (shared by every socket bound there).
        public var synQueue: UInt32?
    }

    let options: BrokerOptions
    var control: Int32 = -1
    /// The control socket is in the service manager's fd store (its path then outlives a stop).
    var controlStored = false
    var sockets: [String: Entry] = [:]
    var order: [String] = []
    var clients: [Int32: Client] = [:]
    var clientsPerUser: [UInt32: Int] = [:]
    /// Lines clients cause (bad requests, refusals, cut-offs): every event is counted in the
    /// statistics, ten a second are logged.
    var clientLogBudget = LogBudget(linesPerSecond: 10)
    let notifier: SDNotify?
    let shutdown: EventFD
    let reexecSignal: EventFD
    var reexecRequested = false
    /// accept(2) found no descriptor left (EMFILE, ENFILE): the control socket is not polled until
    /// then, instead of waking the loop at once, again and again.
    var acceptPausedUntil: UInt64 = 0
    var statistics = Statistics()
    /// The loop's counters as the metrics thread last saw them.
    let published = Mutex(Statistics())
    var metricsServer: StatsServer?
    /// The metrics socket an earlier process handed over, until `startMetrics` takes it.
    var inheritedMetrics: Int32?
    /// Each socket group's socket array (its reuseport program's map), by the group's address:
    /// steering it again needs it, and only CAP_SYS_ADMIN could find it otherwise.
    var groupArrays: [String: Int32] = [:]
    /// Said once: the reuseport program could not be loaded with its migrate entry point.
    var toldNoMigration = false
    let logger: Logger
    /// The program's path, resolved at start: a re-exec runs whatever is installed there now (after
    /// an upgrade, the new binary; /proc/self/exe would name the deleted old one).
    let executable: String
    /// One read buffer for every client: the loop reads one client at a time.
    var readBuffer = [UInt8](repeating: 0, count: 65536)
    /// How many requests of one client a turn of the loop answers: a client that sends thousands
    /// in one write waits its turn like the others instead of holding them up.
    static let requestsPerTurn = 16
    /// The kernel's listener queues, dumped once a turn for every `list` answered in it.
    var listenerQueuesThisTurn: [ListenerKey: ListenerObservation]?
    /// The SYN queues last counted, and when (`dumpListenerQueues`).
    var synQueuesCounted: (at: UInt64, queues: [ListenerKey: UInt32])?
    /// When the metrics last had the kernel's per-socket counters, and what they were.
    var kernelCountersRead: (at: UInt64, sockets: [String: SocketStatistics])?
    /// Counts who holds the sockets, on its own thread (started by `run`).
    var holdingsCounter: HoldingsCounter?
    /// When the counter was last told which sockets to count for.
    var unitsHandedToCounter: UInt64 = 0

    public init(
        options: BrokerOptions, environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger
    ) throws {
        self.options = options
        self.logger = logger
        executable = ProgramImage.startPath()
        shutdown = try EventFD()
        reexecSignal = try EventFD()
        notifier = SDNotify(environment: environment)
        ResourceLimits.raiseOpenFiles()
        try Signals.install(shutdown: shutdown)
        try Signals.forward(SIGUSR1, to: reexecSignal)
        // A re-exec blocks these before exec(2): one that arrived meanwhile is pending, and is
        // delivered to the handlers just installed instead of killing the new program.
        Signals.setHandledBlocked(false)
        try adopt(environment)
        if control >= 0 {
            try refreshAdoptedControl()
            controlStored = notifier != nil
        } else {
            control = try Self.listenControl(options)
            // In the store, the control socket outlives a crash too: clients queue, not fail, until the restart.
            controlStored = notifier?.store(control, name: FDStoreName.control, reportingTo: logger) ?? false
        }
        try startMetrics()
        try? notifier?.send("READY=1\nSTATUS=serving \(sockets.count) sockets on \(options.controlPath)")
    }

    /// The metrics socket: the one an earlier process handed over (a re-exec, the fd store) while it
    /// is bound where --metrics says, else a new one. Kept across re-execs and in the store, so no
    /// local user can take its port while the broker changes image.
    func startMetrics() throws {
        let inherited = inheritedMetrics.map { [StatsServer.metricsName: $0] } ?? [:]
        inheritedMetrics = nil
        guard options.metrics != nil || !inherited.isEmpty else { return }
        let server = try StatsServer(
            metrics: options.metrics, controlPath: nil, inherited: inherited,
            render: { [unowned self] _ in self.prometheus() },
            releaseInherited: { [notifier, logger] in notifier?.removeStored(name: $0, reportingTo: logger) })
        guard let fd = server.descriptors.first?.fd else { return }
        metricsServer = server
        if inherited.isEmpty || server.replaced.contains(StatsServer.metricsName) {
            notifier?.store(fd, name: StatsServer.metricsName, reportingTo: logger)
        }
    }

    /// Serves until SIGTERM/SIGINT. Returns normally; the control socket file is removed.
    public func run() {
        // The threads start with the daemon's signals blocked (they inherit the mask): each is
        // the loop's, and one that reached another thread during a re-exec would be lost.
        Signals.setHandledBlocked(true)
        if let metricsServer {
            let stop = shutdown
            do { _ = try WorkerThread { metricsServer.serve(stop: stop) } } catch {
                logger.error("metrics: no thread to serve them: \(error)")
            }
        }
        do { holdingsCounter = try HoldingsCounter(periodic: metricsServer != nil, logger: logger) } catch {
            logger.error("no thread to count who holds the sockets: \(error)")
        }
        Signals.setHandledBlocked(false)
        var fds: [pollfd] = []
        while true {
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: shutdown.fd, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: reexecSignal.fd, events: Int16(POLLIN), revents: 0))
            fds.append(
                pollfd(
                    fd: control,
                    events: clients.count < options.maximumClients && MonotonicClock.nanoseconds() >= acceptPausedUntil
                        ? Int16(POLLIN) : 0, revents: 0))
            var backlog = false
            for client in clients.values {
                backlog = backlog || client.backlogged
                let events =
                    (client.closing || client.backlogged ? 0 : POLLIN) | (client.outbox.isEmpty ? 0 : POLLOUT)
                fds.append(pollfd(fd: client.fd, events: Int16(events), revents: 0))
            }
            let polled = Result { () throws(SystemError) in try Syscall.poll(&fds, milliseconds: backlog ? 0 : 1000) }
            listenerQueuesThisTurn = nil
            if case .failure(let error) = polled { logger.info("\(error)"); break }
            if fds[0].revents != 0 { break }
            if fds[1].revents != 0 { reexecSignal.consume(); reexecRequested = true }
            if fds[2].revents != 0 { acceptClients() }
            for entry in fds.dropFirst(3) where entry.revents != 0 {
                guard let client = clients[entry.fd] else { continue }
                if entry.revents & Int16(POLLOUT) != 0 { flush(client) }
                if entry.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { readFrom(client) }
            }
            if backlog {
                for client in clients.values where client.backlogged { serveRequests(client) }
            }
            cutOffStalledClients()
            if metricsServer != nil { publishStatistics() }
            if reexecRequested {
                reexecRequested = false
                reexec()
            }
        }
        for client in Array(clients.values) { flush(client); drop(client, nil) }
        clients.removeAll()
        closeControl()
        logger.info("stopped")
    }

}
