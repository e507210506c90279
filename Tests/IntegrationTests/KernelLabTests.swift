import Foundation
import XCTest

/// Debian's own kernels (6.1 of Debian 12, 6.12 of its backports) booted by `scripts/kernel-lab.sh`
/// under qemu: what this machine's kernel cannot show (it has no fou, no nft `queue`, no modules).
final class KernelLabTests: XCTestCase {
    /// Runs `script` (bash) in a guest of `series`: (status, output).
    func inGuest(_ series: String, _ script: String, seconds: Int = 240) throws -> (status: Int32, output: String) {
        try Lab.run(
            Lab.packageRoot.appendingPathComponent("scripts/kernel-lab.sh").path, [series, "bash", "-c", script],
            environment: ProcessInfo.processInfo.environment.merging(["TIMEOUT": String(seconds)]) { $1 })
    }

    /// The shipped nft rules load unchanged and queue; fou takes GUE on the port; doctor sees both.
    /// The guest's exit status comes back.
    func testTheShippedNftRulesAndFouOnDebiansKernels() throws {
        let doctor = Lab.binaries.appendingPathComponent("second-chance").path
        for series in ["6.1", "6.12"] {
            let (status, output) = try inGuest(
                series,
                """
                set -e
                uname -r
                for m in fou nfnetlink_queue nft_queue veth; do modprobe $m; done
                ip netns add lab1
                ip netns exec lab1 nft -f examples/iptables/proxyside.nft
                ip netns exec lab1 ip fou add port 19523 gue
                ip netns exec lab1 \(doctor) doctor --queue 0 || true
                exit 7
                """)
            XCTAssertEqual(status, 7, "the command's own status: \(output)")
            XCTAssertTrue(output.contains("\(series)."), "booted \(series): \(output)")
            XCTAssertTrue(output.contains("[ ok ] fou: GUE on port 19523"), output)
            XCTAssertTrue(output.contains("[ ok ] nft: ip saddr @glb_peers udp dport 19523 queue"), output)
        }
    }

    /// The tc fast path on Debian's kernels, run by this test bundle inside each guest: the
    /// differential test against the Swift decider on both, and on 6.1 (the oldest kernel it must
    /// load on) the program's life too: established flows decided in the kernel while the daemon
    /// is killed and down, a re-exec, a clean stop. Software emulation makes these minutes, not
    /// seconds: the guest gets 8 of them.
    func testTheFastPathAndItsDifferentialTestOnDebiansKernels() throws {
        let bundle = Lab.binaries.appendingPathComponent("proxysidePackageTests.xctest").path
        for (series, suites) in [
            ("6.1", ["FastPathParityTests", "FastPathLifecycleTests"]), ("6.12", ["FastPathParityTests"]),
        ] {
            let filter = suites.map { "IntegrationTests." + $0 }.joined(separator: ",")
            let (status, output) = try inGuest(series, "uname -r; \(bundle) \(filter) 2>&1", seconds: 480)
            XCTAssertTrue(output.contains("\(series)."), "booted \(series): \(output)")
            XCTAssertEqual(status, 0, output)
            let tests = suites.count == 2 ? "4 tests" : "1 test"
            XCTAssertTrue(output.contains("Executed \(tests), with 0 failures"), output)
        }
    }
}
