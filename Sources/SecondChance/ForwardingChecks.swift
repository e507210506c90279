extension HostChecks {
    /// What `--forward kernel` needs: the rewritten packet carries this host's address as its
    /// source and arrives from outside, so the kernel must forward (ip_forward) and accept a local
    /// source on the way in (accept_local on the interface it arrives on, or on all: the kernel
    /// checks only that one; strict rp_filter refuses it when the address is on another interface).
    /// Redirects would go to ourselves: they are only noise. `interfaces`: where GUE arrives
    /// (`PeerInterfaces`); nil or empty when unknown, and then any interface counts.
    public static func kernelForwarding(_ host: HostSnapshot, interfaces: [String]?) -> [HostCheck] {
        var checks = [ipForwarding(host), acceptLocal(host, interfaces: interfaces ?? [])]
        let strict = (["all"] + host.devices).filter { host.sysctl("net/ipv4/conf/\($0)/rp_filter") == "1" }
        if !strict.isEmpty {
            checks.append(
                HostCheck(
                    level: .warn, subject: "rp_filter",
                    finding:
                        """
                        strict (1) on \(strict.joined(separator: ", ")): a packet with this host's source is refused \
                        unless the address is on the interface it arrives on
                        """,
                    fix: "sysctl -w net.ipv4.conf.all.rp_filter=2 and the same for the GUE interface"))
        }
        if host.sysctl("net/ipv4/conf/all/send_redirects") == "1" {
            checks.append(
                HostCheck(
                    level: .info, subject: "send_redirects",
                    finding: "on: forwarding out of the interface a packet came in on sends this host ICMP redirects",
                    fix: "sysctl -w net.ipv4.conf.all.send_redirects=0 and the same for the GUE interface"))
        }
        return checks
    }

    static func ipForwarding(_ host: HostSnapshot) -> HostCheck {
        let forward = host.sysctl("net/ipv4/ip_forward") ?? "?"
        return forward == "1"
            ? HostCheck(
                level: .ok, subject: "ip_forward", finding: "1: the kernel forwards rewritten GUE (--forward kernel)")
            : HostCheck(
                level: .fail, subject: "ip_forward",
                finding: "net.ipv4.ip_forward = \(forward): --forward kernel needs 1",
                fix: "sysctl -w net.ipv4.ip_forward=1, or use --forward raw")
    }

    /// accept_local where GUE arrives (`gue`), or anywhere when that is unknown (empty).
    static func acceptLocal(_ host: HostSnapshot, interfaces gue: [String]) -> HostCheck {
        let acceptAll = host.sysctl("net/ipv4/conf/all/accept_local") == "1"
        let accepting = host.devices.filter { host.sysctl("net/ipv4/conf/\($0)/accept_local") == "1" }
        let lacking =
            acceptAll
            ? [] : gue.isEmpty ? (accepting.isEmpty ? ["<GUE interface>"] : []) : gue.filter { !accepting.contains($0) }
        guard !lacking.isEmpty else {
            return HostCheck(
                level: .ok, subject: "accept_local",
                finding: acceptAll
                    ? "net.ipv4.conf.all.accept_local = 1"
                    : gue.isEmpty
                        ? "1 on \(accepting.joined(separator: ", ")) (--allow-source names the GUE interface)"
                        : "1 on \(gue.joined(separator: ", ")), where GUE arrives")
        }
        let elsewhere = accepting.isEmpty ? "" : " (1 on \(accepting.joined(separator: ", ")) does not count)"
        return HostCheck(
            level: .fail, subject: "accept_local",
            finding: gue.isEmpty
                ? "0 everywhere: the kernel drops a forwarded packet whose source is this host"
                : """
                0 on \(lacking.joined(separator: ", ")), where GUE arrives: the kernel drops a forwarded \
                packet whose source is this host\(elsewhere)
                """,
            fix:
                """
                \(lacking.map { "sysctl -w net.ipv4.conf.\($0).accept_local=1" }.joined(separator: "; ")) \
                (or .all.), or use --forward raw
                """)
    }

    /// `--forward auto`: kernel forwarding where this host lets the kernel forward rewritten GUE
    /// without loss, the raw socket otherwise. Kernel forwarding needs ip_forward and accept_local
    /// on, no strict rp_filter, and a forward path that filters nothing (no rule and no drop policy
    /// on the forward hook, in nft's ruleset and in iptables' FORWARD chain); rules that cannot be
    /// read count as filtering. Returns the mode and why.
    ///
    /// With the responder on (`responder`), its IPv4 SYN-ACKs ride in verdicts too: conntrack sees
    /// them after the queue (raw PREROUTING comes before it) as INVALID, a SYN-ACK without a SYN,
    /// so a rule after conntrack that drops INVALID (`invalidDrops`) would eat every one.
    public static func automaticForwarding(_ host: HostSnapshot, interfaces: [String]?, responder: Bool) -> (
        mode: ForwardingMode, reason: String
    ) {
        let problems = kernelForwarding(host, interfaces: interfaces).filter { $0.level == .fail || $0.level == .warn }
        guard problems.isEmpty else {
            return (.raw, "kernel forwarding would need: " + problems.map(\.finding).joined(separator: "; "))
        }
        guard host.nft != nil || host.iptables != nil else {
            return (.raw, "the firewall's forward rules cannot be read")
        }
        if let nft = host.nft, !FirewallRules.forwardHookAccepts(nftRuleset: nft) {
            return (.raw, "a chain on the forward hook filters or drops (nft list ruleset)")
        }
        if let iptables = host.iptables, !FirewallRules.forwardChainAccepts(iptablesSave: iptables) {
            return (.raw, "the FORWARD chain filters or drops (iptables-save)")
        }
        if responder, let rule = FirewallRules.invalidDrops(nftRuleset: host.nft, iptablesSave: host.iptables).first {
            return (.raw, "\(rule) would drop the SYN-cookie responder's SYN-ACKs (conntrack INVALID)")
        }
        return (.kernel, "ip_forward and accept_local are on and nothing filters forwarded packets")
    }
}
