import ArgumentParser
import Logging
import NetTypes

// The command-line forms of the types the three programs share.

extension IPv4Address: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

extension Endpoint: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// A failure a command reports in words and exits non-zero for.
public struct CommandFailure: Error, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

/// --log-level: trace, debug, info (the default), notice, warning, error or critical.
extension Logger.Level: @retroactive ExpressibleByArgument {}

/// The daemons' `--log-level`.
public struct LoggingOptions: ParsableArguments {
    @Option(help: "Log events at this level and above: trace, debug, info, notice, warning, error or critical.")
    public var logLevel: Logger.Level = .info

    public init() {}
}
