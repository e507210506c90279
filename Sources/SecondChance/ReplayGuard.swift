import LinuxSys

/// Bounds how often packets that an earlier reader of a queue died with are replayed into the
/// next one: a packet that crashes the daemon would otherwise crash every restart, until the
/// service manager's start limit leaves the queue unread. The count of restarts in a row that
/// found such packets lives in an eventfd's counter, which survives the crash in the service
/// manager's fd store (named `nfqueue-N-restarts`) and crosses a re-exec with the queue socket.
public final class ReplayGuard: Sendable {
    public let counter: EventFD
    /// Restarts in a row whose in-flight packets are replayed; the next one drops them.
    public let limit: UInt64

    public static let defaultLimit: UInt64 = 3

    public init(counter: EventFD, limit: UInt64 = ReplayGuard.defaultLimit) {
        self.counter = counter
        self.limit = limit
    }

    public static func storeName(queue: UInt16) -> String { "nfqueue-\(queue)-restarts" }

    public var restartsInARow: UInt64 { counter.value }

    /// Whether to replay what the earlier reader died with. A replay is counted before it
    /// happens, so a crash it causes is counted too; a drop starts the count again.
    func admitReplay() -> Bool {
        let restarts = counter.value
        guard restarts < limit else {
            counter.set(0)
            return false
        }
        counter.set(restarts + 1)
        return true
    }

    /// The replayed packets did no harm (or there were none): the count starts again.
    func survived() { counter.set(0) }
}
