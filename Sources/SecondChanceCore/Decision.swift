import NetTypes

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

/// Why a well-formed packet was refused at the trust boundary.
public enum Refusal: String, CaseIterable, Sendable {
    /// The outer source is not a GLB peer (`--allow-source`).
    case untrustedSource = "untrusted_source"
    /// More hops than `--max-hops`.
    case tooManyHops = "too_many_hops"
    /// The next hop is not an allowed proxy (`--allow-hop`), or is loopback, multicast or broadcast.
    case untrustedHop = "untrusted_hop"
    /// Taken here, but for an address this host does not own.
    case notLocalDestination = "not_local_destination"
    /// Taken here, but from loopback, multicast or this host's own address.
    case martianSource = "martian_source"
    /// From a peer's address, on an interface the route back to it does not leave by (strict
    /// reverse path, as the shipped rules' rpfilter match).
    case reversePath = "reverse_path"
}

public enum Verdict: Equatable, Sendable {
    case local(LocalReason)
    case forward(to: IPv4Address)
    case drop(DropReason)
    case refuse(Refusal)
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

    @usableFromInline init(verdict: Verdict, gue: GUEPacket? = nil, inner: InnerPacket? = nil) {
        self.verdict = verdict
        self.gue = gue
        self.inner = inner
    }
}

/// The glb-redirect decision, step by step (see README, "Decision order"), inside the trust
/// boundary: only peers are heard, only allowed proxies are hops, only this host's addresses are
/// delivered to.
public struct Decider: Sendable {
    /// This proxy's address: a hop naming it is taken locally instead of forwarded.
    public var selfAddress: IPv4Address
    public var peers: PeerPolicy
    /// This host's addresses; the daemon replaces them when rtnetlink reports a change.
    public var local: LocalAddresses
    /// The interfaces the routes back to the peers leave by; replaced likewise.
    public var reversePaths = ReversePaths.none

    public init(selfAddress: IPv4Address, peers: PeerPolicy, local: LocalAddresses) {
        self.selfAddress = selfAddress
        self.peers = peers
        self.local = local
    }

    /// A packet whose outer GUE and inner headers parsed.
    public struct ParsedPacket: Sendable {
        public var gue: GUEPacket
        public var inner: InnerPacket
    }

    public enum Parsed: Sendable {
        case parsed(ParsedPacket)
        /// Dropped or refused at step 1; the decision carries the GUE header when that much parsed.
        case rejected(Decision)
    }

    /// Step 1 of the decision: a well-formed packet from a peer, heard where its route back leads
    /// (`arrival`: the interface it came in on, when known), with no more hops than a director
    /// sends.
    public func parse(_ packet: UnsafeRawBufferPointer, arrival: UInt32? = nil) -> Parsed {
        var gue: GUEPacket
        switch GUEPacket.parse(packet) {
        case .failure(let reason): return .rejected(Decision(verdict: .drop(reason)))
        case .success(let parsed): gue = parsed
        }
        gue.overLoopback = arrival == ReversePaths.loopbackIndex
        // Over loopback, from this host's own address (its way back), only a health checker's
        // probe is heard: any local user can send there, and nothing else of theirs may pass.
        if gue.overLoopback && !Self.isOwnHealthProbe(packet, gue) {
            return .rejected(Decision(verdict: .refuse(.reversePath), gue: gue))
        }
        guard peers.sources.contains(gue.outerSource) else {
            return .rejected(Decision(verdict: .refuse(.untrustedSource), gue: gue))
        }
        if let arrival, reversePaths.check(gue.outerSource, arrival: arrival) == .refused {
            return .rejected(Decision(verdict: .refuse(.reversePath), gue: gue))
        }
        guard gue.hopCount <= peers.maximumHops else {
            return .rejected(Decision(verdict: .refuse(.tooManyHops), gue: gue))
        }
        switch InnerPacket.classify(packet, gue) {
        case .failure(let reason): return .rejected(Decision(verdict: .drop(reason), gue: gue))
        case .success(let inner): return .parsed(ParsedPacket(gue: gue, inner: inner))
        }
    }

    /// glb-healthcheck's GUE probe, sent by this host to itself: no hops, an inner IPv4 ICMP echo
    /// request whose addresses are the outer packet's (so to this host, from this host).
    @inline(__always)
    static func isOwnHealthProbe(_ packet: UnsafeRawBufferPointer, _ gue: GUEPacket) -> Bool {
        let start = gue.innerOffset
        guard gue.hopCount == 0, gue.innerFamily == .ipv4, gue.innerEnd - start >= 28 else { return false }
        let headerLength = Int(packet[start] & 0x0f) * 4
        return packet[start] >> 4 == 4 && headerLength >= 20 && gue.innerEnd - start >= headerLength + 8
            && packet[start + 9] == 1 && packet.be16(start + 6) & 0x3fff == 0 && packet[start + headerLength] == 8
            && packet.be32(start + 12) == gue.outerSource.value
            && packet.be32(start + 16) == gue.outerDestination.value
    }

    /// Steps 2-4: what is taken without asking the socket table, and otherwise the flow to ask about.
    public enum FirstStep: Equatable, Sendable {
        case local(LocalReason)
        /// `segment` is present for TCP (the SYN-cookie check needs it), absent for path-MTU messages.
        case lookUp(FlowKey, segment: TCPSegment?)
    }

    public static func firstStep(_ inner: InnerPacket) -> FirstStep {
        switch inner {
        case .udp: .local(.udp)
        case .icmp: .local(.icmp)
        case .fragment: .local(.fragment)
        case .pathMTU(let flow): .lookUp(flow, segment: nil)
        case .tcp(let segment): segment.flags.contains(.syn) ? .local(.syn) : .lookUp(segment.flow, segment: segment)
        }
    }

    // The decision is generic over the socket table: inlinable, so that the worker's and the
    // tests' owners are specialized into it instead of being called through a witness table.
    @inlinable
    public func decide<Ownership: FlowOwnership>(
        _ packet: UnsafeRawBufferPointer, arrival: UInt32? = nil, ownership: inout Ownership
    ) -> Decision {
        switch parse(packet, arrival: arrival) {
        case .rejected(let decision): decision
        case .parsed(let parsed): decide(packet, parsed, ownership: &ownership)
        }
    }

    @inlinable
    public func decide<Ownership: FlowOwnership>(
        _ packet: UnsafeRawBufferPointer, _ parsed: ParsedPacket, ownership: inout Ownership
    ) -> Decision {
        Decision(verdict: verdict(packet, parsed.gue, parsed.inner, &ownership), gue: parsed.gue, inner: parsed.inner)
    }

    /// The glb-redirect verdict, then the boundary: whatever is taken here must be for this host
    /// and from a plausible source, whatever is forwarded must go to an allowed proxy.
    @inlinable
    func verdict<Ownership: FlowOwnership>(
        _ packet: UnsafeRawBufferPointer, _ gue: GUEPacket, _ inner: InnerPacket, _ ownership: inout Ownership
    ) -> Verdict {
        switch ownerVerdict(packet, gue, inner, &ownership) {
        case .local(let reason): localRefusal(packet, gue).map(Verdict.refuse) ?? .local(reason)
        case let other: other
        }
    }

    /// Why a packet this host would take must not be delivered here, if it must not: its inner
    /// destination is not this host's, or its inner source is martian. Called on classified
    /// packets, whose inner header is there.
    @inline(__always)
    public func localRefusal(_ packet: UnsafeRawBufferPointer, _ gue: GUEPacket) -> Refusal? {
        let start = gue.innerOffset
        switch gue.innerFamily {
        case .ipv4:
            guard gue.innerEnd - start >= 20 else { return .notLocalDestination }
            guard local.accepts(destination: IPv4Address(packet.be32(start + 16))) else { return .notLocalDestination }
            let source = IPv4Address(packet.be32(start + 12))
            // This host's own health probe comes from its own address (glb-director #139).
            if gue.overLoopback && source == gue.outerSource { return nil }
            return local.isMartianSource(source) ? .martianSource : nil
        case .ipv6:
            guard gue.innerEnd - start >= 40 else { return .notLocalDestination }
            let destination = IPv6Address(high: packet.be64(start + 24), low: packet.be64(start + 32))
            guard local.accepts(destination: destination) else { return .notLocalDestination }
            let source = IPv6Address(high: packet.be64(start + 8), low: packet.be64(start + 16))
            return local.isMartianSource(source) ? .martianSource : nil
        }
    }

    @inlinable
    func ownerVerdict<Ownership: FlowOwnership>(
        _ packet: UnsafeRawBufferPointer, _ gue: GUEPacket, _ inner: InnerPacket, _ ownership: inout Ownership
    ) -> Verdict {
        let flow: FlowKey
        let segment: TCPSegment?
        switch Self.firstStep(inner) {
        case .local(let reason): return .local(reason)
        case .lookUp(let lookupFlow, let tcp): (flow, segment) = (lookupFlow, tcp)
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
        guard !PeerPolicy.isForbiddenHop(hop), !local.isBroadcast(hop) else { return .refuse(.untrustedHop) }
        // Defensive, as glb-redirect: never send a packet to ourselves, under any of our addresses.
        if hop == selfAddress || hop == gue.outerDestination || local.owns(hop) { return .local(.forwardedToSelf) }
        return peers.hops.contains(hop) ? .forward(to: hop) : .refuse(.untrustedHop)
    }
}
