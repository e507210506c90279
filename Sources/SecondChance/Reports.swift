import LinuxSys
import SecondChanceCore
import Telemetry

/// One queue's line in the report: what its thread counted and what the kernel counted.
public struct QueueReport: Sendable {
    public var queue: UInt16
    public var packets: UInt64
    /// Reads that failed or returned messages that were not packets.
    public var receiveErrors: UInt64
    /// Absent when the kernel's table could not be read or does not list the queue.
    public var kernel: KernelQueueStatistics?

    public init(queue: UInt16, packets: UInt64, receiveErrors: UInt64, kernel: KernelQueueStatistics?) {
        self.queue = queue
        self.packets = packets
        self.receiveErrors = receiveErrors
        self.kernel = kernel
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

    public init(version: String, build: String, reexecs: UInt64, adoptedQueues: Int) {
        self.version = version
        self.build = build
        self.reexecs = reexecs
        self.adoptedQueues = adoptedQueues
    }

    public var text: String {
        "version: \(version)\nbuild: \(build)\nreexecs: \(reexecs)\nadopted_queues: \(adoptedQueues)\n"
    }

    public var prometheus: String {
        "# HELP second_chance_build_info The running release and build.\n# TYPE second_chance_build_info gauge\n"
            + "second_chance_build_info{version=\"\(PrometheusText.escapeLabel(version))\",build=\"\(PrometheusText.escapeLabel(build))\"} 1\n"
            + "# HELP second_chance_reexecs Re-executions of this process (SIGUSR1, second-chance reexec).\n# TYPE second_chance_reexecs gauge\n"
            + "second_chance_reexecs \(reexecs)\n"
            + "# HELP second_chance_adopted_queues Queue sockets taken over with what they held (re-exec, fd store).\n"
            + "# TYPE second_chance_adopted_queues gauge\nsecond_chance_adopted_queues \(adoptedQueues)\n"
    }
}

public enum CounterReport {
    /// Prometheus text exposition of summed counter values (indexed as `CounterName.index`) and of
    /// each queue's own and kernel counters.
    public static func prometheus(_ values: [UInt64], queues: [QueueReport]) -> String {
        var out = "# HELP second_chance_packets_total GUE packets read from NFQUEUE.\n"
        out += "# TYPE second_chance_packets_total counter\n"
        var typed: Set<String> = ["second_chance_packets_total"]
        for name in CounterName.all {
            let base = String(name.metric.prefix { $0 != "{" })
            if typed.insert(base).inserted { out += "# TYPE \(base) counter\n" }
            out += "\(name.metric) \(values[name.index])\n"
        }
        func family(_ name: String, _ type: String, _ help: String, _ value: (QueueReport) -> UInt64?) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for queue in queues {
                if let value = value(queue) { out += "\(name){queue=\"\(queue.queue)\"} \(value)\n" }
            }
        }
        family("second_chance_queue_packets_total", "counter", "GUE packets read, per NFQUEUE queue (one thread each).") { $0.packets }
        family("second_chance_queue_receive_errors_total", "counter", "Failed reads and non-packet messages on the queue's socket.") { $0.receiveErrors }
        family("second_chance_queue_kernel_dropped_total", "counter", "Packets the kernel dropped because the queue was full (queue_dropped).") { $0.kernel?.queueDropped }
        family("second_chance_queue_user_dropped_total", "counter", "Packets the kernel dropped because the queue's socket buffer was full (user_dropped).") { $0.kernel?.userDropped }
        family("second_chance_queue_waiting", "gauge", "Packets queued in the kernel, waiting for a verdict.") { $0.kernel?.waiting }
        return out
    }

    /// `name value` lines, glb-redirect style, dropped counters summed into `dropped_malformed` too.
    /// Then each queue's counters, prefixed `queue_N_`.
    public static func text(_ values: [UInt64], queues: [QueueReport] = []) -> String {
        var out = ""
        var malformed: UInt64 = 0
        for name in CounterName.all {
            if case .dropped = name { malformed += values[name.index] }
            out += "\(name.shortName): \(values[name.index])\n"
        }
        out += "dropped_malformed: \(malformed)\n"
        for queue in queues {
            out += "queue_\(queue.queue)_packets: \(queue.packets)\nqueue_\(queue.queue)_receive_errors: \(queue.receiveErrors)\n"
            if let kernel = queue.kernel {
                out += "queue_\(queue.queue)_kernel_dropped: \(kernel.queueDropped)\nqueue_\(queue.queue)_user_dropped: \(kernel.userDropped)\n"
                out += "queue_\(queue.queue)_waiting: \(kernel.waiting)\n"
            }
        }
        return out
    }
}
