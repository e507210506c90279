import ArgumentParser
import Glibc
import Logging
import NetTypes
import SecondChance
import SecondChanceCore
import Telemetry

@main
struct SecondChanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "second-chance",
        abstract:
            """
            Gives GLB GUE packets a second chance: take them here if this host owns the flow, else forward them to \
            the next hop.
            """,
        subcommands: [Run.self, Stats.self, Doctor.self, Reexec.self, Version.self])
}

let logger = Logger.process("second-chance")

func defaultControlPath(queue: UInt16) -> String { "/run/second-chance/queue-\(queue).sock" }

/// One or more prefixes, comma-separated (so one environment variable can carry a list).
func parsePrefixes(_ text: String) throws -> [IPv4Prefix] {
    try text.split(separator: ",", omittingEmptySubsequences: false).map { part in
        guard let prefix = IPv4Prefix(part) else {
            throw ValidationError(
                "'\(part)' is not an IPv4 prefix (ADDRESS/LENGTH with no host bits set, or one ADDRESS)")
        }
        return prefix
    }
}

/// An operator's milliseconds in nanoseconds, refused above `limit` instead of overflowing.
func nanoseconds(milliseconds value: UInt64, _ flag: String, limit: UInt64) throws -> UInt64 {
    guard value <= limit else { throw ValidationError("\(flag) is at most \(limit)") }
    return value * 1_000_000
}

/// --preflight: whether a cold start looks at the host first, and what a failed check does.
enum PreflightChoice: String, CaseIterable, ExpressibleByArgument {
    case off, warn, fail
}

extension DecapsulationChoice: ExpressibleByArgument {}
extension ForwardingChoice: ExpressibleByArgument {}
extension ResponderMode: ExpressibleByArgument {}
extension FastPathChoice: ExpressibleByArgument {}
extension FastPathStop: ExpressibleByArgument {}
extension XDPForwardChoice: ExpressibleByArgument {}

/// --fou-mark: VALUE[/MASK], or none.
extension PacketMark: ExpressibleByArgument {
    public init?(argument: String) {
        guard argument != "none" else {
            self = .none
            return
        }
        self.init(argument)
    }

    static let help = """
        With kernel decapsulation, the mark bits set on every GUE packet handed to fou (VALUE[/MASK], or none): the \
        shipped rules drop a health checker's probe that fou decapsulated without them, so a proxy whose \
        second-chance is down fails glb-healthcheck.
        """
}
