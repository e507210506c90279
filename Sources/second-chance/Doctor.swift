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
    @Option(help: "The forwarding mode to check the host for: raw or kernel.") var forward: ForwardingMode = .raw
    @Option(
        name: .customLong("allow-source"),
        help: ArgumentHelp("The daemon's --allow-source, to check it too.", valueName: "CIDR"),
        transform: parsePrefixes)
    var allowSourceLists: [[IPv4Prefix]] = []

    func run() throws {
        let checks = HostChecks.run(
            port: guePort, queues: queues, namespace: netns, forwarding: forward,
            allowedSources: allowSourceLists.isEmpty ? nil : allowSourceLists.flatMap { $0 })
        for check in checks { print(check.line) }
        if checks.contains(where: { $0.level == .fail }) { throw ExitCode(1) }
    }
}
