/// Whether every queue thread has come round since the last look: the service watchdog is told
/// the daemon is alive only then. A thread wedged in a decision (or a lookup that never returns)
/// keeps its queue bound while it answers nothing; a process that merely lives proves nothing.
public struct QueueProgress: Sendable {
    private var seen: [UInt64]?

    public init() {}

    /// `turns`: each queue thread's loop count now, in a fixed order. The indices of the threads
    /// whose count has not moved since the previous call (none on the first).
    public mutating func stalled(_ turns: [UInt64]) -> [Int] {
        defer { seen = turns }
        guard let seen, seen.count == turns.count else { return [] }
        return turns.indices.filter { turns[$0] == seen[$0] }
    }
}

/// systemd's watchdog as sd_watchdog_enabled(3) reads it: WATCHDOG_USEC for this process
/// (WATCHDOG_PID, when set, names it), told every half interval.
public struct WatchdogSettings: Sendable, Equatable {
    /// How often the daemon looks at its threads and tells the watchdog, in milliseconds.
    public let checkMilliseconds: Int32

    /// nil when no watchdog applies to process `pid`, or its interval is not a number of
    /// microseconds in 1 ms...24 h.
    public init?(environment: [String: String], pid: Int32) {
        guard let text = environment["WATCHDOG_USEC"], let microseconds = UInt64(text),
            (1000...86_400_000_000).contains(microseconds)
        else { return nil }
        if let owner = environment["WATCHDOG_PID"], owner != String(pid) { return nil }
        checkMilliseconds = Int32(max(1, microseconds / 2000))
    }

    /// How long one step of the main loop may take (a re-exec's check of the new program) and
    /// the watchdog still hear from it in time: half the interval less a second, at least one.
    public var longestStepSeconds: Int { max(1, Int(checkMilliseconds) / 1000 - 1) }

    /// The deadline of a re-exec's check: it loads and verifies the BPF programs, as this start
    /// did on the same kernel (seconds under emulation or load). Bounded by the watchdog where
    /// one watches; else four times what this start took to serve (`startupSeconds`), at least
    /// 30 s. Never over 300 s, which the control client waits for a re-exec's answer.
    public static func reexecCheckSeconds(_ settings: WatchdogSettings?, startupSeconds: Int = 0) -> Int {
        min(300, settings?.longestStepSeconds ?? max(30, min(startupSeconds, 300) * 4))
    }
}
