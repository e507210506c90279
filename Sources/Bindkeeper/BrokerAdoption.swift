import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import LinuxSys
import Logging
import Synchronization

// The broker: start-up: what a previous broker left.
extension Broker {
    /// Takes over a re-executed broker's state, or the sockets systemd hands back from the fd store.
    func adopt(_ environment: [String: String]) throws {
        // Fds handed to this process (the state below, or systemd's) are for it alone, not its children.
        for name in ListenFDs.variables { unsetenv(name) }
        if let text = environment[BrokerState.environmentName], let fd = Int32(text) {
            unsetenv(BrokerState.environmentName)
            let bytes = ProcFile.bytes(fd: fd, limit: Int.max)
            close(fd)
            let state = try BrokerState.decode(bytes ?? []).get()
            control = state.control
            Descriptors.setCloseOnExec(control, true)
            for socket in state.sockets {
                Descriptors.setCloseOnExec(socket.fd, true)
                add(
                    Entry(
                        request: socket.request, fd: socket.fd, handedOut: socket.handedOut,
                        backlog: backlogReport(for: socket.request),
                        creator: socket.creator), stored: true)
            }
            for saved in state.clients {
                Descriptors.setCloseOnExec(saved.fd, true)
                let client = Client(fd: saved.fd, wire: saved.wire, pending: saved.pending)
                // Requests it sent before the re-exec and still unanswered are answered in the first turn.
                client.backlogged = !saved.pending.isEmpty
                register(client)
            }
            logger.info(
                """
                re-executed: kept \(state.sockets.count) sockets, \(state.clients.count) clients and the control \
                socket
                """
            )
            return
        }
        let passed = ListenFDs.parse(environment, pid: getpid())
        guard !passed.isEmpty else { return }
        for (fd, name) in passed {
            Descriptors.setCloseOnExec(fd, true)
            if name == FDStoreName.control {
                control = fd
            } else if let request = FDStoreName.decode(name) {
                add(Entry(request: request, fd: fd, handedOut: 0, backlog: backlogReport(for: request)), stored: true)
            } else {
                logger.info(
                    "passed fd \(fd) named \(name) is not a bindkeeper socket; closed and removed from the store")
                close(fd)
                try? notifier?.removeStored(name: name)
            }
        }
        logger.info(
            """
            recovered \(sockets.count) sockets from the service \
            manager\(control >= 0 ? " and the control socket" : "")
            """
        )
    }

    /// The control socket, placed like every Unix socket the broker makes (no symlink followed,
    /// mode and group set before it appears at its path).
    static func listenControl(_ options: BrokerOptions) throws -> Int32 {
        var request: BindRequest
        switch BindRequest.validated(kind: .unix, address: options.controlPath, port: 0) {
        case .success(let valid): request = valid
        case .failure(let error): throw SystemError("control socket: \(error)", errno: EINVAL)
        }
        request.mode = options.policy.controlMode ?? 0o660
        request.group = options.policy.controlGroup
        let fd = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(AF_UNIX)") }
        do {
            try OwnedSocket.placeUnix(fd, request)
            guard listen(fd, 1024) == 0 else { throw SystemError("listen \(options.controlPath)") }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    func closeControl() {
        close(control)
        unlink(options.controlPath)
    }
}
