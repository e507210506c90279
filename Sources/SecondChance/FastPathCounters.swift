import CFastPathABI
import SecondChanceCore

/// The tc program's counter slots (`enum fp_counter` in fast_path_abi.h) and what each one means on
/// the daemon's side: a queue counter of the same name, or a reason a packet went up unchanged.
public enum FastPathCounters {
    public static let slotCount = Int(FP_COUNTER_COUNT.rawValue)

    /// Slots that count what the queue's counter of that name counts, decided in the kernel.
    public static let mirrored: [(slot: fp_counter, name: CounterName)] = [
        (FP_TOTAL, .total),
        (FP_LOCAL_SYN, .local(.syn)),
        (FP_LOCAL_ESTABLISHED, .local(.established)),
        (FP_LOCAL_SYN_COOKIE, .local(.synCookie)),
        (FP_LOCAL_LAST_RESORT, .local(.lastResort)),
        (FP_LOCAL_FORWARDED_TO_SELF, .local(.forwardedToSelf)),
        (FP_FORWARDED, .forwarded),
        (FP_DROP_UDP_TRUNCATED, .dropped(.udpTruncated)),
        (FP_DROP_GUE_TRUNCATED, .dropped(.gueTruncated)),
        (FP_DROP_GUE_VERSION, .dropped(.gueVersion)),
        (FP_DROP_GUE_CONTROL, .dropped(.gueControl)),
        (FP_DROP_GUE_FLAGS, .dropped(.gueFlags)),
        (FP_DROP_GUE_HLEN, .dropped(.gueHeaderLength)),
        (FP_DROP_GUE_PRIVATE_TYPE, .dropped(.guePrivateType)),
        (FP_DROP_INNER_PROTOCOL, .dropped(.innerProtocol)),
        (FP_DROP_INNER_TRUNCATED, .dropped(.innerTruncated)),
        (FP_DROP_INNER_VERSION, .dropped(.innerVersion)),
        (FP_DROP_INNER_TRANSPORT, .dropped(.innerTransport)),
        (FP_REFUSED_UNTRUSTED_SOURCE, .refused(.untrustedSource)),
        (FP_REFUSED_TOO_MANY_HOPS, .refused(.tooManyHops)),
        (FP_REFUSED_UNTRUSTED_HOP, .refused(.untrustedHop)),
        (FP_REFUSED_NOT_LOCAL_DESTINATION, .refused(.notLocalDestination)),
        (FP_REFUSED_MARTIAN_SOURCE, .refused(.martianSource)),
        (FP_REFUSED_REVERSE_PATH, .refused(.reversePath)),
        (FP_COOKIE_CHECKS, .cookieChecks),
        (FP_COOKIE_ACKS_INVALID, .cookieAcksInvalid),
        (FP_COOKIES_SENT, .cookiesSent),
        (FP_COOKIE_REPLY_FAILED, .cookieReplyFailed),
    ]

    /// Slots that count packets sent up to the queue unchanged, by the reason's label.
    public static let passedUp: [(slot: fp_counter, reason: String)] = [
        (FP_UP_UNCONFIGURED, "unconfigured"),
        (FP_UP_OUTER_UNCHECKED, "outer_unchecked"),
        (FP_UP_OUTER_OPTIONS, "outer_options_or_fragment"),
        (FP_UP_NOT_ADDRESSED_HERE, "not_addressed_here"),
        (FP_UP_INNER_NOT_TCP, "inner_not_plain_tcp"),
        (FP_UP_INNER_FRAGMENT, "inner_fragment"),
        (FP_UP_LOOKUP_ELSEWHERE, "lookup_in_other_netns"),
        (FP_UP_NO_ROUTE, "no_route_to_hop"),
        (FP_UP_FAILED, "helper_failed"),
        (FP_UP_REVERSE_PATH_UNCHECKED, "reverse_path_unchecked"),
        (FP_UP_SELF_GONE, "self_not_this_hosts"),
    ]

    /// The per-listener counts the program keeps (`enum fp_listener_count`), as the listener's record names them.
    public static let listenerCounts: [(slot: fp_listener_count, counter: ListenerRecord.Counter)] = [
        (FP_L_COOKIES_SENT, .cookiesSent),
        (FP_L_COOKIE_ACKS_VALID, .cookieAcksValid),
        (FP_L_COOKIE_ACKS_INVALID, .cookieAcksInvalid),
        (FP_L_SYNS_PASSED, .synsPassedToKernel),
    ]

    /// The slot counting `name` in the kernel, if the program counts it.
    public static func slot(for name: CounterName) -> Int? {
        mirroredSlots[name.index]
    }

    private static let mirroredSlots: [Int?] = {
        var slots = [Int?](repeating: nil, count: CounterName.count)
        for (slot, name) in mirrored { slots[name.index] = Int(slot.rawValue) }
        return slots
    }()
}

/// What the program counted, summed over CPUs: one value per slot.
public struct FastPathCounterValues: Sendable, Equatable {
    public var slots: [UInt64]

    public init(slots: [UInt64]) {
        self.slots =
            slots.count == FastPathCounters.slotCount
            ? slots : slots + [UInt64](repeating: 0, count: max(0, FastPathCounters.slotCount - slots.count))
    }

    public static let zero = FastPathCounterValues(slots: [])

    /// The kernel's share of a queue counter, indexed as `CounterName.index`; nil where the program
    /// does not count it.
    public var byCounterName: [UInt64?] {
        CounterName.all.map { name in FastPathCounters.slot(for: name).map { slots[$0] } }
    }

    public subscript(_ slot: fp_counter) -> UInt64 { slots[Int(slot.rawValue)] }
}
