import LinuxSys
import SecondChanceCore
import Telemetry

/// One queue's line in the report: what its thread counted and what the kernel counted.
public struct QueueReport: Sendable {
    public var queue: UInt16
    public var packets: UInt64
    /// Reads that failed or returned messages that were not packets.
    public var receiveErrors: UInt64
    /// Times the packets earlier readers kept dying with were dropped instead of replayed (`ReplayGuard`).
    public var crashReplaysDropped: UInt64
    /// Absent when the kernel's table could not be read or does not list the queue.
    public var kernel: KernelQueueStatistics?
    /// --queue-maxlen: past it the kernel drops (or, with --fail-open, accepts unchecked).
    public var maximumLength: UInt32

    public init(
        queue: UInt16, packets: UInt64, receiveErrors: UInt64, crashReplaysDropped: UInt64 = 0,
        kernel: KernelQueueStatistics?, maximumLength: UInt32 = 0
    ) {
        self.queue = queue
        self.packets = packets
        self.receiveErrors = receiveErrors
        self.crashReplaysDropped = crashReplaysDropped
        self.kernel = kernel
        self.maximumLength = maximumLength
    }
}

/// Which program image serves: its release, its build, and how it came to run.
public struct ImageReport: Sendable {
    public var version: String
    public var build: String
    /// Re-executions of this process so far.
    public var reexecs: UInt64
    /// Queue sockets taken over from an earlier process (re-exec or fd store) instead of bound anew.
    public var adoptedQueues: Int

    /// How packets are handled: decapsulation (kernel, userspace), forwarding (raw, kernel) and
    /// where they are decided (tc, off).
    public var decapsulation: String
    public var forwarding: String
    public var fastPath: String
    /// --fail-open: a full queue accepts packets unchecked instead of dropping them.
    public var failOpen: Bool

    public init(
        version: String, build: String, reexecs: UInt64, adoptedQueues: Int, decapsulation: String = "",
        forwarding: String = "", fastPath: String = "", failOpen: Bool = false
    ) {
        self.failOpen = failOpen
        self.version = version
        self.build = build
        self.reexecs = reexecs
        self.adoptedQueues = adoptedQueues
        self.decapsulation = decapsulation
        self.forwarding = forwarding
        self.fastPath = fastPath
    }

    public var text: String {
        """
        version: \(version)\nbuild: \(build)\nreexecs: \(reexecs)\nadopted_queues: \(adoptedQueues)\ndecapsulation: \
        \(decapsulation)\nforwarding: \(forwarding)\n
        """
    }

    public func write(to out: inout PrometheusText) {
        out.family("second_chance_build_info", .gauge, help: "The running release and build.")
        out.sample("second_chance_build_info", ["version": version, "build": build], 1)
        out.family(
            "second_chance_mode_info", .gauge,
            help: "How packets are handled: decapsulation, forwarding, fast path (xdp, tc or off), fail-open.")
        out.sample(
            "second_chance_mode_info",
            [
                "decapsulation": decapsulation, "forwarding": forwarding, "fast_path": fastPath,
                "fail_open": failOpen ? "true" : "false",
            ], 1)
        out.processStart()
        out.single(
            "second_chance_reexecs", .gauge, help: "Re-executions of this process (SIGUSR1, second-chance reexec).",
            reexecs)
        out.single(
            "second_chance_adopted_queues", .gauge,
            help: "Queue sockets taken over with what they held (re-exec, fd store).", adoptedQueues)
    }
}

/// The tc program's state and counters, for `stats` and the metrics.
public struct FastPathReport: Sendable {
    /// "tc on IF (program ...)", or "off (why)".
    public var status: String
    /// Nil while the program is not attached.
    public var counters: FastPathCounterValues?

    public init(status: String, counters: FastPathCounterValues?) {
        self.status = status
        self.counters = counters
    }
}

public enum CounterReport {
    /// Summed counter values (indexed as `CounterName.index`) and each queue's own and kernel
    /// counters, as metrics. The families the tc program counts too have a `path` label: `queue`
    /// for what second-chance decided from NFQUEUE, `kernel` for what the program decided.
    public static func write(
        _ values: [UInt64], queues: [QueueReport], fastPath: FastPathReport? = nil, to out: inout PrometheusText
    ) {
        let kernel = fastPath?.counters?.byCounterName
        for name in CounterName.all {
            let (family, reason) = name.metric
            out.family(family, .counter, help: name.help)
            let paths: [(String, UInt64)] =
                [("queue", values[name.index])] + (kernel?[name.index].map { [("kernel", $0)] } ?? [])
            for (path, value) in paths {
                if let reason {
                    out.sample(family, ["reason": reason, "path": path], value)
                } else {
                    out.sample(family, ["path": path], value)
                }
            }
        }
        if let fastPath {
            out.family("second_chance_fast_path_info", .gauge, help: "Whether the tc program decides, and where.")
            out.sample("second_chance_fast_path_info", ["status": fastPath.status], fastPath.counters == nil ? 0 : 1)
            out.family(
                "second_chance_fast_path_passed_up_total", .counter,
                help: "Packets the tc program sent up unchanged to the NFQUEUE rule, by reason.")
            for (slot, reason) in FastPathCounters.passedUp {
                out.sample(
                    "second_chance_fast_path_passed_up_total", ["reason": reason],
                    fastPath.counters?[slot] ?? 0)
            }
        }
        func family(_ name: String, _ kind: PrometheusText.Kind, _ help: String, _ value: (QueueReport) -> UInt64?) {
            out.family(name, kind, help: help)
            for queue in queues {
                if let value = value(queue) { out.sample(name, ["queue": String(queue.queue)], value) }
            }
        }
        family("second_chance_queue_packets_total", .counter, "GUE packets read, per NFQUEUE queue (one thread each).")
        { $0.packets }
        family(
            "second_chance_queue_receive_errors_total", .counter,
            "Failed reads and non-packet messages on the queue's socket."
        ) {
            $0.receiveErrors
        }
        family(
            "second_chance_queue_crash_replays_dropped_total", .counter,
            "Times the packets earlier readers died with, three restarts in a row, were dropped instead of replayed."
        ) { $0.crashReplaysDropped }
        family(
            "second_chance_queue_kernel_dropped_total", .counter,
            "Packets the kernel dropped because the queue was full (queue_dropped)."
        ) { $0.kernel?.queueDropped }
        family(
            "second_chance_queue_user_dropped_total", .counter,
            "Packets the kernel dropped because the queue's socket buffer was full (user_dropped)."
        ) { $0.kernel?.userDropped }
        family("second_chance_queue_waiting", .gauge, "Packets queued in the kernel, waiting for a verdict.") {
            $0.kernel?.waiting
        }
        family(
            "second_chance_queue_max_length", .gauge,
            "Packets the kernel holds for the queue at most (--queue-maxlen); then it drops, or fails open."
        ) { UInt64($0.maximumLength) }
    }

    /// `name value` lines, glb-redirect style, dropped counters summed into `dropped_malformed` too:
    /// what both paths decided. Then the tc program's share (`fast_path_` lines) and each queue's
    /// counters, prefixed `queue_N_`.
    public static func text(_ values: [UInt64], queues: [QueueReport] = [], fastPath: FastPathReport? = nil) -> String {
        var out = ""
        var malformed: UInt64 = 0
        let kernel = fastPath?.counters?.byCounterName
        for name in CounterName.all {
            let value = values[name.index] &+ (kernel?[name.index] ?? 0)
            if case .dropped = name { malformed &+= value }
            out += "\(name.shortName): \(value)\n"
        }
        out += "dropped_malformed: \(malformed)\n"
        if let fastPath {
            out += "fast_path: \(fastPath.status)\n"
            if let counters = fastPath.counters {
                for (slot, name) in FastPathCounters.mirrored {
                    out += "fast_path_\(name.shortName): \(counters[slot])\n"
                }
                for (slot, reason) in FastPathCounters.passedUp { out += "fast_path_up_\(reason): \(counters[slot])\n" }
            }
        }
        for queue in queues {
            out +=
                """
                queue_\(queue.queue)_packets: \(queue.packets)\nqueue_\(queue.queue)_receive_errors: \
                \(queue.receiveErrors)\nqueue_\(queue.queue)_crash_replays_dropped: \(queue.crashReplaysDropped)\n
                """
            if let kernel = queue.kernel {
                out +=
                    """
                    queue_\(queue.queue)_kernel_dropped: \(kernel.queueDropped)\nqueue_\(queue.queue)_user_dropped: \
                    \(kernel.userDropped)\n
                    """
                out += "queue_\(queue.queue)_waiting: \(kernel.waiting)\n"
            }
        }
        return out
    }
}
