import ArgumentParser
import Foundation
import Glibc
import LinuxSys
import NetTypes

/// Times the listener dumps in the calling namespace: the former single dump of LISTEN and
/// NEW_SYN_RECV sockets, the responder monitor's dumps (every listener, with and without their SYN
/// queues), and bindkeeper's `list` (the listeners of its own ports, `--port`, likewise). Each row
/// is one invocation's median and what it found (messages, or listeners): what the established
/// connections of the namespace cost each way.
struct SockDiagCost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sockdiag-cost", abstract: "Time sock_diag listener dumps in this namespace (root).")

    @Option(help: "Dumps per row (at most 100000).") var runs: Int = 200
    @Option(help: "The ports bindkeeper's list asks for (repeatable).") var port: [UInt16] = []

    func validate() throws {
        guard (1...100_000).contains(runs) else { throw ValidationError("--runs must be 1 to 100000") }
        guard !port.isEmpty else { throw ValidationError("give at least one --port") }
    }

    func run() throws {
        let diag = try SockDiag()
        let (listen, synRecv) = (UInt32(1) << UInt32(TCP_LISTEN), UInt32(1) << 12)
        func median(_ body: () throws -> Int) throws -> (microseconds: Double, messages: Int) {
            var times: [UInt64] = []
            var messages = 0
            for _ in 0..<runs {
                let start = MonotonicClock.nanoseconds()
                messages = try body()
                times.append(MonotonicClock.nanoseconds() - start)
            }
            return (Double(times.sorted()[times.count / 2]) / 1000, messages)
        }
        let rows: [(String, () throws -> Int)] = [
            (
                "one dump, LISTEN and NEW_SYN_RECV (before)",
                {
                    var count = 0
                    for family in [UInt8(AF_INET), UInt8(AF_INET6)] {
                        try diag.dump(family: family, states: listen | synRecv) { _, _ in count += 1 }
                    }
                    return count
                }
            ),
            ("monitor under a flood: listeners and SYN queues", { try diag.dumpListeners().count }),
            ("monitor otherwise: listeners only", { try diag.dumpListeners(requestSockets: false).count }),
            ("bindkeeper list: --port, SYN queues (once a second)", { try diag.dumpListeners(ports: Set(port)).count }),
            (
                "bindkeeper list: --port, listeners only",
                { try diag.dumpListeners(ports: Set(port), requestSockets: false).count }
            ),
        ]
        print("dump\tmedian_us\tresult\t(\(runs) runs each)")
        var baseline: Double?
        for (name, body) in rows {
            let (microseconds, messages) = try median(body)
            let ratio = baseline.map { String(format: "%.4fx", microseconds / $0) } ?? "1.0000x"
            baseline = baseline ?? microseconds
            print("\(name)\t\(String(format: "%.1f", microseconds))\t\(messages)\t\(ratio)")
        }
    }
}
