import ArgumentParser
import Glibc
import LabKit
import LinuxSys
import NetTypes
import ProxysideArguments

/// Long-lived clients: each keeps one connection and does an echo round trip every interval,
/// so a connection broken by a table change shows up as a failure.
struct Clients: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Long-lived echo clients; prints per-second totals.")

    @Option var target: Endpoint
    @Option var connections: Int = 8
    @Option var seconds: Int = 10
    @Option var intervalMs: Int = 100
    @Option(help: "Open this many new short connections per second too.") var newPerSecond: Int = 0
    @Option(help: "Bind the long-lived connections to this local address...") var source: IPv4Address?
    @Option(help: "...and to consecutive ports from this one.") var firstPort: UInt16 = 0

    func validate() throws {
        guard (0...10000).contains(connections), (1...86400).contains(seconds), (1...3_600_000).contains(intervalMs),
            (0...100_000).contains(newPerSecond)
        else {
            throw ValidationError(
                """
                --connections is 0...10000, --seconds 1...86400, --interval-ms 1...3600000, \
                --new-per-second 0...100000
                """)
        }
    }

    func run() throws {
        let (address, port) = (target.address, target.port)
        var fds = try (0..<connections).map { index -> Int32 in
            guard let source else { return try LabSockets.connectTCP(to: address, port: port) }
            return try LabSockets.connectTCP(
                to: address, port: port, from: .v4(source), localPort: firstPort &+ UInt16(index))
        }
        // A round trip or a new connection slower than 200 ms waited for a retransmission.
        var roundTrips = 0, failures = 0, newOK = 0, newFailed = 0, slow = 0, newSlow = 0
        let slowNanoseconds: UInt64 = 200_000_000
        let start = MonotonicClock.nanoseconds()
        let end = start + UInt64(seconds) * 1_000_000_000
        var nextNew = start
        var iteration = 0
        while MonotonicClock.nanoseconds() < end {
            for index in fds.indices where fds[index] >= 0 {
                let message = Array("ping \(iteration) \(index)\n".utf8)
                let sent = MonotonicClock.nanoseconds()
                if SocketIO.sendAll(fds[index], message),
                    LabSockets.receiveExactly(fds[index], message.count) == message
                {
                    roundTrips += 1
                    if MonotonicClock.nanoseconds() - sent > slowNanoseconds { slow += 1 }
                } else {
                    failures += 1
                    close(fds[index])
                    fds[index] = -1
                }
            }
            while newPerSecond > 0 && MonotonicClock.nanoseconds() >= nextNew {
                nextNew += 1_000_000_000 / UInt64(newPerSecond)
                let opened = MonotonicClock.nanoseconds()
                if let fd = try? LabSockets.connectTCP(to: address, port: port) {
                    let message = Array("new\n".utf8)
                    if SocketIO.sendAll(fd, message), LabSockets.receiveExactly(fd, message.count) == message {
                        newOK += 1
                        if MonotonicClock.nanoseconds() - opened > slowNanoseconds { newSlow += 1 }
                    } else {
                        newFailed += 1
                    }
                    close(fd)
                } else {
                    newFailed += 1
                }
            }
            iteration += 1
            usleep(UInt32(intervalMs * 1000))
        }
        for fd in fds where fd >= 0 { close(fd) }
        let alive = fds.filter { $0 >= 0 }.count
        print(
            """
            clients: connections=\(connections) alive=\(alive) round_trips=\(roundTrips) failures=\(failures) \
            slow=\(slow) new_ok=\(newOK) new_failed=\(newFailed) new_slow=\(newSlow)
            """
        )
        if failures > 0 || newFailed > 0 { throw ExitCode(1) }
    }
}
