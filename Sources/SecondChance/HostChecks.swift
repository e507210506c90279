import Glibc
import LinuxSys
import NetTypes

/// The checks `second-chance doctor` runs, each with a fix an operator can apply.
public struct HostCheck: Sendable {
    public enum Level: String, Sendable { case ok = " ok ", warn = "warn", fail = "FAIL", info = "info" }
    public var level: Level
    public var subject: String
    public var finding: String
    public var fix: String?

    public init(level: Level, subject: String, finding: String, fix: String? = nil) {
        (self.level, self.subject, self.finding, self.fix) = (level, subject, finding, fix)
    }

    public var line: String {
        "[\(level.rawValue)] \(subject): \(finding)" + (fix.map { "\n        fix: \($0)" } ?? "")
    }
}

public enum HostChecks {
    /// The first line of a sysctl (`net/ipv4/ip_forward`), without leading blanks.
    public static func readSysctl(_ path: String) -> String? {
        ProcFile.read("/proc/sys/" + path, limit: 256)
            .flatMap { $0.trimmingPrefix(while: \.isWhitespace).split(separator: "\n").first.map(String.init) }
    }

    /// The names in a directory, without "." and "..".
    public static func directoryEntries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Runs a command and returns its standard output (nil when it cannot run or fails).
    public static func commandOutput(_ command: String) -> String? {
        guard let pipe = popen(command + " 2>/dev/null", "r") else { return nil }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&chunk, 1, chunk.count, pipe)
            if count <= 0 { break }
            out += chunk[0..<count]
        }
        return pclose(pipe) == 0 ? String(decoding: out, as: UTF8.self) : nil
    }

    /// A rule that sends GUE to NFQUEUE, as iptables-save or nft prints it.
    public struct QueueRule: Equatable, Sendable {
        public var rule: String
        /// --queue-bypass / bypass: packets pass when no daemon reads the queue.
        public var bypass: Bool
        /// Limited to some sources (-s, an ipset, ip saddr): the GLB peers, one hopes.
        public var restricted: Bool

        public init(rule: String, bypass: Bool, restricted: Bool) {
            self.rule = rule
            self.bypass = bypass
            self.restricted = restricted
        }
    }

    /// What doctor learns from the raw PREROUTING rules for the GUE port.
    public struct GUERules: Equatable, Sendable {
        public var queueRules: [QueueRule] = []
        /// A later rule drops the port's other traffic: what the queue rules do not take is not
        /// left to fou.
        public var dropsTheRest = false
        /// A rule before the queue drops the port's packets whose source does not route back out
        /// of the interface they came in on (`-m rpfilter --invert -j DROP`, nft `fib saddr . iif
        /// oif missing drop`). raw PREROUTING runs before the kernel's rp_filter, so without it a
        /// peer's address sent from anywhere is believed.
        public var reversePathChecked = false
        /// A rule before the queue keeps the port out of conntrack (`-j CT --notrack`, nft
        /// `notrack`): an accepted packet would otherwise go on to make an entry per flow.
        public var untracked = false
    }

    /// How a rule matches the outer source: not at all, to some sources (the peers, one hopes), or
    /// to every source but some (`! -s`, `ip saddr != ...`: that hears the whole Internet).
    enum SourceMatch { case any, only, allBut }

    /// The source match of an iptables-save rule: `-s` and `--match-set ... src`, each negated by a
    /// `!` before it.
    static func sourceMatch(iptablesWords words: [Substring]) -> SourceMatch {
        var match = SourceMatch.any
        for (index, word) in words.enumerated() where word == "-s" || word == "--match-set" {
            if index > 0 && words[index - 1] == "!" { return .allBut }
            match = .only
        }
        return match
    }

    /// The source match of an nft rule: `ip saddr X` or `ip saddr != X`.
    static func sourceMatch(nftWords words: [Substring]) -> SourceMatch {
        guard let index = words.firstIndex(where: { $0 == "saddr" }) else { return .any }
        return index + 1 < words.count && words[index + 1] == "!=" ? .allBut : .only
    }

    /// The NFQUEUE rules for the GUE port in `iptables-save -t raw` output.
    public static func gueRules(iptablesSave rules: String, port: UInt16) -> GUERules {
        var found = GUERules()
        for line in rules.split(separator: "\n")
        where line.hasPrefix("-A PREROUTING") && line.contains("--dport \(port)") {
            let source = sourceMatch(iptablesWords: line.split(separator: " "))
            if found.queueRules.isEmpty {
                if line.contains("-m rpfilter --invert") && line.hasSuffix("-j DROP") {
                    found.reversePathChecked = true
                }
                if line.contains("-j CT --notrack") || line.hasSuffix("-j NOTRACK") { found.untracked = true }
            }
            if line.contains("-j NFQUEUE") {
                found.queueRules.append(
                    QueueRule(rule: String(line), bypass: line.contains("--queue-bypass"), restricted: source == .only))
            } else if line.hasSuffix("-j DROP") && source != .only {
                // `! -s PEERS -j DROP` drops all the queue rules do not take from the peers too.
                found.dropsTheRest = !found.queueRules.isEmpty
            }
        }
        return found
    }

    /// The queue rules for the GUE port in `nft list ruleset` output (a `queue` statement; nft
    /// prints `queue num 0 bypass` or `queue flags bypass to 0` depending on its version).
    public static func gueRules(nftRuleset rules: String, port: UInt16) -> GUERules {
        var found = GUERules()
        for raw in rules.split(separator: "\n") {
            let line = raw.trimmingPrefix(while: \.isWhitespace)
            let words = line.split(separator: " ")
            guard line.contains("dport \(port)"), !line.hasPrefix("#") else { continue }
            if found.queueRules.isEmpty {
                if line.contains("fib saddr . iif oif") && words.last == "drop" { found.reversePathChecked = true }
                if words.contains("notrack") { found.untracked = true }
            }
            // A `fib saddr` rule reads as a source match: its drop is not the one for the rest of the port.
            let source = sourceMatch(nftWords: words)
            if words.contains("queue") {
                found.queueRules.append(
                    QueueRule(rule: String(line), bypass: line.contains("bypass"), restricted: source == .only))
            } else if words.last == "drop" && source != .only {
                found.dropsTheRest = !found.queueRules.isEmpty
            }
        }
        return found
    }

    /// Doctor's findings about the queue rules of either tool.
    public static func ruleChecks(_ rules: GUERules, tool: String, port: UInt16, queues: [UInt16]) -> [HostCheck] {
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

    /// What `--forward kernel` needs: the rewritten packet carries this host's address as its
    /// source and arrives from outside, so the kernel must forward (ip_forward) and accept a local
    /// source on the way in (accept_local on the interface it arrives on, or on all: the kernel
    /// checks only that one; strict rp_filter refuses it when the address is on another interface).
    /// Redirects would go to ourselves: they are only noise. `interfaces`: where GUE arrives
    /// (`PeerInterfaces`); nil or empty when unknown, and then any interface counts.
    public static func kernelForwarding(interfaces: [String]? = nil) -> [HostCheck] {
        var checks: [HostCheck] = []
        let forward = readSysctl("net/ipv4/ip_forward") ?? "?"
        checks.append(
            forward == "1"
                ? HostCheck(
                    level: .ok, subject: "ip_forward",
                    finding: "1: the kernel forwards rewritten GUE (--forward kernel)")
                : HostCheck(
                    level: .fail, subject: "ip_forward",
                    finding: "net.ipv4.ip_forward = \(forward): --forward kernel needs 1",
                    fix: "sysctl -w net.ipv4.ip_forward=1, or use --forward raw"))
        let devices = directoryEntries("/proc/sys/net/ipv4/conf").filter { $0 != "all" && $0 != "default" }
        let acceptAll = readSysctl("net/ipv4/conf/all/accept_local") == "1"
        let accepting = devices.filter { readSysctl("net/ipv4/conf/\($0)/accept_local") == "1" }
        // Where GUE arrives, when known; otherwise any interface will do.
        let gue = interfaces ?? []
        let lacking =
            acceptAll
            ? [] : gue.isEmpty ? (accepting.isEmpty ? ["<GUE interface>"] : []) : gue.filter { !accepting.contains($0) }
        if lacking.isEmpty {
            checks.append(
                HostCheck(
                    level: .ok, subject: "accept_local",
                    finding: acceptAll
                        ? "net.ipv4.conf.all.accept_local = 1"
                        : gue.isEmpty
                            ? "1 on \(accepting.joined(separator: ", ")) (--allow-source names the GUE interface)"
                            : "1 on \(gue.joined(separator: ", ")), where GUE arrives"))
        } else {
            let elsewhere = accepting.isEmpty ? "" : " (1 on \(accepting.joined(separator: ", ")) does not count)"
            checks.append(
                HostCheck(
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
                        """))
        }
        let strict = (["all"] + devices).filter { readSysctl("net/ipv4/conf/\($0)/rp_filter") == "1" }
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
        if readSysctl("net/ipv4/conf/all/send_redirects") == "1" {
            checks.append(
                HostCheck(
                    level: .info, subject: "send_redirects",
                    finding: "on: forwarding out of the interface a packet came in on sends this host ICMP redirects",
                    fix: "sysctl -w net.ipv4.conf.all.send_redirects=0 and the same for the GUE interface"))
        }
        return checks
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
    public static func automaticForwarding(interfaces: [String]? = nil, responder: Bool) -> (
        mode: ForwardingMode, reason: String
    ) {
        let problems = kernelForwarding(interfaces: interfaces).filter { $0.level == .fail || $0.level == .warn }
        guard problems.isEmpty else {
            return (.raw, "kernel forwarding would need: " + problems.map(\.finding).joined(separator: "; "))
        }
        let nft = commandOutput("nft list ruleset")
        let iptables = commandOutput("iptables-save")
        guard nft != nil || iptables != nil else { return (.raw, "the firewall's forward rules cannot be read") }
        if let nft, !forwardHookAccepts(nftRuleset: nft) {
            return (.raw, "a chain on the forward hook filters or drops (nft list ruleset)")
        }
        if let iptables, !forwardChainAccepts(iptablesSave: iptables) {
            return (.raw, "the FORWARD chain filters or drops (iptables-save)")
        }
        if responder, let rule = invalidDrops(nftRuleset: nft, iptablesSave: iptables).first {
            return (.raw, "\(rule) would drop the SYN-cookie responder's SYN-ACKs (conntrack INVALID)")
        }
        return (.kernel, "ip_forward and accept_local are on and nothing filters forwarded packets")
    }

    /// Both tools' rules that drop conntrack INVALID after the queue (either may be unreadable).
    static func invalidDrops(nftRuleset: String?, iptablesSave: String?) -> [String] {
        invalidDrops(nftRuleset: nftRuleset ?? "") + invalidDrops(iptablesSave: iptablesSave ?? "")
    }

    /// Rules after conntrack on the way in (any table but raw, PREROUTING or FORWARD) that drop or
    /// reject ctstate INVALID, as iptables-save prints them.
    public static func invalidDrops(iptablesSave rules: String) -> [String] {
        var table = "", found: [String] = []
        for line in rules.split(separator: "\n") {
            if line.hasPrefix("*") { table = String(line.dropFirst()) }
            guard table != "raw", line.hasPrefix("-A PREROUTING ") || line.hasPrefix("-A FORWARD "),
                line.contains("INVALID"), line.contains("-j DROP") || line.contains("-j REJECT")
            else { continue }
            found.append("iptables -t \(table) \(line)")
        }
        return found
    }

    /// The same in `nft list ruleset` output: a rule with `invalid` and a drop or reject in a chain
    /// on the prerouting hook after conntrack (priority above -200; `raw` is -300) or on forward.
    public static func invalidDrops(nftRuleset rules: String) -> [String] {
        var afterConntrack = false, found: [String] = []
        for raw in rules.split(separator: "\n") {
            let line = raw.trimmingPrefix(while: \.isWhitespace)
            if line.hasPrefix("chain ") {
                afterConntrack = false
            } else if line.hasPrefix("type ") {
                let words = line.split(whereSeparator: { $0 == " " || $0 == ";" })
                let priority = words.firstIndex(of: "priority").flatMap { $0 + 1 < words.count ? words[$0 + 1] : nil }
                let before = priority.map { $0 == "raw" || (Int($0).map { $0 <= -200 } ?? false) } ?? false
                afterConntrack = line.contains("hook forward") || (line.contains("hook prerouting") && !before)
            } else if afterConntrack, line.contains("invalid"), line.contains("drop") || line.contains("reject") {
                found.append("nft: \(line)")
            }
        }
        return found
    }

    /// Whether no nft chain on the forward hook can stop a packet: every such chain has policy
    /// accept and holds no rule.
    public static func forwardHookAccepts(nftRuleset rules: String) -> Bool {
        var inChain = false, onForwardHook = false, filters = false
        for raw in rules.split(separator: "\n") {
            let line = raw.trimmingPrefix(while: \.isWhitespace)
            if line.hasPrefix("chain ") && line.hasSuffix("{") {
                (inChain, onForwardHook, filters) = (true, false, false)
            } else if inChain && line == "}" {
                if onForwardHook && filters { return false }
                inChain = false
            } else if inChain && line.hasPrefix("type ") {
                if line.contains("hook forward") { onForwardHook = true }
                if !line.contains("policy accept") && line.contains("policy") { filters = true }
            } else if inChain && !line.isEmpty && !line.hasPrefix("#") && !line.hasPrefix("comment ") {
                filters = true
            }
        }
        return true
    }

    /// Whether iptables' FORWARD chain (filter table) lets every packet through: policy ACCEPT and
    /// no rule.
    public static func forwardChainAccepts(iptablesSave rules: String) -> Bool {
        var table = ""
        for line in rules.split(separator: "\n") {
            if line.hasPrefix("*") { table = String(line.dropFirst()) }
            guard table == "filter" else { continue }
            if line.hasPrefix(":FORWARD ") && !line.hasPrefix(":FORWARD ACCEPT") { return false }
            if line.hasPrefix("-A FORWARD ") { return false }
        }
        return true
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
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard numbers.count == 2 else {
            return [HostCheck(level: .warn, subject: "kernel", finding: "cannot read the release \(release)")]
        }
        let version = (numbers[0], numbers[1])
        let needs: [(feature: String, helpers: String, minimum: (Int, Int))] = [
            ("the SYN-cookie responder and cookie ACK checks", "bpf_tcp_raw_*_syncookie_ipv4/6", (6, 0)),
            ("the tc fast path (--fast-path auto falls back to NFQUEUE)", "its program's helpers", (5, 19)),
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

    /// `allowedSources`: the daemon's --allow-source prefixes, when the caller knows them.
    public static func run(
        port: UInt16, queues: [UInt16], namespace: String?, forwarding: ForwardingMode = .raw,
        allowedSources: [IPv4Prefix]? = nil
    ) -> [HostCheck] {
        var checks: [HostCheck] = []
        if geteuid() != 0 {
            checks.append(
                HostCheck(
                    level: .fail, subject: "privileges", finding: "not running as root",
                    fix: "run as root, or grant CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_SYS_ADMIN (for --netns)"))
        }
        let hasQueue = access("/proc/net/netfilter/nfnetlink_queue", F_OK) == 0
        checks.append(
            hasQueue
                ? HostCheck(level: .ok, subject: "nfnetlink_queue", finding: "available")
                : HostCheck(
                    level: .fail, subject: "nfnetlink_queue",
                    finding: "not available (/proc/net/netfilter/nfnetlink_queue missing)",
                    fix: "modprobe nfnetlink_queue xt_NFQUEUE (see kmod/modules-load.d/proxyside.conf)"))

        var release = utsname()
        uname(&release)
        checks += kernelFeatures(
            release: withUnsafeBytes(of: release.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) })

        switch Result(catching: { try FouStatus.query(port: port) }) {
        case .success(.gue):
            checks.append(
                HostCheck(
                    level: .ok, subject: "fou", finding: "GUE on port \(port): --decap auto uses kernel decapsulation"))
            checks += kernelDecapsulationChecks(
                tunl0: tunnelState("tunl0"), sit0: tunnelState("sit0"),
                rpFilterAll: readSysctl("net/ipv4/conf/all/rp_filter").flatMap { Int($0) },
                rpFilterTunl0: readSysctl("net/ipv4/conf/tunl0/rp_filter").flatMap { Int($0) })
        case .success(let status):
            checks.append(
                HostCheck(
                    level: .info, subject: "fou", finding: "\(status): --decap auto uses userspace decapsulation",
                    fix: status == .unavailable ? nil : "for kernel decapsulation: ip fou add port \(port) gue"))
        case .failure(let error):
            checks.append(HostCheck(level: .warn, subject: "fou", finding: "cannot ask generic netlink: \(error)"))
        }

        let iptables = commandOutput("iptables-save -t raw").map { gueRules(iptablesSave: $0, port: port) }
        let nft = commandOutput("nft list ruleset").map { gueRules(nftRuleset: $0, port: port) }
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
        if let allowedSources {
            if allowedSources.isEmpty {
                checks.append(
                    HostCheck(
                        level: .fail, subject: "--allow-source",
                        finding: "no GLB peers given: second-chance run refuses to start",
                        fix:
                            """
                            SECOND_CHANCE_ALLOW_SOURCE in /etc/default/second-chance: the directors, their health \
                            checkers and the proxies
                            """
                    ))
            } else if allowedSources.contains(.everything) {
                checks.append(
                    HostCheck(
                        level: .warn, subject: "--allow-source",
                        finding: "0.0.0.0/0: GUE from any host is read, and any host chooses where this proxy forwards",
                        fix: "list the directors, their health checkers and the proxies instead"))
            } else {
                checks.append(
                    HostCheck(
                        level: .ok, subject: "--allow-source",
                        finding: allowedSources.map(\.description).joined(separator: ", ")))
            }
        }

        let rpAll = readSysctl("net/ipv4/conf/all/rp_filter") ?? "?"
        checks.append(
            rpAll == "1"
                ? HostCheck(
                    level: .warn, subject: "rp_filter", finding: "net.ipv4.conf.all.rp_filter = 1 (strict)",
                    fix:
                        """
                        sysctl -w net.ipv4.conf.all.rp_filter=2 (decapsulated packets carry client sources; see \
                        kmod/sysctl.d/60-proxyside.conf)
                        """
                )
                : HostCheck(level: .ok, subject: "rp_filter", finding: "net.ipv4.conf.all.rp_filter = \(rpAll)"))

        if forwarding == .kernel {
            checks += kernelForwarding(interfaces: allowedSources.map(PeerInterfaces.of))
            let rules = invalidDrops(
                nftRuleset: commandOutput("nft list ruleset"), iptablesSave: commandOutput("iptables-save"))
            for rule in rules {
                checks.append(
                    HostCheck(
                        level: .warn, subject: "conntrack",
                        finding: "\(rule): drops the SYN-cookie responder's SYN-ACKs, INVALID to conntrack",
                        fix: "exempt them (-p tcp --tcp-flags SYN,ACK SYN,ACK), use --forward raw, or --syn-cookies off"
                    ))
            }
        } else {
            let forward = readSysctl("net/ipv4/ip_forward") ?? "?"
            checks.append(
                HostCheck(
                    level: forward == "1" ? .warn : .ok, subject: "ip_forward",
                    finding: "net.ipv4.ip_forward = \(forward)",
                    fix: forward == "1"
                        ? """
                        with --forward raw second-chance sends forwarded GUE itself and needs no forwarding; with it \
                        on, a decapsulated packet for a VIP that is not on lo is routed onwards instead of answered: \
                        keep VIPs on lo, or sysctl -w net.ipv4.ip_forward=0
                        """
                        : nil))
        }

        let cookies = readSysctl("net/ipv4/tcp_syncookies") ?? "?"
        checks.append(
            cookies == "0"
                ? HostCheck(
                    level: .warn, subject: "tcp_syncookies",
                    finding: "0: an overflowing listener drops SYNs and no cookie ACK is valid",
                    fix: "sysctl -w net.ipv4.tcp_syncookies=1")
                : HostCheck(level: .ok, subject: "tcp_syncookies", finding: cookies))
        let timestamps = readSysctl("net/ipv4/tcp_timestamps") ?? "?"
        checks.append(
            HostCheck(
                level: timestamps == "1" ? .info : .ok, subject: "tcp_timestamps", finding: timestamps,
                fix: timestamps == "1"
                    ? """
                    with 1 the per-connection timestamp offset is secret: the SYN-cookie responder's handshakes carry \
                    no window scaling or SACK (the kernel's own cookies keep them); sysctl -w \
                    net.ipv4.tcp_timestamps=2 keeps them
                    """
                    : nil))

        switch Result(catching: { try SynCookieOracle() }) {
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

        do {
            let namespaceHandle = try namespace.map { try NetworkNamespace(nameOrPath: $0) }
            let diag = try SockDiag(namespace: namespaceHandle)
            let probe = FlowKey(
                source: IPv4Address(0xc612_ffff), sourcePort: 1, destination: IPv4Address(0xc612_fffe),
                destinationPort: 1)
            let answer = diag.lookup(probe)
            checks.append(
                answer == .failed
                    ? HostCheck(
                        level: .fail, subject: "sock_diag", finding: "exact lookups fail",
                        fix: "modprobe inet_diag tcp_diag")
                    : HostCheck(
                        level: .ok, subject: "sock_diag",
                        finding: "exact TCP lookups work" + (namespace.map { " in \($0)" } ?? "")))
        } catch {
            checks.append(
                HostCheck(
                    level: .fail, subject: "sock_diag", finding: "\(error)",
                    fix: "modprobe inet_diag tcp_diag; check --netns"))
        }
        return checks
    }
}
