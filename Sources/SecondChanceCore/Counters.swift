/// What was decided for a path-MTU message (ICMP fragmentation needed, ICMPv6 Packet Too Big)
/// about one of a flow's packets: it follows the flow, here or to the next hop.
public enum PathMTUOutcome: String, CaseIterable, Sendable {
    case local, forwarded, refused
}

extension PathMTUOutcome {
    public init(_ verdict: Verdict) {
        switch verdict {
        case .local: self = .local
        case .forward: self = .forwarded
        case .drop, .refuse: self = .refused
        }
    }
}

/// Every counter the daemon keeps, in a fixed order so per-thread blocks can be plain arrays.
public enum CounterName: Hashable, Sendable {
    case total
    case local(LocalReason)
    case forwarded
    case dropped(DropReason)
    /// Well-formed, but outside the trust boundary.
    case refused(Refusal)
    /// The forwarded packet could not be sent (e.g. no route); the original was dropped.
    case forwardFailed
    /// An inner IPv6 packet could not be handed to the local stack.
    case injectFailed
    case lookups
    case lookupCacheHits
    case cookieChecks
    /// ACKs to a listener accepting cookies whose ack-1 was not a valid cookie (they went on per the hop list).
    case cookieAcksInvalid
    /// SYNs answered by the responder with a kernel cookie (and dropped).
    case cookiesSent
    /// SYNs the responder could not answer (cookie or send failed); they went to the kernel.
    case cookieReplyFailed
    /// Path-MTU messages, by decision (counted in the decision's own counter as well).
    case pathMTU(PathMTUOutcome)

    public static let all: [CounterName] =
        [.total] + LocalReason.allCases.map { .local($0) } + [.forwarded]
        + DropReason.allCases.map { .dropped($0) } + Refusal.allCases.map { .refused($0) }
        + [
            .forwardFailed, .injectFailed, .lookups, .lookupCacheHits, .cookieChecks, .cookieAcksInvalid, .cookiesSent,
            .cookieReplyFailed,
        ] + PathMTUOutcome.allCases.map { .pathMTU($0) }

    public static let count = all.count

    /// Position in a counter block; a switch, not a dictionary, because this runs per packet.
    @inline(__always)
    public var index: Int {
        let localBase = 1
        let forwardedIndex = localBase + LocalReason.allCases.count
        let dropBase = forwardedIndex + 1
        let refusalBase = dropBase + DropReason.allCases.count
        let tailBase = refusalBase + Refusal.allCases.count
        switch self {
        case .total: return 0
        case .local(let reason): return localBase + LocalReason.allCases.firstIndex(of: reason)!
        case .forwarded: return forwardedIndex
        case .dropped(let reason): return dropBase + DropReason.allCases.firstIndex(of: reason)!
        case .refused(let refusal): return refusalBase + Refusal.allCases.firstIndex(of: refusal)!
        case .forwardFailed: return tailBase
        case .injectFailed: return tailBase + 1
        case .lookups: return tailBase + 2
        case .lookupCacheHits: return tailBase + 3
        case .cookieChecks: return tailBase + 4
        case .cookieAcksInvalid: return tailBase + 5
        case .cookiesSent: return tailBase + 6
        case .cookieReplyFailed: return tailBase + 7
        case .pathMTU(let outcome): return tailBase + 8 + PathMTUOutcome.allCases.firstIndex(of: outcome)!
        }
    }

    /// The metric family, and the value of its `reason` label where the family has one.
    public var metric: (family: String, reason: String?) {
        switch self {
        case .total: ("second_chance_packets_total", nil)
        case .local(let reason): ("second_chance_packets_local_total", reason.rawValue)
        case .forwarded: ("second_chance_packets_forwarded_total", nil)
        case .dropped(let reason): ("second_chance_packets_dropped_total", reason.rawValue)
        case .refused(let refusal): ("second_chance_packets_dropped_total", refusal.rawValue)
        case .forwardFailed: ("second_chance_forward_send_failures_total", nil)
        case .injectFailed: ("second_chance_inject_failures_total", nil)
        case .lookups: ("second_chance_socket_lookups_total", nil)
        case .lookupCacheHits: ("second_chance_socket_lookup_cache_hits_total", nil)
        case .cookieChecks: ("second_chance_syn_cookie_checks_total", nil)
        case .cookieAcksInvalid: ("second_chance_syn_cookie_acks_invalid_total", nil)
        case .cookiesSent: ("second_chance_syn_cookies_sent_total", nil)
        case .cookieReplyFailed: ("second_chance_syn_cookie_reply_failures_total", nil)
        case .pathMTU(let outcome): ("second_chance_path_mtu_messages_total", outcome.rawValue)
        }
    }

    /// What the metric family counts.
    public var help: String {
        switch self {
        case .total: "GUE packets read from NFQUEUE."
        case .local: "Packets taken by this host, by reason."
        case .forwarded: "Packets forwarded to the next hop."
        case .dropped, .refused: "Packets dropped: malformed, or refused at the trust boundary, by reason."
        case .forwardFailed: "Forwarded packets that could not be sent (the original was dropped)."
        case .injectFailed: "Inner IPv6 packets that could not be handed to the local stack."
        case .lookups: "Socket-table look-ups through sock_diag."
        case .lookupCacheHits: "Socket-table answers taken from the flow cache."
        case .cookieChecks: "ACKs checked for a SYN cookie."
        case .cookieAcksInvalid: "ACKs to a listener accepting cookies whose cookie was not valid."
        case .cookiesSent: "SYNs answered by the responder with a kernel cookie."
        case .cookieReplyFailed: "SYNs the responder could not answer (they went to the kernel)."
        case .pathMTU:
            "Path-MTU messages (ICMP fragmentation needed, Packet Too Big) by decision: local, forwarded, refused."
        }
    }

    /// The short name `second-chance stats` prints, matching glb-redirect's where one exists.
    public var shortName: String {
        switch self {
        case .total: "total_packets"
        case .local(let reason): reason.rawValue
        case .forwarded: "forwarded"
        case .dropped(let reason): "dropped_malformed_\(reason.rawValue)"
        case .refused(let refusal): "dropped_\(refusal.rawValue)"
        case .forwardFailed: "forward_send_failures"
        case .injectFailed: "inject_failures"
        case .lookups: "socket_lookups"
        case .lookupCacheHits: "socket_lookup_cache_hits"
        case .cookieChecks: "syn_cookie_checks"
        case .cookieAcksInvalid: "cookie_acks_invalid"
        case .cookiesSent: "cookies_sent"
        case .cookieReplyFailed: "cookie_reply_failures"
        case .pathMTU(let outcome): "path_mtu_\(outcome.rawValue)"
        }
    }
}
