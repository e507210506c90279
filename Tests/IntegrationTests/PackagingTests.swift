import Foundation
import LabKit
import LinuxSys
import XCTest

/// The systemd units as systemd itself reads them (`systemd-analyze verify`), with the built binary
/// in place of the installed one.
final class PackagingTests: XCTestCase {
    /// A packager's own tools on a clean checkout: the tracked changelog names the release in
    /// VERSION, and `dpkg-buildpackage` gets through it and the rules' clean step to a source
    /// package (the binary build is `make deb`'s, which PackageTests builds).
    func testDebiansOwnToolsBuildFromACleanCheckout() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("checkout-\(getpid())")
        defer { try? FileManager.default.removeItem(at: directory) }
        let checkout = directory.appendingPathComponent("proxyside").path
        try Lab.shell("git clone -q \(Lab.packageRoot.path) \(checkout)")
        let version = try String(contentsOfFile: checkout + "/VERSION", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(
            try Lab.shell("cd \(checkout) && dpkg-parsechangelog -S Version").trimmingCharacters(
                in: .whitespacesAndNewlines),
            version, "debian/changelog names the release in VERSION")
        let built = try Lab.shell("cd \(checkout) && dpkg-buildpackage -S -us -uc -d 2>&1")
        XCTAssertTrue(
            FileManager.default.fileExists(atPath: directory.appendingPathComponent("proxyside_\(version).dsc").path),
            built)
    }

    func testSystemdUnitsVerify() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
            throw LabError("systemd-analyze is not installed (scripts/setup.sh installs systemd)")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("units-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for unit in [
            "bindkeeper.service", "haproxy-multi@.service", "listen-fds-app@.service", "second-chance@.service",
        ] {
            let text = try String(
                contentsOf: Lab.packageRoot.appendingPathComponent("systemd/\(unit)"), encoding: .utf8
            )
            .replacingOccurrences(
                of: "/usr/bin/bindkeeper", with: Lab.binaries.appendingPathComponent("bindkeeper").path
            )
            .replacingOccurrences(
                of: "/usr/sbin/second-chance", with: Lab.binaries.appendingPathComponent("second-chance").path)
            try text.write(to: directory.appendingPathComponent(unit), atomically: true, encoding: .utf8)
        }
        let units = [
            "bindkeeper.service", "haproxy-multi@www.service", "listen-fds-app@blue.service", "second-chance@0.service",
        ]
        let output = try Lab.shell(
            "cd \(directory.path) && systemd-analyze verify --man=no " + units.joined(separator: " ") + " 2>&1 || true")
        // systemd before 254 does not know FileDescriptorStorePreserve= and says so; nothing else may be said.
        let problems = output.split(separator: "\n").filter {
            !$0.contains("FileDescriptorStorePreserve") && !$0.isEmpty
        }
        XCTAssertEqual(problems, [], output)

        // The exposure the README gives for each unit is the one systemd-analyze reads now.
        let readme = try String(contentsOf: Lab.packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        for (template, instance) in [
            ("second-chance@.service", "second-chance@0.service"), ("bindkeeper.service", "bindkeeper.service"),
            ("haproxy-multi@.service", "haproxy-multi@www.service"),
        ] {
            let report = try Lab.shell(
                "cd \(directory.path) && systemd-analyze security --offline=true --no-pager \(instance) 2>&1 || true")
            let marker = "Overall exposure level for \(instance): "
            let score = try XCTUnwrap(
                report.components(separatedBy: marker).dropFirst().first?.split(separator: " ").first, report)
            XCTAssertTrue(readme.contains("| `\(template)` | \(score) "), "\(template) scores \(score) now")
        }
    }
}

/// The README's install steps, pasted on a host that has rules of its own.
final class InstallStepsTests: XCTestCase {
    /// The rule step adds the GUE rules and keeps what the host had, in the raw table and the others.
    func testTheReadmesRuleStepKeepsTheRulesAHostHas() throws {
        let readme = try String(contentsOf: Lab.packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let step = try XCTUnwrap(
            readme.split(separator: "\n").first { $0.hasPrefix("    iptables-restore") }, "the README's rule step")
        let command = String(step.split(separator: "#")[0]).trimmingCharacters(in: .whitespaces)
            .replacingOccurrences(
                of: "/usr/share/doc/proxyside/examples", with: Lab.packageRoot.appendingPathComponent("examples").path)
        let namespace = "psin-paste"
        _ = try? Lab.shell("ip netns del \(namespace)")
        try Lab.shell("ip netns add \(namespace)")
        defer { _ = try? Lab.shell("ip netns del \(namespace)") }
        let inside = "ip netns exec \(namespace) "
        try Lab.shell(
            inside + "iptables -t raw -A PREROUTING -p udp --dport 53 -j CT --notrack && " + inside
                + "iptables -A INPUT -p tcp --dport 22 -j ACCEPT")
        try Lab.shell(inside + "bash -c '\(command)'")
        let raw = try Lab.shell(inside + "iptables-save -t raw")
        XCTAssertTrue(raw.contains("-A PREROUTING -p udp -m udp --dport 53 -j CT --notrack"), raw)
        XCTAssertTrue(raw.contains("--dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass"), raw)
        let filter = try Lab.shell(inside + "iptables-save -t filter")
        XCTAssertTrue(filter.contains("-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"), filter)
    }
}

/// second-chance@.service with the shipped /etc/default/second-chance, as systemd would expand it,
/// behind the shipped iptables rules, on a lab proxy whose address the examples name: doctor passes
/// without a warning about the rules, and only the peers are heard.
final class ShippedConfigurationTests: XCTestCase {
    func testTheUnitWithTheExampleDefaultsAndRulesRunsRestricted() throws {
        let lab = try Lab(prefix: "pspk")
        defer { lab.tearDown() }
        let examples = Lab.packageRoot.appendingPathComponent("examples/iptables").path
        try Lab.shell(
            """
            ip netns exec \(lab.namespace("p1")) iptables-restore < \(examples)/rules.v4 && ip netns exec \
            \(lab.namespace("p1")) ip6tables-restore < \(examples)/rules.v6
            """
        )
        var environment: [String: String] = [:]
        let defaults = try String(
            contentsOf: Lab.packageRoot.appendingPathComponent("examples/second-chance/default"), encoding: .utf8)
        for line in defaults.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.count == 2 { environment[String(parts[0])] = String(parts[1]) }
        }
        XCTAssertEqual(environment["SECOND_CHANCE_SELF"], Lab.p1.description, "the example names the lab's P1")
        let unit = try String(
            contentsOf: Lab.packageRoot.appendingPathComponent("systemd/second-chance@.service"), encoding: .utf8)
        try Self.checkDoctor(lab, environment: environment)

        let start = try Self.command("ExecStart", of: unit, environment: environment, lab: lab)
        XCTAssertTrue(start.contains("--allow-source"), "\(start)")
        let daemon = try Lab.launch(
            inside: lab.namespace("p1"), start, log: lab.directory.appendingPathComponent("daemon.log"))
        defer { daemon.terminate(); daemon.waitUntilExit() }
        try lab.waitFor("the unit's daemon") { FileManager.default.fileExists(atPath: lab.controlPath("p1")) }
        let syn = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 40001, destination: .v4(Lab.vip), destinationPort: 80, flags: .syn)
        try sendGUE(lab, from: "d", source: Lab.director, sourcePort: 30001, to: Lab.p1, inner: syn, hops: [])
        try sendGUE(lab, sourcePort: 30002, to: Lab.p1, inner: syn, hops: [])
        // The rules drop the client's GUE before it is queued (the tc program, which runs before
        // them, drops it first); the director's is heard.
        try lab.waitFor("the director's SYN taken, the client's packet dropped") {
            let stats = try lab.stats("p1")
            return try stats["accepted_syn"] == 1
                && Self.droppedByRules(lab).rest + (stats["fast_path_dropped_untrusted_source"] ?? 0) == 1
        }
        let stats = try lab.stats("p1")
        let byProgram = stats["fast_path_dropped_untrusted_source"] ?? 0
        XCTAssertEqual(
            try Self.droppedByRules(lab).rest + byProgram, 1, "the client's packet met the DROP rule or the program")
        XCTAssertEqual(stats["total_packets"], 1 + byProgram)

        try Self.checkForgedDirector(lab, byProgram: byProgram)
    }

    /// A command line of the unit with %i, ${VAR} (one word) and $VAR (split at blanks) expanded, as systemd does.
    static func command(
        _ key: String, of unit: String, environment: [String: String], lab: Lab
    ) throws -> [String] {
        let line = try XCTUnwrap(unit.split(separator: "\n").first { $0.hasPrefix(key + "=") }).dropFirst(
            key.count + 1)
        return line.split(separator: " ").flatMap { word -> [String] in
            let word = word.replacingOccurrences(of: "%i", with: "0")
                .replacingOccurrences(
                    of: "/usr/sbin/second-chance",
                    with: Lab.binaries.appendingPathComponent("second-chance").path
                )
                .replacingOccurrences(of: "/run/second-chance/queue-0.sock", with: lab.controlPath("p1"))
            if word.hasPrefix("${"), word.hasSuffix("}") {
                return [environment[String(word.dropFirst(2).dropLast())] ?? ""]
            }
            if word.hasPrefix("$") {
                return (environment[String(word.dropFirst())] ?? "").split(separator: " ").map(String.init)
            }
            return [word]
        }
    }

    /// What the unit's --preflight looks at: doctor with the same queue and peers passes, with no
    /// warning about the rules.
    static func checkDoctor(_ lab: Lab, environment: [String: String]) throws {
        let doctorLog = lab.directory.appendingPathComponent("doctor.log")
        let doctor = try Lab.launch(
            inside: lab.namespace("p1"),
            [
                Lab.binaries.appendingPathComponent("second-chance").path, "doctor", "--queue", "0", "--allow-source",
                try XCTUnwrap(environment["SECOND_CHANCE_ALLOW_SOURCE"]),
            ], log: doctorLog)
        doctor.waitUntilExit()
        let report = try String(contentsOf: doctorLog, encoding: .utf8)
        XCTAssertEqual(doctor.terminationStatus, 0, report)
        XCTAssertTrue(report.contains("[ ok ] --allow-source: 198.18.0.2/32, 198.18.0.11/32, 198.18.0.12/32"), report)
        XCTAssertTrue(
            report.contains(
                """
                [ ok ] iptables: -A PREROUTING -s 198.18.0.2/32 -p udp -m udp --dport 19523 -j NFQUEUE --queue-num 0 \
                --queue-bypass
                """
            ), report)
        XCTAssertFalse(report.contains("[warn] iptables"), report)
    }

    /// Packets each raw DROP rule took: the reverse-path check's, and the one for the rest of the port.
    static func droppedByRules(_ lab: Lab) throws -> (reversePath: UInt64, rest: UInt64) {
        let output = try Lab.shell(
            """
            ip netns exec \(lab.namespace("p1")) iptables -t raw -L PREROUTING -v -x -n | awk '$3 == \"DROP\" \
            {print (/rpfilter/ ? "rp" : "rest"), $1}'
            """
        )
        var counts: [String: UInt64] = [:]
        for line in output.split(separator: "\n") {
            let words = line.split(separator: " ")
            if words.count == 2 { counts[String(words[0])] = UInt64(words[1]) }
        }
        return (counts["rp"] ?? 0, counts["rest"] ?? 0)
    }

    /// The director's address from the wrong interface: a host on another link of P1's sends GUE
    /// as 198.18.0.2, and the reverse-path rule drops it before the queue (P1 routes the director
    /// through eth0, where the tc program is; this link has none).
    static func checkForgedDirector(_ lab: Lab, byProgram: UInt64) throws {
        let attacker = lab.namespace("x"), p1 = lab.namespace("p1")
        defer { _ = try? Lab.shell("ip netns del \(attacker)") }
        try Lab.shell(
            """
            ip netns add \(attacker) && ip -n \(attacker) link add xa type veth peer name xb netns \(p1) && \
            ip -n \(attacker) addr add \(Lab.director)/32 dev xa && ip -n \(attacker) link set xa up && \
            ip -n \(p1) link set xb up && ip -n \(attacker) route add \(Lab.p1)/32 dev xa && \
            ip -n \(attacker) neigh replace \(Lab.p1) dev xa lladdr \
            $(ip -n \(p1) -o link show xb | sed 's/.*link.ether \\([^ ]*\\).*/\\1/')
            """
        )
        let forged = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 40002, destination: .v4(Lab.vip), destinationPort: 80, flags: .syn)
        for port in UInt16(30010)..<30013 {
            try sendGUE(lab, from: "x", source: Lab.director, sourcePort: port, to: Lab.p1, inner: forged, hops: [])
        }
        try lab.waitFor("the forged director's packets dropped by the reverse-path rule") {
            try droppedByRules(lab).reversePath == 3
        }
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["accepted_syn"], 1, "no forged SYN reached the queue")
        XCTAssertEqual(stats["total_packets"], 1 + byProgram)
    }
}

/// The package's maintainer scripts run as dpkg runs them, on interfaces where second-chance
/// decides.
final class MaintainerScriptTests: XCTestCase {
    /// dpkg runs the installed package's `prerm upgrade VERSION` before a downgrade: to a build
    /// from before the XDP entry point (which would not know of the program in the driver, deciding
    /// from maps it does not keep) the script takes XDP off and leaves tc; to a build that has it,
    /// it leaves both. Where the defaults file names an XDP flag the older build does not know,
    /// the downgrade says so (the daemon would not start again with it).
    func testADowngradeToABuildBeforeXDPTakesTheXDPProgramOff() throws {
        guard let version = KernelRelease.version(of: KernelRelease.current), version >= (5, 12) else {
            throw XCTSkip("the XDP entry point loads from Linux 5.12 (bpf_check_mtu)")
        }
        let lab = try Lab(prefix: "psms")
        defer { lab.tearDown() }
        let daemon = try lab.start(
            "p1", "second-chance",
            [
                "run", "--queue", "0", "--self", Lab.p1.description, "--control", lab.controlPath("p1"), "--fast-path",
                "xdp",
            ] + Lab.labPeers)
        defer { daemon.terminate(); daemon.waitUntilExit() }
        let xdp = { try lab.inside("p1") { NativeXDP.program(on: "eth0") } }
        try lab.waitFor("the XDP entry point", seconds: 20) { try xdp() != nil }
        let prerm = Lab.packageRoot.appendingPathComponent("debian/proxyside.prerm").path
        // The script runs with a defaults file of its own: /etc/default a tmpfs in a mount namespace.
        var defaults = #"SECOND_CHANCE_ARGS="--fast-path tc""#
        let run = { (to: String) in
            try Lab.shell(
                """
                unshare -m --propagation private sh -c 'mount -t tmpfs none /etc/default && \
                printf "%s\\n" "$1" > /etc/default/second-chance && \
                ip netns exec \(lab.namespace("p1")) sh \(prerm) upgrade "$2" 2>&1' _ '\(defaults)' '\(to)'
                """)
        }
        let filters = { try Lab.shell("ip netns exec \(lab.namespace("p1")) tc filter show dev eth0 ingress") }

        for newer in ["0.5.0~git265.cfaceac0a1b2", "0.5.0~git400.0123456789ab", "0.5.0", "0.6.0"] {
            let output = try run(newer)
            XCTAssertNotNil(try xdp(), "an upgrade or downgrade to \(newer) leaves XDP: \(output)")
        }
        let output = try run("0.5.0~git264.9bd0d1c2e3f4")
        XCTAssertNil(try xdp(), "a downgrade to a build before XDP takes it off: \(output)")
        XCTAssertFalse(output.contains("does not know"), output)
        XCTAssertTrue(try filters().contains("second_chance_f"), "tc stays, and decides alone")
        XCTAssertTrue(daemon.isRunning, lab.log(of: daemon))
        defaults = #"SECOND_CHANCE_ARGS="--allow-source 198.18.0.0/24 --fast-path=xdp""#
        let warned = try run("0.4.0")
        XCTAssertTrue(warned.contains("names --fast-path xdp or --xdp-forward, which 0.4.0 does not know"), warned)
        XCTAssertTrue(try filters().contains("second_chance_f"), "a second downgrade's script leaves tc too")
        defaults = #"SECOND_CHANCE_ARGS="--xdp-forward on""#
        XCTAssertFalse(try run("0.6.0").contains("does not know"), "an upgrade says nothing")
    }
}
