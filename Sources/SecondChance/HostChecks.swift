import Glibc
import LinuxSys
import NetTypes
import SecondChanceCore

/// The checks `second-chance doctor` runs, each with a fix an operator can apply.
public struct HostCheck: Sendable {
    public enum Level: String, Sendable { case ok = " ok ", warn = "warn", fail = "FAIL", info = "info" }
    public var level: Level
    public var subject: String
    public var finding: String
    public var fix: String?
    /// A failure that `--preflight fail` refuses to start on; one whose cost is not starting's
    /// (the GUE MTU: small requests still work) is reported and the start goes on.
    public var blocksStart = true

    public init(level: Level, subject: String, finding: String, fix: String? = nil) {
        (self.level, self.subject, self.finding, self.fix) = (level, subject, finding, fix)
    }

    public var line: String {
        "[\(level.rawValue)] \(subject): \(finding)" + (fix.map { "\n        fix: \($0)" } ?? "")
    }
}

public enum HostChecks {
    /// Doctor's findings about the queue rules of either tool.
    public static func ruleChecks(_ rules: FirewallRules.GUERules, tool: String, port: UInt16, queues: [UInt16])
        -> [HostCheck]
    {
        var checks: [HostCheck] = []
        for rule in rules.queueRules {
            let missing = queues.filter { queue in
                !(rule.rule.contains("--queue-num \(queue)") || rule.rule.contains("--queue-balance")
                    || rule.rule.contains("num \(queue)")
                    || rule.rule.contains("to \(queue)") || rule.rule.contains("to \(queue)-"))
            }
            let fix =
                !rule.bypass
                ? "add --queue-bypass (nft: bypass) so GUE still flows (to fou or nowhere) if second-chance is down"
                : missing.isEmpty ? nil : "the rule does not feed queue(s) \(missing)"
            checks.append(
                HostCheck(
                    level: rule.bypass && missing.isEmpty ? .ok : .warn, subject: tool, finding: rule.rule, fix: fix))
        }
        if rules.queueRules.contains(where: { !$0.restricted }) {
            checks.append(
                HostCheck(
                    level: .warn, subject: tool,
                    finding: "the NFQUEUE rule takes GUE from every host, not only the GLB peers",
                    fix:
                        """
                        limit it to the directors and proxies (-s or an ipset; nft: ip saddr @glb_peers) and drop the \
                        rest of UDP \(port), as in examples/iptables
                        """
                ))
        }
        checks += unreachable(rules, tool: tool, port: port)
        if !rules.queueRules.isEmpty && !rules.reversePathChecked {
            checks.append(
                HostCheck(
                    level: .warn, subject: tool,
                    finding:
                        """
                        no reverse-path check before the queue: GUE with a peer's address as its source is believed \
                        from any interface (raw PREROUTING runs before rp_filter)
                        """,
                    fix:
                        """
                        first: -A PREROUTING -p udp --dport \(port) -m rpfilter --invert -j DROP (nft: udp dport \
                        \(port) fib saddr . iif oif missing drop), as in examples/iptables
                        """
                ))
        }
        if !rules.queueRules.isEmpty && !rules.untracked {
            checks.append(
                HostCheck(
                    level: .warn, subject: tool, finding: "GUE from the peers goes on to conntrack after the queue",
                    fix: "before the queue rules: -A PREROUTING -p udp --dport \(port) -j CT --notrack (nft: notrack)"))
        }
        if !rules.queueRules.contains(where: { !$0.restricted }) && !rules.dropsTheRest {
            checks.append(
                HostCheck(
                    level: .warn, subject: tool,
                    finding:
                        """
                        GUE from hosts that are not peers is not dropped: with fou it is decapsulated without any \
                        check
                        """,
                    fix:
                        """
                        after the peer rules: -A PREROUTING -p udp --dport \(port) -j DROP \
                        (examples/iptables/rules.v4)
                        """
                ))
        }
        return checks
    }

    /// A tunnel device's state for kernel decapsulation: absent (its driver not loaded), down, up.
    public enum TunnelState: Sendable, Equatable { case absent, down, up }

    /// The state of `name` in this namespace (its IFF_UP flag).
    public static func tunnelState(_ name: String) -> TunnelState {
        guard let text = ProcFile.read("/sys/class/net/\(name)/flags", limit: 64) else { return .absent }
        let digits = text.trimmingPrefix("0x").prefix { $0.isHexDigit }
        return (UInt32(digits, radix: 16) ?? 0) & UInt32(IFF_UP) != 0 ? .up : .down
    }

    /// What kernel decapsulation needs beyond `ip fou add port P gue` (glb-director's proxy setup):
    /// fou hands a decapsulated IPv4 packet to the ipip driver's `tunl0` and an IPv6 one to sit's
    /// `sit0`, and a device that is missing or down drops it unseen. The packet then arrives on that
    /// device, from a client whose route is not through it: strict rp_filter (1, the larger of `all`
    /// and the device's) drops it too. The VIPs stay where they are (lo, or the tunnel devices).
    public static func kernelDecapsulationChecks(
        tunl0: TunnelState, sit0: TunnelState, rpFilterAll: Int?, rpFilterTunl0: Int?
    ) -> [HostCheck] {
        var checks: [HostCheck] = []
        for (name, state, driver, family) in [("tunl0", tunl0, "ipip", "IPv4"), ("sit0", sit0, "sit", "IPv6")] {
            switch state {
            case .up:
                checks.append(HostCheck(level: .ok, subject: name, finding: "up: fou delivers inner \(family) to it"))
            case .down:
                checks.append(
                    HostCheck(
                        level: family == "IPv4" ? .fail : .warn, subject: name,
                        finding: "down: every \(family) packet fou decapsulates is dropped",
                        fix: "ip link set \(name) up"))
            case .absent:
                checks.append(
                    HostCheck(
                        level: family == "IPv4" ? .fail : .warn, subject: name,
                        finding:
                            "missing (the \(driver) driver is not loaded): fou's \(family) packets have nowhere to go",
                        fix: "modprobe \(driver) && ip link set \(name) up"))
            }
        }
        let effective = max(rpFilterAll ?? 0, rpFilterTunl0 ?? 0)
        if effective == 1 {
            checks.append(
                HostCheck(
                    level: .fail, subject: "rp_filter on tunl0",
                    finding:
                        "strict (1): decapsulated packets arrive on tunl0 from clients routed elsewhere: dropped",
                    fix: "sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.tunl0.rp_filter=0 (or 2, loose)"))
        } else if tunl0 != .absent {
            checks.append(
                HostCheck(level: .ok, subject: "rp_filter on tunl0", finding: effective == 2 ? "loose (2)" : "off (0)"))
        }
        return checks
    }

    /// What the running kernel offers against what each feature needs (README, "Kernels").
    public static func kernelFeatures(release: String) -> [HostCheck] {
        guard let version = KernelRelease.version(of: release) else {
            return [HostCheck(level: .warn, subject: "kernel", finding: "cannot read the release \(release)")]
        }
        let needs: [(feature: String, helpers: String, minimum: (Int, Int))] = [
            (
                "the queue's SYN-cookie responder and cookie ACK checks (the tc program's answer without them)",
                "bpf_tcp_raw_*_syncookie_ipv4/6", (6, 0)
            ),
            ("the tc fast path (--fast-path auto falls back to NFQUEUE)", "its program's helpers", (5, 10)),
        ]
        let missing = needs.filter { version < $0.minimum }
        guard !missing.isEmpty else {
            return [
                HostCheck(
                    level: .ok, subject: "kernel",
                    finding: "Linux \(version.0).\(version.1): every feature's helpers (6.0 and older)")
            ]
        }
        return missing.map { need in
            let minimum = "\(need.minimum.0).\(need.minimum.1)"
            return HostCheck(
                level: .warn, subject: "kernel",
                finding: "Linux \(version.0).\(version.1): \(need.feature) needs \(minimum) (\(need.helpers))")
        }
    }

    /// Every finding doctor prints about `host` for a daemon on `port` and `queues`, forwarding
    /// as `forwarding`; `allowedSources`: its --allow-source prefixes, when known.
    public static func run(
        _ host: HostSnapshot, port: UInt16, queues: [UInt16], namespace: String?, forwarding: ForwardingMode,
        allowedSources: [IPv4Prefix]?, maximumHops: UInt8 = PeerPolicy.defaultMaximumHops,
        fouMark: PacketMark = .default
    ) -> [HostCheck] {
        var checks = basics(host) + fou(host, port: port) + queueRules(host, port: port, queues: queues)
        if case .success(.gue) = host.fou { checks.append(healthProbe(host, fouMark: fouMark)) }
        checks += PathMTUChecks.run(host, hops: maximumHops)
        if let allowedSources { checks.append(allowSource(allowedSources)) }
        checks.append(rpFilter(host))
        if forwarding == .kernel {
            checks += kernelForwarding(host, interfaces: host.peerInterfaces) + invalidDropWarnings(host)
        } else {
            checks.append(rawForwarding(host))
        }
        return checks + tcp(host) + probes(host, namespace: namespace)
    }

    static func basics(_ host: HostSnapshot) -> [HostCheck] {
        var checks: [HostCheck] = []
        if !host.root {
            checks.append(
                HostCheck(
                    level: .fail, subject: "privileges", finding: "not running as root",
                    fix: "run as root, or grant CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_SYS_ADMIN (for --netns)"))
        }
        checks.append(
            host.queueAvailable
                ? HostCheck(level: .ok, subject: "nfnetlink_queue", finding: "available")
                : HostCheck(
                    level: .fail, subject: "nfnetlink_queue",
                    finding: "not available (/proc/net/netfilter/nfnetlink_queue missing)",
                    fix: "modprobe nfnetlink_queue xt_NFQUEUE (see kmod/modules-load.d/proxyside.conf)"))
        return checks + kernelFeatures(release: host.kernelRelease)
    }

    static func fou(_ host: HostSnapshot, port: UInt16) -> [HostCheck] {
        switch host.fou {
        case .success(.gue):
            return [
                HostCheck(
                    level: .ok, subject: "fou", finding: "GUE on port \(port): --decap auto uses kernel decapsulation")
            ]
                + kernelDecapsulationChecks(
                    tunl0: host.tunl0, sit0: host.sit0,
                    rpFilterAll: host.sysctl("net/ipv4/conf/all/rp_filter").flatMap { Int($0) },
                    rpFilterTunl0: host.sysctl("net/ipv4/conf/tunl0/rp_filter").flatMap { Int($0) })
        case .success(let status):
            return [
                HostCheck(
                    level: .info, subject: "fou", finding: "\(status): --decap auto uses userspace decapsulation",
                    fix: status == .unavailable ? nil : "for kernel decapsulation: ip fou add port \(port) gue")
            ]
        case .failure(let error):
            return [HostCheck(level: .warn, subject: "fou", finding: "cannot ask generic netlink: \(error)")]
        }
    }

    static func queueRules(_ host: HostSnapshot, port: UInt16, queues: [UInt16]) -> [HostCheck] {
        var checks: [HostCheck] = []
        let iptables = host.iptablesRaw.map { FirewallRules.gueRules(iptablesSave: $0, port: port) }
        let nft = host.nft.map { FirewallRules.gueRules(nftRuleset: $0, port: port) }
        if let iptables, !iptables.queueRules.isEmpty {
            checks += ruleChecks(iptables, tool: "iptables", port: port, queues: queues)
        }
        if let nft, !nft.queueRules.isEmpty { checks += ruleChecks(nft, tool: "nft", port: port, queues: queues) }
        if (iptables?.queueRules ?? []).isEmpty && (nft?.queueRules ?? []).isEmpty {
            checks.append(
                HostCheck(
                    level: .fail, subject: "iptables",
                    finding: "no raw PREROUTING NFQUEUE rule for UDP \(port) (iptables or nft)",
                    fix:
                        """
                        iptables -t raw -A PREROUTING -s PEERS -p udp --dport \(port) -j NFQUEUE --queue-num \
                        \(queues.first ?? 0) --queue-bypass, then the same without -s and -j DROP \
                        (examples/iptables/rules.v4)
                        """
                ))
        }
        if iptables == nil && nft == nil {
            checks.append(
                HostCheck(
                    level: .warn, subject: "iptables", finding: "neither iptables-save nor nft is available",
                    fix: "apt-get install iptables"))
        }
        return checks
    }

    /// With fou on the port, a health checker's GUE probe (an echo request inside GUE) is
    /// decapsulated and answered by the kernel even when it came through the queue's bypass with no
    /// second-chance deciding: only a rule that drops it without the daemon's --fou-mark makes a
    /// stopped daemon fail glb-healthcheck.
    static func healthProbe(_ host: HostSnapshot, fouMark: PacketMark) -> HostCheck {
        let marks =
            (host.iptablesRaw.map(FirewallRules.probeDropMarks(iptablesSave:)) ?? [])
            + (host.nft.map(FirewallRules.probeDropMarks(nftRuleset:)) ?? [])
        let rule = "-A PREROUTING -i tunl0 -p icmp --icmp-type 8 -m mark ! --mark \(PacketMark.default) -j DROP"
        if fouMark == .none {
            return HostCheck(
                level: .warn, subject: "health checks",
                finding: "--fou-mark none: with second-chance down, fou still answers glb-healthcheck's GUE probe",
                fix: "leave --fou-mark at its default and add the raw rule \(rule) (examples/iptables)")
        }
        if marks.contains(fouMark) {
            return HostCheck(
                level: .ok, subject: "health checks",
                finding: "a GUE probe fou decapsulated without mark \(fouMark) is dropped: a stopped daemon fails it")
        }
        if let other = marks.first {
            return HostCheck(
                level: .fail, subject: "health checks",
                finding:
                    "the rules drop probes without mark \(other), second-chance sets \(fouMark): every probe fails",
                fix: "make the rule's mark and --fou-mark the same")
        }
        return HostCheck(
            level: .warn, subject: "health checks",
            finding: "with second-chance down, fou still answers glb-healthcheck's GUE probe: the proxy looks healthy",
            fix: "add the raw rule \(rule) (examples/iptables/rules.v4, item 5)")
    }

    static func allowSource(_ allowedSources: [IPv4Prefix]) -> HostCheck {
        if allowedSources.isEmpty {
            return HostCheck(
                level: .fail, subject: "--allow-source",
                finding: "no GLB peers given: second-chance run refuses to start",
                fix:
                    """
                    SECOND_CHANCE_ALLOW_SOURCE in /etc/default/second-chance: the directors, their health checkers \
                    and the proxies
                    """
            )
        }
        if allowedSources.contains(.everything) {
            return HostCheck(
                level: .warn, subject: "--allow-source",
                finding: "0.0.0.0/0: GUE from any host is read, and any host chooses where this proxy forwards",
                fix: "list the directors, their health checkers and the proxies instead")
        }
        return HostCheck(
            level: .ok, subject: "--allow-source", finding: allowedSources.map(\.description).joined(separator: ", "))
    }

    static func rpFilter(_ host: HostSnapshot) -> HostCheck {
        let rpAll = host.sysctl("net/ipv4/conf/all/rp_filter") ?? "?"
        return rpAll == "1"
            ? HostCheck(
                level: .warn, subject: "rp_filter", finding: "net.ipv4.conf.all.rp_filter = 1 (strict)",
                fix:
                    """
                    sysctl -w net.ipv4.conf.all.rp_filter=2 (decapsulated packets carry client sources; see \
                    kmod/sysctl.d/60-proxyside.conf)
                    """
            )
            : HostCheck(level: .ok, subject: "rp_filter", finding: "net.ipv4.conf.all.rp_filter = \(rpAll)")
    }

    static func invalidDropWarnings(_ host: HostSnapshot) -> [HostCheck] {
        FirewallRules.invalidDrops(nftRuleset: host.nft, iptablesSave: host.iptables).map { rule in
            HostCheck(
                level: .warn, subject: "conntrack",
                finding: "\(rule): drops the SYN-cookie responder's SYN-ACKs, INVALID to conntrack",
                fix: "exempt them (-p tcp --tcp-flags SYN,ACK SYN,ACK), use --forward raw, or --syn-cookies off")
        }
    }

    static func rawForwarding(_ host: HostSnapshot) -> HostCheck {
        let forward = host.sysctl("net/ipv4/ip_forward") ?? "?"
        return HostCheck(
            level: forward == "1" ? .warn : .ok, subject: "ip_forward",
            finding: "net.ipv4.ip_forward = \(forward)",
            fix: forward == "1"
                ? """
                with --forward raw second-chance sends forwarded GUE itself and needs no forwarding; with it on, a \
                decapsulated packet for a VIP that is not on lo is routed onwards instead of answered: keep VIPs on \
                lo, or sysctl -w net.ipv4.ip_forward=0
                """
                : nil)
    }

    static func tcp(_ host: HostSnapshot) -> [HostCheck] {
        let cookies = host.sysctl("net/ipv4/tcp_syncookies") ?? "?"
        let timestamps = host.sysctl("net/ipv4/tcp_timestamps") ?? "?"
        return [
            cookies == "0"
                ? HostCheck(
                    level: .warn, subject: "tcp_syncookies",
                    finding: "0: an overflowing listener drops SYNs and no cookie ACK is valid",
                    fix: "sysctl -w net.ipv4.tcp_syncookies=1")
                : HostCheck(level: .ok, subject: "tcp_syncookies", finding: cookies),
            HostCheck(
                level: timestamps == "1" ? .info : .ok, subject: "tcp_timestamps", finding: timestamps,
                fix: timestamps == "1"
                    ? """
                    with 1 the per-connection timestamp offset is secret: the SYN-cookie responder's handshakes carry \
                    no window scaling or SACK (the kernel's own cookies keep them); sysctl -w \
                    net.ipv4.tcp_timestamps=2 keeps them
                    """
                    : nil),
        ]
    }

    /// What loading the cookie helpers and a sock_diag look-up found.
    static func probes(_ host: HostSnapshot, namespace: String?) -> [HostCheck] {
        var checks: [HostCheck] = []
        switch host.cookieHelpers {
        case .success:
            checks.append(
                HostCheck(
                    level: .ok, subject: "SYN cookies",
                    finding: "BPF raw SYN-cookie helpers load (cookie ACK check and responder)"))
        case .failure(let error):
            checks.append(
                HostCheck(
                    level: .warn, subject: "SYN cookies", finding: "\(error)",
                    fix:
                        """
                        cookie ACKs will be forwarded instead of accepted and the responder stays off; run as root on \
                        Linux 6.0 or later
                        """
                ))
        }
        switch host.sockDiag {
        case .success(true):
            checks.append(
                HostCheck(
                    level: .ok, subject: "sock_diag",
                    finding: "exact TCP lookups work" + (namespace.map { " in \($0)" } ?? "")))
        case .success(false):
            checks.append(
                HostCheck(
                    level: .fail, subject: "sock_diag", finding: "exact lookups fail",
                    fix: "modprobe inet_diag tcp_diag"))
        case .failure(let error):
            checks.append(
                HostCheck(
                    level: .fail, subject: "sock_diag", finding: "\(error)",
                    fix: "modprobe inet_diag tcp_diag; check --netns"))
        }
        return checks
    }

    /// Queue rules a DROP of the whole port before them makes unreachable.
    static func unreachable(_ rules: FirewallRules.GUERules, tool: String, port: UInt16) -> [HostCheck] {
        rules.unreachable.map { rule in
            HostCheck(
                level: .fail, subject: tool,
                finding: "\(rule): never reached, a rule before it drops all of UDP \(port)",
                fix:
                    """
                    delete it and insert it before the DROP (iptables -t raw -S PREROUTING shows the order; rules \
                    applied twice with --noflush land after the first copy's DROP)
                    """)
        }
    }
}
