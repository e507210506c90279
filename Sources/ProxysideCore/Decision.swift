/// Why a packet was taken by this host.
public enum LocalReason: String, CaseIterable, Sendable {
    case syn = "accepted_syn"
    case established = "accepted_established"
    case synCookie = "accepted_syn_cookie"
    case lastResort = "accepted_last_resort"
    case forwardedToSelf = "forwarded_to_self"
    case udp = "accepted_udp"
    case icmp = "accepted_icmp"
    case fragment = "accepted_fragment"
    /// The socket table could not be asked; taking the packet keeps local flows alive.
    case lookupFailed = "accepted_lookup_failed"
}

public enum Verdict: Equatable, Sendable {
    case local(LocalReason)
    case forward(to: IPv4Address)
    case drop(DropReason)
}

/// What the socket table says about a flow.
public enum SocketLookup: Equatable, Sendable {
    /// A socket in any connected state, a request socket (SYN_RECV) or TIME_WAIT.
    case connected
    /// Only a listener matches: the flow is not established here.
    case listener
    /// Nothing listens on the destination.
    case none
    /// The table could not be read.
    case failed
}

/// The host-side facts the decision needs. The daemon answers through sock_diag and BPF;
/// tests answer with tables.
public protocol FlowOwnership {
    mutating func lookup(_ flow: FlowKey) -> SocketLookup
    /// Whether the listener for `flow` currently accepts SYN-cookie ACKs
    /// (tcp_syncookies=2, or cookies issued recently because its SYN queue overflowed).
    mutating func listenerAcceptsCookies(_ flow: FlowKey) -> Bool
    /// Whether ack-1 of the segment is a cookie the kernel would accept.
    mutating func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool
}

public struct Decision: Equatable, Sendable {
    public var verdict: Verdict
    /// Present whenever the outer packet parsed; forwarding and decapsulation use its offsets.
    public var gue: GUEPacket?
    public var inner: InnerPacket?
}

/// The glb-redirect decision, step by step (see README, "Decision order").
public struct Decider: Sendable {
    /// This proxy's address: a hop naming it is taken locally instead of forwarded.
    public var selfAddress: IPv4Address

    public init(selfAddress: IPv4Address) { self.selfAddress = selfAddress }

    public func decide<Ownership: FlowOwnership>(_ packet: UnsafeRawBufferPointer, ownership: inout Ownership) -> Decision {
        let gue: GUEPacket
        switch GUEPacket.parse(packet) {
        case .failure(let reason): return Decision(verdict: .drop(reason))
        case .success(let parsed): gue = parsed
        }
        let inner: InnerPacket
        switch InnerPacket.classify(packet, gue) {
        case .failure(let reason): return Decision(verdict: .drop(reason), gue: gue)
        case .success(let classified): inner = classified
        }
        return Decision(verdict: verdict(packet, gue, inner, &ownership), gue: gue, inner: inner)
    }

    func verdict<Ownership: FlowOwnership>(
        _ packet: UnsafeRawBufferPointer, _ gue: GUEPacket, _ inner: InnerPacket, _ ownership: inout Ownership
    ) -> Verdict {
        let flow: FlowKey
        var segment: TCPSegment?
        switch inner {
        case .udp: return .local(.udp)
        case .icmp: return .local(.icmp)
        case .fragment: return .local(.fragment)
        case .pathMTU(let embeddedFlow): flow = embeddedFlow
        case .tcp(let tcp):
            if tcp.flags.contains(.syn) { return .local(.syn) }
            flow = tcp.flow
            segment = tcp
        }

        let lookup = ownership.lookup(flow)
        switch lookup {
        case .connected: return .local(.established)
        case .failed: return .local(.lookupFailed)
        case .listener:
            if let segment, segment.flags.intersection([.ack, .syn, .fin, .rst]) == .ack,
                ownership.listenerAcceptsCookies(flow), ownership.isValidCookie(packet, segment)
            {
                return .local(.synCookie)
            }
        case .none: break
        }

        guard gue.nextHop < gue.hopCount else { return .local(.lastResort) }
        let hop = gue.hop(Int(gue.nextHop), in: packet)
        // Defensive, as glb-redirect: never send a packet to ourselves.
        if hop == selfAddress || hop == gue.outerDestination { return .local(.forwardedToSelf) }
        return .forward(to: hop)
    }
}
