import ArgumentParser
import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import Logging
import LinuxSys
import NetTypes

@main
struct BindkeeperCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bindkeeper",
        abstract: "Owns LISTEN sockets and hands the same kernel socket to every process that asks, for reloads that drop nothing.",
        subcommands: [Serve.self, List.self, Reexec.self, Exec.self, HAProxy.self, Version.self])
}

let defaultSocket = ProcessInfo.processInfo.environment["BINDKEEPER_SOCKET"] ?? "/run/bindkeeper.sock"

let logger = Logger.process("bindkeeper[\(getpid())]")

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the release and the build (a hash of this executable).")
    func run() { print(ProgramImage.versionLine("bindkeeper")) }
}

struct Failure: Error, CustomStringConvertible { let description: String }

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the broker (SIGUSR1 re-executes it, keeping every socket).")

    @Option(help: "The control socket (multibinder's JSON-RPC and bindkeeper's framed form).")
    var socket = defaultSocket

    @Option(help: "Policy file (JSON): who may bind what, the control socket's mode and group.")
    var config: String?

    @Option(help: "listen(2) backlog for requests that name none (the kernel caps it at net.core.somaxconn).")
    var backlog: Int32 = 65535

    @Option(help: "Serve Prometheus metrics on ADDRESS:PORT (IPv4).")
    var metrics: String?

    @Option(help: "Cut off a client whose message stays incomplete this many seconds (1...86400).")
    var stalledSeconds: UInt64 = 10

    @Option(help: "Cut off a client that has sent no whole request for this many seconds (1...86400).")
    var idleSeconds: UInt64 = 60

    @Option(help: "Connections one uid may hold at once; more are refused and counted.")
    var maxClientsPerUser = 64

    @Option(help: "Sockets one uid other than root and the broker's own may have the broker create.")
    var maxSocketsPerUser = 256

    func run() throws {
        var policy = Policy(brokerUID: geteuid())
        if let config {
            guard let data = FileManager.default.contents(atPath: config) else { throw Failure(description: "cannot read \(config)") }
            policy = try Policy.parse(Array(data), brokerUID: geteuid(),
                                      resolveUser: { try? Accounts.uid($0) }, resolveGroup: { try? Accounts.gid($0) }).get()
        }
        var options = BrokerOptions(controlPath: socket, policy: policy)
        guard backlog > 0 else { throw ValidationError("--backlog must be positive") }
        options.defaultBacklog = backlog
        guard (1...86400).contains(stalledSeconds), (1...86400).contains(idleSeconds) else {
            throw ValidationError("--stalled-seconds and --idle-seconds are 1...86400")
        }
        guard maxClientsPerUser >= 1, maxSocketsPerUser >= 0 else { throw ValidationError("--max-clients-per-user is at least 1, --max-sockets-per-user at least 0") }
        options.stalledMessageSeconds = stalledSeconds
        options.idleSeconds = idleSeconds
        options.maximumClientsPerUser = maxClientsPerUser
        options.maximumSocketsPerUser = maxSocketsPerUser
        if let metrics {
            guard let colon = metrics.lastIndex(of: ":"), let address = IPv4Address(metrics[..<colon]),
                  let port = UInt16(metrics[metrics.index(after: colon)...]) else { throw ValidationError("--metrics takes IPv4:PORT") }
            options.metrics = (address, port)
        }
        let broker = try Broker(options: options, logger: logger)
        logger.info("serving on \(socket)")
        broker.run()
    }
}

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

struct Reexec: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Re-execute the broker in place (after an upgrade); sockets and clients stay connected.")

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    func run() throws {
        let pid = try BindkeeperClient(path: socket).reexec()
        print("broker pid \(pid) is re-executing")
    }
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a program with sockets from the broker, passed as systemd passes them (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).")

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    @Option(name: .customLong("bind"), help: "[NAME=]URL, such as http=tcp://[::]:443?backlog=4096 (repeatable; fds from 3 in this order).")
    var binds: [String] = []

    @Argument(parsing: .captureForPassthrough, help: "-- PROGRAM [ARGUMENTS]")
    var command: [String] = []

    func run() throws {
        let program = command.first == "--" ? Array(command.dropFirst()) : command
        guard !program.isEmpty else { throw ValidationError("give the program after --") }
        guard !binds.isEmpty else { throw ValidationError("give at least one --bind") }
        var names: [String] = [], requests: [BindRequest] = []
        for bind in binds {
            var name: String?, url = bind
            if let equals = bind.firstIndex(of: "="), !bind[..<equals].contains(":") {
                name = String(bind[..<equals])
                url = String(bind[bind.index(after: equals)...])
            }
            let request = try BindRequest.parse(url: url).mapError { ValidationError($0.description) }.get()
            let chosen = name ?? PassedSocketName.defaultName(for: request)
            guard PassedSocketName.isValidName(chosen) else { throw ValidationError("\(chosen): a name has no ':' or spaces") }
            names.append(chosen)
            requests.append(request)
        }
        let bound = try BindkeeperClient(path: socket).bind(requests)
        for socket in bound where socket.warning != nil { logger.info("\(socket.key): \(socket.warning!)") }
        // Move the fds out of the way first, then into 3, 4, ... (a received fd may already sit there).
        let high = bound.map { fcntl($0.fd, F_DUPFD_CLOEXEC, 1024) }
        for socket in bound { close(socket.fd) }
        for (index, fd) in high.enumerated() {
            guard fd >= 0, dup2(fd, ListenFDs.first + Int32(index)) >= 0 else { throw SystemError("dup2") }
            close(fd)
        }
        for (name, value) in ListenFDs.environment(names: names, pid: getpid()) { setenv(name, value, 1) }
        signal(SIGPIPE, SIG_DFL)
        let argv: [UnsafeMutablePointer<CChar>?] = program.map { strdup($0) } + [nil]
        execvp(program[0], argv)
        throw SystemError("exec \(program[0])")
    }
}

struct HAProxy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "haproxy",
        abstract: "Run HAProxy on the broker's sockets: {{bind URL}} in the template becomes fd@N; SIGUSR2 or SIGHUP reloads (checked first).")

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    @Option(name: .customShort("f"), help: "The configuration template.")
    var template: String

    @Option(help: "Where the rendered configuration goes (default: the template without .tmpl).")
    var rendered: String?

    @Option(name: .customShort("p"), help: "Pid file the supervisor keeps (current pid first).")
    var pidFile: String?

    @Option(help: "Seconds stopping instances may finish their connections before SIGTERM.")
    var stopTimeout = 30

    @Flag(help: "Render and have HAProxy check the result, then exit with its status (for ExecReload).")
    var check = false

    @Argument(parsing: .captureForPassthrough, help: "-- HAPROXY [ARGUMENTS]")
    var command: [String] = []

    func run() throws {
        let haproxy = command.first == "--" ? Array(command.dropFirst()) : command
        guard !haproxy.isEmpty else { throw ValidationError("give the HAProxy binary after --, such as -- /usr/sbin/haproxy") }
        if let reserved = haproxy.dropFirst().first(where: { HAProxyOptions.reservedArguments.contains($0) }) {
            throw ValidationError("\(reserved) is set by bindkeeper; leave it out of the HAProxy arguments")
        }
        var options = HAProxyOptions(socketPath: socket, template: template, rendered: rendered, pidFile: pidFile, haproxy: haproxy)
        options.stopTimeoutSeconds = stopTimeout
        let supervisor = HAProxySupervisor(options: options, logger: logger)
        throw ExitCode(check ? supervisor.checkOnly() : supervisor.run())
    }
}
