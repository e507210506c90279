import NetTypes
import SecondChanceCore

/// A batch's socket-table questions: every flow answered from the cache where it can be, the rest
/// in one sock_diag round trip, each flow asked once. The answers wait in the owner's `prefetched`
/// for the decisions that follow.
struct BatchLookups {
    /// Flows the cache could not answer, with the epoch each was asked in.
    private var pending: [FlowKey] = []
    private var epochs: [UInt64] = []
    /// Flows answered from the cache this batch: a later packet of one is a cache hit too.
    private var cached: Set<FlowKey> = []

    mutating func start() {
        pending.removeAll(keepingCapacity: true)
        epochs.removeAll(keepingCapacity: true)
        cached.removeAll(keepingCapacity: true)
    }

    /// One packet's flow: from the cache, or marked to be asked.
    @inline(__always)
    mutating func ask(_ flow: FlowKey, ownership: inout KernelFlowOwnership, counters: CounterBlock, now: UInt64) {
        // Cache hits count per packet, as without batching; each flow is looked up once.
        if ownership.prefetched[flow] != nil {
            if cached.contains(flow) { counters.add(.lookupCacheHits) }
            return
        }
        let epoch = ownership.epochs.current(flow)
        if let answer = ownership.cache.answer(for: flow, now: now, epoch: epoch) {
            counters.add(.lookupCacheHits)
            ownership.prefetched[flow] = answer
            cached.insert(flow)
        } else {
            ownership.prefetched[flow] = .failed  // a placeholder, replaced by `answer`
            pending.append(flow)
            epochs.append(epoch)
        }
    }

    /// Asks the kernel about the flows the cache could not answer, and remembers what it said.
    mutating func answer(ownership: inout KernelFlowOwnership, counters: CounterBlock, now: UInt64) {
        guard !pending.isEmpty else { return }
        counters.add(.lookups, UInt64(pending.count))
        for ((flow, epoch), answer) in zip(zip(pending, epochs), ownership.sockDiag.lookup(batch: pending)) {
            ownership.prefetched[flow] = answer
            ownership.cache.remember(answer, for: flow, now: now, epoch: epoch)
        }
    }
}
