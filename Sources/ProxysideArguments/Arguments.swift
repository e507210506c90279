import ArgumentParser
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
