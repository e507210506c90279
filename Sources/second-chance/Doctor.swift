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
    @Option(help: "The forwarding mode to check the host for: auto (what the daemon would pick), raw or kernel.")
    var forward: ForwardingChoice = .auto
    @Option(
        name: .customLong("allow-source"),
        help: ArgumentHelp("The daemon's --allow-source, to check it too.", valueName: "CIDR"),
        transform: parsePrefixes)
    var allowSourceLists: [[IPv4Prefix]] = []
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

    func run() throws {
        let checks = Self.checks(
            queues: queues, guePort: guePort, netns: netns, forward: forward,
            allowSources: allowSourceLists.isEmpty ? nil : allowSourceLists.flatMap { $0 },
            fastPathInterfaces: fastPathInterfaces, responder: synCookies != .off)
        for check in checks { print(check.line) }
        if checks.contains(where: { $0.level == .fail }) { throw ExitCode(1) }
    }

    /// Every finding about this host for a daemon with these options (`run --preflight` looks at
    /// the same). `allowSources`: nil when not given; `responder`: --syn-cookies is not off.
    static func checks(
        queues: [UInt16], guePort: UInt16, netns: String?, forward: ForwardingChoice, allowSources: [IPv4Prefix]?,
        fastPathInterfaces: [String], responder: Bool
    ) -> [HostCheck] {
        var mode: ForwardingMode = forward == .kernel ? .kernel : .raw
        var choice: HostCheck?
        // Where GUE from the peers arrives (the routes to them, read once); nil when not given.
        let peerInterfaces = allowSources.map(PeerInterfaces.of)
        if forward == .auto {
            let (automatic, reason) = HostChecks.automaticForwarding(
                interfaces: peerInterfaces, responder: responder)
            mode = automatic
            choice = HostCheck(
                level: .info, subject: "forwarding", finding: "--forward auto picks \(automatic.rawValue): \(reason)")
        }
        return HostChecks.run(
            port: guePort, queues: queues, namespace: netns, forwarding: mode, allowedSources: allowSources)
            + (choice.map { [$0] } ?? [])
            + FastPathChecks.run(interfaces: fastPathInterfaces.isEmpty ? peerInterfaces ?? [] : fastPathInterfaces)
    }
}
