import ArgumentParser
import Glibc
import NetTypes
import ProxysideArguments
import SecondChance
import SecondChanceCore

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check this host's setup and say how to fix what is wrong.")

    @Option(name: .customLong("queue")) var queues: [UInt16] = [0]
    @Option var guePort: UInt16 = GUEPacket.port
    @Option var netns: String?
    @Option(help: "The daemon's --decap: the decapsulation to check the host for.")
    var decap: DecapsulationChoice = .auto
    @Option(help: "The forwarding mode to check the host for: auto (what the daemon would pick), raw or kernel.")
    var forward: ForwardingChoice = .auto
    @Option(
        name: .customLong("allow-source"),
        help: ArgumentHelp("The daemon's --allow-source, to check it too.", valueName: "CIDR"),
        transform: parsePrefixes)
    var allowSourceLists: [[IPv4Prefix]] = []
    @Option(help: "The daemon's --fast-path: where the SYN-cookie responder can answer without the cookie helpers.")
    var fastPath: FastPathChoice = .auto
    @Option(
        name: .customLong("fast-path-interface"),
        help: ArgumentHelp("The daemon's --fast-path-interface, where the tc program is attached.", valueName: "NAME"))
    var fastPathInterfaces: [String] = []
    @Option(
        help: """
            The daemon's --syn-cookies: with the responder on, a rule that drops conntrack INVALID keeps \
            --forward auto on raw.
            """)
    var synCookies: ResponderMode = .auto
    @Option(help: "The daemon's --max-hops: GUE listing this many hops must fit the interface it arrives on.")
    var maxHops: UInt8 = PeerPolicy.defaultMaximumHops
    @Option(help: ArgumentHelp("The daemon's --fou-mark. " + PacketMark.help, valueName: "mark"))
    var fouMark: PacketMark = .default
    @Flag(help: "The daemon's --no-cookie-check (which turns the responder off too).")
    var noCookieCheck = false

    /// The daemon's flags as doctor was given them.
    var options: DaemonOptions {
        var options = DaemonOptions()
        (options.decap, options.forward, options.synCookies) = (decap, forward, synCookies)
        (options.checkCookies, options.guePort) = (!noCookieCheck, guePort)
        options.allowSources = allowSourceLists.isEmpty ? nil : allowSourceLists.flatMap { $0 }
        (options.fastPath, options.fastPathInterfaces, options.fouMark) = (fastPath, fastPathInterfaces, fouMark)
        return options
    }

    func run() throws {
        let options = options
        let host = HostSnapshot.read(.all, port: guePort, peers: options.allowSources, namespace: netns)
        let checks = Self.checks(options, host: host, queues: queues, netns: netns, maximumHops: maxHops)
        for check in checks { print(check.line) }
        if checks.contains(where: { $0.level == .fail }) { throw ExitCode(1) }
    }

    /// Every finding about `host` for a daemon with these options (`run --preflight` looks at the
    /// same), with the plan a start would make.
    static func checks(
        _ options: DaemonOptions, host: HostSnapshot, queues: [UInt16], netns: String?,
        maximumHops: UInt8 = PeerPolicy.defaultMaximumHops
    ) -> [HostCheck] {
        let plan = Result { () throws(PlanRefusal) in try DaemonPlan.make(options, host: host) }
        // A refused --forward kernel is checked as kernel forwarding: the findings say why.
        let forwarding = (try? plan.get().forwarding) ?? (options.forward == .kernel ? .kernel : .raw)
        let fastPathInterfaces =
            options.fastPathInterfaces.isEmpty ? host.peerInterfaces ?? [] : options.fastPathInterfaces
        return HostChecks.run(
            host, port: options.guePort, queues: queues, namespace: netns, forwarding: forwarding,
            allowedSources: options.allowSources, maximumHops: maximumHops, fouMark: options.fouMark)
            + planChecks(plan)
            + FastPathChecks.run(interfaces: fastPathInterfaces)
    }

    /// What a start would choose, asked of the function a start asks.
    static func planChecks(_ plan: Result<DaemonPlan, PlanRefusal>) -> [HostCheck] {
        switch plan {
        case .success(let plan):
            plan.lines.map { HostCheck(level: .info, subject: "plan", finding: $0) }
        case .failure(let refusal):
            [HostCheck(level: .fail, subject: "plan", finding: "a start refuses: \(refusal)")]
        }
    }
}
