import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import LinuxSys
import Logging
import Synchronization
import Telemetry

// The broker: start-up: what a previous broker left.
extension Broker {
    /// Takes over a re-executed broker's state, or the sockets systemd hands back from the fd store.
    func adopt(_ environment: [String: String]) throws {
        // Fds handed to this process (the state below, or systemd's) are for it alone, not its children.
        for name in ListenFDs.variables { unsetenv(name) }
        if let text = environment[BrokerState.environmentName], let fd = Int32(text) {
            unsetenv(BrokerState.environmentName)
            reexecRequested = environment[Self.reexecPendingName] == "1"
            unsetenv(Self.reexecPendingName)
            let bytes = ProcFile.bytes(fd: fd, limit: Int.max)
            close(fd)
            let state = try BrokerState.decode(bytes ?? []).get()
            control = state.control
            Descriptors.setCloseOnExec(control, true)
            inheritedMetrics = state.metrics
            if let metrics = state.metrics { Descriptors.setCloseOnExec(metrics, true) }
            for socket in state.sockets {
                Descriptors.setCloseOnExec(socket.fd, true)
                add(
                    Entry(
                        request: socket.request, fd: socket.fd, handedOut: socket.handedOut,
                        backlog: backlogReport(for: socket.request),
                        creator: socket.creator), stored: true)
            }
            for (address, fd) in state.arrays {
                Descriptors.setCloseOnExec(fd, true)
                groupArrays[address] = fd
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
            } else if name == StatsServer.metricsName {
                inheritedMetrics = fd
            } else if let address = FDStoreName.decodeArray(name),
                (try? BPF.mapInfo(fd: fd))?.type == BPF.reuseportSocketArray
            {
                groupArrays[address] = fd
            } else if let (request, creator) = FDStoreName.decodeEntry(name) {
                add(
                    Entry(
                        request: request, fd: fd, handedOut: 0, backlog: backlogReport(for: request), creator: creator),
                    stored: true)
            } else {
                logger.info(
                    "passed fd \(fd) named \(name) is not a bindkeeper socket; closed and removed from the store")
                close(fd)
                try? notifier?.removeStored(name: name)
            }
        }
        // An array whose group did not come back with it steers nothing any more.
        forgetUnusedArrays()
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

    /// An adopted control socket must serve the configured path, with the configured mode and
    /// group: a process that stopped outside the fd store's care (an older release) removed the
    /// path, or the configuration changed. A missing path (or another socket file there) gets a
    /// new socket, and the clients queued on the old one are served as clients of this process; a
    /// present one gets its mode and group set through a handle of that very file (no path
    /// followed).
    func refreshAdoptedControl() throws {
        var status = stat()
        let present = lstat(options.controlPath, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK
        // A socket file at the path is not the adopted socket's because it has its name: a dead
        // one left there would take the clients' connections and refuse them.
        let ours = UnixSocketFile.isBound(control, at: options.controlPath)
        if present && ours == nil {
            logger.warning(
                "control socket \(options.controlPath): unix_diag cannot say whether the file is this socket's; kept")
        }
        guard present, ours ?? true else {
            let fresh = try Self.listenControl(options)
            acceptClients(from: control)
            close(control)
            control = fresh
            logger.info("control socket \(options.controlPath) was gone or another file; made anew")
            notifier?.replaceStored(control, name: FDStoreName.control, reportingTo: logger)
            return
        }
        try OwnedSocket.setModeAndGroup(
            options.controlPath, mode: options.policy.controlMode ?? 0o660, group: options.policy.controlGroup)
    }

    /// Stops serving. The path stays while the socket is in the service manager's store: a
    /// restart adopts it, and clients that connect meanwhile wait in its queue instead of failing.
    func closeControl() {
        close(control)
        if !controlStored { unlink(options.controlPath) }
    }
}
