import LinuxSys
import NetTypes
import SecondChanceCore
import Synchronization

/// What the queue threads need to answer a SYN for one listener.
public struct ResponderListener: Sendable {
    public var record: ListenerRecord
    public var windowScale: UInt8
    public var receiveBuffer: UInt32
    /// The accept queue is full: the kernel would drop the handshake's ACK, so SYNs go to the kernel.
    public var acceptQueueFull: Bool
    /// The listener's TCP_MAXSEG (0: none set, or unknown): the SYN-ACK offers no more.
    public var userMSS: UInt16 = 0
}

/// The monitor's latest view, shared with the queue threads: they copy it when the generation changes.
public final class ResponderBoard: Sendable {
    public struct Snapshot: Sendable {
        public var generation: UInt64 = 0
        public var listeners: [ListenerKey: ResponderListener] = [:]
        public var settings = TCPHostSettings()
        /// The routes replies leave by, with the MSS the kernel's SYN-ACK advertises along each.
        public var replyRoutes = ReplyRoutes()

        public func listener(for flow: FlowKey) -> ResponderListener? {
            guard !listeners.isEmpty else { return nil }
            for key in ListenerKey.candidates(for: flow) {
                if let listener = listeners[key] { return listener }
            }
            return nil
        }
    }

    /// Records are kept for the namespace's current listeners only (`retainRecords`), so this
    /// bounds a namespace with more listeners than any proxy has, not the listeners seen over time.
    public static let maximumRecords = 65536
    private struct State {
        var current = Snapshot()
        var records: [ListenerKey: ListenerRecord] = [:]
    }
    private let state = Mutex(State())
    /// The snapshot's generation, read per batch by every queue thread without taking the lock.
    private let generationWord = AtomicWords(count: 1)

    public init() {}

    public var generation: UInt64 { generationWord.load(0) }

    public func snapshot() -> Snapshot { state.withLock { $0.current } }

    /// The record for `key`; made when `create` (at most `maximumRecords`, then nil).
    func record(for key: ListenerKey, create: Bool = true) -> ListenerRecord? {
        state.withLock { state in
            if let record = state.records[key] { return record }
            guard create, state.records.count < Self.maximumRecords else { return nil }
            let record = ListenerRecord(key: key)
            state.records[key] = record
            return record
        }
    }

    /// Forgets the records of listeners that are gone: their counters leave the metrics with them,
    /// and their places serve new listeners. The queue threads' snapshot keeps what it holds until
    /// the next publish.
    func retainRecords(for keys: some Sequence<ListenerKey>) {
        let current = Set(keys)
        state.withLock { state in state.records = state.records.filter { current.contains($0.key) } }
    }

    public var recordCount: Int { state.withLock { $0.records.count } }

    public var allRecords: [ListenerRecord] {
        state.withLock { $0.records.values.sorted { $0.key.description < $1.key.description } }
    }

    /// Told every published snapshot, with the listeners that have records (served or not), on
    /// the publishing thread; and at once, with the current one. The tc fast path's responder
    /// follows the queue threads' view through it.
    public func observe(_ observer: @escaping @Sendable (Snapshot, [ListenerKey]) -> Void) {
        let (snapshot, keys) = state.withLock { ($0.current, Array($0.records.keys)) }
        self.observer.withLock { $0 = observer }
        observer(snapshot, keys)
    }

    private let observer = Mutex<(@Sendable (Snapshot, [ListenerKey]) -> Void)?>(nil)

    func publish(_ listeners: [ListenerKey: ResponderListener], settings: TCPHostSettings, replyRoutes: ReplyRoutes) {
        let (snapshot, keys) = state.withLock { state in
            state.current.generation &+= 1
            state.current.listeners = listeners
            state.current.settings = settings
            state.current.replyRoutes = replyRoutes
            return (state.current, Array(state.records.keys))
        }
        generationWord.store(0, snapshot.generation)
        observer.withLock { $0 }?(snapshot, keys)
    }
}
