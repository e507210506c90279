import NetTypes

/// Remembers recent socket-table answers so that a busy flow does not cost a netlink round trip
/// per packet.
///
/// A "connected" answer can only turn wrong when the socket closes, and then the flow has no owner
/// anywhere until the client sends a new SYN, which passes through us and calls `forget` (as do FIN
/// and RST). A "not here" answer turns wrong when a socket for the flow appears, and only a packet
/// taken locally makes one (a SYN, a cookie ACK), possibly on another queue thread. So a "not here"
/// answer is kept with the flow's epoch read before the lookup started (`FlowEpochs`, which every
/// thread bumps for such a packet before and after its verdict) and is used only while that epoch
/// is unchanged.
public struct FlowCache {
    public let positiveLifetime: UInt64
    public let negativeLifetime: UInt64
    public let capacity: Int
    private var entries: [FlowKey: (answer: SocketLookup, expires: UInt64, epoch: UInt64)] = [:]
    /// How many times a full cache was swept (each sweep visits every entry).
    public private(set) var sweeps = 0

    /// Lifetimes in nanoseconds; zero disables that kind of entry.
    public init(positiveLifetime: UInt64, negativeLifetime: UInt64 = 0, capacity: Int = 65536) {
        self.positiveLifetime = positiveLifetime
        self.negativeLifetime = negativeLifetime
        self.capacity = max(1, capacity)
        entries.reserveCapacity(min(self.capacity, 4096))
    }

    public var count: Int { entries.count }

    /// The remembered answer, if still valid; `epoch` is the flow's epoch now.
    public func answer(for flow: FlowKey, now: UInt64, epoch: UInt64 = 0) -> SocketLookup? {
        guard let entry = entries[flow], entry.expires > now else { return nil }
        if entry.answer != .connected && entry.epoch != epoch { return nil }
        return entry.answer
    }

    /// `epoch`: the flow's epoch read before the lookup that gave `answer` was sent.
    public mutating func remember(_ answer: SocketLookup, for flow: FlowKey, now: UInt64, epoch: UInt64 = 0) {
        let lifetime: UInt64
        switch answer {
        case .connected: lifetime = positiveLifetime
        case .none, .listener: lifetime = negativeLifetime
        case .failed: lifetime = 0
        }
        guard lifetime > 0 else {
            forget(flow)
            return
        }
        if entries.count >= capacity { makeRoom(now: now) }
        entries[flow] = (answer, now + lifetime, epoch)
    }

    /// Frees at least an eighth of the cache, so a sweep is paid for by that many inserts. Were a
    /// sweep allowed to free one entry, flows arriving at the rate entries expire (a rate anyone
    /// sending through a director can choose) would make every packet sweep the whole cache.
    private mutating func makeRoom(now: UInt64) {
        sweeps += 1
        evictExpired(now: now)
        if capacity - entries.count < max(1, capacity / 8) { entries.removeAll(keepingCapacity: true) }
    }

    public mutating func forget(_ flow: FlowKey) {
        if !entries.isEmpty { entries.removeValue(forKey: flow) }
    }

    public mutating func evictExpired(now: UInt64) {
        entries = entries.filter { $0.value.expires > now }
    }
}
