import CLinuxShims
import ProxysideCore

/// One queue thread's counters: written by that thread only, read by the stats servers.
public final class CounterBlock: @unchecked Sendable {
    private let storage: UnsafeMutablePointer<UInt64>

    public init() {
        storage = .allocate(capacity: CounterName.count)
        storage.initialize(repeating: 0, count: CounterName.count)
    }

    deinit { storage.deallocate() }

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
