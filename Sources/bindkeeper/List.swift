import ArgumentParser
import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import ProxysideArguments

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the broker's sockets, their queues and the clients served.")

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    @Flag(help: "Print the broker's JSON reply.")
    var json = false

    func run() throws {
        let listing = try BindkeeperClient(path: socket).list()
        if json {
            print(String(decoding: JSONText.encode(listing, pretty: true), as: UTF8.self))
            return
        }
        print(
            """
            broker pid \(listing.pid), \(listing.sockets.count) sockets, \(listing.clientsConnected) clients \
            connected, \(listing.clientsServed) served
            """
        )
        let width = listing.sockets.map(\.url.count).max().map { max($0, 28) } ?? 28
        func text(_ value: (some CustomStringConvertible)?) -> String { value.map(\.description) ?? "-" }
        print(column("SOCKET", width) + " BACKLOG(req/eff)  ACCEPTQ  SYNQ  DROPS       HANDED-OUT  COOKIE")
        for socket in listing.sockets {
            let backlog = socket.backlog.map { "\($0.requested)/\($0.effective)" } ?? "-"
            print(
                [
                    column(socket.url, width), column(backlog, 17), column(text(socket.acceptQueue), 8),
                    column(text(socket.synQueue), 5), column(text(socket.listenDrops), 11),
                    column(String(socket.handedOut), 11), String(socket.cookie),
                ].joined(separator: " "))
        }
        printHolders(listing, width: width)
    }

    /// `text` padded with blanks to `width` columns, for the tables.
    func column(_ text: String, _ width: Int) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }

    /// Who holds each TCP socket (a group's generation as one) and its established connections
    /// through it; a process finishing what it accepted after letting go is marked draining.
    func printHolders(_ listing: Reply.Listing, width: Int) {
        guard let holders = listing.holders else {
            print("holders unknown: \(listing.holdersUnknown ?? "not reported")")
            return
        }
        let unattributed = listing.unattributedConnections ?? 0, unreadable = listing.unreadableProcesses ?? 0
        if unattributed > 0 || unreadable > 0 {
            print(
                """
                \(unattributed) established connections held by no process seen holding these sockets; \
                \(unreadable) processes' descriptors could not be read (CAP_SYS_PTRACE)
                """)
        }
        guard !holders.isEmpty else { return }
        print("")
        print(
            """
            counted \(listing.holdersAgeSeconds ?? 0) s ago in \(listing.holdersCountMilliseconds ?? 0) ms; \
            each list asks for the next count
            """)
        print(column("HELD BY", width) + " PID      ESTABLISHED  STATE    COMMAND")
        for holder in holders {
            print(
                [
                    column(holder.key, width), column(String(holder.pid), 8), column(String(holder.established), 12),
                    column(holder.draining ? "draining" : "holding", 9) + holder.command,
                ].joined(separator: " "))
        }
        if let leftOut = listing.holdersLeftOut, leftOut > 0 {
            print("... and \(leftOut) more (the metrics count them all)")
        }
    }
}
