import CLinuxShims
import ProxysideCore

/// Zeroed 64-bit words that several threads read and write through the atomic shims.
final class SharedWords: @unchecked Sendable {
    let base: UnsafeMutablePointer<UInt64>

    init(count: Int) {
        base = .allocate(capacity: count)
        base.initialize(repeating: 0, count: count)
    }

    deinit { base.deallocate() }
}

/// One queue thread's counters: written by that thread only, read by the stats servers.
public final class CounterBlock: @unchecked Sendable {
    private let words = SharedWords(count: CounterName.count)
    private var storage: UnsafeMutablePointer<UInt64> { words.base }

    public init() {}

    @inline(__always)
    public func add(_ name: CounterName, _ amount: UInt64 = 1) {
        proxyside_counter_add(storage + name.index, amount)
    }

    public func value(_ name: CounterName) -> UInt64 { proxyside_counter_load(storage + name.index) }

    public func snapshot() -> [UInt64] { (0..<CounterName.count).map { proxyside_counter_load(storage + $0) } }

    /// Element-wise sum of several blocks' snapshots.
    public static func sum(_ blocks: [CounterBlock]) -> [UInt64] {
        var total = [UInt64](repeating: 0, count: CounterName.count)
        for block in blocks {
            for (index, value) in block.snapshot().enumerated() { total[index] &+= value }
        }
        return total
    }
}
