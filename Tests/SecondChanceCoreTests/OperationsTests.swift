import Foundation
import LinuxSys
import Logging
import SecondChanceCore
import Telemetry
import XCTest

/// The pieces that serve the service manager and the operator's tools: the watchdog's evidence,
/// the process start time, the log threshold and `stats --json`.
final class OperationsTests: XCTestCase {
    func testTheWatchdogIsToldOnlyWhileEveryQueueThreadComesRound() {
        var progress = QueueProgress()
        XCTAssertEqual(progress.stalled([5, 9]), [], "the first look has nothing to compare with")
        XCTAssertEqual(progress.stalled([6, 10]), [])
        XCTAssertEqual(progress.stalled([7, 10]), [1], "queue thread 1 is stuck")
        XCTAssertEqual(progress.stalled([7, 10]), [0, 1])
        XCTAssertEqual(progress.stalled([8, 11]), [], "both came round again")
        XCTAssertEqual(progress.stalled([8]), [], "a different set of threads starts afresh")
    }

    func testWatchdogSettingsAreReadAsSdWatchdogEnabledReadsThem() {
        XCTAssertEqual(WatchdogSettings(environment: ["WATCHDOG_USEC": "10000000"], pid: 7)?.checkMilliseconds, 5000)
        XCTAssertEqual(
            WatchdogSettings(environment: ["WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7"], pid: 7)?.checkMilliseconds,
            2000)
        XCTAssertNil(WatchdogSettings(environment: ["WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "8"], pid: 7))
        // A re-exec's check may take what the watchdog allows: the shipped WatchdogSec=15s, 6 s.
        let shipped = WatchdogSettings(environment: ["WATCHDOG_USEC": "15000000"], pid: 7)
        XCTAssertEqual(WatchdogSettings.reexecCheckSeconds(shipped), 6)
        XCTAssertEqual(
            WatchdogSettings.reexecCheckSeconds(WatchdogSettings(environment: ["WATCHDOG_USEC": "1000"], pid: 7)), 1)
        XCTAssertEqual(WatchdogSettings.reexecCheckSeconds(nil), 30)
        // Without a watchdog, four times what the start took (emulation: seconds of verification).
        XCTAssertEqual(WatchdogSettings.reexecCheckSeconds(nil, startupSeconds: 20), 80)
        XCTAssertEqual(WatchdogSettings.reexecCheckSeconds(nil, startupSeconds: Int.max), 300)
        XCTAssertEqual(WatchdogSettings.reexecCheckSeconds(shipped, startupSeconds: 20), 6, "the watchdog bounds it")
        let hour = WatchdogSettings(environment: ["WATCHDOG_USEC": "3600000000"], pid: 7)
        XCTAssertEqual(WatchdogSettings.reexecCheckSeconds(hour), 300, "never longer than the client waits")
        for bad in ["", "x", "-1", "999", "86400000001", "18446744073709551616"] {
            XCTAssertNil(WatchdogSettings(environment: ["WATCHDOG_USEC": bad], pid: 7), bad)
        }
        XCTAssertNil(WatchdogSettings(environment: [:], pid: 7))
    }

    func testTheProcessStartTimeComesFromBootTimeAndStartTicks() throws {
        // A command name with blanks and a parenthesis of its own, as comm may have.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10 0 0"
        XCTAssertEqual(
            ProcFile.processStartSeconds(
                selfStat: stat, systemStat: "cpu 1 2 3\nbtime 1700000000\nprocesses 5\n", ticksPerSecond: 100),
            1_700_000_123)
        XCTAssertNil(ProcFile.processStartSeconds(selfStat: "1 (x) S 1", systemStat: "btime 1\n", ticksPerSecond: 100))
        XCTAssertNil(ProcFile.processStartSeconds(selfStat: stat, systemStat: "cpu 1\n", ticksPerSecond: 100))
        XCTAssertNil(ProcFile.processStartSeconds(selfStat: stat, systemStat: "btime 1\n", ticksPerSecond: 0))
        XCTAssertNil(
            ProcFile.processStartSeconds(
                selfStat: stat, systemStat: "btime 18446744073709551615\n", ticksPerSecond: 1),
            "an overflowing sum is no time")
        let now = UInt64(Date().timeIntervalSince1970)
        let started = try XCTUnwrap(ProcFile.processStartSeconds())
        XCTAssertLessThanOrEqual(started, now + 1)
        XCTAssertGreaterThan(started, now - 3600, "this test process started within the hour")
    }

    func testTheLogLevelIsTheProcesssThreshold() {
        defer { LineLogHandler.setThreshold(.info) }
        var logger = Logger(label: "test") { LineLogHandler(label: $0, priorityPrefix: false) }
        XCTAssertEqual(logger.logLevel, .info)
        LineLogHandler.setThreshold(.warning)
        XCTAssertEqual(logger.logLevel, .warning, "a logger made before the option was parsed follows it")
        logger.logLevel = .debug
        XCTAssertEqual(Logger(label: "other") { LineLogHandler(label: $0) }.logLevel, .debug)
    }

    func testStatsJSONKeepsNumbersAndEscapesEverythingElse() throws {
        let text = """
            version: 1.2\nreexecs: 3\nfast_path: tc on e"th\\0 (program 7)\nweird: \u{1}\u{2028}x
            listener 198.19.0.10:80 active 1 sent 5 validated 2
            not a field
            big: 18446744073709551616

            """
        let json = StatsJSON.render(text)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any], json)
        XCTAssertEqual(object["version"] as? String, "1.2")
        XCTAssertEqual(object["reexecs"] as? Int, 3)
        XCTAssertEqual(object["fast_path"] as? String, "tc on e\"th\\0 (program 7)")
        XCTAssertEqual(object["weird"] as? String, "\u{1}\u{2028}x")
        XCTAssertEqual(object["big"] as? String, "18446744073709551616", "past UInt64: kept as text, not rounded")
        let listeners = try XCTUnwrap(object["listeners"] as? [[String: Any]])
        XCTAssertEqual(listeners.count, 1)
        XCTAssertEqual(listeners[0]["key"] as? String, "198.19.0.10:80")
        XCTAssertEqual(listeners[0]["sent"] as? Int, 5)
        XCTAssertFalse(json.dropLast().contains("\n"), "one line")
        // Any text at all gives valid JSON.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let scalars = (0..<Int.random(in: 0..<60, using: &generator)).map { _ in
                Character(Unicode.Scalar(UInt32.random(in: 0..<0x3000, using: &generator)) ?? " ")
            }
            let random = String(scalars)
            let rendered = StatsJSON.render("a: \(random)\nlistener \(random) x \(random)\n\(random): 1\n")
            XCTAssertNoThrow(try JSONSerialization.jsonObject(with: Data(rendered.utf8)), rendered)
        }
    }
}
