import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import LinuxSys
import Logging
import Synchronization

// The broker: re-exec.
extension Broker {
    /// Runs the installed program as the re-exec would (these arguments) with `--check`: it reads
    /// the policy and every flag and exits, printing its version line. A file that does not run,
    /// or a configuration it refuses, keeps this process serving.
    func checkReplacement() -> Result<String, SystemError> {
        let checked = ProgramImage.check(
            executable, arguments: Array(CommandLine.arguments.dropFirst()) + ["--check"],
            seconds: Self.checkSeconds)
        // A release older than `serve --check` refuses the flag as a usage error (64): it is
        // checked as it always was, by running its `version`.
        if case .failure(let error) = checked, error.description.contains("exited with 64") {
            return ProgramImage.check(executable, seconds: Self.checkSeconds)
        }
        return checked
    }

    /// How long the check may take: a start of the program, seconds on a loaded or emulated
    /// machine, bounded as second-chance's is where no watchdog watches (bindkeeper's unit sets
    /// none); the broker answers no one meanwhile.
    static let checkSeconds = 30

    /// Set in a re-executed image's environment when another re-exec was asked for meanwhile.
    static let reexecPendingName = "BINDKEEPER_REEXEC_PENDING"

    /// Sends every client's promised replies before the exec, within one second for all of them
    /// together (a client reading a reply now and then cannot stretch it); a client that has not
    /// taken its replies by then is closed: carried on, it would read the rest of a reply as the
    /// start of the next, and the sockets the reply hands over would not survive the exec.
    func flushBeforeReexec() {
        let deadline = MonotonicClock.nanoseconds() + 1_000_000_000
        var waiting = clients.values.filter { !$0.outbox.isEmpty }
        while !waiting.isEmpty {
            for client in waiting { flush(client) }
            waiting = waiting.filter { !$0.outbox.isEmpty && clients[$0.fd] != nil }
            let now = MonotonicClock.nanoseconds()
            guard !waiting.isEmpty, now < deadline else { break }
            var fds = waiting.map { pollfd(fd: $0.fd, events: Int16(POLLOUT), revents: 0) }
            _ = poll(&fds, nfds_t(fds.count), Int32((deadline - now) / 1_000_000) + 1)
        }
        for client in waiting {
            statistics.clientsCutOff += 1
            drop(client, "client pid \(client.peer.pid) did not take its replies before a re-exec; closed")
        }
    }

    /// Replaces the program in place: sockets, the control socket and connected clients stay open
    /// across exec(2), described in a memfd. On failure the broker goes on serving.
    func reexec() {
        // A file that does not run, or refuses the configuration, is found before this image is
        // given up: checked again after the flush, right before the exec, so that a policy edited
        // meanwhile is what was checked.
        flushBeforeReexec()
        let checked: String
        switch checkReplacement() {
        case .success(let line): checked = line
        case .failure(let error):
            logger.info("re-exec refused: \(error); still serving")
            return
        }
        let metrics = metricsServer?.descriptors.first?.fd
        var state = BrokerState(
            control: control,
            sockets: order.compactMap { sockets[$0] }.map {
                .init(fd: $0.fd, request: $0.request, handedOut: $0.handedOut, creator: $0.creator)
            },
            clients: clients.values.filter { !$0.closing }.map {
                .init(fd: $0.fd, wire: $0.reader.wire, pending: $0.reader.pending)
            })
        state.metrics = metrics
        state.arrays = groupArrays
        let memfd = proxyside_memfd("bindkeeper-state")
        guard memfd >= 0 else { logger.info("re-exec: memfd: \(String(cString: strerror(-memfd)))"); return }
        let bytes = state.encoded()
        guard bytes.withUnsafeBytes({ write(memfd, $0.baseAddress, $0.count) }) == bytes.count else {
            logger.info("re-exec: writing state failed")
            close(memfd)
            return
        }
        let kept =
            [(control, "control")] + (metrics.map { [($0, "metrics")] } ?? []) + state.sockets.map { ($0.fd, "socket") }
            + state.clients.map { ($0.fd, "client") } + state.arrays.values.map { ($0, "socket array") }
        statistics.reexecs += 1
        logger.info(
            """
            re-executing \(executable) (\(checked)) with \(state.sockets.count) sockets and \(state.clients.count) \
            clients
            """
        )
        try? notifier?.send("RELOADING=1\nMONOTONIC_USEC=\(MonotonicClock.nanoseconds() / 1000)")
        // A SIGUSR1 that came during the flush and the check asks for the file installed after
        // them: the new image re-executes once more (the eventfd that holds it ends with this one).
        var signalled = pollfd(fd: reexecSignal.fd, events: Int16(POLLIN), revents: 0)
        let pending = poll(&signalled, 1, 0) > 0
        let failure = ProgramImage.execute(
            executable, arguments: CommandLine.arguments, keeping: kept,
            extraEnvironment: [BrokerState.environmentName: String(memfd)]
                .merging(pending ? [Self.reexecPendingName: "1"] : [:]) { $1 })
        statistics.reexecs -= 1
        close(memfd)
        try? notifier?.send("READY=1")
        logger.info("re-exec of \(executable) failed: \(String(cString: strerror(failure))); still serving")
    }
}
