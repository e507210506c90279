import Foundation
import XCTest

/// The systemd units as systemd itself reads them (`systemd-analyze verify`), with the built binary
/// in place of the installed one.
final class PackagingTests: XCTestCase {
    func testSystemdUnitsVerify() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else { throw XCTSkip("systemd-analyze is not installed") }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("units-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for unit in ["bindkeeper.service", "haproxy-multi@.service", "listen-fds-app@.service", "second-chance@.service"] {
            let text = try String(contentsOf: Lab.packageRoot.appendingPathComponent("systemd/\(unit)"), encoding: .utf8)
                .replacingOccurrences(of: "/usr/local/bin/bindkeeper", with: Lab.binaries.appendingPathComponent("bindkeeper").path)
                .replacingOccurrences(of: "/usr/local/sbin/second-chance", with: Lab.binaries.appendingPathComponent("second-chance").path)
            try text.write(to: directory.appendingPathComponent(unit), atomically: true, encoding: .utf8)
        }
        let units = ["bindkeeper.service", "haproxy-multi@www.service", "listen-fds-app@blue.service", "second-chance@0.service"]
        let output = try Lab.shell("cd \(directory.path) && systemd-analyze verify --man=no " + units.joined(separator: " ") + " 2>&1 || true")
        // systemd before 254 does not know FileDescriptorStorePreserve= and says so; nothing else may be said.
        let problems = output.split(separator: "\n").filter { !$0.contains("FileDescriptorStorePreserve") && !$0.isEmpty }
        XCTAssertEqual(problems, [], output)
    }
}
