import BindkeeperCore
import Glibc
import LinuxSys
import Logging
import NetTypes
import Synchronization
import Telemetry

/// Why the broker could not say who holds its sockets.
public struct HoldingsUnknown: Error, CustomStringConvertible {
    public var description: String
}

/// Who holds the broker's sockets (`Holdings`), and what the count could not place.
public struct HoldingsReport: Sendable {
    public var holders: [Holdings.Holder]
    /// Per socket (a group's generation as one), each connection once.
    public var totals: [String: Holdings.Total]
    /// Established connections through the sockets that no process seen holding them has.
    public var unattributed: UInt32
    /// Processes whose descriptor tables could not be read: those connections may be theirs.
    public var unreadable: Int
}

/// Counts who holds the broker's sockets, on a thread of its own: reading every process's
/// descriptor table costs some 5 µs a descriptor (about a second for 200 000 on this machine
/// kind), which the loop, answering clients, must not wait for; a local user who opens many
/// descriptors slows the count, never the broker. The loop hands it the sockets to count for
/// (`update`); `list` and the metrics read its last report (`latest`).
final class HoldingsCounter: Sendable {
    /// A count: when it ended (MonotonicClock), how long it took, and what it found.
    typealias Report = (at: UInt64, took: UInt64, result: Result<HoldingsReport, HoldingsUnknown>)
    private struct Shared {
        var units: [Holdings.Unit] = []
        var report: Report?
    }
    private let shared = Mutex(Shared())
    private let wake: EventFD
    /// Count every `intervalMilliseconds` (for the metrics), or only when `update` asks.
    private let periodic: Bool
    private let logger: Logger
    static let intervalMilliseconds: Int32 = 10_000
    /// The most descriptors one count reads (over every process): past it the count is unknown.
    static let descriptorLimit = 4_000_000

    init(periodic: Bool, logger: Logger) throws {
        wake = try EventFD()
        (self.periodic, self.logger) = (periodic, logger)
        _ = try WorkerThread { [self] in run() }
    }

    /// The sockets to count for from now on; with `countNow`, a count starts at once (`list`).
    func update(_ units: [Holdings.Unit], countNow: Bool) {
        shared.withLock { $0.units = units }
        if countNow { wake.signal() }
    }

    /// The last count and when it was made (MonotonicClock); nil before the first.
    var latest: Report? { shared.withLock { $0.report } }

    /// Counts when woken or every interval (with `periodic`), never sooner than a second, or four
    /// times the last count's length, after the last: a client calling `list` in a loop costs
    /// the host at most a fifth of a core. Started with the daemon's signals blocked (`Broker.run`):
    /// they stay with its loop.
    private func run() {
        var heldBefore: [Int32: (started: UInt64, keys: Set<String>)] = [:]
        var poller = [pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0)]
        var (ended, took): (UInt64, UInt64) = (0, 0)
        while true {
            let interval = max(UInt64(Self.intervalMilliseconds) * 1_000_000, took &* 10)
            _ = try? Syscall.poll(&poller, milliseconds: periodic ? Int32(clamping: interval / 1_000_000) : -1)
            wake.consume()
            let gap = max(1_000_000_000, took &* 4), since = MonotonicClock.nanoseconds() &- ended
            if ended != 0, since < gap { usleep(UInt32(clamping: (gap - since) / 1000)) }
            let started = MonotonicClock.nanoseconds()
            let result = Self.count(shared.withLock { $0.units }, heldBefore: &heldBefore)
            ended = MonotonicClock.nanoseconds()
            took = ended &- started
            let previous = shared.withLock { state in
                defer { state.report = (ended, took, result) }
                return state.report?.result
            }
            switch (previous, result) {
            case (.success, .failure(let why)), (nil, .failure(let why)):
                logger.info("established connections per socket unknown: \(why)")
            case (.failure, .success): logger.info("established connections per socket counted again")
            default: break
            }
        }
    }

    /// Every process that holds one of `units`, or was last seen holding it (`heldBefore`, which
    /// this count replaces) and finishes what it accepted, with its established connections
    /// through it (`Holdings`): the kernel's established sockets on the units' ports, then every
    /// process's descriptor table. Without CAP_SYS_PTRACE the tables of other users' processes
    /// cannot be read, and their connections are counted as no holder's.
    static func count(_ units: [Holdings.Unit], heldBefore: inout [Int32: (started: UInt64, keys: Set<String>)])
        -> Result<HoldingsReport, HoldingsUnknown>
    {
        guard !units.isEmpty else {
            heldBefore = [:]
            return .success(HoldingsReport(holders: [], totals: [:], unattributed: 0, unreadable: 0))
        }
        var holdings: Holdings
        do {
            let ports = Set(units.map(\.listener.port))
            holdings = Holdings(units: units, established: try SockDiag().establishedSockets(ports: ports))
        } catch {
            return .failure(HoldingsUnknown(description: "established sockets: \(error)"))
        }
        var seen: [Int32: (started: UInt64, keys: Set<String>)] = [:]
        let unreadable: Int
        do {
            unreadable = try ProcessSockets.scan(excluding: getpid(), limit: descriptorLimit) { process in
                let held = holdings.held(in: process.sockets)
                let before = heldBefore[process.pid]
                guard !held.isEmpty || before != nil, let identity = process.identity() else { return }
                // What the same process (not one that took its pid since) held and holds no more
                // it drains.
                let draining = (before?.started == identity.started ? before?.keys ?? [] : []).subtracting(held)
                guard !held.isEmpty || !draining.isEmpty else { return }
                seen[process.pid] = (identity.started, held.union(draining))
                holdings.add(
                    pid: process.pid, command: LogText.escaped(identity.command), sockets: process.sockets,
                    holding: held, draining: draining)
            }
        } catch {
            return .failure(HoldingsUnknown(description: "\(error)"))
        }
        heldBefore = seen
        return .success(
            HoldingsReport(
                holders: holdings.holders.sorted { ($0.key, $0.pid) < ($1.key, $1.pid) }, totals: holdings.totals,
                unattributed: holdings.unattributed, unreadable: unreadable))
    }
}

// The broker: the sockets whose holders are counted.
extension Broker {
    /// The broker's TCP sockets as units: each socket, every member of a group's generation in one.
    func holdingUnits() -> [Holdings.Unit] {
        var units: [String: Holdings.Unit] = [:]
        for key in order {
            guard let entry = sockets[key], entry.request.kind == .tcp, let listener = listenerKey(entry.request) else {
                continue
            }
            var status = stat()
            guard fstat(entry.fd, &status) == 0 else { continue }
            let unit = entry.request.baseKey
            units[unit, default: Holdings.Unit(key: unit, listener: listener, inodes: [])].inodes.append(
                UInt64(status.st_ino))
        }
        return units.values.sorted { $0.key < $1.key }
    }

    /// The counter's last report for `list` (asking it for a new count) or the metrics: the
    /// holders, or why there are none, how many seconds ago it was counted and how many
    /// milliseconds the count took.
    func holdings(countingAgain: Bool) -> (report: HoldingsReport?, unknown: String?, age: UInt64?, took: UInt64?) {
        guard let holdingsCounter else { return (nil, "not counted: the counter did not start", nil, nil) }
        let now = MonotonicClock.nanoseconds()
        if countingAgain || now &- unitsHandedToCounter >= 1_000_000_000 {
            unitsHandedToCounter = now
            holdingsCounter.update(holdingUnits(), countNow: countingAgain)
        }
        guard let latest = holdingsCounter.latest else { return (nil, "not counted yet", nil, nil) }
        let age = (now &- min(now, latest.at)) / 1_000_000_000
        switch latest.result {
        case .success(let report): return (report, nil, age, latest.took / 1_000_000)
        case .failure(let why): return (nil, why.description, age, latest.took / 1_000_000)
        }
    }
}
