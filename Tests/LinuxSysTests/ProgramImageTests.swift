import Foundation
import Glibc
import LinuxSys
import XCTest

/// The check a re-exec runs on the installed file before giving the running image up.
final class ProgramImageTests: XCTestCase {
    /// A file whose check never ends is killed at the deadline, and the caller goes on with the
    /// reason: a hung replacement cannot hold a daemon.
    func testACheckThatHangsIsKilledAtItsDeadline() throws {
        let path = NSTemporaryDirectory() + "proxyside-hanging-check-\(getpid())"
        try "#!/bin/sh\nexec sleep 60\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        XCTAssertEqual(chmod(path, 0o755), 0)
        let started = MonotonicClock.nanoseconds()
        let result = ProgramImage.check(path, arguments: ["--check"], seconds: 1)
        let elapsed = Double(MonotonicClock.nanoseconds() - started) / 1e9
        guard case .failure(let error) = result else { return XCTFail("a hanging check passed: \(result)") }
        XCTAssertTrue(error.description.contains("did not finish in 1 s"), error.description)
        XCTAssertLessThan(elapsed, 10, "the check returned long after its deadline")
    }

    /// A file that prints its version line and exits 0 passes, with that line.
    func testACheckThatAnswersPassesWithItsLine() throws {
        let path = NSTemporaryDirectory() + "proxyside-answering-check-\(getpid())"
        try "#!/bin/sh\necho \"tool 1.2.3 $1\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        XCTAssertEqual(chmod(path, 0o755), 0)
        guard case .success(let line) = ProgramImage.check(path, arguments: ["--check"], seconds: 5) else {
            return XCTFail("an answering check failed")
        }
        XCTAssertEqual(line, "tool 1.2.3 --check")
    }
}
