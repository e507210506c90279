import Foundation

/// A random generator whose seed comes from PROXYSIDE_SEED or is drawn and printed, so that any
/// failure of a randomized test can be replayed: `PROXYSIDE_SEED=N swift test --filter NAME`.
/// splitmix64: small, fast, and good enough to drive mutations.
public struct SeededGenerator: RandomNumberGenerator {
    public let seed: UInt64
    private var state: UInt64

    public init(seed: UInt64) {
        self.seed = seed
        state = seed
    }

    /// The seed from the environment, or a fresh one; either way printed with `name`.
    public static func fromEnvironment(name: String) -> SeededGenerator {
        let seed =
            ProcessInfo.processInfo.environment["PROXYSIDE_SEED"].flatMap(UInt64.init)
            ?? UInt64.random(in: 0...UInt64.max)
        print("\(name): PROXYSIDE_SEED=\(seed)")
        return SeededGenerator(seed: seed)
    }

    /// For failure messages.
    public var report: String { "(PROXYSIDE_SEED=\(seed))" }

    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

    /// 1 to `times` edits at random places: a byte replaced or inserted from `alphabet`, or removed.
    public mutating func mutate(_ bytes: inout [UInt8], alphabet: [UInt8], times: Int) {
        for _ in 0..<(1 + below(times)) where !bytes.isEmpty {
            let at = below(bytes.count)
            switch below(3) {
            case 0: bytes[at] = alphabet[below(alphabet.count)]
            case 1: bytes.remove(at: at)
            default: bytes.insert(alphabet[below(alphabet.count)], at: at)
            }
        }
    }
}
