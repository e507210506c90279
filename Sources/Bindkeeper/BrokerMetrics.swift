import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import LinuxSys
import Logging
import Synchronization
import Telemetry

// The broker: metrics.
extension Broker {
    /// The loop's counters, copied for the metrics thread once per loop turn; the kernel's
    /// per-socket ones at most once a second (the SYN queues' count walks the namespace's
    /// established sockets). The loop reads them, as it owns the descriptors: the metrics thread
    /// could meet a number a release had just closed and another socket taken.
    func publishStatistics() {
        statistics.clientsConnected = clients.count
        let now = MonotonicClock.nanoseconds()
        if kernelCountersRead.map({ now &- $0.at >= 1_000_000_000 }) ?? true {
            kernelCountersRead = (now, readKernelCounters())
        }
        let kernel = kernelCountersRead?.sockets ?? [:]
        statistics.sockets = order.compactMap { key in
            guard let entry = sockets[key] else { return nil }
            var socket = kernel[key] ?? SocketStatistics(key: key, handedOut: 0)
            socket.handedOut = entry.handedOut
            return socket
        }
        (statistics.holders, statistics.holdersUnknown, _, _) = holdings(countingAgain: false)
        published.withLock { [statistics] in $0 = statistics }
    }

    /// Each TCP listener's drops and accept queue through its descriptor, its SYN queue from
    /// sock_diag by address and port.
    func readKernelCounters() -> [String: SocketStatistics] {
        let queues = listenerQueuesThisTurn ?? dumpListenerQueues()
        listenerQueuesThisTurn = queues
        var counters: [String: SocketStatistics] = [:]
        for (key, entry) in sockets where entry.request.kind == .tcp {
            var socket = SocketStatistics(key: key, handedOut: entry.handedOut)
            socket.listenDrops = SocketCounters.drops(entry.fd)
            socket.acceptQueue = SocketCounters.acceptQueue(entry.fd)
            socket.synQueue = listenerKey(entry.request).flatMap { queues[$0]?.requestSockets }
            counters[key] = socket
        }
        return counters
    }

    public func snapshot() -> Statistics { published.withLock { $0 } }

    func prometheus() -> String {
        let s = snapshot()
        var out = PrometheusText()
        out.single("bindkeeper_sockets", .gauge, help: "Sockets the broker owns.", s.sockets.count)
        out.single("bindkeeper_clients_connected", .gauge, help: "Clients connected now.", s.clientsConnected)
        out.single("bindkeeper_clients_total", .counter, help: "Client connections accepted.", s.clientsAccepted)
        out.single("bindkeeper_binds_total", .counter, help: "Sockets asked for in bind requests.", s.binds)
        out.single("bindkeeper_sockets_created_total", .counter, help: "Sockets made for a request.", s.bindsCreated)
        out.single("bindkeeper_bind_errors_total", .counter, help: "Bind requests that failed.", s.bindErrors)
        out.single("bindkeeper_sockets_released_total", .counter, help: "Sockets released on request.", s.released)
        out.single(
            "bindkeeper_group_steers_total", .counter,
            help: "Socket groups steered to a generation, or a share to a candidate.", s.steers)
        out.single("bindkeeper_denied_total", .counter, help: "Requests the policy refused.", s.denied)
        out.single(
            "bindkeeper_conflicts_total", .counter, help: "Requests that conflicted with a socket's settings.",
            s.conflicts)
        out.single(
            "bindkeeper_bad_requests_total", .counter, help: "Messages that were not valid requests.", s.badRequests)
        out.single(
            "bindkeeper_clients_cut_off_total", .counter,
            help: "Clients cut off for a stalled message or unread replies.", s.clientsCutOff)
        out.single(
            "bindkeeper_incomplete_at_eof_total", .counter,
            help: "Clients that closed in the middle of a message.", s.incompleteAtEOF)
        out.single("bindkeeper_reexecs_total", .counter, help: "Re-executions of the broker.", s.reexecs)
        out.single(
            "bindkeeper_clients_over_limit_total", .counter,
            help: "Connections refused for --max-clients-per-user.", s.clientsOverLimit)
        out.single(
            "bindkeeper_clients_idle_cut_off_total", .counter,
            help: "Clients cut off after --idle-seconds without a request.", s.clientsIdle)
        out.single(
            "bindkeeper_socket_limit_refusals_total", .counter,
            help: "Bind requests refused for --max-sockets-per-user.", s.socketLimitRefusals)
        out.family("bindkeeper_build_info", .gauge, help: "The running release and build.")
        out.sample("bindkeeper_build_info", ["version": ProxysideVersion.number, "build": ProgramImage.build], 1)
        out.processStart()
        out.family("bindkeeper_socket_handed_out_total", .counter, help: "Times each socket was handed to a client.")
        for socket in s.sockets {
            out.sample("bindkeeper_socket_handed_out_total", ["key": socket.key], socket.handedOut)
        }
        writeKernelCounters(s.sockets, to: &out)
        writeHolders(s.holders, to: &out)
        return out.text
    }

    /// Per socket (a group's generation as one): the established connections of the processes
    /// holding it and of those finishing what they accepted, and how many hold it; what the count
    /// could not place. Nothing but `bindkeeper_holders_known 0` when there is no count.
    func writeHolders(_ report: HoldingsReport?, to out: inout PrometheusText) {
        out.single(
            "bindkeeper_holders_known", .gauge, help: "1 when the last count of who holds the sockets succeeded.",
            report == nil ? 0 : 1)
        guard let report else { return }
        out.single(
            "bindkeeper_unattributed_established_connections", .gauge,
            help: "Established connections through the sockets that no process seen holding them has.",
            report.unattributed)
        out.single(
            "bindkeeper_unreadable_processes", .gauge,
            help: "Processes whose descriptors the count could not read (CAP_SYS_PTRACE).",
            report.unreadable)
        let totals = report.totals.sorted { $0.key < $1.key }
        let families: [(String, String, (Holdings.Total) -> UInt32)] = [
            (
                "bindkeeper_established_connections",
                "Established connections through this socket (or generation), its holders' and draining ones'.",
                \.established
            ),
            (
                "bindkeeper_draining_established_connections",
                "Of those, the connections only processes that let go of the socket and drain it have.", \.draining
            ),
            ("bindkeeper_holding_processes", "Processes holding this socket (a group's generation) now.", \.holding),
        ]
        for (name, help, value) in families {
            out.family(name, .gauge, help: help)
            for (key, total) in totals { out.sample(name, ["key": key], value(total)) }
        }
    }

    /// The kernel's counters of each TCP listener the broker owns, by the same key.
    func writeKernelCounters(_ sockets: [SocketStatistics], to out: inout PrometheusText) {
        let families: [(String, PrometheusText.Kind, String, (SocketStatistics) -> UInt32?)] = [
            (
                "bindkeeper_socket_listen_drops_total", .counter,
                "SYNs and handshakes the kernel dropped at this listener (its own count; ListenDrops per socket).",
                \.listenDrops
            ),
            (
                "bindkeeper_socket_accept_queue", .gauge, "Connections waiting for accept(2) at this listener.",
                {
                    $0.acceptQueue?.waiting
                }
            ),
            (
                "bindkeeper_socket_accept_queue_limit", .gauge,
                "The most connections this listener's accept queue holds.",
                { $0.acceptQueue?.limit }
            ),
            (
                "bindkeeper_socket_syn_queue", .gauge,
                "Handshakes in progress (request sockets) on this listener's address and port.", \.synQueue
            ),
        ]
        for (name, type, help, value) in families {
            out.family(name, type, help: help)
            for socket in sockets {
                guard let number = value(socket) else { continue }
                out.sample(name, ["key": socket.key], number)
            }
        }
    }
}
