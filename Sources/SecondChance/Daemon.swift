import Glibc
import LinuxSys
import Logging
import SecondChanceCore
import Synchronization
import Telemetry

/// What an earlier process left this one: sockets by name (a re-exec of this one, or systemd's fd
/// store after a crash), and from a re-exec its count and its forwarding choice. Each socket is
/// claimed once, by the part of the daemon that uses it. A name may stand for several (the fast
/// path's programs and maps, which the kernel names itself).
public struct Handover {
    private var sockets: [String: [Int32]] = [:]
    /// Every name handed over, claimed or not.
    public let names: Set<String>
    public let reexecuted: Bool
    public let reexecs: UInt64
    public let keptForwarding: ForwardingMode?

    /// How many times this process has re-executed itself, carried across exec(2).
    public static let reexecsVariable = "SECOND_CHANCE_REEXECS"
    /// The forwarding mode `--forward auto` chose, carried across exec(2).
    public static let forwardingVariable = "SECOND_CHANCE_FORWARDING"

    /// The name of queue `number`'s netlink socket in the fd store and across a re-exec.
    public static func queueName(_ number: UInt16) -> String { "nfqueue-\(number)" }

    public init(environment: [String: String]) {
        for (fd, name) in ListenFDs.inherited(environment, pid: getpid()) { sockets[name, default: []].append(fd) }
        names = Set(sockets.keys)
        reexecuted = environment[Self.reexecsVariable] != nil
        reexecs = environment[Self.reexecsVariable].flatMap(UInt64.init) ?? 0
        // A re-exec keeps the choice: the firewall's rules, which can be long, are not read again
        // while the queues wait for this image (the sysctls, quick to read, are).
        keptForwarding =
            reexecuted ? environment[Self.forwardingVariable].flatMap(ForwardingMode.init(rawValue:)) : nil
    }

    /// The socket handed over as `name`, now this caller's.
    public mutating func claim(_ name: String) -> OwnedDescriptor? {
        guard var fds = sockets[name], !fds.isEmpty else { return nil }
        let fd = fds.removeFirst()
        sockets[name] = fds.isEmpty ? nil : fds
        return OwnedDescriptor(adopting: fd)
    }

    /// Every descriptor handed over as `name`, now this caller's to close.
    public mutating func claimAll(_ name: String) -> [Int32] { sockets.removeValue(forKey: name) ?? [] }

    /// No earlier process: not a re-exec, and none of `queues` waits in the store.
    public func coldStart(queues: [String]) -> Bool { reexecs == 0 && !queues.contains { names.contains($0) } }

    /// The stats server's sockets; every other one not claimed by now is not this configuration's,
    /// and is closed.
    mutating func claimServerSockets(logger: Logger) -> [String: Int32] {
        var server: [String: Int32] = [:]
        for name in [StatsServer.metricsName, StatsServer.controlName] { server[name] = claim(name)?.take() }
        for (name, fds) in sockets {
            logger.info("an inherited socket named \(name) is not one of this configuration's; closed")
            fds.forEach { close($0) }
        }
        sockets = [:]
        return server
    }

    /// A child this process starts (a tool, a re-exec check) must not take these for its own.
    public static func clearEnvironment() {
        for name in ListenFDs.variables + [Self.reexecsVariable, Self.forwardingVariable] { unsetenv(name) }
    }
}

/// The events that stop or re-execute the daemon, installed before anything is served.
public struct DaemonSignals {
    /// SIGTERM and SIGINT.
    public let stop: EventFD
    /// SIGUSR1: re-execute, once the new image passes its check.
    let reexec: EventFD

    public init() throws {
        stop = try EventFD()
        try Signals.install(shutdown: stop)
        reexec = try EventFD()
        try Signals.forward(SIGUSR1, to: reexec)
        // A re-exec blocks these across exec(2): one that came meanwhile is delivered now, to the handlers.
        Signals.setHandledBlocked(false)
    }
}

/// What `stats` and the metrics port show: the counters of every part, read when asked.
public struct DaemonReport: Sendable {
    let workers: [SecondChanceWorker]
    let kernelPath: (path: FastPath?, status: String)
    let monitor: ListenerMonitor?
    let configuration: SecondChanceConfiguration
    public let image: ImageReport

    public init(
        workers: [SecondChanceWorker], kernelPath: (path: FastPath?, status: String), monitor: ListenerMonitor?,
        configuration: SecondChanceConfiguration, image: ImageReport
    ) {
        (self.workers, self.kernelPath, self.monitor) = (workers, kernelPath, monitor)
        (self.configuration, self.image) = (configuration, image)
    }

    func render(_ format: StatsServer.Format) -> String {
        let values = CounterBlock.sum(workers.map(\.counters))
        let fastPathReport = FastPathReport(status: kernelPath.status, counters: kernelPath.path?.counters())
        let kernel = ProcFile.kernelQueueStatistics()
        let queues = workers.map { worker in
            QueueReport(
                queue: worker.queue.number, packets: worker.counters.value(.total),
                receiveErrors: worker.queue.receiveErrors.load(ordering: .relaxed),
                crashReplaysDropped: worker.queue.crashReplaysDropped.load(ordering: .relaxed),
                kernel: kernel[worker.queue.number], maximumLength: configuration.queueMaximumLength)
        }
        switch format {
        case .prometheus:
            var out = PrometheusText()
            CounterReport.write(values, queues: queues, fastPath: fastPathReport, to: &out)
            image.write(to: &out)
            if let monitor { ResponderReport.write(monitor, kernel: kernelPath.path, to: &out) }
            return out.text
        case .text:
            return image.text + CounterReport.text(values, queues: queues, fastPath: fastPathReport)
                + (monitor.map { ResponderReport.text($0, kernel: kernelPath.path) } ?? "")
        }
    }
}
