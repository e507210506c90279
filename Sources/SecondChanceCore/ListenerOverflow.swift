import NetTypes

/// When the responder answers SYNs for a listener.
public enum ResponderMode: String, Sendable, CaseIterable {
    /// While the listener's SYN queue overflows.
    case auto
    case off
    /// For every listener, always (needs net.ipv4.tcp_syncookies=2).
    case always
}

public struct OverflowPolicy: Equatable, Sendable {
    /// Activate when the SYN queue holds at least this share of the backlog.
    public var activatePercent: UInt32 = 100
    /// Deactivate once it stays below this share for `holdNanoseconds`.
    public var deactivatePercent: UInt32 = 50
    public var holdNanoseconds: UInt64 = 5_000_000_000
    /// The kernel accepts cookies for two minutes after its own last one (tcp_synq_overflow). While
    /// active, SYNs let through refresh that mark only if the queue is still full; a listener not
    /// seen full for this long is deactivated before the mark can lapse under a client's ACK.
    public var markLifetimeNanoseconds: UInt64 = 90_000_000_000

    public init() {}

    /// In 64 bits: a backlog near 2^31 (listen(INT_MAX) under a raised somaxconn) times a percentage
    /// does not fit in 32.
    func activationThreshold(_ backlog: UInt32) -> UInt64 { max(1, UInt64(backlog) * UInt64(activatePercent) / 100) }
    func calmThreshold(_ backlog: UInt32) -> UInt64 { UInt64(backlog) * UInt64(deactivatePercent) / 100 }
}

/// Whether the kernel's overflow counters say something the listener monitor has not seen, poll by
/// poll: TcpExt's TCPReqQFullDrop or ListenOverflows moved, or TCPReqQFullDoCookies rose by more
/// than the cookies the fast path asked the kernel for (bpf_tcp_gen_syncookie counts each there,
/// through tcp_syn_flood_action). While the fast path answers a flood its own cookies raise that
/// counter at every poll, and a scan at once for each would find what the last one found; the
/// monitor's regular scans go on.
public struct OverflowSignal: Sendable {
    private var last: (kernel: UInt64, drops: UInt64, own: UInt64)?
    /// The highest excess of the kernel's cookies over the fast path's seen while the fast path
    /// gave cookies. Reading the two counters one after the other leaves a few answers counted in
    /// one and not yet in the other; the mark absorbs that, and only an excess above it (cookies
    /// the kernel gave for someone else) is news.
    private var highest: Int64 = 0

    public init() {}

    /// Takes one poll's readings: the kernel's TCPReqQFullDoCookies, its TCPReqQFullDrop plus
    /// ListenOverflows, and the fast path's cookies sent (0 without one; nil when they could not
    /// be read: then any move of the kernel's counters is news, and the mark stays). False at the
    /// first.
    public mutating func rose(kernelCookies: UInt64, drops: UInt64, ownCookies: UInt64?) -> Bool {
        guard let last else {
            if let ownCookies {
                self.last = (kernelCookies, drops, ownCookies)
                highest = Int64(bitPattern: kernelCookies &- ownCookies)
            }
            return false
        }
        guard let ownCookies else {
            self.last = (kernelCookies, drops, last.own)
            return kernelCookies != last.kernel || drops != last.drops
        }
        self.last = (kernelCookies, drops, ownCookies)
        let excess = Int64(bitPattern: kernelCookies &- ownCookies)
        let rose = drops != last.drops || excess > highest
        // Without a cookie of the fast path's since the last poll the excess is exact: the mark
        // starts again from it, so that no earlier reading's skew hides a later overflow.
        highest = ownCookies == last.own ? excess : max(highest, excess)
        return rose
    }
}

/// Decides, from periodic sock_diag observations, which listeners the responder serves.
public struct ListenerOverflowTracker: Sendable {
    public struct State: Sendable {
        public var observation: ListenerObservation
        public var active = false
        public var lastFull: UInt64?
        public var calmSince: UInt64?
    }

    public enum Event: Equatable, Sendable {
        case activated(ListenerObservation)
        case deactivated(ListenerKey, reason: String)
    }

    public let policy: OverflowPolicy
    /// True with tcp_syncookies=1: the kernel's per-listener overflow mark must be kept fresh.
    public var kernelNeedsOverflowMark: Bool
    public private(set) var states: [ListenerKey: State] = [:]

    public init(policy: OverflowPolicy, kernelNeedsOverflowMark: Bool = true) {
        self.policy = policy
        self.kernelNeedsOverflowMark = kernelNeedsOverflowMark
    }

    public var activeKeys: [ListenerKey] { states.filter { $0.value.active }.map(\.key) }

    /// Takes one complete scan (every listener of the namespace) and returns what changed.
    public mutating func update(_ observations: [ListenerObservation], now: UInt64) -> [Event] {
        var events: [Event] = []
        var seen = Set<ListenerKey>()
        for observation in observations {
            seen.insert(observation.key)
            var state = states[observation.key] ?? State(observation: observation)
            state.observation = observation
            let full =
                observation.backlog > 0
                && UInt64(observation.requestSockets) >= policy.activationThreshold(observation.backlog)
            if full { state.lastFull = now }
            if UInt64(observation.requestSockets) >= policy.calmThreshold(observation.backlog)
                && observation.backlog > 0
            {
                state.calmSince = nil
            } else if state.calmSince == nil {
                state.calmSince = now
            }
            if !state.active {
                if full {
                    state.active = true
                    state.calmSince = nil
                    events.append(.activated(observation))
                }
            } else if let calm = state.calmSince, now &- calm >= policy.holdNanoseconds {
                state.active = false
                events.append(
                    .deactivated(
                        observation.key,
                        reason:
                            """
                            SYN queue \(observation.requestSockets)/\(observation.backlog) below \
                            \(policy.deactivatePercent)% for \(policy.holdNanoseconds / 1_000_000) ms
                            """
                    ))
            } else if kernelNeedsOverflowMark, let lastFull = state.lastFull,
                now &- lastFull >= policy.markLifetimeNanoseconds
            {
                state.active = false
                events.append(
                    .deactivated(
                        observation.key,
                        reason:
                            """
                            SYN queue not full for \(policy.markLifetimeNanoseconds / 1_000_000_000) s: the kernel's \
                            overflow mark may lapse
                            """
                    ))
            }
            states[observation.key] = state
        }
        for (key, state) in states where !seen.contains(key) {
            if state.active { events.append(.deactivated(key, reason: "listener closed")) }
            states[key] = nil
        }
        return events
    }
}
