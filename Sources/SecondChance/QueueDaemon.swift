import Glibc
import LinuxSys
import Logging
import NetTypes
import SecondChanceCore
import Synchronization
import Telemetry

/// Where a serving daemon answers and what its stop does with the tc program.
public struct DaemonEndpoints: Sendable {
    /// The control socket's path (`stats`, `reexec`).
    public var controlPath: String
    /// The metrics port, if any.
    public var metrics: Endpoint?
    public var fastPathStop: FastPathStop
    /// How long this start took until it could serve (its programs loaded and verified): a
    /// re-exec's check of the new image does the same work, and its deadline grows with it.
    public var startupSeconds = 0

    public init(controlPath: String, metrics: Endpoint?, fastPathStop: FastPathStop) {
        (self.controlPath, self.metrics, self.fastPathStop) = (controlPath, metrics, fastPathStop)
    }
}

/// What ends a daemon that served: the first failure of a queue thread.
public struct DaemonFailure: Error, CustomStringConvertible {
    public let description: String
}

/// The queue threads. For a re-exec only they stop, answering what they read; the kernel holds
/// what comes meanwhile for the next image. Nothing else needs to cross the exec: the flow caches
/// and epochs only spare sock_diag lookups (an empty cache asks the kernel), and the responder's
/// monitor finds overflowing listeners again.
public final class QueueThreads: Sendable {
    let workers: [SecondChanceWorker]
    /// Stops the queue threads alone (a re-exec, and last at a stop).
    let stop: EventFD
    /// Stops the daemon: the first failure of a queue thread signals it.
    let daemonStop: EventFD
    let handingOver = Atomic<Bool>(false)
    /// Errors reported by the queue threads; the first one ends the daemon.
    let failures = Mutex<[String]>([])

    public init(workers: [SecondChanceWorker], daemonStop: EventFD) throws {
        (self.workers, self.daemonStop, stop) = (workers, daemonStop, try EventFD())
    }

    func start() throws -> [WorkerThread] {
        try workers.map { worker in
            try WorkerThread { [self] in
                do {
                    try worker.run(stop: stop, drainOnStop: { !self.handingOver.load(ordering: .relaxed) })
                } catch {
                    failures.withLock { $0.append("queue \(worker.queue.number): \(error)") }
                    daemonStop.signal()
                }
            }
        }
    }

    var firstFailure: String? { failures.withLock { $0.first } }
}

/// With WatchdogSec= the watchdog hears from the daemon only while every queue thread comes
/// round: a wedged one, holding its queue bound unanswered, gets the daemon restarted (the fd
/// store keeps the queue and what waits in it).
struct WatchdogTeller {
    let settings: WatchdogSettings?
    private var progress = QueueProgress()
    private var lastCheck: UInt64 = 0
    private var reportedStall = false

    init(environment: [String: String]) {
        settings = WatchdogSettings(environment: environment, pid: getpid())
    }

    /// How long the main loop may wait for an event before it must come here again.
    var pollMilliseconds: Int32 { settings.map { Int32(clamping: $0.checkMilliseconds) } ?? -1 }

    mutating func tell(_ notifier: SDNotify?, workers: [SecondChanceWorker], logger: Logger) {
        guard let settings else { return }
        let now = MonotonicClock.nanoseconds()
        guard now &- lastCheck >= UInt64(settings.checkMilliseconds) * 1_000_000 else { return }
        lastCheck = now
        let stalled = progress.stalled(workers.map { $0.queue.turns.load(ordering: .relaxed) })
        guard stalled.isEmpty else {
            if !reportedStall {
                let names = stalled.map { String(workers[$0].queue.number) }.joined(separator: ",")
                logger.error("queue thread(s) \(names) stopped coming round: the watchdog is no longer told")
            }
            reportedStall = true
            return
        }
        reportedStall = false
        try? notifier?.send("WATCHDOG=1")
    }
}

/// A daemon that serves: its threads, the sockets it keeps in the service manager's store, and the
/// main thread's loop that re-executes or stops it.
public final class QueueDaemon {
    let queues: QueueThreads
    let server: StatsServer
    public let notifier: SDNotify?
    let reexecutor: Reexecutor
    public let controlPath: String
    let signals: DaemonSignals
    let watcher: LocalAddressWatcher
    let monitor: ListenerMonitor?
    let kernelPath: (path: FastPath?, status: String)
    let fastPathStop: FastPathStop
    /// The sockets a re-exec keeps and the store holds, by name.
    let queueSockets: [(fd: Int32, name: String)]
    /// The programs and maps attached, kept across exec(2) (the start stored them): a successor
    /// without CAP_SYS_ADMIN could not open them by id to adopt, replace or remove them.
    var fastPathHandles: [Int32] { kernelPath.path?.handedOn ?? [] }
    let handedOver: Set<String>
    let reexecGo: EventFD
    /// Stops the stats and control server alone: before an exec(2), a connection it accepted would
    /// be closed unanswered, while one left in the listening socket's backlog is answered by the
    /// next image.
    let serverStop: EventFD
    /// What crosses exec(2) besides the sockets.
    let reexecEnvironment: [String: String]
    var watchdog: WatchdogTeller
    let logger: Logger
    private var threads: [WorkerThread] = []
    private var serverThread: WorkerThread?
    private var helperThreads: [WorkerThread] = []

    public init(
        endpoints: DaemonEndpoints, plan: DaemonPlan, queues: QueueThreads, replayCounters: [(fd: Int32, name: String)],
        watcher: LocalAddressWatcher, monitor: ListenerMonitor?, report: DaemonReport, signals: DaemonSignals,
        handover: inout Handover, environment: [String: String], logger: Logger
    ) throws {
        (self.queues, self.watcher, self.monitor, self.signals) = (queues, watcher, monitor, signals)
        (kernelPath, fastPathStop, handedOver) = (report.kernelPath, endpoints.fastPathStop, handover.names)
        (controlPath, self.logger) = (endpoints.controlPath, logger)
        UnixAddress.makeDirectory(for: controlPath)
        let notifier = SDNotify(environment: environment)
        let reexecutor = Reexecutor(
            executable: ProgramImage.startPath(),
            checkSeconds: WatchdogSettings.reexecCheckSeconds(
                WatchdogSettings(environment: environment, pid: getpid()), startupSeconds: endpoints.startupSeconds),
            logger: logger)
        let reexecGo = try EventFD()
        (self.notifier, self.reexecutor, self.reexecGo) = (notifier, reexecutor, reexecGo)
        server = try StatsServer(
            metrics: endpoints.metrics, controlPath: controlPath,
            inherited: handover.claimServerSockets(logger: logger),
            render: { report.render($0) },
            command: { line in
                guard line == "reexec" else { return nil }
                // The answer goes out and the connection closes before the main thread may exec.
                let checked = reexecutor.check(by: "the control socket")
                guard checked.approved else { return ControlReply(checked.text) }
                return ControlReply(checked.text, afterClose: { reexecGo.signal() })
            },
            releaseInherited: { notifier?.removeStored(name: $0, reportingTo: logger) })
        queueSockets =
            queues.workers.map { ($0.queue.fileDescriptor, Handover.queueName($0.queue.number)) } + replayCounters
        serverStop = try EventFD()
        reexecEnvironment = [
            Handover.reexecsVariable: String(handover.reexecs == .max ? .max : handover.reexecs + 1),
            Handover.forwardingVariable: plan.forwarding.rawValue,
        ]
        watchdog = WatchdogTeller(environment: environment)
        releaseUnused()
    }

    /// A stored socket this configuration does not use (a queue no longer given, no --metrics)
    /// leaves the store: kept there, a queue would stay bound with no reader, so that
    /// --queue-bypass never applied and its packets waited until they were dropped.
    func releaseUnused() {
        var used = Set((queueSockets + server.descriptors).map(\.name))
        if !fastPathHandles.isEmpty { used.insert(FastPathHandles.storeName) }
        for name in handedOver.subtracting(used).sorted() {
            notifier?.removeStored(name: name, reportingTo: logger)
        }
    }

    func startServer() throws -> WorkerThread {
        try WorkerThread { [server, serverStop] in server.serve(stop: serverStop) }
    }

    /// Every thread, and the sockets into the service manager's store, where a queue outlives a
    /// crash: packets wait for the restart.
    public func start() throws {
        serverThread = try startServer()
        let (stop, monitor, watcher) = (signals.stop, monitor, watcher)
        if let monitor { helperThreads.append(try WorkerThread { monitor.run(stop: stop) }) }
        helperThreads.append(try WorkerThread { watcher.run(stop: stop) })
        threads = try queues.start()
        for (fd, name) in queueSockets + server.descriptors
        where !handedOver.contains(name) || server.replaced.contains(name) {
            if server.replaced.contains(name) {
                notifier?.replaceStored(fd, name: name, reportingTo: logger)
            } else {
                notifier?.store(fd, name: name, reportingTo: logger)
            }
        }
        server.keepsControlPath = notifier != nil
    }

    /// The main thread's loop: a signal or the control socket asks for a re-exec, a stop or a
    /// failed queue thread ends it.
    public func serveUntilStopped() throws {
        var events = [signals.stop.fd, signals.reexec.fd, reexecGo.fd].map {
            pollfd(fd: $0, events: Int16(POLLIN), revents: 0)
        }
        while true {
            _ = try Syscall.poll(&events, milliseconds: watchdog.pollMilliseconds)
            watchdog.tell(notifier, workers: queues.workers, logger: logger)
            if events[0].revents != 0 { break }
            if events[1].revents != 0 {
                signals.reexec.consume()
                if reexecutor.check(by: "SIGUSR1").approved { reexecGo.signal() }
            }
            guard events[2].revents != 0 else { continue }
            reexecGo.consume()
            guard try reexec() else { break }
        }
        try stop()
    }

    /// Stops what must not cross exec(2) and re-executes; false when a queue thread failed
    /// meanwhile (the daemon then stops), true when the exec failed and this image serves on.
    func reexec() throws -> Bool {
        // The server stops first, while the queues are still served: a slow control client
        // delays the exec, not the packets.
        serverStop.signal()
        serverThread?.join()
        queues.handingOver.store(true, ordering: .relaxed)
        queues.stop.signal()
        threads.forEach { $0.join() }
        threads = []  // joined once: stop() must not join them again
        guard queues.firstFailure == nil else {
            serverStop.consume()
            serverThread = try startServer()  // stopped with the rest
            return false
        }
        try? notifier?.send("RELOADING=1\nMONOTONIC_USEC=\(MonotonicClock.nanoseconds() / 1000)")
        let executable = reexecutor.executable
        logger.info(
            """
            re-executing \(executable) (\(reexecutor.checked)); the queue sockets stay bound, every packet read is \
            answered
            """
        )
        let programs = fastPathHandles.map { ($0, FastPathHandles.storeName) }
        let failure = ProgramImage.execute(
            executable, arguments: CommandLine.arguments, keeping: queueSockets + server.descriptors + programs,
            extraEnvironment: reexecEnvironment)
        logger.info("re-exec of \(executable) failed: \(String(cString: strerror(failure))); still serving")
        queues.stop.consume()
        serverStop.consume()
        serverThread = try startServer()
        queues.handingOver.store(false, ordering: .relaxed)
        threads = try queues.start()
        try? notifier?.send("READY=1")
        return true
    }

    func stop() throws {
        // The program goes first, while the queues are still served: what it decided until now, the
        // queues decide from here on.
        kernelPath.path?.stop(fastPathStop, logger: logger)
        queues.stop.signal()
        threads.forEach { $0.join() }
        signals.stop.signal()
        serverStop.signal()
        serverThread?.join()
        helperThreads.forEach { $0.join() }
        if let failure = queues.firstFailure { throw DaemonFailure(description: failure) }
        logger.info("stopped; all read packets answered")
    }
}

/// Checks that the installed program runs before the main thread re-executes it.
final class Reexecutor: Sendable {
    let executable: String
    /// How long the check may take (it runs on the main loop, which tells the watchdog).
    let checkSeconds: Int
    private let lastCheck = Mutex<String>("")
    private let logger: Logger

    init(executable: String, checkSeconds: Int, logger: Logger) {
        (self.executable, self.checkSeconds, self.logger) = (executable, checkSeconds, logger)
    }

    /// What the check printed (`second-chance version`), for the log.
    var checked: String { lastCheck.withLock { $0 } }

    /// The answer for whoever asked (`by`, for the log), and whether the re-exec may go ahead.
    func check(by requester: String) -> (text: String, approved: Bool) {
        // The installed file, with this process's flags: one that does not start, or refuses them
        // (a newer release's stricter checks), is found while this process still serves.
        let arguments = Array(CommandLine.arguments.dropFirst()) + ["--check"]
        switch ProgramImage.check(executable, arguments: arguments, seconds: checkSeconds) {
        case .success(let line):
            lastCheck.withLock { $0 = line }
            return ("re-executing \(executable): \(line)\n", true)
        case .failure(let error):
            logger.info("re-exec asked by \(requester) refused: \(error); still serving")
            return ("error: \(error); still serving\n", false)
        }
    }
}
