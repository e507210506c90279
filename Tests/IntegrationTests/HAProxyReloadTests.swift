import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import Telemetry
import XCTest

/// Real HAProxy (Debian's) run by `bindkeeper haproxy`, reloaded while a bounded load opens new
/// connections continuously.
final class HAProxyReloadTests: XCTestCase {
    var lab: BrokerLab!

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy") else {
            throw LabError("haproxy is not installed (scripts/setup.sh installs it)")
        }
        lab = try BrokerLab(testName)
        try lab.startBroker()
    }

    override func tearDown() { lab?.tearDown() }

    /// A frontend that answers every request itself, on `bind`.
    @discardableResult
    func writeTemplate(_ name: String, bind: String, extra: String = "") throws -> String {
        let path = lab.directory.appendingPathComponent("\(name).cfg.tmpl").path
        let answer = try String(
            contentsOf: Lab.packageRoot.appendingPathComponent("examples/lab/haproxy-answer.cfg.in"), encoding: .utf8)
        try (answer.replacingOccurrences(of: "@BIND@", with: bind) + extra).write(
            toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func load(port: Int, seconds: Int, concurrency: Int) throws -> Process {
        try lab.start(
            "load",
            [
                lab.binary("glb-lab"), "http-load", "--target", "\(BrokerLab.vip):\(port)", "--seconds",
                String(seconds),
                "--concurrency", String(concurrency), "--timeout-seconds", "3",
            ])
    }

    /// The load generator's counts: attempts, ok, failed, and each failure kind.
    func counts(_ process: Process) throws -> [String: Int] {
        process.waitUntilExit()
        let log = try XCTUnwrap(lab.logs.last { $0.name == "load" }?.url)
        let line = try XCTUnwrap(
            try String(contentsOf: log, encoding: .utf8).split(separator: "\n").last { $0.hasPrefix("http-load:") })
        return Dictionary(
            uniqueKeysWithValues: line.split(separator: " ").dropFirst().compactMap { pair -> (String, Int)? in
                let parts = pair.split(separator: "=")
                return parts.count == 2 ? (String(parts[0]), Int(parts[1]) ?? -1) : nil
            })
    }

    func reloads(_ name: String) -> Int {
        lab.logs.filter { $0.name == "supervisor-\(name)" }
            .map {
                ((try? String(contentsOf: $0.url, encoding: .utf8)) ?? "").components(
                    separatedBy: "reloaded: haproxy pid"
                ).count - 1
            }
            .reduce(0, +)
    }

    /// `count` reloads, each one started only after the previous one took effect.
    func reload(_ name: String, _ supervisor: Process, count: Int, intervalMs: UInt32) throws {
        for index in 1...count {
            let before = reloads(name)
            kill(supervisor.processIdentifier, SIGUSR2)
            try lab.waitFor("reload \(index) of \(name)") { self.reloads(name) > before }
            usleep(intervalMs * 1000)
        }
    }

    func testFiftyReloadsUnderLoadDropNothingWithSharedSockets() throws {
        let reloadCount = 50, seconds = 14, concurrency = 64
        let shared = try writeTemplate("shared", bind: "{{bind tcp://\(BrokerLab.vip):80?backlog=4096}}")
        let plain = try writeTemplate("plain", bind: "\(BrokerLab.vip):81")

        let sharedSupervisor = try lab.startSupervisor("shared", template: shared)
        try lab.waitUntilListening(port: 80)
        let sharedLoad = try load(port: 80, seconds: seconds, concurrency: concurrency)
        usleep(500_000)
        try reload("shared", sharedSupervisor.process, count: reloadCount, intervalMs: 150)
        let sharedCounts = try counts(sharedLoad)

        // The same supervisor, reloads and load, but HAProxy binds its own SO_REUSEPORT sockets.
        let plainSupervisor = try lab.startSupervisor("plain", template: plain)
        try lab.waitUntilListening(port: 81)
        let plainLoad = try load(port: 81, seconds: seconds, concurrency: concurrency)
        usleep(500_000)
        try reload("plain", plainSupervisor.process, count: reloadCount, intervalMs: 150)
        let plainCounts = try counts(plainLoad)

        print(
            """
            reload-under-load: \(reloadCount) reloads each; bindkeeper (shared socket): \
            attempts=\(sharedCounts["attempts"] ?? 0) failed=\(sharedCounts["failed"] ?? 0); 
            """
                + """
                plain SO_REUSEPORT: attempts=\(plainCounts["attempts"] ?? 0) failed=\(plainCounts["failed"] ?? 0) \
                reset=\(plainCounts["reset"] ?? 0) refused=\(plainCounts["refused"] ?? 0)
                """
        )
        XCTAssertEqual(reloads("shared"), reloadCount)
        XCTAssertEqual(reloads("plain"), reloadCount)
        XCTAssertGreaterThan(sharedCounts["attempts"] ?? 0, 10_000, "the load ran")
        XCTAssertEqual(
            sharedCounts["failed"], 0, "no connection fails across reloads on a shared socket: \(sharedCounts)")
        XCTAssertGreaterThan(plainCounts["attempts"] ?? 0, 10_000, "the load ran")
        // Old instances were told to finish (-sf) and left; only the current one remains.
        try lab.waitFor("old instances to leave") {
            (try? String(contentsOfFile: sharedSupervisor.pidFile, encoding: .utf8))?.split(separator: "\n").count == 1
        }
    }

    /// The current HAProxy killed right after a reload took over: the older one was told to finish,
    /// so nobody would accept. The supervisor starts a replacement, and every connection made from
    /// the kill on succeeds (those the killed process held die with it; no one can save them).
    func testAKilledCurrentInstanceIsReplacedUnderLoad() throws {
        let template = try writeTemplate("killed", bind: "{{bind tcp://\(BrokerLab.vip):83?backlog=4096}}")
        let supervisor = try lab.startSupervisor("killed", template: template)
        try lab.waitUntilListening(port: 83)
        for round in 1...2 {
            try reload("killed", supervisor.process, count: 1, intervalMs: 500)
            let current = try XCTUnwrap(
                pid_t(
                    try String(contentsOfFile: supervisor.pidFile, encoding: .utf8).split(separator: "\n").first ?? ""))
            XCTAssertEqual(kill(current, SIGKILL), 0)
            let after = try counts(try load(port: 83, seconds: 2, concurrency: 16))
            XCTAssertGreaterThan(after["ok"] ?? 0, 100, "round \(round): the load ran: \(after)")
            XCTAssertEqual(after["failed"], 0, "round \(round): every connection succeeded: \(after)")
            XCTAssertTrue(
                lab.allLogs.contains("haproxy pid \(current) exited (137); replaced by pid"), "round \(round)")
        }
        XCTAssertTrue(supervisor.process.isRunning, "the supervisor keeps running")
    }

    func testAFailedCheckLeavesTheRunningInstanceServing() throws {
        let template = try writeTemplate("guarded", bind: "{{bind tcp://\(BrokerLab.vip):82}}")
        let supervisor = try lab.startSupervisor("guarded", template: template)
        // The pid file can appear before HAProxy binds: a load started then counts refusals.
        try lab.waitUntilListening(port: 82)
        let firstPid = try String(contentsOfFile: supervisor.pidFile, encoding: .utf8)

        // A configuration HAProxy rejects: --check says so, and a reload does not proceed.
        try writeTemplate("guarded", bind: "{{bind tcp://\(BrokerLab.vip):82}}", extra: "    no_such_keyword here\n")
        let check = try lab.run([
            lab.binary("bindkeeper"), "haproxy", "--check", "--socket", lab.socketPath, "-f", template, "--",
            "/usr/sbin/haproxy",
        ])
        XCTAssertNotEqual(check.status, 0, check.output)
        kill(supervisor.process.processIdentifier, SIGUSR2)
        try lab.waitFor("the refused reload") { self.lab.allLogs.contains("reload refused") }
        XCTAssertEqual(try String(contentsOfFile: supervisor.pidFile, encoding: .utf8), firstPid)
        let during = try counts(try load(port: 82, seconds: 1, concurrency: 2))
        XCTAssertGreaterThan(during["ok"] ?? 0, 0)
        XCTAssertEqual(during["failed"], 0, "\(during)")

        // A template naming a socket the broker refuses is refused the same way.
        try writeTemplate("guarded", bind: "{{bind tcp://198.18.9.9:82}}")
        kill(supervisor.process.processIdentifier, SIGUSR2)
        try lab.waitFor("the second refused reload") {
            self.lab.allLogs.components(separatedBy: "reload refused").count == 3
        }
        XCTAssertEqual(try String(contentsOfFile: supervisor.pidFile, encoding: .utf8), firstPid)

        // Fixed: the reload goes through, on the same kernel socket.
        try writeTemplate("guarded", bind: "{{bind tcp://\(BrokerLab.vip):82}}")
        let good = try lab.run([
            lab.binary("bindkeeper"), "haproxy", "--check", "--socket", lab.socketPath, "-f", template, "--",
            "/usr/sbin/haproxy",
        ])
        XCTAssertEqual(good.status, 0, good.output)
        kill(supervisor.process.processIdentifier, SIGUSR2)
        try lab.waitFor("the reload") { self.reloads("guarded") == 1 }
        try lab.waitFor("the old instance to leave") {
            let pids = (try? String(contentsOfFile: supervisor.pidFile, encoding: .utf8)) ?? ""
            return pids != firstPid && pids.split(separator: "\n").count == 1
        }
        let after = try counts(try load(port: 82, seconds: 1, concurrency: 2))
        XCTAssertGreaterThan(after["ok"] ?? 0, 0)
        XCTAssertEqual(after["failed"], 0)

        // SIGTERM: instances are soft-stopped, the supervisor exits 0 and removes its pid file.
        supervisor.process.terminate()
        supervisor.process.waitUntilExit()
        XCTAssertEqual(supervisor.process.terminationStatus, 0, lab.allLogs)
        XCTAssertFalse(FileManager.default.fileExists(atPath: supervisor.pidFile))
    }

    /// A TCP frontend whose sessions last: each reaches a backend listener of the test's that
    /// accepts and never answers, so a replaced instance keeps finishing them.
    func writeHoldingTemplate(_ name: String, port: Int, backend: Int) throws -> String {
        let path = lab.directory.appendingPathComponent("\(name).cfg.tmpl").path
        try """
        global
            maxconn 100
        defaults
            mode tcp
            timeout connect 2s
            timeout client 120s
            timeout server 120s
        frontend hold
            bind {{bind tcp://\(BrokerLab.vip):\(port)}}
            default_backend held
        backend held
            server s1 \(BrokerLab.address):\(backend)

        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The backend listener (non-blocking) and a supervisor with `extra` flags, once HAProxy listens.
    func startHolding(_ name: String, port: Int, backend: UInt16, _ extra: [String]) throws -> (
        supervisor: (process: Process, pidFile: String), backend: Int32
    ) {
        let listener = try lab.inside {
            try LabSockets.listenTCP(on: IPAddress(BrokerLab.address)!, port: backend, backlog: 64)
        }
        _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK)
        let template = try writeHoldingTemplate(name, port: port, backend: Int(backend))
        do {
            let supervisor = try lab.startSupervisor(name, template: template, extra: extra)
            try lab.waitUntilListening(port: UInt16(port))
            return (supervisor, listener)
        } catch {
            close(listener)
            throw error
        }
    }

    /// One session through the current instance, held open: its backend connection accepted.
    func holdSession(port: Int, backend: Int32) throws -> (client: Int32, server: Int32) {
        let client = try lab.inside { try LabSockets.connectTCP(to: IPAddress(BrokerLab.vip)!, port: UInt16(port)) }
        var server: Int32 = -1
        try lab.waitFor("HAProxy to open the session's backend connection") {
            server = accept(backend, nil, nil)
            return server >= 0
        }
        return (client, server)
    }

    func pids(_ pidFile: String) throws -> [Int32] {
        try String(contentsOfFile: pidFile, encoding: .utf8).split(separator: "\n").compactMap { Int32($0) }
    }

    func isAlive(_ pid: Int32) -> Bool { kill(pid, 0) == 0 }

    /// A reload storm with long sessions on every instance: never more than --max-draining older
    /// instances finish at once; past it the oldest is stopped, and said so.
    func testAReloadStormLeavesAtMostMaxDrainingInstancesFinishing() throws {
        let (supervisor, backend) = try startHolding("storm", port: 8620, backend: 8699, ["--max-draining", "2"])
        defer { close(backend) }
        var sessions: [(client: Int32, server: Int32)] = []
        defer {
            sessions.forEach {
                close($0.client); close($0.server)
            }
        }
        var everyPid: [Int32] = []
        for index in 1...6 {
            let current = try XCTUnwrap(try pids(supervisor.pidFile).first)
            everyPid.append(current)
            sessions.append(try holdSession(port: 8620, backend: backend))
            let before = reloads("storm")
            kill(supervisor.process.processIdentifier, SIGUSR2)
            try lab.waitFor("reload \(index)") { self.reloads("storm") > before }
            // The replaced one stops listening on the shared socket before the next session, so
            // that each instance holds one session of its own.
            try lab.waitFor("instance \(current) to stop listening") {
                self.lab.allLogs.contains("(\(current)) : Proxy hold stopped")
            }
            try lab.waitFor("at most 2 older instances alive after reload \(index)") {
                everyPid.filter(self.isAlive).count <= 2
            }
        }
        // Six instances replaced: the last two still finish their sessions, the four before were stopped.
        XCTAssertEqual(everyPid.filter(isAlive), Array(everyPid.suffix(2)))
        XCTAssertEqual(lab.allLogs.components(separatedBy: "(--max-draining)").count - 1, 4, lab.allLogs)
        XCTAssertTrue(supervisor.process.isRunning)
    }

    /// --drain-timeout: an instance still finishing a session that long after its replacement is
    /// stopped, not before; the new one serves throughout.
    func testAReplacedInstanceIsStoppedAtTheDrainDeadline() throws {
        let (supervisor, backend) = try startHolding("deadline", port: 8621, backend: 8698, ["--drain-timeout", "3"])
        defer { close(backend) }
        let first = try XCTUnwrap(try pids(supervisor.pidFile).first)
        let held = try holdSession(port: 8621, backend: backend)
        defer { close(held.client); close(held.server) }
        kill(supervisor.process.processIdentifier, SIGUSR2)
        try lab.waitFor("the reload") { self.reloads("deadline") == 1 }
        let replaced = MonotonicClock.nanoseconds()
        try lab.waitFor("the replaced instance to be stopped at its deadline", seconds: 20) { !self.isAlive(first) }
        XCTAssertGreaterThanOrEqual(MonotonicClock.nanoseconds() - replaced, 2_500_000_000, "not before the deadline")
        XCTAssertTrue(lab.allLogs.contains("haproxy pid \(first) stopped with its connections"), lab.allLogs)
        let next = try holdSession(port: 8621, backend: backend)
        close(next.client)
        close(next.server)
    }
}
