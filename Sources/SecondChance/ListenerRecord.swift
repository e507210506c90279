import LinuxSys
import NetTypes

/// Counters of one listener, written by the queue threads and the monitor, read by the stats server.
public final class ListenerRecord: Sendable {
    public enum Counter: Int, CaseIterable, Sendable {
        case activations, cookiesSent, cookieAcksValid, cookieAcksInvalid, synsPassedToKernel

        var metric: String {
            switch self {
            case .activations: "second_chance_listener_syn_cookie_activations_total"
            case .cookiesSent: "second_chance_listener_syn_cookies_sent_total"
            case .cookieAcksValid: "second_chance_listener_syn_cookie_acks_valid_total"
            case .cookieAcksInvalid: "second_chance_listener_syn_cookie_acks_invalid_total"
            case .synsPassedToKernel: "second_chance_listener_syns_passed_to_kernel_total"
            }
        }

        var help: String {
            switch self {
            case .activations: "Times the responder started answering this listener's SYNs."
            case .cookiesSent: "SYNs of this listener answered with a kernel cookie."
            case .cookieAcksValid: "ACKs to this listener carrying a valid cookie."
            case .cookieAcksInvalid: "ACKs to this listener accepting cookies whose cookie was not valid."
            case .synsPassedToKernel: "SYNs let through to the kernel while active, to keep its overflow mark."
            }
        }

        var shortName: String {
            switch self {
            case .activations: "activations"
            case .cookiesSent: "cookies_sent"
            case .cookieAcksValid: "cookie_acks_valid"
            case .cookieAcksInvalid: "cookie_acks_invalid"
            case .synsPassedToKernel: "syns_passed_to_kernel"
            }
        }
    }

    public let key: ListenerKey
    /// The counters, then a word that is 1 while the responder serves this listener (read per SYN
    /// by the queue threads).
    private let words = AtomicWords(count: Counter.allCases.count + 1)
    private var activeIndex: Int { Counter.allCases.count }

    init(key: ListenerKey) { self.key = key }

    @inline(__always) public func add(_ counter: Counter) { words.add(counter.rawValue) }
    public func value(_ counter: Counter) -> UInt64 { words.load(counter.rawValue) }
    public var isActive: Bool { words.load(activeIndex) != 0 }
    func setActive(_ active: Bool) { words.store(activeIndex, active ? 1 : 0) }
}
