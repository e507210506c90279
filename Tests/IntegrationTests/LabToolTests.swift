import Foundation
import XCTest

/// The lab tools refuse what they cannot honour with a usage error (status 64), not a trap.
final class LabToolTests: XCTestCase {
    func testOutOfRangeFlagsAreUsageErrors() throws {
        // bindkeeper haproxy's durations and limits too: a negative --stop-timeout trapped at the stop.
        let supervisor = ["bindkeeper", "haproxy", "-f", "/nonexistent.tmpl"]
        for command in [
            [
                "glb-lab", "blast", "--to", "198.18.0.1", "--client", "198.18.0.1", "--vip", "198.19.0.1",
                "--max-seconds=-1",
            ],
            ["glb-lab", "clients", "--target", "198.18.0.1:80", "--connections", "0", "--seconds=-1"],
            ["glb-lab", "clients", "--target", "198.18.0.1:80", "--connections", "0", "--new-per-second=-5"],
            ["glb-lab", "http-load", "--target", "198.18.0.1:80", "--seconds=-1"],
            ["glb-lab", "watch", "--control", "/nonexistent", "--max-seconds=-1"],
            ["glb-lab", "director", "--self", "198.18.0.1", "--table", "/dev/null", "--hops=-1"],
            [
                "glb-lab", "bpf-director", "--self", "198.18.0.1", "--table", "/dev/null", "--vip", "198.19.0.1",
                "--hops", "9",
            ],
            ["glb-lab", "bpf-director", "--self", "198.18.0.1", "--table", "/dev/null"],
            ["glb-lab", "xdp-wire", "--interface", "lo", "--to", "lo", "--mac", "02:00:00:00:00"],
            ["glb-lab", "xdp-wire", "--interface", "lo", "--to", "lo", "--mac", "02:00:00:00:00:0g"],
            [
                "glb-lab", "program-cost", "--self", "198.18.0.1", "--director", "198.18.0.2", "--vip", "198.19.0.1",
                "--hop", "198.18.0.3", "--established", "198.18.0.4", "--established-port", "1", "--runs", "0",
            ],
            supervisor + ["--stop-timeout=-1", "--", "/bin/true"],
            supervisor + ["--max-draining=-1", "--", "/bin/true"],
            supervisor + ["--drain-timeout", "0", "--", "/bin/true"],
            supervisor + ["--canary-percent", "0", "--", "/bin/true"],
            supervisor + ["--canary-percent", "101", "--", "/bin/true"],
            supervisor + ["--canary-percent", "5", "--canary-seconds", "0", "--", "/bin/true"],
            supervisor + ["--canary-percent", "5", "--canary-max-errors=-1", "--", "/bin/true"],
            supervisor + ["--canary-stats", "/run/x.sock", "--", "/bin/true"],
            supervisor + ["--canary-seconds", "5", "--", "/bin/true"],
        ] {
            let arguments = Array(command.dropFirst())
            let process = Process()
            process.executableURL = Lab.binaries.appendingPathComponent(command[0])
            process.arguments = arguments
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            try process.run()
            let deadline = Lab.deadline(after: 10)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(process.terminationReason, .exit, "\(arguments): \(text)")
            XCTAssertEqual(process.terminationStatus, 64, "\(arguments): \(text)")
        }
    }
}
