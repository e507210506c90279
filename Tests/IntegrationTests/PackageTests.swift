import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import Synchronization
import Telemetry
import XCTest

/// The Debian package as an operator meets it: built from this tree (and a newer build of it),
/// installed into a Debian bookworm root (mmdebstrap) booted with systemd-nspawn as the lab's P1,
/// run with the shipped configuration behind the shipped rules, upgraded while GUE and HTTP keep
/// coming, then purged; and removed from a Debian trixie root, whose systemd keeps what a stopped
/// unit preserved.
final class PackageTests: XCTestCase {
    var lab: Lab!
    var container: SystemdContainer!

    override func tearDown() {
        if let container, testRun?.hasSucceeded == false { print(container.journal()) }
        container?.stop()
        lab?.tearDown()
    }

    /// Builds the package (scripts/build-deb.sh, lintian included) with `version` (nil: git's).
    static func build(version: String?) throws -> URL {
        var environment = ProcessInfo.processInfo.environment
        if let version { environment["PROXYSIDE_VERSION"] = version }
        let (status, output) = try Lab.run(
            Lab.packageRoot.appendingPathComponent("scripts/build-deb.sh").path, [], environment: environment)
        guard status == 0, let path = output.split(separator: "\n").last, path.hasSuffix(".deb") else {
            throw LabError("scripts/build-deb.sh failed (\(status)): \(output)")
        }
        return Lab.packageRoot.appendingPathComponent(String(path))
    }

    /// Boots a Debian `suite` root (scripts/debian-root.sh) as the lab's P1, with `debs` in /var/tmp.
    func boot(_ suite: String, debs: [URL]) throws {
        let tarball = try Lab.shell(Lab.packageRoot.appendingPathComponent("scripts/debian-root.sh").path + " " + suite)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        lab = try Lab(prefix: "psdb")
        let root = lab.directory.appendingPathComponent(suite)
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        try Lab.shell("tar -x -C \(root.path) -f \(tarball)")
        for deb in debs {
            try FileManager.default.copyItem(
                at: deb, to: root.appendingPathComponent("var/tmp/" + deb.lastPathComponent))
        }
        container = try SystemdContainer(lab: lab, host: "p1", root: root)
    }

    /// Runs a shell command in the container; its output, or an error with it.
    func inside(_ command: String) throws -> String {
        let result = try container.run(["/bin/sh", "-c", command], seconds: 120)
        guard result.status == 0 else { throw LabError("`\(command)` inside: \(result.output)") }
        return result.output
    }

    /// `second-chance stats --json` inside, as an object.
    func statsJSON() throws -> [String: Any] {
        let text = try inside("second-chance stats --json")
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    }

    /// Debian 13's systemd (257) keeps a stopped unit's preserved fd store: bindkeeper's listening
    /// sockets outlive a restart and a stop (the same kernel socket, and its control socket
    /// answering, after each start), and would go on completing handshakes for nobody once the
    /// package is gone: removing it clears that store.
    func testOnTrixieARemovalClosesTheSocketsSystemdPreserved() throws {
        let version = try Lab.shell(Lab.packageRoot.appendingPathComponent("scripts/version.sh").path)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let deb = try Self.build(version: version)
        try boot("trixie", debs: [deb])
        _ = try inside("dpkg -i /var/tmp/\(deb.lastPathComponent)")
        XCTAssertTrue(try inside("systemctl --version").contains("systemd 25"), "Debian 13's systemd")
        // Enabled, as a fleet runs it: a stopped unit stays loaded, and with it its store.
        try container.systemctl("enable", "--now", "bindkeeper.service")
        _ = try inside("bindkeeper exec --bind tcp://\(Lab.vip):8090 -- true")
        func listening() throws -> Bool { try inside("ss -Hltn 'sport = :8090'").contains(":8090") }
        // The kernel socket's inode: the same one after a restart is the same socket, not a new bind.
        func inode() throws -> Substring? {
            try inside("ss -Hltne 'sport = :8090'").split(separator: " ").first { $0.hasPrefix("ino:") }
        }
        XCTAssertTrue(try listening(), "the broker holds the socket")
        let held = try XCTUnwrap(try inode())
        try container.systemctl("restart", "bindkeeper.service")
        XCTAssertEqual(try inode(), held, "a restart keeps the socket")
        XCTAssertTrue(try inside("bindkeeper list").contains("8090"), container.journal("bindkeeper.service"))
        try container.systemctl("stop", "bindkeeper.service")
        let unit = try inside("systemctl show bindkeeper.service -p NFileDescriptorStore -p UnitFileState")
        XCTAssertTrue(try listening(), "PID 1 holds it past the stop (FileDescriptorStorePreserve=yes): \(unit)")

        // A dead socket file at the control path while it is stopped (the runtime directory is
        // preserved): the next start, under the unit's sandbox, tells it from its stored socket's
        // file (unix_diag) and answers there again.
        let deadPath = container.path("/run/bindkeeper/dead.sock")
        let dead = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try UnixAddress.bind(dead, deadPath)
        close(dead)
        XCTAssertEqual(rename(deadPath, container.path("/run/bindkeeper/bindkeeper.sock")), 0)
        try container.systemctl("start", "bindkeeper.service")
        XCTAssertTrue(try inside("bindkeeper list").contains("8090"), container.journal("bindkeeper.service"))
        XCTAssertEqual(try inode(), held, "a stop and a start keep it too")
        try container.systemctl("stop", "bindkeeper.service")
        let removal = try inside("dpkg -r proxyside 2>&1")
        XCTAssertFalse(try listening(), "the removal closed it: \(removal)")
    }

    func testInstallServeUpgradeUnderLoadAndPurge() throws {
        try installServeUpgradeUnderLoadAndPurge(on: "bookworm")
    }

    /// The same on Debian 13, where new proxies are installed (systemd 257, the fd store preserved).
    func testOnTrixieInstallServeUpgradeUnderLoadAndPurge() throws {
        try installServeUpgradeUnderLoadAndPurge(on: "trixie")
    }

    /// Installed, serving the director's GUE and HTTP on bindkeeper's socket, upgraded while both
    /// keep coming, purged without a trace, in a root of Debian's `suite`.
    func installServeUpgradeUnderLoadAndPurge(on suite: String) throws {
        let version = try Lab.shell(Lab.packageRoot.appendingPathComponent("scripts/version.sh").path)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let newer = version + "+rebuild1"
        let first = try Self.build(version: version)
        let second = try Self.build(version: newer)
        try boot(suite, debs: [first, second])

        try checkInstalled(first, version: version)
        let pids = try startTheShippedConfiguration()
        let traffic = DatagramTraffic(lab: lab)
        let service = try traffic.openService()
        defer { close(service) }
        try DatagramTraffic.send(0..<200, pace: 0, from: lab.namespace("d"), source: Lab.director)
        traffic.assertAllReceived(traffic.received(service), 0..<200, "the director's GUE, before the upgrade")
        try lab.waitFor("HAProxy on bindkeeper's socket") {
            (try? lab.inside("p1") { try Lab.httpGet(.v4(Lab.vip), port: 8080, path: "/") })?.contains("200") == true
        }

        try upgradeUnderLoad(to: second, version: newer, pids: pids, traffic: traffic, service: service)
        try checkPurgedWithoutATrace()
    }

    /// Installed: the package holds what it should, and nothing starts by itself.
    func checkInstalled(_ deb: URL, version: String) throws {
        _ = try inside("dpkg -i /var/tmp/\(deb.lastPathComponent)")
        XCTAssertEqual(try inside("second-chance version").split(separator: " ").dropFirst().first, Substring(version))
        XCTAssertEqual(try container.property("second-chance@0.service", "ActiveState"), "inactive")
        // minbase leaves documentation out (dpkg path-exclude): the package's list says what it holds.
        let contents = try Lab.shell("dpkg-deb -c \(deb.path)")
        for file in [
            "./usr/share/man/man8/second-chance.8.gz", "./usr/share/man/man1/bindkeeper.1.gz",
            "./usr/share/bash-completion/completions/second-chance", "./usr/share/zsh/vendor-completions/_bindkeeper",
            "./usr/share/fish/vendor_completions.d/second-chance.fish", "./usr/share/doc/proxyside/README.md",
            "./usr/share/doc/proxyside/examples/monitoring/proxyside-dashboard.json",
        ] {
            XCTAssertTrue(contents.contains(" \(file)\n"), "\(file) is not in the package")
        }
        XCTAssertFalse(contents.contains("glb-lab") || contents.contains("nfq-baseline"), "lab programs packaged")
    }

    /// The shipped configuration started: its services' main pids.
    func startTheShippedConfiguration() throws -> [String] {
        // The shipped configuration: /etc/default/second-chance names P1 and the lab's peers; the
        // shipped rules hear only them, after the reverse-path check.
        let docs = "/usr/share/doc/proxyside/examples"
        _ = try inside("iptables-restore < \(docs)/iptables/rules.v4 && ip6tables-restore < \(docs)/iptables/rules.v6")
        _ = try inside(
            """
            mkdir -p /etc/haproxy && sed 's|@BIND@|{{bind tcp://\(Lab.vip):8080?backlog=1024}}|' \
            \(docs)/lab/haproxy-answer.cfg.in > /etc/haproxy/answer.cfg.tmpl
            """)
        try container.systemctl(
            "start", "second-chance@0.service", "bindkeeper.service", "haproxy-multi@answer.service")
        for unit in ["second-chance@0.service", "bindkeeper.service", "haproxy-multi@answer.service"] {
            XCTAssertEqual(try container.property(unit, "ActiveState"), "active", container.journal(unit))
        }
        XCTAssertTrue(container.journal("second-chance@0.service").contains("preflight: "))
        return try ["second-chance@0.service", "bindkeeper.service"].map { try container.property($0, "MainPID") }
    }

    /// The upgrade to `deb`, while the director's GUE and new HTTP connections keep coming: every
    /// datagram arrives, no connection fails, and both daemons re-execute in place.
    func upgradeUnderLoad(
        to deb: URL, version newer: String, pids: [String], traffic: DatagramTraffic, service: Int32
    ) throws {
        let control = container.path("/run/second-chance/queue-0.sock")
        let load = try lab.start(
            "p1", "glb-lab", ["http-load", "--target", "\(Lab.vip):8080", "--seconds", "12", "--concurrency", "4"])
        let failure = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        let director = lab.namespace("d")
        DispatchQueue.global().async {
            do { try DatagramTraffic.send(1000..<9000, pace: 1000, from: director, source: Lab.director) } catch {
                failure.withLock { $0 = "\(error)" }
            }
            done.signal()
        }
        usleep(1_000_000)
        let upgrade = try inside("dpkg -i /var/tmp/\(deb.lastPathComponent) 2>&1")
        // And HAProxy, on the re-executed broker's socket, reloaded under the same load.
        try container.systemctl("reload", "haproxy-multi@answer.service")
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success)
        XCTAssertNil(failure.withLock { $0 })
        load.waitUntilExit()
        traffic.assertAllReceived(traffic.received(service), 1000..<9000, "the director's GUE across the upgrade")
        let line = try XCTUnwrap(
            lab.log(of: load).split(separator: "\n").last { $0.hasPrefix("http-load:") }, lab.log(of: load))
        XCTAssertTrue(line.contains(" failed=0 "), "\(line)\n\(upgrade)")
        XCTAssertTrue(upgrade.contains("second-chance@0.service re-executed the new version"), upgrade)
        XCTAssertTrue(upgrade.contains("bindkeeper.service re-executed the new version"), upgrade)
        XCTAssertEqual(
            try ["second-chance@0.service", "bindkeeper.service"].map { try container.property($0, "MainPID") }, pids,
            "re-executed in place, not restarted")
        let stats = try readControlSocket(control)
        let before = try statsJSON()
        XCTAssertEqual(before["version"] as? String, newer, "stats --json")
        // The re-executed daemon counts what it decides: a batch sent after the upgrade, exactly. (How
        // many of the upgrade's own datagrams came after the re-exec depends on how long dpkg took.)
        try DatagramTraffic.send(9000..<9200, pace: 0, from: director, source: Lab.director)
        traffic.assertAllReceived(traffic.received(service), 9000..<9200, "the director's GUE after the upgrade")
        let after = try statsJSON()
        XCTAssertEqual(
            (after["accepted_udp"] as? Int).map { $0 - ((before["accepted_udp"] as? Int) ?? 0) }, 200,
            "stats --json: \(after)")
        XCTAssertTrue(stats.contains("version: \(newer)\n"), stats)
        XCTAssertTrue(stats.contains("reexecs: 1\n"), stats)
        // The shipped unit's sandbox (its capabilities, its system-call filter) lets the programs load,
        // and auto puts XDP in the veth's driver beside tc.
        XCTAssertTrue(stats.contains("fast_path: XDP (native) and tc on eth0"), stats)
    }

    /// Purged: no unit, socket, queue, filter or file is left, also where the daemon was told to
    /// leave its program deciding at a stop (the package's removal takes it off).
    func checkPurgedWithoutATrace() throws {
        _ = try inside(
            """
            sed -i 's/^SECOND_CHANCE_ARGS=.*/SECOND_CHANCE_ARGS="--fast-path-stop keep"/' \
                /etc/default/second-chance && \
            systemctl restart second-chance@0.service
            """)
        let filters = "ip netns exec \(lab.namespace("p1")) tc filter show dev eth0 ingress"
        try lab.waitFor("the restarted daemon's programs") {
            try Lab.shell(filters).contains("second_chance_f")
                && lab.inside("p1") { NativeXDP.program(on: "eth0") } != nil
        }
        let purge = try inside("dpkg --purge proxyside 2>&1")
        try container.systemctl("daemon-reload")
        XCTAssertEqual(
            try inside(
                "systemctl list-units --all --no-legend --plain 'second-chance@*' 'bindkeeper*' 'haproxy-multi@*'"
            )
            .trimmingCharacters(in: .whitespacesAndNewlines), "")
        XCTAssertEqual(try inside("dpkg-query -W -f='${db:Status-Abbrev}' proxyside 2>/dev/null || true"), "")
        for path in [
            "/usr/sbin/second-chance", "/usr/bin/bindkeeper", "/usr/lib/systemd/system/second-chance@.service",
            "/etc/default/second-chance", "/etc/default/bindkeeper", "/etc/bindkeeper",
            "/etc/sysctl.d/60-proxyside.conf",
            "/usr/share/doc/proxyside", "/run/second-chance", "/run/bindkeeper", "/run/haproxy-multi",
        ] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: container.path(path)), "\(path) is left")
        }
        let queues = try lab.inside("p1") { ProcFile.kernelQueueStatistics() }
        XCTAssertNil(queues[0], "queue 0 is no longer bound")
        XCTAssertEqual(
            try Lab.shell("ip netns exec \(lab.namespace("p1")) tc filter show dev eth0 ingress")
                .trimmingCharacters(in: .whitespacesAndNewlines), "", "no tc program is left on eth0: \(purge)")
        XCTAssertNil(try lab.inside("p1") { NativeXDP.program(on: "eth0") }, "no XDP program is left on eth0: \(purge)")
    }
}
