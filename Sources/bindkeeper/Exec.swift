import ArgumentParser
import Bindkeeper
import BindkeeperCore
import Glibc
import LinuxSys
import ProxysideArguments

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            Run a program with sockets from the broker, passed as systemd passes them (LISTEN_FDS, LISTEN_PID, \
            LISTEN_FDNAMES).
            """
    )

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    @Option(
        name: .customLong("bind"),
        help: "[NAME=]URL, such as http=tcp://[::]:443?backlog=4096 (repeatable; fds from 3 in this order).")
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
            guard PassedSocketName.isValidName(chosen) else {
                throw ValidationError("\(chosen): a name has no ':' or spaces")
            }
            names.append(chosen)
            requests.append(request)
        }
        let bound = try BindkeeperClient(path: socket).bind(requests)
        for socket in bound where socket.warning != nil { logger.info("\(socket.key): \(socket.warning!)") }
        // Move the fds out of the way first, then into 3, 4, ... (a received fd may already sit
        // there). Just above the target range, not at a fixed number: any fixed one can be past the
        // open-file limit (1024 is systemd's and most shells' soft limit, and then EINVAL).
        let above = ListenFDs.first + Int32(bound.count)
        var high: [Int32] = []
        for socket in bound {
            let fd = fcntl(socket.fd, F_DUPFD_CLOEXEC, above)
            guard fd >= 0 else { throw SystemError("fcntl F_DUPFD_CLOEXEC \(above)") }
            high.append(fd)
            close(socket.fd)
        }
        for (index, fd) in high.enumerated() {
            guard dup2(fd, ListenFDs.first + Int32(index)) >= 0 else { throw SystemError("dup2") }
            close(fd)
        }
        for (name, value) in ListenFDs.environment(
            names: try Self.names(names, of: requests, for: bound), pid: getpid())
        {
            setenv(name, value, 1)
        }
        Signals.restoreDefault(SIGPIPE)
        let argv: [UnsafeMutablePointer<CChar>?] = program.map { strdup($0) } + [nil]
        execvp(program[0], argv)
        throw SystemError("exec \(program[0])")
    }

    /// Each received socket's name, by position: the reply holds one socket for each request, in
    /// order, and for a group its members one after another (`KEY#0`, `KEY#1`, ...), each under
    /// its group's name.
    static func names(_ names: [String], of requests: [BindRequest], for bound: [BindkeeperClient.Bound]) throws
        -> [String]
    {
        var passed: [String] = []
        for (name, request) in zip(names, requests) {
            guard request.shards != nil else {
                passed.append(name)
                continue
            }
            var member: UInt16 = 0
            while passed.count < bound.count, bound[passed.count].key == BindRequest.memberKey(request.baseKey, member)
            {
                passed.append(name)
                member += 1
            }
        }
        guard passed.count == bound.count else {
            throw SystemError("the broker's reply", errno: EPROTO, hint: "its sockets do not match the binds asked for")
        }
        return passed
    }
}
