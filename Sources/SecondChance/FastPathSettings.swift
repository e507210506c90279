import CFastPathABI
import NetTypes
import SecondChanceCore

/// What the daemon tells the tc program about its configuration (`struct fp_config`).
public struct FastPathSettings: Equatable, Sendable {
    public var selfAddress: IPv4Address
    public var peers: PeerPolicy
    public var guePort: UInt16
    /// Cookie ACKs may be recognised (not --no-cookie-check).
    public var checkCookies: Bool
    /// Sockets live in another namespace (--netns): every look-up goes up.
    public var lookupsElsewhere: Bool
    /// The SYN-cookie responder serves some listener (fp_listeners holds them).
    public var responderServing: Bool = false
    /// The responder's: one SYN per listener and interval goes to the kernel, whichever CPU (--cookie-pass-ms).
    public var passIntervalNanoseconds: UInt64 = 1_000_000_000
    /// The host's TCP sysctls, as the monitor last read them.
    public var tcp = TCPHostSettings()
    /// --self is one of this host's addresses now (the watcher follows it).
    public var selfOwned = true
    /// The XDP entry point may send forwards back out of the interface they arrived on (XDP_TX).
    public var xdpForward = false

    public init(
        selfAddress: IPv4Address, peers: PeerPolicy, guePort: UInt16, checkCookies: Bool, lookupsElsewhere: Bool
    ) {
        self.selfAddress = selfAddress
        self.peers = peers
        self.guePort = guePort
        self.checkCookies = checkCookies
        self.lookupsElsewhere = lookupsElsewhere
    }

    var configuration: fp_config {
        var flags: UInt8 = 0
        if checkCookies { flags |= UInt8(FP_F_CHECK_COOKIES) }
        if responderServing { flags |= UInt8(FP_F_RESPONDER) }
        if lookupsElsewhere { flags |= UInt8(FP_F_LOOKUPS_UP) }
        if !selfOwned { flags |= UInt8(FP_F_SELF_GONE) }
        if xdpForward { flags |= UInt8(FP_F_XDP_FORWARD) }
        var options: UInt8 = 0
        if tcp.timestampsEncodable { options |= UInt8(FP_TCP_TIMESTAMPS_ENCODABLE) }
        if tcp.sack { options |= UInt8(FP_TCP_SACK) }
        if tcp.windowScaling { options |= UInt8(FP_TCP_WINDOW_SCALING) }
        var value = fp_config()
        value.layout = UInt32(FP_LAYOUT)
        value.self_ip4 = selfAddress.value.bigEndian
        value.gue_port = guePort.bigEndian
        value.max_hops = peers.maximumHops
        value.flags = flags
        value.pass_interval_ns = passIntervalNanoseconds
        value.reply_ttl = tcp.defaultTTL
        value.reply_hop_limit = tcp.defaultHopLimit
        value.tcp_options = options
        return value
    }
}
