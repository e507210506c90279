import ArgumentParser
import Bindkeeper
import BindkeeperCore
import ProxysideArguments

struct Release: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            Have the broker let go of sockets (all or none; allowed to whoever may bind them). Processes that hold \
            one keep it; once the last closes it, new connections are refused.
            """
    )

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    @Argument(help: "URL of a socket, as bound (tcp://198.19.0.10:443, unix:/run/app.sock).")
    var urls: [String] = []

    func run() throws {
        guard !urls.isEmpty else { throw ValidationError("give at least one URL") }
        let requests = try urls.map {
            try BindRequest.parse(url: $0).mapError { ValidationError($0.description) }.get()
        }
        for key in try BindkeeperClient(path: socket).release(requests) { print("released \(key)") }
    }
}
