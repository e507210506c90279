import Synchronization

/// A fixed number of 64-bit atomics, zeroed, shared by threads: per-thread counter blocks, flow
/// epochs, flags. `Atomic` cannot live in an Array, so they sit in one allocation of their own.
///
/// `@unchecked Sendable`: the buffer is never reallocated, and every access is an atomic operation.
public final class AtomicWords: @unchecked Sendable {
    private let base: UnsafeMutablePointer<Atomic<UInt64>>
    public let count: Int

    public init(count: Int) {
        self.count = count
        base = .allocate(capacity: count)
        for index in 0..<count { (base + index).initialize(to: Atomic(0)) }
    }

    deinit {
        base.deinitialize(count: count)
        base.deallocate()
    }

    /// Relaxed: counters whose readers want a recent value, not an ordering.
    @inline(__always)
    public func add(_ index: Int, _ amount: UInt64 = 1) {
        base[index].wrappingAdd(amount, ordering: .relaxed)
    }

    @inline(__always)
    public func load(_ index: Int) -> UInt64 { base[index].load(ordering: .relaxed) }

    @inline(__always)
    public func store(_ index: Int, _ value: UInt64) { base[index].store(value, ordering: .relaxed) }

    /// Sequentially consistent: values that order work between threads (`FlowEpochs`).
    @inline(__always)
    public func orderedLoad(_ index: Int) -> UInt64 { base[index].load(ordering: .sequentiallyConsistent) }

    @inline(__always)
    public func orderedIncrement(_ index: Int) { base[index].wrappingAdd(1, ordering: .sequentiallyConsistent) }
}
