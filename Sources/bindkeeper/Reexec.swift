import ArgumentParser
import Bindkeeper
import Glibc
import ProxysideArguments

struct Reexec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-execute the broker in place (after an upgrade); sockets and clients stay connected.")

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    func run() throws {
        let reply = try BindkeeperClient(path: socket).reexec()
        print("broker pid \(reply.pid) is re-executing")
    }
}
