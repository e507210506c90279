import ArgumentParser
import Glibc
import LinuxSys
import ProxysideArguments
import Telemetry

/// Measures a running second-chance the way nfq-baseline measures itself: packets handled and the
/// time from the first to the last, sampled from its control socket every 5 ms.
struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time a second-chance run from its counters (first to last packet).")

    @Option var control: String
    @Option(help: "Stop after this long without a new packet, once packets have arrived.") var idleMs: Int = 1000
    @Option var maxSeconds: Int = 60

    func total() -> UInt64? {
        guard let text = try? readControlSocket(control) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("total_packets: ") {
            return UInt64(line.dropFirst("total_packets: ".count))
        }
        return nil
    }

    func validate() throws {
        guard (1...3_600_000).contains(idleMs), (1...86400).contains(maxSeconds) else {
            throw ValidationError("--idle-ms is 1...3600000, --max-seconds 1...86400")
        }
    }

    func run() throws {
        guard let start = total() else { throw CommandFailure("cannot read \(control)") }
        var last = start
        var firstChange: UInt64?, lastChange: UInt64 = 0
        let deadline = MonotonicClock.nanoseconds() + UInt64(maxSeconds) * 1_000_000_000
        while MonotonicClock.nanoseconds() < deadline {
            usleep(5000)
            let now = MonotonicClock.nanoseconds()
            guard let value = total() else { continue }
            if value != last {
                if firstChange == nil { firstChange = now }
                lastChange = now
                last = value
            } else if firstChange != nil && now - lastChange > UInt64(idleMs) * 1_000_000 {
                break
            }
        }
        let packets = last - start
        let seconds = Double(lastChange - (firstChange ?? lastChange)) / 1e9
        print(
            """
            second-chance: packets=\(packets) milliseconds=\(Int(seconds * 1000)) \
            rate=\(seconds > 0 ? Int(Double(packets) / seconds) : 0)
            """
        )
    }
}
