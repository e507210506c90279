import Foundation
import Glibc
import Telemetry
import XCTest

/// second-chance stopping while packets keep coming.
final class LifecycleTests: XCTestCase {
    var lab: Lab!

    override func setUpWithError() throws {
        lab = try Lab(prefix: "pslc")
        try lab.startSecondChance("p1", Lab.p1)
    }

    override func tearDown() { lab?.tearDown() }

    /// SIGTERM under a sustained flood: the daemon answers what it read and exits within its drain
    /// bound (250 ms) plus scheduling, not when the flood ends.
    func testSIGTERMUnderAFloodExitsInTime() throws {
        let blast = try lab.start(
            "c", "glb-lab",
            [
                "blast", "--to", Lab.p1.description, "--kind", "syn", "--client", "198.18.200.1",
                "--vip", Lab.vip.description, "--vip-port", "81", "--flows", "4096", "--count", "50000000",
                "--max-seconds", "8",
            ])
        try lab.waitFor("the flood to reach the daemon") { try lab.stats("p1").value("total_packets") > 10_000 }
        let daemon = try XCTUnwrap(lab.processes.last { $0.name == "p1 second-chance" && $0.process.isRunning }).process
        let start = Date()
        daemon.terminate()
        try Lab.waitFor("the daemon to exit", seconds: 6, context: { self.lab.log(of: daemon) }) { !daemon.isRunning }
        let took = Date().timeIntervalSince(start)
        XCTAssertTrue(blast.isRunning, "the flood was still on when the daemon exited")
        XCTAssertLessThan(took, 2, "stopped in \(took) s")
        XCTAssertEqual(daemon.terminationStatus, 0)
        XCTAssertTrue(lab.log(of: daemon).contains("stopped; all read packets answered"))
    }
}
