import Foundation
import XCTest

/// Debian's own kernels (5.10 of Debian 11, 6.1 of Debian 12, 6.12 of its backports and Debian 13)
/// booted by `scripts/kernel-lab.sh` under qemu: what this machine's kernel cannot show (it has no
/// fou, no nft `queue`, no modules), and the oldest kernel the fast path loads on. Each test is
/// one job of a guest or a few: `scripts/test.sh` hands them to one runner beside the host's suites
/// and to a second once those are done.
final class KernelLabTests: XCTestCase {
    /// How many tests the bundle lists under `tests` (classes, or Class/test), as the guest's
    /// filter selects them.
    static func count(of tests: [String]) throws -> Int {
        let listed = try Lab.run(Self.bundle, ["--list-tests"]).output.split(separator: "\n")
        return listed.filter { name in
            tests.contains { name == "IntegrationTests.\($0)" || name.hasPrefix("IntegrationTests.\($0)/") }
        }.count
    }

    /// XCTest's summary line for `count` tests that all passed.
    static func passed(_ count: Int) -> String { "Executed \(count) test\(count == 1 ? "" : "s"), with 0 failures" }

    /// Runs `script` (bash) in a guest of `series` with `cpus` virtual CPUs: (status, output).
    func inGuest(_ series: String, _ script: String, seconds: Int = 240, cpus: Int = 1) throws -> (
        status: Int32, output: String
    ) {
        try Lab.run(
            Lab.packageRoot.appendingPathComponent("scripts/kernel-lab.sh").path, [series, "bash", "-c", script],
            environment: ProcessInfo.processInfo.environment.merging(
                ["TIMEOUT": String(seconds), "CPUS": String(cpus)]) { $1 })
    }

    /// The shipped nft rules load unchanged and queue; fou takes GUE on the port; doctor sees both.
    /// The guest's exit status comes back.
    func testTheShippedNftRulesAndFouOnDebiansKernels() throws {
        let doctor = Lab.binaries.appendingPathComponent("second-chance").path
        for series in ["5.10", "6.1", "6.12"] {
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

    /// The SYN-cookie responder's handshake tests every fast-path guest runs.
    static let responder = [
        "testResponderAnswersAnOverflowingListenerAndTheKernelTakesItsCookies", "testIPv6ListenerOverIPv4GUE",
        "testTheCookieSYNACKAdvertisesTheRoutesMSS", "testASYNWhoseRequestTheKernelHoldsIsLeftToIt",
    ].map { "SynCookieResponderTests/" + $0 }

    /// The fast path on Debian's kernels, run by this test bundle inside the guest: the differential
    /// tests against the Swift decider and the queue's responder (the XDP entry point too from
    /// 5.12), and the SYN-cookie responder in the program: a flood and a client's handshake and
    /// data, an IPv6 one, the MSS along the route back, a SYN whose request the kernel holds (on
    /// 5.10 the program answers alone: the queue's cookie helpers need 6.0). Software emulation
    /// makes these minutes, not seconds: each guest gets 15 of them.
    func testTheFastPathOnLinux5_10() throws {
        try checkInGuest("5.10", ["FastPathParityTests"] + Self.responder, seconds: 900)
    }

    func testTheFastPathOnLinux6_1() throws {
        try checkInGuest("6.1", ["FastPathParityTests"] + Self.responder, seconds: 900)
    }

    /// The program's life on 5.10, the oldest kernel it must load on, and on 6.1: established flows
    /// decided in the kernel while the daemon is killed and down, a re-exec, a restart, a clean
    /// stop (`lifeOfTheTCProgram`); XDP's and the unit's capabilities' (`lifeOfXDPAndUnderTheUnit`).
    /// Two guests for each kernel: all of it in one took over 15 minutes on 6.1 under the test
    /// command's load.
    func testTheFastPathsLifeOnLinux5_10() throws {
        let halves = Self.lifeOfTheTCProgram.count + Self.lifeOfXDPAndUnderTheUnit.count + Self.lifeOnTheHostOnly.count
        XCTAssertEqual(try Self.count(of: ["FastPathLifecycleTests"]), halves, "a lifecycle test in neither half")
        try checkInGuest("5.10", Self.lifeOfTheTCProgram, seconds: 780)
    }

    func testTheFastPathsLifeOnLinux6_1() throws { try checkInGuest("6.1", Self.lifeOfTheTCProgram, seconds: 780) }

    func testXDPsAndTheUnitsLifeOnLinux5_10() throws {
        try checkInGuest("5.10", Self.lifeOfXDPAndUnderTheUnit, seconds: 780)
    }

    func testXDPsAndTheUnitsLifeOnLinux6_1() throws {
        try checkInGuest("6.1", Self.lifeOfXDPAndUnderTheUnit, seconds: 780)
    }

    /// FastPathLifecycleTests in two halves of about 8 minutes each on 6.1 under the test
    /// command's load (5.10 skips most of XDP's): the tc program's life, and another XDP program
    /// and others' pins; then XDP's own and the unit's.
    static let lifeOfTheTCProgram = [
        "testEstablishedFlowsKeepMovingWhileTheDaemonIsKilledAndDown",
        "testARestartTakesItsPredecessorsProgramsOffInterfacesItNoLongerUses",
        "testAReexecReplacesTheProgramInPlaceAndACleanStopRemovesIt", "testACleanStopRemovesOnlyItsOwnProgram",
        "testAnotherXDPProgramIsLeftInPlaceAndWarnedOf",
        "testWithTheUnitsCapabilitiesNoOneElsesPinsAreBelievedAndAFailedAttachLeavesNoXDP",
    ].map { "FastPathLifecycleTests/" + $0 }
    static let lifeOfXDPAndUnderTheUnit = [
        "testXDPDecidesLocalPacketsAndIsReplacedInPlaceAndRemoved", "testXDPSendsForwardsBackOutOnlyWhereAllowed",
        "testXDPAnswersSYNsWithTheKernelsCookiesWhereItMaySend",
        "testWithTheUnitsCapabilitiesAStartAfterAKeepingStopTakesThePinnedProgramsOver",
        "testWithTheUnitsCapabilitiesAReexecAndARestartReplaceXDPAndAStopRemovesIt",
    ].map { "FastPathLifecycleTests/" + $0 }
    /// Lifecycle tests whose kernel side the halves' tests exercise on every kernel: how the
    /// responder follows routes (the programs they load are loaded and verified there, and the
    /// routing they read is the same), and the daemon's own choices of where to attach, what an
    /// earlier daemon left and whose pins to leave (the same attach, detach and pin calls). Each
    /// costs a guest one to two minutes the kernel lab's length has no room for.
    static let lifeOnTheHostOnly = [
        "testTheProgramAttachesOnlyWhereFramesCarryAnEthernetHeader",
        "testFastPathOffRemovesAProgramAnEarlierDaemonLeft",
        "testWithTheUnitsCapabilitiesAnotherInstanceLeavesWhatTheSharedPinsName",
        "testXDPLeavesASYNWhoseReplyRouteLeavesElsewhereToTcWithoutACookie",
        "testTheRespondersRouteBackPassesOverARouteTheKernelIgnores",
        "testTheRespondersRouteBackPassesOverARouteForOneTOS",
        "testTheRespondersRouteBackFollowsIgnoreRoutesWithLinkdown",
    ]

    func testTheFastPathOnLinux6_12() throws {
        try checkInGuest("6.12", ["FastPathParityTests"] + Self.responder, seconds: 900)
    }

    /// bindkeeper's socket groups (their reuseport program and socket array) on the oldest kernel
    /// and the newest, in guests of two CPUs (a group steers by the CPU a SYN arrives on).
    func testSocketGroupsOnLinux5_10And6_12() throws {
        for series in ["5.10", "6.12"] { try checkInGuest(series, ["SocketGroupTests"], seconds: 300, cpus: 2) }
    }

    /// The director/proxy scenarios the kernel-decapsulation and rules jobs run.
    static let scenarioNames = [
        "testSYNViaP1IsAnsweredByTheVIPOnP1", "testUnknownACKIsForwardedAlongTheHopsWithItsBytesIntact",
        "testEstablishedFlowOnP2SurvivesWhenItsPacketsArriveAtP1", "testIPv6FlowSurvivesTheDrainToo",
        "testIPv6SYNInsideIPv4GUEIsAnsweredOverIPv6",
        "testGUEFromOutsideThePeersMeetsTheDropBeforeAnyDecapsulation",
        "testGLBHealthchecksProbeFailsWhileSecondChanceIsDown",
        "testASixToFourClientIsAnsweredInEveryDecapsulationMode",
        "testTheProxysOwnHealthCheckIsHeardOverLoopbackAndItsAddressFromOutsideIsNot",
    ].map { "SecondChanceTests/" + $0 }
    static let modules = "for m in fou ipip sit nfnetlink_queue nft_queue veth; do modprobe $m; done"
    static var bundle: String { Lab.binaries.appendingPathComponent("proxysidePackageTests.xctest").path }

    /// What this machine's kernel cannot run, on Debian's: `--decap auto` choosing fou (tunl0 and
    /// sit0 up) and the director/proxy scenarios passing through it (SYN, forward, drain, IPv6, GUE
    /// from outside the peers dropped before fou); doctor naming a down tunl0, then content (status
    /// 0) once it is up behind the shipped nft rules. NFQUEUE alone decides (`--fast-path off`):
    /// the program would take the packets first.
    func testKernelDecapsulationOnLinux5_10() throws { try checkKernelDecapsulation("5.10") }

    func testKernelDecapsulationOnLinux6_1() throws { try checkKernelDecapsulation("6.1") }

    /// On 6.12 also the attacker's packets of `DataPathMatrixTests` with fou decapsulating what the
    /// queue lets in.
    func testKernelDecapsulationAndTheAttackersPacketsOnLinux6_12() throws {
        try checkKernelDecapsulation("6.12", matrix: true)
    }

    func checkKernelDecapsulation(_ series: String, matrix: Bool = false) throws {
        let doctor = Lab.binaries.appendingPathComponent("second-chance").path
        let scenarios = Self.scenarioNames.map { "IntegrationTests." + $0 }.joined(separator: ",")
        let scenarioCount = try Self.count(of: Self.scenarioNames)
        let matrixCount = try Self.count(of: ["DataPathMatrixTests"])
        let lastLines = "2>&1 | grep -E 'error|Executed' | tail -3"
        let matrixRun = "PROXYSIDE_FOU=1 \(Self.bundle) IntegrationTests.DataPathMatrixTests \(lastLines)"
        let (status, output) = try inGuest(
            series,
            """
            set -e
            uname -r
            \(Self.modules)
            ip netns add decap
            ip -n decap link set lo up
            ip -n decap fou add port 19523 gue
            ip netns exec decap \(doctor) doctor --queue 0 > /tmp/down.txt 2>&1 || true
            ip -n decap link set tunl0 up
            ip -n decap link set sit0 up
            ip netns exec decap nft -f \(Lab.packageRoot.path)/examples/iptables/proxyside.nft
            # With the shipped rules as well, doctor is content: status 0.
            ip netns exec decap \(doctor) doctor --queue 0 --allow-source 198.18.0.2,198.18.0.11,198.18.0.12 \
                > /tmp/up.txt 2>&1
            ip netns del decap
            grep -F '[FAIL] tunl0: down' /tmp/down.txt
            grep -F '[ ok ] tunl0: up' /tmp/up.txt
            grep -F '[ ok ] sit0: up' /tmp/up.txt
            echo "kernel decapsulation:"
            PROXYSIDE_FAST_PATH=off PROXYSIDE_FOU=1 \(Self.bundle) \(scenarios) \(lastLines)
            echo "matrix:"
            \(matrix ? matrixRun : "")
            """, seconds: 720)
        XCTAssertTrue(output.contains("\(series)."), "booted \(series): \(output)")
        XCTAssertEqual(status, 0, "doctor named the down tunl0, then passed it: \(output)")
        let decapsulated =
            output.components(separatedBy: "kernel decapsulation:").last?.components(separatedBy: "matrix:").first ?? ""
        XCTAssertTrue(decapsulated.contains(Self.passed(scenarioCount)), "\(series), fou: \(output)")
        if matrix {
            let matrixOutput = output.components(separatedBy: "matrix:").last ?? ""
            XCTAssertTrue(matrixOutput.contains(Self.passed(matrixCount)), "matrix, fou: \(output)")
        }
    }

    /// The shipped proxyside.nft queuing the same scenarios to second-chance, and one HAProxy
    /// reload under bindkeeper, on the two newer kernels (neither depends on the kernel's BPF).
    func testTheShippedNftRulesQueueTheScenariosAndAReloadOnLinux6_1() throws { try checkRulesAndReload("6.1") }

    func testTheShippedNftRulesQueueTheScenariosAndAReloadOnLinux6_12() throws { try checkRulesAndReload("6.12") }

    func checkRulesAndReload(_ series: String) throws {
        let scenarios = Self.scenarioNames.map { "IntegrationTests." + $0 }.joined(separator: ",")
        let scenarioCount = try Self.count(of: Self.scenarioNames)
        let reloadName = "HAProxyReloadTests/testAFailedCheckLeavesTheRunningInstanceServing"
        let reloadCount = try Self.count(of: [reloadName])
        let (_, rules) = try inGuest(
            series,
            """
            uname -r
            \(Self.modules)
            echo "nft rules:"
            export PROXYSIDE_FAST_PATH=off PROXYSIDE_RULES=nft
            \(Self.bundle) \(scenarios) 2>&1 | grep -E 'error|Executed' | tail -3
            unset PROXYSIDE_FAST_PATH PROXYSIDE_RULES
            echo "reload:"
            \(Self.bundle) IntegrationTests.\(reloadName) 2>&1 | grep -E 'error|Executed' | tail -3
            """, seconds: 720)
        XCTAssertTrue(rules.contains("\(series)."), "booted \(series): \(rules)")
        let queued = rules.components(separatedBy: "nft rules:").last?.components(separatedBy: "reload:").first ?? ""
        XCTAssertTrue(queued.contains(Self.passed(scenarioCount)), "\(series), nft rules: \(rules)")
        let reloaded = rules.components(separatedBy: "reload:").last ?? ""
        XCTAssertTrue(reloaded.contains(Self.passed(reloadCount)), "\(series), reload: \(rules)")
    }

    /// Runs `tests` (classes, or Class/test) in a guest: every one of them passes, as many as the
    /// bundle lists.
    func checkInGuest(_ series: String, _ tests: [String], seconds: Int = 480, cpus: Int = 1) throws {
        let filter = tests.map { "IntegrationTests." + $0 }.joined(separator: ",")
        let count = try Self.count(of: tests)
        let (status, output) = try inGuest(
            series, "uname -r; \(Self.bundle) \(filter) 2>&1", seconds: seconds, cpus: cpus)
        XCTAssertTrue(output.contains("\(series)."), "booted \(series): \(output)")
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains(Self.passed(count)), output)
    }
}
