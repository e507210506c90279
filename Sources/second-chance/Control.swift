import ArgumentParser
import Glibc
import LinuxSys
import ProxysideArguments
import Telemetry

/// Where a running daemon answers: its control socket, named or found from its first queue.
struct ControlSocketOptions: ParsableArguments {
    @Option(help: "The daemon's first queue (to find its default control socket).")
    var queue: UInt16 = 0

    @Option(help: "The daemon's control socket.")
    var control: String?

    var path: String { control ?? defaultControlPath(queue: queue) }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a running daemon's counters.")

    @OptionGroup var daemon: ControlSocketOptions

    @Flag(help: "Print one JSON object (numbers as numbers, the responder's listeners as a list).")
    var json = false

    func run() throws {
        let text = try readControlSocket(daemon.path)
        print(json ? StatsJSON.render(text) : text, terminator: "")
    }
}

struct Reexec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            Re-execute a running daemon from its installed file, keeping its queues bound (as SIGUSR1 does); wait \
            until it serves again.
            """
    )

    @OptionGroup var daemon: ControlSocketOptions

    @Option(help: "How long to wait for the new image to serve (seconds, 1...600).")
    var waitSeconds: UInt32 = 10

    func validate() throws {
        guard (1...600).contains(waitSeconds) else { throw ValidationError("--wait-seconds is 1...600") }
    }

    func run() throws {
        let path = daemon.path
        func field(_ name: String, _ text: String) -> String? {
            text.split(separator: "\n").first { $0.hasPrefix(name + ": ") }.map { String($0.dropFirst(name.count + 2)) }
        }
        let before = try readControlSocket(path)
        let reexecs = field("reexecs", before).flatMap(UInt64.init) ?? 0
        let reply = try readControlSocket(path, request: "reexec")
        guard reply.hasPrefix("re-executing") else {
            if reply.isEmpty { logger.error("no answer to reexec") } else { StandardError.write(reply) }
            throw ExitCode(1)
        }
        print(reply, terminator: "")
        let deadline = MonotonicClock.nanoseconds() + UInt64(waitSeconds) * 1_000_000_000
        while MonotonicClock.nanoseconds() < deadline {
            if let now = try? readControlSocket(path), let count = field("reexecs", now).flatMap(UInt64.init),
                count > reexecs
            {
                print("serving again: build \(field("build", now) ?? "unknown")")
                return
            }
            usleep(20_000)
        }
        logger.error("the daemon did not serve again within \(waitSeconds) s (see its log)")
        throw ExitCode(1)
    }
}
