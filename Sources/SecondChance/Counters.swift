import LinuxSys
import SecondChanceCore

/// One queue thread's counters: written by that thread only, read by the stats servers.
public final class CounterBlock: Sendable {
    private let words = AtomicWords(count: CounterName.count)

    public init() {}

    @inline(__always)
    public func add(_ name: CounterName, _ amount: UInt64 = 1) {
        words.add(name.index, amount)
    }

    public func value(_ name: CounterName) -> UInt64 { words.load(name.index) }

    public func snapshot() -> [UInt64] { (0..<CounterName.count).map { words.load($0) } }

    /// Element-wise sum of several blocks' snapshots.
    public static func sum(_ blocks: [CounterBlock]) -> [UInt64] {
        var total = [UInt64](repeating: 0, count: CounterName.count)
        for block in blocks {
            for (index, value) in block.snapshot().enumerated() { total[index] &+= value }
        }
        return total
    }
}
