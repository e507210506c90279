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
    /// The id of the last packet queued: it moves with every packet that reaches the queue.
    public var idSequence: UInt64

    public init(portID: UInt32 = 0, waiting: UInt64, queueDropped: UInt64, userDropped: UInt64, idSequence: UInt64 = 0)
    {
        self.portID = portID
        self.waiting = waiting
        self.queueDropped = queueDropped
        self.userDropped = userDropped
        self.idSequence = idSequence
    }

    /// Parses the file's lines: `queue portid waiting copy_mode copy_range queue_dropped
    /// user_dropped id_sequence 1`. Lines that do not have that shape are skipped.
    public static func parse(_ text: some StringProtocol) -> [UInt16: KernelQueueStatistics] {
        var out: [UInt16: KernelQueueStatistics] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 7, let queue = UInt16(fields[0]),
                let portID = UInt32(fields[1]) ?? Int32(fields[1]).map(UInt32.init(bitPattern:)),
                let waiting = UInt64(fields[2]),
                let queueDropped = UInt64(fields[5]), let userDropped = UInt64(fields[6])
            else { continue }
            out[queue] = KernelQueueStatistics(
                portID: portID, waiting: waiting, queueDropped: queueDropped, userDropped: userDropped,
                idSequence: fields.count > 7 ? UInt64(fields[7]) ?? 0 : 0)
        }
        return out
    }
}
