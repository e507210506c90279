import ArgumentParser
import Glibc
import LabKit
import LinuxSys
import NetTypes
import ProxysideArguments
import Synchronization

/// New connections, continuously, each one HTTP request whose answer must be a 200: a connection
/// refused, reset or left unanswered while a server reloads counts as a failure. Bounded in time
/// and in count.
struct HTTPLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http-load", abstract: "Open new HTTP connections continuously; count failures by kind.")

    @Option var target: Endpoint
    @Option(help: "Connections in flight at once (one thread each).") var concurrency: Int = 4
    @Option var seconds: Int = 10
    @Option(help: "Stop after this many connections in all.") var maxConnections: Int = 1_000_000
    @Option(help: "Per-connection timeout.") var timeoutSeconds: Int = 3

    func validate() throws {
        guard (1...1024).contains(concurrency), (1...86400).contains(seconds), maxConnections > 0,
            (1...3600).contains(timeoutSeconds)
        else {
            throw ValidationError(
                "--concurrency is 1...1024, --seconds 1...86400, --max-connections positive, --timeout-seconds 1...3600"
            )
        }
    }

    func run() throws {
        let (address, port) = (target.address, target.port)
        let tally = Mutex<[String: Int]>([:])
        let end = MonotonicClock.nanoseconds() + UInt64(seconds) * 1_000_000_000
        let budget = maxConnections, timeout = timeoutSeconds
        let started = Atomic<Int>(0)
        let request = Array("GET / HTTP/1.0\r\nHost: lab\r\n\r\n".utf8)
        let threads = try (0..<max(1, concurrency)).map { _ in
            try WorkerThread {
                while MonotonicClock.nanoseconds() < end && started.add(1, ordering: .relaxed).newValue <= budget {
                    let outcome = Self.attempt(address, port, request, timeout)
                    tally.withLock { $0[outcome, default: 0] += 1 }
                }
            }
        }
        for thread in threads { thread.join() }
        let counts = tally.withLock { $0 }
        let attempts = counts.values.reduce(0, +), ok = counts["ok"] ?? 0
        let kinds = ["refused", "reset", "timeout", "short", "other"].map { "\($0)=\(counts[$0] ?? 0)" }.joined(
            separator: " ")
        print(
            """
            http-load: attempts=\(attempts) ok=\(ok) failed=\(attempts - ok) \(kinds) \
            per_second=\(attempts / max(1, seconds))
            """
        )
    }

    static func attempt(_ address: IPAddress, _ port: UInt16, _ request: [UInt8], _ timeout: Int) -> String {
        let fd: Int32
        do { fd = try LabSockets.connectTCP(to: address, port: port, timeoutSeconds: timeout) } catch let error
            as SystemError
        {
            return error.errno == ECONNREFUSED
                ? "refused"
                : error.errno == EAGAIN || error.errno == ETIMEDOUT || error.errno == EINPROGRESS ? "timeout" : "other"
        } catch { return "other" }
        defer { close(fd) }
        guard SocketIO.sendAll(fd, request) else {
            return errno == ECONNRESET || errno == EPIPE ? "reset" : "other"
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count == 0 { break }
            if count < 0 { return errno == ECONNRESET ? "reset" : errno == EAGAIN ? "timeout" : "other" }
            response += chunk[0..<count]
        }
        let status = String(decoding: response.prefix(12), as: UTF8.self)
        return status.hasPrefix("HTTP/1.") && status.hasSuffix(" 200") ? "ok" : "short"
    }
}
