import Glibc
import LinuxSys
import ProxysideArguments
import SecondChance
import SecondChanceCore
import Synchronization
import Telemetry

/// What an earlier process left this one: sockets by name (a re-exec of this one, or systemd's fd
/// store after a crash), and from a re-exec its count and its forwarding choice. Each socket is
/// claimed once, by the part of the daemon that uses it.
struct Handover {
    private var sockets: [String: Int32] = [:]
    /// Every name handed over, claimed or not.
    let names: Set<String>
    let reexecuted: Bool
    let reexecs: UInt64
    let keptForwarding: ForwardingMode?

    init(environment: [String: String]) {
        for (fd, name) in ListenFDs.inherited(environment, pid: getpid()) { sockets[name] = fd }
        names = Set(sockets.keys)
        reexecuted = environment[Run.reexecsVariable] != nil
        reexecs = environment[Run.reexecsVariable].flatMap(UInt64.init) ?? 0
        // A re-exec keeps the choice: the firewall's rules, which can be long, are not read again
        // while the queues wait for this image (the sysctls, quick to read, are).
        keptForwarding =
            reexecuted ? environment[Run.forwardingVariable].flatMap(ForwardingMode.init(rawValue:)) : nil
    }

    /// The socket handed over as `name`, now this caller's.
    mutating func claim(_ name: String) -> Int32? { sockets.removeValue(forKey: name) }

    /// No earlier process: not a re-exec, and none of `queues` waits in the store.
    func coldStart(queues: [String]) -> Bool { reexecs == 0 && !queues.contains { names.contains($0) } }

    /// The stats server's sockets; every other one not claimed by now is not this configuration's,
    /// and is closed.
    mutating func claimServerSockets() -> [String: Int32] {
        let server = sockets.filter { [StatsServer.metricsName, StatsServer.controlName].contains($0.key) }
        for (name, fd) in sockets where server[name] == nil {
            logger.info("an inherited socket named \(name) is not one of this configuration's; closed")
            close(fd)
        }
        sockets = [:]
        return server
    }

    /// A child this process starts (a tool, a re-exec check) must not take these for its own.
    static func clearEnvironment() {
        for name in ListenFDs.variables + [Run.reexecsVariable, Run.forwardingVariable] { unsetenv(name) }
    }
}

/// The events that stop or re-execute the daemon, installed before anything is served.
struct DaemonSignals {
    /// SIGTERM and SIGINT.
    let stop: EventFD
    /// SIGUSR1: re-execute, once the new image passes its check.
    let reexec: EventFD

    init() throws {
        stop = try EventFD()
        try Signals.install(shutdown: stop)
        reexec = try EventFD()
        try Signals.forward(SIGUSR1, to: reexec)
        // A re-exec blocks these across exec(2): one that came meanwhile is delivered now, to the handlers.
        Signals.setHandledBlocked(false)
    }
}

/// What `stats` and the metrics port show: the counters of every part, read when asked.
struct DaemonReport: Sendable {
    let workers: [SecondChanceWorker]
    let kernelPath: (path: FastPath?, status: String)
    let monitor: ListenerMonitor?
    let configuration: SecondChanceConfiguration
    let image: ImageReport

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
