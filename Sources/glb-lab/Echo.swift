import ArgumentParser
import Glibc
import LabKit
import LinuxSys
import NetTypes
import ProxysideArguments

/// A TCP echo service: one thread per connection, which is plenty for a lab.
struct Echo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "TCP echo service on ADDRESS:PORT (repeatable).")

    @Option(name: .customLong("listen")) var listens: [Endpoint]
    @Option(help: "listen(2) backlog.") var backlog: Int32 = 1024

    func run() throws {
        let stop = try EventFD()
        try Signals.install(shutdown: stop)
        let fds = try listens.map { try LabSockets.listenTCP(on: $0.address, port: $0.port, backlog: backlog) }
        logger.info("echo: listening on \(listens.map(\.description).joined(separator: ", "))")
        var pollfds =
            fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) } + [
                pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0)
            ]
        while true {
            guard (try? Syscall.poll(&pollfds, milliseconds: -1)) != nil else { break }
            if pollfds.last!.revents != 0 { break }
            for index in fds.indices where pollfds[index].revents != 0 {
                let client = accept(fds[index], nil, nil)
                guard client >= 0 else { continue }
                _ = try? WorkerThread {
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let count = recv(client, &buffer, buffer.count, 0)
                        if count <= 0 || !SocketIO.sendAll(client, Array(buffer[0..<count])) { break }
                    }
                    close(client)
                }
            }
        }
    }
}
