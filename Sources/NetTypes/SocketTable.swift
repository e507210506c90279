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

/// One look at a listener through sock_diag.
public struct ListenerObservation: Equatable, Sendable {
    public var key: ListenerKey
    /// sk_max_ack_backlog (inet_diag's idiag_wqueue for a listener): both queues' limit.
    public var backlog: UInt32
    /// Completed connections not yet accepted (idiag_rqueue).
    public var acceptQueue: UInt32
    /// Request sockets (NEW_SYN_RECV) of this listener: the SYN queue.
    public var requestSockets: UInt32
    /// The listener's sk_rcvbuf, from which the kernel picks the child's window scale.
    public var receiveBuffer: UInt32
    /// Sockets listening on this address and port: more than one is an SO_REUSEPORT group.
    public var members: UInt32 = 1
    /// The device a member is bound to (SO_BINDTODEVICE, or an IPv6 link-local address's
    /// scope), 0 for none.
    public var boundDevice: UInt32 = 0
    /// The DSCP a member's replies carry and its IPv4 routes are chosen by (IP_TOS; IPV6_TCLASS
    /// for an IPv6 socket), ECN's bits left out; 0 for none.
    public var dscp: UInt8 = 0

    public init(key: ListenerKey, backlog: UInt32, acceptQueue: UInt32, requestSockets: UInt32, receiveBuffer: UInt32) {
        self.key = key
        self.backlog = backlog
        self.acceptQueue = acceptQueue
        self.requestSockets = requestSockets
        self.receiveBuffer = receiveBuffer
    }

    /// One more listener on the same address and port: an SO_REUSEPORT group. The kernel spreads
    /// SYNs over the members by hash and checks each member's queues against its own backlog, and
    /// sock_diag does not say which member a request socket belongs to; so the group is taken as
    /// one listener with the members' backlogs and queues added up. The smallest receive buffer
    /// stands for all (a window scale no member's child exceeds).
    public mutating func addMember(_ other: ListenerObservation) {
        // Kernel values: no sum of them is near 2^32, but none may trap if one were.
        func sum(_ a: UInt32, _ b: UInt32) -> UInt32 { a.addingReportingOverflow(b).overflow ? .max : a &+ b }
        backlog = sum(backlog, other.backlog)
        acceptQueue = sum(acceptQueue, other.acceptQueue)
        requestSockets = sum(requestSockets, other.requestSockets)
        receiveBuffer = min(receiveBuffer, other.receiveBuffer)
        members = sum(members, other.members)
        boundDevice = max(boundDevice, other.boundDevice)
        dscp = max(dscp, other.dscp)
    }
}
