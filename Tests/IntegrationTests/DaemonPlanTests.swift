import NetTypes
import SecondChance
import SecondChanceCore
import TestSupport
import XCTest

@testable import second_chance

/// `run` and `doctor` choose a daemon's modes with one function (`DaemonPlan`): these tests hold
/// both commands to it for every combination of the flags that choose, on hosts written down.
final class DaemonPlanTests: XCTestCase {
    /// A host where the kernel may forward: ip_forward and accept_local on, nothing filtering.
    static var forwardingHost: HostSnapshot {
        var host = HostSnapshot()
        host.devices = ["lo", "eth0"]
        host.sysctls = [
            "net/ipv4/ip_forward": "1", "net/ipv4/conf/all/accept_local": "0", "net/ipv4/conf/eth0/accept_local": "1",
            "net/ipv4/conf/all/rp_filter": "2", "net/ipv4/conf/eth0/rp_filter": "0",
        ]
        host.iptables = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"
        host.nft = "table ip filter {\n}\n"
        host.fou = .success(.gue)
        host.cookieHelpers = .success(())
        host.peerInterfaces = ["eth0"]
        return host
    }

    /// The hosts every combination is planned on, each changing one thing the choice depends on.
    static var hosts: [(name: String, host: HostSnapshot)] {
        let base = forwardingHost
        var noForward = base
        noForward.sysctls["net/ipv4/ip_forward"] = "0"
        var elsewhere = base
        elsewhere.peerInterfaces = ["eth1"]
        var filtering = base
        filtering.iptables = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"
        var invalid = base
        invalid.iptables! += "*mangle\n-A PREROUTING -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n"
        var unreadable = base
        (unreadable.iptables, unreadable.nft) = (nil, nil)
        var noFou = base
        noFou.fou = .success(.portNotConfigured)
        var noHelpers = base
        noHelpers.cookieHelpers = .failure(HostSnapshot.Failure("bpf: Operation not permitted"))
        return [
            ("forwarding", base), ("ip_forward=0", noForward), ("accept_local elsewhere", elsewhere),
            ("FORWARD DROP", filtering), ("INVALID dropped", invalid), ("rules unreadable", unreadable),
            ("no fou", noFou), ("no cookie helpers", noHelpers),
        ]
    }

    /// Every value of each flag that takes part in the choice, as both commands spell it.
    static var flagCombinations: [[String]] {
        var combinations: [[String]] = []
        for forward in ForwardingChoice.allCases {
            for decap in DecapsulationChoice.allCases {
                for cookies in ResponderMode.allCases {
                    for check in [[], ["--no-cookie-check"]] {
                        for fastPath in FastPathChoice.allCases {
                            combinations.append(
                                [
                                    "--forward", forward.rawValue, "--decap", decap.rawValue, "--syn-cookies",
                                    cookies.rawValue, "--fast-path", fastPath.rawValue,
                                ]
                                    + check)
                        }
                    }
                }
            }
        }
        return combinations
    }

    /// The flags parse to the same options in both commands, and a start, reading only the parts
    /// of the host its flags need, chooses what doctor (which reads them all) says it would.
    func testRunAndDoctorChooseTheSameModesForEveryFlagCombination() throws {
        let peers = ["--allow-source", "198.18.0.0/24"]
        var refusals = 0
        for flags in Self.flagCombinations {
            let run = try Run.parse(["--self", "198.18.0.1", "--queue", "0"] + peers + flags)
            let doctor = try Doctor.parse(peers + flags)
            XCTAssertEqual(run.options(keptForwarding: nil), doctor.options, "\(flags)")
            for (name, host) in Self.hosts {
                let options = run.options(keptForwarding: nil)
                let started = Result { () throws(PlanRefusal) in
                    try DaemonPlan.make(options, host: host.keeping(DaemonPlan.parts(for: options)))
                }
                // What doctor prints of its plan (its other checks load the tc program: slow here).
                let said = Doctor.planChecks(
                    Result { () throws(PlanRefusal) in try DaemonPlan.make(doctor.options, host: host) })
                switch started {
                case .success(let plan):
                    XCTAssertEqual(said.map(\.finding), plan.lines, "\(flags) on \(name)")
                    XCTAssertEqual(said.map(\.level), plan.lines.map { _ in .info }, "\(flags) on \(name)")
                case .failure(let refusal):
                    refusals += 1
                    XCTAssertEqual(said.map(\.finding), ["a start refuses: \(refusal)"], "\(flags) on \(name)")
                    XCTAssertEqual(said.map(\.level), [.fail], "\(flags) on \(name)")
                }
            }
        }
        XCTAssertGreaterThan(refusals, 0, "some combination is refused on some host")
        // Doctor prints those lines among its findings.
        let doctor = try Doctor.parse(peers + ["--decap", "userspace"])
        let printed = Doctor.checks(doctor.options, host: Self.forwardingHost, queues: [0], netns: nil)
        XCTAssertEqual(
            printed.filter { $0.subject == "plan" }.map(\.finding),
            try DaemonPlan.make(doctor.options, host: Self.forwardingHost).lines)
    }

    /// What the choice is, on each host: the README's account of `--forward auto`, `--decap auto`
    /// and the responder.
    func testThePlanChoosesAsTheReadmeSays() throws {
        func plan(_ host: HostSnapshot, _ change: (inout DaemonOptions) -> Void = { _ in }) throws -> DaemonPlan {
            var options = DaemonOptions()
            options.allowSources = [try XCTUnwrap(IPv4Prefix("198.18.0.0/24"))]
            change(&options)
            return try DaemonPlan.make(options, host: host)
        }
        let hosts = Dictionary(uniqueKeysWithValues: Self.hosts.map { ($0.name, $0.host) })
        XCTAssertEqual(try plan(hosts["forwarding"]!).forwarding, .kernel)
        XCTAssertEqual(try plan(hosts["forwarding"]!).decapsulation, .kernel)
        XCTAssertEqual(try plan(hosts["no fou"]!).decapsulation, .userspace)
        for name in ["ip_forward=0", "accept_local elsewhere", "FORWARD DROP", "INVALID dropped", "rules unreadable"] {
            XCTAssertEqual(try plan(hosts[name]!).forwarding, .raw, name)
        }
        // INVALID drops matter only while the responder can answer.
        XCTAssertEqual(try plan(hosts["INVALID dropped"]!) { $0.synCookies = .off }.forwarding, .kernel)
        XCTAssertEqual(try plan(hosts["INVALID dropped"]!) { $0.checkCookies = false }.forwarding, .kernel)
        // Without the cookie helpers (Linux before 6.0) the tc program answers alone, where it may load.
        let tcOnly = try plan(hosts["no cookie helpers"]!)
        XCTAssertEqual(tcOnly.responder, .auto)
        XCTAssertTrue(tcOnly.lines.contains { $0.contains("the tc program's only") }, "\(tcOnly.lines)")
        XCTAssertEqual(try plan(hosts["no cookie helpers"]!) { $0.fastPath = .off }.responder, .off)
        XCTAssertThrowsError(try plan(hosts["no cookie helpers"]!) { $0.synCookies = .always })
        XCTAssertEqual(
            try plan(hosts["no cookie helpers"]!) { ($0.synCookies, $0.fastPath) = (.always, .tc) }.responder, .always)
        XCTAssertNil(try plan(hosts["forwarding"]!).responderNote)
        XCTAssertThrowsError(
            try plan(hosts["forwarding"]!) {
                ($0.synCookies, $0.checkCookies) = (.always, false)
            }, "always answers with cookies no ACK check would accept")
        // The flags, not this start's luck with the helpers, keep INVALID drops from kernel forwarding.
        var unlucky = hosts["INVALID dropped"]!
        unlucky.cookieHelpers = .failure(HostSnapshot.Failure("bpf: Operation not permitted"))
        XCTAssertEqual(try plan(unlucky).forwarding, .raw)
        XCTAssertThrowsError(try plan(hosts["ip_forward=0"]!) { $0.forward = .kernel })
        XCTAssertEqual(try plan(hosts["FORWARD DROP"]!) { $0.forward = .kernel }.forwarding, .kernel)
        // A re-exec keeps its choice without the rules, while the sysctls still allow it.
        let kept = try plan(hosts["rules unreadable"]!) { $0.keptForwarding = .kernel }
        XCTAssertEqual(kept.forwarding, .kernel)
        XCTAssertEqual(kept.forwardingReason, "as chosen before the re-exec")
        XCTAssertEqual(try plan(hosts["ip_forward=0"]!) { $0.keptForwarding = .kernel }.forwarding, .raw)
    }
}

/// The plan through the real binaries: `run --check` refuses what a start would refuse, and doctor
/// says why a fast path does not load.
final class DaemonPlanCommandTests: XCTestCase {
    /// A re-exec runs the new image with `--check` first: a plan a start would refuse (the host
    /// stopped forwarding under `--forward kernel`; `always` with no cookie check) fails it, and
    /// the running daemon keeps its queues instead of exec'ing into a start that drops them.
    func testRunCheckRefusesWhatTheStartWouldRefuse() throws {
        let namespace = "psdp-check"
        _ = try? Lab.shell("ip netns del \(namespace)")
        try Lab.shell(
            "ip netns add \(namespace) && ip -n \(namespace) link set lo up && "
                + "ip -n \(namespace) addr add 198.18.9.1/32 dev lo")
        defer { _ = try? Lab.shell("ip netns del \(namespace)") }
        let binary = Lab.binaries.appendingPathComponent("second-chance").path
        func check(_ flags: [String]) throws -> (Int32, String) {
            try Lab.run(
                "/usr/sbin/ip",
                [
                    "netns", "exec", namespace, binary, "run", "--queue", "0", "--self", "198.18.9.1", "--allow-source",
                    "198.18.9.0/24", "--check",
                ] + flags)
        }
        var (status, said) = try check(["--forward", "kernel"])
        XCTAssertEqual(status, 78, said)
        XCTAssertTrue(said.contains("--forward kernel: [FAIL] ip_forward"), said)
        try Lab.shell(
            "ip netns exec \(namespace) sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.accept_local=1")
        (status, said) = try check(["--forward", "kernel"])
        XCTAssertEqual(status, 0, said)
        (status, said) = try check(["--syn-cookies", "always", "--no-cookie-check"])
        XCTAssertEqual(status, 78, said)
        (status, said) = try check([])
        XCTAssertEqual(status, 0, said)
    }

    /// Without CAP_BPF the program does not load anywhere: doctor says so, not that the kernel
    /// refuses it.
    func testDoctorWithoutPrivilegesNamesThemForTheFastPath() throws {
        let (_, said) = try Lab.run(
            "/usr/bin/setpriv",
            [
                "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                Lab.binaries.appendingPathComponent("second-chance").path, "doctor",
            ])
        XCTAssertTrue(said.contains("[FAIL] privileges: not running as root"), said)
        XCTAssertTrue(said.contains("fix: the process lacks CAP_BPF and CAP_NET_ADMIN"), said)
    }
}

extension HostSnapshot {
    /// This host as a start with `parts` read it: what it did not read is as `read` leaves it.
    func keeping(_ parts: Parts) -> HostSnapshot {
        var seen = HostSnapshot()
        seen.peerInterfaces = peerInterfaces
        if parts.contains(.forwarding) {
            seen.devices = devices
            seen.sysctls = sysctls
        }
        if parts.contains(.rules) { (seen.iptables, seen.iptablesRaw, seen.nft) = (iptables, iptablesRaw, nft) }
        if parts.contains(.fou) { seen.fou = fou }
        if parts.contains(.cookieHelpers) { seen.cookieHelpers = cookieHelpers }
        return seen
    }
}
