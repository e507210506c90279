import ArgumentParser
import Bindkeeper
import Foundation
import Glibc
import ProxysideArguments

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the broker's sockets, their queues and the clients served.")

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    @Flag(help: "Print the broker's JSON reply.")
    var json = false

    func run() throws {
        let listing = try BindkeeperClient(path: socket).list()
        if json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: listing, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self))
            return
        }
        let sockets = listing["sockets"] as? [[String: Any]] ?? []
        print("broker pid \(listing["pid"] ?? "?"), \(sockets.count) sockets, \(listing["clients_connected"] ?? 0) clients connected, \(listing["clients_served"] ?? 0) served")
        let width = sockets.map { ($0["url"] as? String ?? "").count }.max().map { max($0, 28) } ?? 28
        print("SOCKET".padding(toLength: width, withPad: " ", startingAt: 0) + " BACKLOG(req/eff)  ACCEPTQ  SYNQ  HANDED-OUT  COOKIE")
        for socket in sockets {
            let backlog = (socket["backlog"] as? [String: Any]).map { "\($0["requested"] ?? "-")/\($0["effective"] ?? "-")" } ?? "-"
            let line = [
                (socket["url"] as? String ?? "").padding(toLength: width, withPad: " ", startingAt: 0),
                backlog.padding(toLength: 17, withPad: " ", startingAt: 0),
                "\(socket["accept_queue"] ?? "-")".padding(toLength: 8, withPad: " ", startingAt: 0),
                "\(socket["syn_queue"] ?? "-")".padding(toLength: 5, withPad: " ", startingAt: 0),
                "\(socket["handed_out"] ?? 0)".padding(toLength: 11, withPad: " ", startingAt: 0),
                "\(socket["cookie"] ?? "-")",
            ]
            print(line.joined(separator: " "))
        }
    }
}
