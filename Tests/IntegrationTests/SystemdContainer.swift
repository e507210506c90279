import Foundation
import Glibc
import Telemetry
import XCTest

/// A real systemd as PID 1: systemd-nspawn boots this machine's /usr on an empty root
/// (--volatile=yes) inside one of the lab's network namespaces, with the build's daemons
/// bind-mounted where the shipped units expect them (/usr/local/sbin, /usr/local/bin) and the
/// shipped unit files in /etc/systemd/system. Commands run inside through nsenter.
final class SystemdContainer {
    let process: Process
    let pid1: pid_t
    let log: URL

    /// `files`: (file on this machine, path inside) bound read-only, units included.
    convenience init(lab: Lab, host: String, files: [(String, String)]) throws {
        let directory = lab.directory.appendingPathComponent("container-\(host)")
        let sbin = directory.appendingPathComponent("sbin"), bin = directory.appendingPathComponent("bin")
        for folder in [sbin, bin] {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(
            at: Lab.binaries.appendingPathComponent("second-chance"), to: sbin.appendingPathComponent("second-chance"))
        try FileManager.default.copyItem(
            at: Lab.binaries.appendingPathComponent("bindkeeper"), to: bin.appendingPathComponent("bindkeeper"))
        let binds =
            [
                "--bind-ro=\(Self.swiftRuntime)", "--bind-ro=\(sbin.path):/usr/local/sbin",
                "--bind-ro=\(bin.path):/usr/local/bin",
            ] + files.map { "--bind-ro=\($0.0):\($0.1)" }
        try self.init(lab: lab, host: host, root: ["-D", "/", "--volatile=yes"] + binds, log: directory)
    }

    /// A Debian root of its own (`directory`, written to by what runs inside), booted in the
    /// host's namespace.
    convenience init(lab: Lab, host: String, root directory: URL) throws {
        try self.init(
            lab: lab, host: host, root: ["-D", directory.path],
            log: lab.directory.appendingPathComponent("boot-\(host)"))
    }

    private init(lab: Lab, host: String, root: [String], log folder: URL) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        log = folder.appendingPathComponent("boot.log")
        // The units this host's /usr would start and that have no place here stay masked.
        let masked = [
            "systemd-networkd.service", "systemd-networkd.socket", "nftables.service", "haproxy.service",
            "postgresql.service", "iperf3.service",
            "console-getty.service", "systemd-firstboot.service", "apt-daily.timer", "apt-daily-upgrade.timer",
            "man-db.timer",
        ]
        var arguments =
            root + [
                "--register=no", "--keep-unit", "--machine=\(lab.namespace(host))", "--capability=all",
                "--console=passive", "--network-namespace-path=/run/netns/\(lab.namespace(host))",
                // nspawn's own system-call filter refuses bpf(2): the units' sandbox is what is tested.
                "--system-call-filter=bpf",
            ]
        arguments += ["--boot", "systemd.firstboot=off"] + masked.map { "systemd.mask=\($0)" }
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-nspawn")
        process.arguments = arguments
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // PID 1 inside is nspawn's child.
        var found: pid_t = 0
        let nspawn = process.processIdentifier
        let bootLog = log
        let started = process
        defer { if found == 0 { kill(started.processIdentifier, SIGKILL); started.waitUntilExit() } }
        try Lab.waitFor(
            "systemd-nspawn to start systemd", seconds: 10,
            context: { (try? String(contentsOf: bootLog, encoding: .utf8)) ?? "" }
        ) {
            let children =
                (try? String(contentsOfFile: "/proc/\(nspawn)/task/\(nspawn)/children", encoding: .utf8)) ?? ""
            found = children.split(separator: " ").first.flatMap { pid_t($0) } ?? 0
            // nspawn's first child is a helper (named systemd-nspawn too) until systemd replaces it.
            let name = (try? String(contentsOfFile: "/proc/\(found)/comm", encoding: .utf8)) ?? ""
            return found > 0 && name == "systemd\n"
        }
        pid1 = found
        do {
            try waitForBoot(bootLog)
        } catch {
            stop()
            throw error
        }
    }

    private func waitForBoot(_ bootLog: URL) throws {
        var state = ""
        try Lab.waitFor(
            "systemd to finish booting", seconds: 60,
            context: { state + "\n" + ((try? String(contentsOf: bootLog, encoding: .utf8)) ?? "") }
        ) {
            // "offline" until its private bus answers; --wait then waits for the start-up jobs.
            state = try self.run(["systemctl", "is-system-running", "--wait"], seconds: 60).output.trimmingCharacters(
                in: .whitespacesAndNewlines)
            if !["running", "degraded"].contains(state) { usleep(100_000) }
            return ["running", "degraded"].contains(state)
        }
    }

    /// The Swift toolchain whose runtime the debug builds link to (the directory above the
    /// usr/lib/swift/linux holding this process's libswiftCore.so).
    static let swiftRuntime: String = {
        let maps = (try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? ""
        let marker = "/usr/lib/swift/linux/libswiftCore.so"
        for line in maps.split(separator: "\n") {
            guard let slash = line.firstIndex(of: "/"), line.hasSuffix(marker) else { continue }
            return String(line[slash...].dropLast(marker.count))
        }
        return "/opt/swift"
    }()

    var bootLog: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    /// Runs a command inside (mount, PID, UTS, IPC and network namespaces: the network is the lab
    /// host's, so that rules loaded and filters removed inside are that host's, not this machine's).
    @discardableResult
    func run(_ command: [String], seconds: Double = 30) throws -> (status: Int32, output: String) {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
        child.arguments = ["-t", String(pid1), "-m", "-p", "-u", "-i", "-n", "--"] + command
        let outputFile = log.deletingLastPathComponent().appendingPathComponent("command-\(UUID().uuidString).out")
        FileManager.default.createFile(atPath: outputFile.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: outputFile) }
        let handle = try FileHandle(forWritingTo: outputFile)
        defer { try? handle.close() }
        child.standardOutput = handle
        child.standardError = handle
        child.standardInput = FileHandle.nullDevice
        try child.run()
        let deadline = Lab.deadline(after: seconds)
        while child.isRunning && Date() < deadline { usleep(10_000) }
        if child.isRunning {
            child.terminate()
            throw LabError("\(command.joined(separator: " ")) took over \(seconds) s")
        }
        child.waitUntilExit()
        return (child.terminationStatus, (try? String(contentsOf: outputFile, encoding: .utf8)) ?? "")
    }

    /// `systemctl ARGS` inside; throws with its output when it fails.
    @discardableResult
    func systemctl(_ arguments: String...) throws -> String {
        let result = try run(["systemctl", "--no-pager"] + arguments)
        guard result.status == 0 else {
            throw LabError("systemctl \(arguments.joined(separator: " ")): \(result.output)\n\(journal())")
        }
        return result.output
    }

    func property(_ unit: String, _ name: String) throws -> String {
        try systemctl("show", "-P", name, unit).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func journal(_ unit: String? = nil) -> String {
        ((try? run(["journalctl", "--no-pager", "-o", "cat"] + (unit.map { ["-u", $0] } ?? []))) ?? (0, "")).output
    }

    /// A path inside, seen from here.
    func path(_ inside: String) -> String { "/proc/\(pid1)/root\(inside)" }

    /// Writes a file inside (/etc is the container's own tmpfs).
    func write(_ text: String, to inside: String) throws {
        let target = URL(fileURLWithPath: path(inside))
        try FileManager.default.createDirectory(
            at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: target, atomically: false, encoding: .utf8)
    }

    /// Halts the container (SIGTERM to nspawn); if it has not ended in time its PID 1 is killed,
    /// which ends every process inside, and then nspawn.
    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Lab.deadline(after: 10)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            kill(pid1, SIGKILL)
            usleep(200_000)
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}
