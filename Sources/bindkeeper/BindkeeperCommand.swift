import ArgumentParser
import Foundation
import Glibc
import Logging
import Telemetry

@main
struct BindkeeperCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bindkeeper",
        abstract:
            """
            Owns LISTEN sockets and hands the same kernel socket to every process that asks, for reloads that drop \
            nothing.
            """,
        subcommands: [Serve.self, List.self, Release.self, Reexec.self, Exec.self, HAProxy.self, Version.self])
}

let defaultSocket = ProcessInfo.processInfo.environment["BINDKEEPER_SOCKET"] ?? "/run/bindkeeper/bindkeeper.sock"

let logger = Logger.process("bindkeeper[\(getpid())]")
