import LinuxSys
import NetTypes

/// One counter per bucket of flows, shared by every queue thread. A thread that lets a packet make
/// a local socket (a SYN, a cookie ACK) bumps its flow's counter before the verdict goes out and
/// again once the kernel has acted on it; a "not here" answer is kept with the counter read before
/// its lookup and trusted only while the counter is unchanged (`FlowCache`). So no thread forwards
/// a flow on a cached answer older than a socket another thread let this host make.
public final class FlowEpochs: Sendable {
    private static let buckets = 1 << 16
    private let counters = AtomicWords(count: buckets)

    public init() {}

    @inline(__always)
    private func slot(_ flow: FlowKey) -> Int { flow.hashValue & (Self.buckets - 1) }

    public func current(_ flow: FlowKey) -> UInt64 { counters.orderedLoad(slot(flow)) }

    public func bump(_ flow: FlowKey) { counters.orderedIncrement(slot(flow)) }
}
