import NetTypes
import SecondChanceCore

/// How a packet this host owns reaches the local stack.
public enum DecapsulationMode: String, Sendable, CaseIterable {
    /// fou (ip fou add port 19523 gue) decapsulates: accept the GUE packet unchanged.
    case kernel
    /// No fou: accept with the inner IPv4 packet as the new payload; inner IPv6 is sent to the
    /// local stack through a raw IPv6 socket (an IPv4 hook cannot carry it) and the original dropped.
    case userspace
}

/// How a packet for the next hop leaves.
public enum ForwardingMode: String, Sendable, CaseIterable {
    /// Sent from a raw socket; the queued original is dropped. Needs nothing of the host.
    case raw
    /// The rewritten packet is the verdict's payload and the kernel forwards it (no extra syscall or
    /// copy per packet). Needs net.ipv4.ip_forward=1 and accept_local=1 on the interface GUE
    /// arrives on (its source is now this host), and a FORWARD chain that lets it pass.
    case kernel
}

public struct SecondChanceConfiguration: Sendable {
    public var selfAddress: IPv4Address
    /// The GLB peers: who is heard, who may be a hop.
    public var peers: PeerPolicy
    public var decapsulation: DecapsulationMode
    public var namespace: String?
    public var cacheLifetimeNanoseconds: UInt64
    public var negativeCacheLifetimeNanoseconds: UInt64
    public var batchSize: Int
    public var checkCookies: Bool
    public var forwarding: ForwardingMode
    /// NFQUEUE's queue length and what the kernel does when it is reached.
    public var queueMaximumLength: UInt32
    public var failOpen: Bool

    public init(
        selfAddress: IPv4Address, peers: PeerPolicy, decapsulation: DecapsulationMode, namespace: String? = nil,
        cacheLifetimeNanoseconds: UInt64 = 1_000_000_000, negativeCacheLifetimeNanoseconds: UInt64 = 1_000_000_000,
        batchSize: Int = 64, checkCookies: Bool = true, forwarding: ForwardingMode = .raw,
        queueMaximumLength: UInt32 = NetfilterQueue.defaultMaximumLength, failOpen: Bool = false
    ) {
        self.selfAddress = selfAddress
        self.peers = peers
        self.decapsulation = decapsulation
        self.namespace = namespace
        self.cacheLifetimeNanoseconds = cacheLifetimeNanoseconds
        self.negativeCacheLifetimeNanoseconds = negativeCacheLifetimeNanoseconds
        self.batchSize = batchSize
        self.checkCookies = checkCookies
        self.forwarding = forwarding
        self.queueMaximumLength = queueMaximumLength
        self.failOpen = failOpen
    }
}
