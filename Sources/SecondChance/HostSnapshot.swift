import Glibc
import LinuxSys
import NetTypes
import SecondChanceCore

/// What this host is, read once: the sysctls, the firewall's rules, fou, the routes to the peers
/// and what the kernel lets this process load. Every check doctor prints and every choice a start
/// makes (`DaemonPlan`) is a function of it, so that the two cannot read the host differently, a
/// large ruleset is dumped once, and both can be tested on a host written down.
public struct HostSnapshot: Sendable {
    /// Which parts to read: a start reads what its flags need, doctor reads all.
    public struct Parts: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        /// ip_forward and each interface's accept_local, rp_filter and send_redirects.
        public static let forwarding = Parts(rawValue: 1)
        /// `iptables-save` (and its raw table) and `nft list ruleset`, dumped once each.
        public static let rules = Parts(rawValue: 2)
        /// fou's answer for the GUE port.
        public static let fou = Parts(rawValue: 4)
        /// Whether the BPF SYN-cookie helpers load.
        public static let cookieHelpers = Parts(rawValue: 8)
        /// The rest of doctor's look: privileges, nfnetlink_queue, the kernel, the tunnel devices,
        /// TCP sysctls and a sock_diag look-up.
        public static let doctor = Parts(rawValue: 16)
        public static let all: Parts = [.forwarding, .rules, .fou, .cookieHelpers, .doctor]
    }

    /// Why a part could not be read, as the kernel or the tool said it.
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// Sysctl values by path under /proc/sys (`net/ipv4/ip_forward`); an absent key was not read
    /// or does not exist.
    public var sysctls: [String: String] = [:]
    /// The interfaces under /proc/sys/net/ipv4/conf, without `all` and `default`.
    public var devices: [String] = []
    /// `iptables-save`, its raw table alone (`-t raw`: where the queue rules are, read even when
    /// another table cannot be) and `nft list ruleset`; nil when the tool is missing or failed.
    public var iptables: String?
    public var iptablesRaw: String?
    public var nft: String?
    public var fou: Result<FouStatus, Failure> = .success(.unavailable)
    public var cookieHelpers: Result<Void, Failure> = .failure(Failure("not looked at"))
    /// Where GUE from the peers arrives (`PeerInterfaces`); nil when the peers are not known.
    public var peerInterfaces: [String]?
    public var root = true
    public var queueAvailable = true
    public var kernelRelease = ""
    public var tunl0 = HostChecks.TunnelState.absent
    public var sit0 = HostChecks.TunnelState.absent
    /// The MSS the host advertises along each main-table route but loopback's, and the MTU of each
    /// interface GUE from the peers arrives on.
    public var replyRoutes: ReplyRoutes?
    public var linkMTUs: [String: UInt32] = [:]
    /// Each listener of the sockets' namespace but loopback's, with its TCP_MAXSEG (0: none set);
    /// nil when they could not be read (no sock_diag, or no listener probe to read TCP_MAXSEG).
    public var listenerMSS: [ListenerKey: UInt16]?
    /// More listeners than `maximumListeners`: the rest were not read.
    public var listenersTruncated = false
    /// Whether an exact sock_diag look-up in the sockets' namespace answers.
    public var sockDiag: Result<Bool, Failure> = .success(true)

    public init() {}

    public func sysctl(_ path: String) -> String? { sysctls[path] }

    /// Reads `parts` of this host. `port`: the GUE port (fou); `peers`: --allow-source, when known;
    /// `namespace`: --netns, where sock_diag looks.
    public static func read(
        _ parts: Parts, port: UInt16 = GUEPacket.port, peers: [IPv4Prefix]?, namespace: String? = nil
    ) -> HostSnapshot {
        var host = HostSnapshot()
        host.peerInterfaces = peers.map(PeerInterfaces.of)
        if parts.contains(.forwarding) { host.readForwarding() }
        if parts.contains(.rules) {
            host.iptables = Spawn.output("iptables-save")
            host.iptablesRaw =
                Spawn.output("iptables-save -t raw")
                ?? host.iptables.map { FirewallRules.table("raw", iptablesSave: $0) }
            host.nft = Spawn.output("nft list ruleset")
        }
        if parts.contains(.fou) {
            host.fou = Result { try FouStatus.query(port: port) }.mapError { Failure("\($0)") }
        }
        if parts.contains(.cookieHelpers) {
            host.cookieHelpers = Result { _ = try SynCookieOracle() }.mapError { Failure("\($0)") }
        }
        if parts.contains(.doctor) { host.readDoctorsRest(namespace: namespace) }
        return host
    }

    mutating func readForwarding() {
        devices = ProcFile.entries(ofDirectory: "/proc/sys/net/ipv4/conf").filter { $0 != "all" && $0 != "default" }
        var paths = ["net/ipv4/ip_forward", "net/ipv4/conf/all/send_redirects"]
        for device in ["all"] + devices {
            paths += ["accept_local", "rp_filter"].map { "net/ipv4/conf/\(device)/\($0)" }
        }
        for path in paths { sysctls[path] = ProcFile.sysctl(path) }
    }

    /// The listeners a client can reach (not bound to loopback), at most `maximumListeners` of
    /// them, each with the TCP_MAXSEG the listener probe reads; and whether there were more.
    static func listenerMSS(namespace: NetworkNamespace?) -> ([ListenerKey: UInt16]?, Bool) {
        guard let listeners = try? SockDiag(namespace: namespace).dumpListeners(requestSockets: false),
            let probe = try? ListenerProbe(namespace: namespace)
        else { return (nil, false) }
        let loopback4 = IPv4Prefix(network: IPv4Address(0x7f00_0000), length: 8)
        let reachable = listeners.map(\.key).filter { key in
            key.isIPv6
                ? key.address != IPv6Address(high: 0, low: 1)
                : !loopback4.contains(IPv4Address(UInt32(truncatingIfNeeded: key.address.low)))
        }
        var found: [ListenerKey: UInt16] = [:]
        // A listener gone between the dump and the probe is left out.
        for key in reachable.prefix(maximumListeners) { found[key] = probe.read(key)?.userMSS }
        return (found, reachable.count > maximumListeners)
    }

    static let maximumListeners = 4096

    mutating func readDoctorsRest(namespace: String?) {
        root = geteuid() == 0
        queueAvailable = access("/proc/net/netfilter/nfnetlink_queue", F_OK) == 0
        kernelRelease = KernelRelease.current
        // Routes that leave by loopback (a VIP's own) lead to no client.
        let loopback = if_nametoindex("lo")
        // The sockets advertise along their own namespace's routes (--netns).
        let sockets = namespace.flatMap { try? NetworkNamespace(nameOrPath: $0) }
        replyRoutes = (try? ReplyRoutesReader.read(namespace: sockets)).map { routes in
            ReplyRoutes(
                ipv4: routes.ipv4.filter { $0.route.interfaceIndex != loopback }.map { ($0.prefix, $0.route) },
                ipv6: routes.ipv6.filter { $0.route.interfaceIndex != loopback }.map { ($0.prefix, $0.route) })
        }
        (listenerMSS, listenersTruncated) = Self.listenerMSS(namespace: sockets)
        for name in peerInterfaces ?? [] {
            let text = ProcFile.read("/sys/class/net/\(name)/mtu", limit: 32)
            if let mtu = text.flatMap({ UInt32($0.split(separator: "\n").first ?? "") }) { linkMTUs[name] = mtu }
        }
        tunl0 = HostChecks.tunnelState("tunl0")
        sit0 = HostChecks.tunnelState("sit0")
        for path in [
            "net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/tunl0/rp_filter",
            "net/ipv4/tcp_syncookies", "net/ipv4/tcp_timestamps",
        ] where sysctls[path] == nil {  // ip_forward and all's rp_filter: read already with .forwarding
            sysctls[path] = ProcFile.sysctl(path)
        }
        sockDiag = Result {
            let diag = try SockDiag(namespace: try namespace.map { try NetworkNamespace(nameOrPath: $0) })
            // A flow no one has (198.18.255.255:1 to 198.18.255.254:1): the answer, not a socket, counts.
            let probe = FlowKey(
                source: IPv4Address(0xc612_ffff), sourcePort: 1, destination: IPv4Address(0xc612_fffe),
                destinationPort: 1)
            return diag.lookup(probe) != .failed
        }.mapError { Failure("\($0)") }
    }
}
