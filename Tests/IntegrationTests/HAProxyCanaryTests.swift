import Foundation
import Glibc
import LinuxSys
import XCTest

/// `bindkeeper haproxy --canary-percent` with real HAProxy under HTTP load: a template that
/// passes `haproxy -c` and fails at run time (its backend on a port where nothing listens) is
/// judged from its own stats socket and rolled back; a good one takes over after its window.
extension HAProxyReloadTests {
    static let canaryPort = 86
    static let canarySeconds = 4

    /// The lab's canary configuration (`examples/lab/haproxy-canary.cfg.in`): a socket group's
    /// frontend proxying to `backendPort`, the origin on 8181.
    func writeProxyTemplate(backendPort: Int, comment: String, extra: String = "") throws -> String {
        let path = lab.directory.appendingPathComponent("canary.cfg.tmpl").path
        let stats = lab.directory.appendingPathComponent("stats-${BINDKEEPER_GENERATION}.sock").path
        let text = try String(
            contentsOf: Lab.packageRoot.appendingPathComponent("examples/lab/haproxy-canary.cfg.in"), encoding: .utf8)
        try ("# \(comment)\n" + text + extra)
            .replacingOccurrences(
                of: "@BIND@", with: "{{bind tcp://\(BrokerLab.vip):\(Self.canaryPort)?shards=2&backlog=4096}}"
            )
            .replacingOccurrences(of: "@BACKEND@", with: "\(BrokerLab.address):\(backendPort)")
            .replacingOccurrences(of: "@ORIGIN@", with: "\(BrokerLab.address):8181")
            .replacingOccurrences(of: "@STATS@", with: stats)
            .write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func canaryVerdicts(_ kind: String) -> Int { lab.allLogs.components(separatedBy: "canary \(kind)").count - 1 }

    /// Reloads, loads the canary's window, and waits for its verdict: the load's counts. `midway`
    /// runs halfway through the window.
    func canaryRound(
        _ supervisor: Process, expecting verdict: String, manager: ServiceManagerSocket, midway: () throws -> Void = {}
    ) throws -> [String: Int] {
        // The broker's notifications (its fd store) are read as a service manager would: unread,
        // they would fill the socket's queue and block the broker.
        func drain() { try? manager.collect(seconds: 0.01) { _ in true } }
        drain()
        let before = canaryVerdicts(verdict)
        let window = try load(port: Self.canaryPort, seconds: Self.canarySeconds, concurrency: 16)
        kill(supervisor.processIdentifier, SIGHUP)
        usleep(UInt32(Self.canarySeconds) * 500_000)
        drain()
        try midway()
        let counts = try counts(window)
        try lab.waitFor("the canary's verdict (\(verdict))", seconds: 15) {
            drain()
            return self.canaryVerdicts(verdict) > before
        }
        return counts
    }

    /// The broker is re-executed in the middle of one canary and killed (-9) in the middle of
    /// another: the sockets and generations come back from the re-exec's state and the service
    /// manager's fd store, and the verdicts land as without.
    func testACanaryThatFailsAtRunTimeIsRolledBackAndAGoodOneTakesOver() throws {
        lab.broker?.terminate()
        lab.broker?.waitUntilExit()
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        try lab.startBroker(environment: ["NOTIFY_SOCKET": manager.path], asTheUnit: true)
        try manager.collect { $0.isReady }
        var restarted: pid_t?
        defer {
            restarted.map {
                kill($0, SIGTERM); _ = Spawn.wait($0)
            }
        }
        let template = try writeProxyTemplate(backendPort: 8181, comment: "good")
        let stats = lab.directory.appendingPathComponent("stats-${BINDKEEPER_GENERATION}.sock").path
        let supervisor = try lab.startSupervisor(
            "canary", template: template,
            extra: [
                "--canary-percent", "5", "--canary-seconds", String(Self.canarySeconds), "--canary-stats", stats,
            ])
        try lab.waitUntilListening(port: UInt16(Self.canaryPort))
        let served = try pids(supervisor.pidFile)
        XCTAssertEqual(served.count, 1)

        try twoBadTemplatesAreRolledBack(supervisor, served: served[0], manager: manager)
        try aCandidateDyingInStartUpCostsLittle(supervisor, manager: manager)
        try aGoodTemplateTakesOverThroughTheBrokersKill(
            supervisor, served: served[0], manager: manager, restarted: &restarted)
        try aRestartWithoutCanariesServesOnTheServedGeneration(supervisor, template: template)
    }

    /// Two bad templates in a row, the broker re-executed during the second: each candidate's
    /// share fails, nothing is reset, nothing fails after, and the same template is refused again.
    func twoBadTemplatesAreRolledBack(
        _ supervisor: (process: Process, pidFile: String), served: pid_t, manager: ServiceManagerSocket
    ) throws {
        for round in 1...2 {
            _ = try writeProxyTemplate(backendPort: 8182, comment: "bad \(round)")
            let window = try canaryRound(supervisor.process, expecting: "failed and rolled back", manager: manager) {
                if round == 2 { _ = try lab.client().reexec() }
            }
            let share = Double(window["failed"] ?? 0) / Double(max(1, window["attempts"] ?? 0))
            print("canary: bad template round \(round): \(window); failed share \(share)")
            XCTAssertGreaterThan(window["failed"] ?? 0, 0, "round \(round): the candidate served its share: \(window)")
            XCTAssertLessThanOrEqual(share, 0.08, "round \(round): only the candidate's share failed: \(window)")
            XCTAssertEqual(window["reset"], 0, "round \(round): nothing queued was reset: \(window)")
            XCTAssertEqual(window["refused"], 0, "round \(round): \(window)")
            let after = try counts(try load(port: Self.canaryPort, seconds: 2, concurrency: 16))
            XCTAssertEqual(after["failed"], 0, "round \(round): nothing fails after the rollback: \(after)")
            XCTAssertGreaterThan(after["ok"] ?? 0, 100, "round \(round): the load ran: \(after)")
            XCTAssertEqual(try pids(supervisor.pidFile).first, served, "round \(round): the running one serves on")
        }
        // The same failed template again: refused, nothing started.
        kill(supervisor.process.processIdentifier, SIGHUP)
        try lab.waitFor("the refusal") { self.lab.allLogs.contains("this template failed its canary") }
        XCTAssertEqual(canaryVerdicts("failed and rolled back"), 2, "no third candidate")

    }

    /// A candidate that dies in start-up (an address it cannot bind, which `haproxy -c` does not
    /// try): rolled back at once, and what was queued on its sockets is served, none reset.
    func aCandidateDyingInStartUpCostsLittle(
        _ supervisor: (process: Process, pidFile: String), manager: ServiceManagerSocket
    ) throws {
        // A candidate that dies in start-up (an address it cannot bind, which `haproxy -c` does not
        // try): rolled back at once, and what was queued on its sockets is served, none reset. A
        // few it accepts and closes before it exits (seen under load: empty answers, not resets)
        // are far below its share.
        _ = try writeProxyTemplate(
            backendPort: 8181, comment: "dies", extra: "frontend dead\n    bind 198.18.99.99:9\n")
        let died = try canaryRound(supervisor.process, expecting: "failed and rolled back", manager: manager)
        XCTAssertTrue(lab.allLogs.contains(": it exited ("), lab.allLogs)
        XCTAssertLessThanOrEqual(
            died["failed"] ?? 0, (died["attempts"] ?? 0) / 200, "a candidate dead in start-up costs little: \(died)")
        XCTAssertEqual(died["reset"], 0, "\(died)")
        XCTAssertGreaterThan(died["ok"] ?? 0, 100, "\(died)")

    }

    /// A good template passes while the broker is killed (-9) and restarted from the fd store; the
    /// old generation is let go. `restarted`: the restarted broker, for the caller to stop.
    func aGoodTemplateTakesOverThroughTheBrokersKill(
        _ supervisor: (process: Process, pidFile: String), served: pid_t, manager: ServiceManagerSocket,
        restarted: inout pid_t?
    ) throws {
        _ = try writeProxyTemplate(backendPort: 8181, comment: "good again")
        let window = try canaryRound(supervisor.process, expecting: "passed", manager: manager) {
            let broker = try XCTUnwrap(lab.broker)
            kill(broker.processIdentifier, SIGKILL)
            broker.waitUntilExit()
            restarted = try lab.restartBroker(manager, asTheUnit: true)
            try lab.waitForBroker()
        }
        XCTAssertEqual(window["failed"], 0, "a good candidate fails nothing: \(window)")
        let now = try pids(supervisor.pidFile)
        XCTAssertNotEqual(now.first, served, "the candidate took over")
        try lab.waitFor("the replaced instance to leave") { !self.isAlive(served) }
        let after = try counts(try load(port: Self.canaryPort, seconds: 2, concurrency: 16))
        XCTAssertEqual(after["failed"], 0, "\(after)")
        let listed = try lab.client().list().sockets.map(\.key).filter { $0.contains(":\(Self.canaryPort)") }
        XCTAssertEqual(
            listed.sorted(), ["#0", "#1"].map { "tcp://\(BrokerLab.vip):\(Self.canaryPort)~g1\($0)" },
            "the old generation was let go")
        XCTAssertTrue(supervisor.process.isRunning)

    }

    func aRestartWithoutCanariesServesOnTheServedGeneration(
        _ supervisor: (process: Process, pidFile: String), template: String
    ) throws {
        // A supervisor started again, now without canaries, serves on the generation that serves
        // (generation 1 here): a new generation 0 would be steered nothing, or take everything.
        supervisor.process.terminate()
        supervisor.process.waitUntilExit()
        _ = try lab.startSupervisor("again", template: template)
        let again = try counts(try load(port: Self.canaryPort, seconds: 2, concurrency: 16))
        XCTAssertEqual(again["failed"], 0, "\(again)")
        XCTAssertGreaterThan(again["ok"] ?? 0, 100, "\(again)")
        XCTAssertEqual(
            try lab.client().list().sockets.map(\.key).filter { $0.contains(":\(Self.canaryPort)") }.count, 2,
            "no generation was added")
        print(lab.allLogs.split(separator: "\n").filter { $0.contains("canary") }.joined(separator: "\n"))
    }
}
