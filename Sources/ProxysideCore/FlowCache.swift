/// Remembers recent socket-table answers so that a busy flow does not cost a netlink round trip
/// per packet.
///
/// A "connected" answer can only turn wrong when the socket closes, and then the flow has no owner
/// anywhere until the client sends a new SYN, which passes through us and calls `forget` (as do FIN
/// and RST). A "not here" answer can turn wrong without us seeing it when the flow's SYN was handled
/// by another queue thread, so it is kept only when the operator asks for it (`negativeLifetime`).
public struct FlowCache {
    public let positiveLifetime: UInt64
    public let negativeLifetime: UInt64
    public let capacity: Int
    private var entries: [FlowKey: (answer: SocketLookup, expires: UInt64)] = [:]

    /// Lifetimes in nanoseconds; zero disables that kind of entry.
    public init(positiveLifetime: UInt64, negativeLifetime: UInt64 = 0, capacity: Int = 65536) {
        self.positiveLifetime = positiveLifetime
        self.negativeLifetime = negativeLifetime
        self.capacity = max(1, capacity)
        entries.reserveCapacity(min(self.capacity, 4096))
    }

    public var count: Int { entries.count }

    public func answer(for flow: FlowKey, now: UInt64) -> SocketLookup? {
        guard let entry = entries[flow], entry.expires > now else { return nil }
        return entry.answer
    }

    public mutating func remember(_ answer: SocketLookup, for flow: FlowKey, now: UInt64) {
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
        if entries.count >= capacity { evictExpired(now: now) }
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
        entries[flow] = (answer, now + lifetime)
    }

    public mutating func forget(_ flow: FlowKey) {
        if !entries.isEmpty { entries.removeValue(forKey: flow) }
    }

    public mutating func evictExpired(now: UInt64) {
        entries = entries.filter { $0.value.expires > now }
    }
}
