/// What the kernel says about one NFQUEUE queue (/proc/net/netfilter/nfnetlink_queue): the only
/// place where packets lost before second-chance read them are counted.
public struct KernelQueueStatistics: Equatable, Sendable {
    /// The netlink port of the socket bound to the queue (the kernel prints it signed).
    public var portID: UInt32
    /// Packets queued now, waiting for a verdict.
    public var waiting: UInt64
    /// Dropped (or, with --fail-open, accepted unread) because the queue held --queue-maxlen packets.
    public var queueDropped: UInt64
    /// Dropped because the netlink socket's receive buffer was full.
    public var userDropped: UInt64

    public init(portID: UInt32 = 0, waiting: UInt64, queueDropped: UInt64, userDropped: UInt64) {
        self.portID = portID
        self.waiting = waiting
        self.queueDropped = queueDropped
        self.userDropped = userDropped
    }

    /// Parses the file's lines: `queue portid waiting copy_mode copy_range queue_dropped
    /// user_dropped id_sequence 1`. Lines that do not have that shape are skipped.
    public static func parse(_ text: some StringProtocol) -> [UInt16: KernelQueueStatistics] {
        var out: [UInt16: KernelQueueStatistics] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 7, let queue = UInt16(fields[0]),
                let portID = UInt32(fields[1]) ?? Int32(fields[1]).map(UInt32.init(bitPattern:)), let waiting = UInt64(fields[2]),
                let queueDropped = UInt64(fields[5]), let userDropped = UInt64(fields[6])
            else { continue }
            out[queue] = KernelQueueStatistics(portID: portID, waiting: waiting, queueDropped: queueDropped, userDropped: userDropped)
        }
        return out
    }
}

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
