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

/// The bits second-chance sets in the mark of every GUE packet it hands to fou (`--fou-mark`).
/// The shipped rules drop a health checker's echo request that fou decapsulated without them: it
/// came through the queue rule's --queue-bypass, with no daemon deciding, and must go unanswered
/// (glb-healthcheck then takes the proxy out of rotation).
public struct PacketMark: Sendable, Equatable, CustomStringConvertible {
    public var value: UInt32
    public var mask: UInt32

    public static let `default` = PacketMark(value: 0x4000_0000, mask: 0x4000_0000)
    /// No bits: marks are left alone.
    public static let none = PacketMark(value: 0, mask: 0)

    public init(value: UInt32, mask: UInt32) {
        (self.value, self.mask) = (value & mask, mask)
    }

    /// `VALUE[/MASK]`, each decimal or 0x-hexadecimal; the mask defaults to the value's bits.
    public init?(_ text: some StringProtocol) {
        let parts = String(text).split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let value = Self.number(parts[0]) else { return nil }
        let mask = parts.count == 2 ? Self.number(parts[1]) : value
        // A zero value would tell nothing: every unmarked packet already has it.
        guard let mask, mask != 0, value != 0, value & ~mask == 0 else { return nil }
        self.init(value: value, mask: mask)
    }

    static func number(_ text: Substring) -> UInt32? {
        text.hasPrefix("0x") ? UInt32(text.dropFirst(2), radix: 16) : UInt32(text, radix: 10)
    }

    /// `mark` with these bits set as the value says and the others kept.
    public func applied(to mark: UInt32) -> UInt32 { (mark & ~mask) | value }

    public var description: String {
        mask == 0 ? "none" : "0x" + String(value, radix: 16) + "/0x" + String(mask, radix: 16)
    }
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
    /// Set on what is handed to fou (kernel decapsulation).
    public var fouMark: PacketMark

    public init(
        selfAddress: IPv4Address, peers: PeerPolicy, decapsulation: DecapsulationMode, namespace: String? = nil,
        cacheLifetimeNanoseconds: UInt64 = 1_000_000_000, negativeCacheLifetimeNanoseconds: UInt64 = 1_000_000_000,
        batchSize: Int = 64, checkCookies: Bool = true, forwarding: ForwardingMode = .raw,
        queueMaximumLength: UInt32 = NetfilterQueue.defaultMaximumLength, failOpen: Bool = false,
        fouMark: PacketMark = .default
    ) {
        self.fouMark = fouMark
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
