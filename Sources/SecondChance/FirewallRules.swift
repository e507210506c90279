import NetTypes

/// The firewall's rules as `iptables-save` and `nft list ruleset` print them, read for what
/// doctor and `--forward auto` need to know: the queue rules for the GUE port and what filters
/// forwarded packets.
public enum FirewallRules {
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
        /// Queue rules after a rule that drops the whole port: never reached (rules appended by a
        /// second `iptables-restore --noflush`, say), so their peers' GUE is dropped.
        public var unreachable: [String] = []

        /// A queue rule, in force where no DROP of the whole port comes before it (`reached`).
        mutating func add(_ rule: QueueRule, reached: Bool) {
            if reached { queueRules.append(rule) } else { unreachable.append(rule.rule) }
        }
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

    /// Every line of a whole `iptables-save` with the table it is in (`*raw` to its COMMIT).
    static func lines(iptablesSave save: String) -> [(table: Substring, line: Substring)] {
        var table: Substring = ""
        return save.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            if line.hasPrefix("*") { table = line.dropFirst() }
            return (table, line)
        }
    }

    /// One table of a whole `iptables-save`.
    static func table(_ name: String, iptablesSave save: String) -> String {
        lines(iptablesSave: save).filter { $0.table == name }.map(\.line).joined(separator: "\n")
    }

    /// The NFQUEUE rules for the GUE port in `iptables-save -t raw` output.
    public static func gueRules(iptablesSave rules: String, port: UInt16) -> GUERules {
        var found = GUERules()
        var droppedAll = false
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
                found.add(
                    QueueRule(rule: String(line), bypass: line.contains("--queue-bypass"), restricted: source == .only),
                    reached: !droppedAll)
            } else if line.hasSuffix("-j DROP") && source != .only {
                droppedAll = droppedAll || line == "-A PREROUTING -p udp -m udp --dport \(port) -j DROP"
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
        var droppedAll = false
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
                found.add(
                    QueueRule(rule: String(line), bypass: line.contains("bypass"), restricted: source == .only),
                    reached: !droppedAll)
            } else if words.last == "drop" && source != .only {
                droppedAll = droppedAll || line == "udp dport \(port) drop"
                found.dropsTheRest = !found.queueRules.isEmpty
            }
        }
        return found
    }

    /// The marks of raw PREROUTING rules that drop an ICMP echo request arriving on tunl0 without
    /// them (`-i tunl0 ... --icmp-type 8 -m mark ! --mark V/M -j DROP`, as iptables-save prints
    /// it): a health probe fou decapsulated that no daemon decided.
    public static func probeDropMarks(iptablesSave rules: String) -> [PacketMark] {
        rules.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ")
            guard line.hasPrefix("-A PREROUTING "), line.hasSuffix("-j DROP"), line.contains("-i tunl0 "),
                line.contains("--icmp-type 8 "), let at = words.firstIndex(of: "--mark"), at > 0,
                words[at - 1] == "!", at + 1 < words.count
            else { return nil }
            return PacketMark(words[at + 1])
        }
    }

    /// The same rule as nft prints it: `iifname "tunl0" icmp type echo-request meta mark & M != V drop`.
    public static func probeDropMarks(nftRuleset rules: String) -> [PacketMark] {
        rules.split(separator: "\n").compactMap { raw in
            let words = raw.split(separator: " ")
            guard raw.contains("iifname \"tunl0\""), raw.contains("icmp type echo-request"), words.last == "drop",
                let at = words.firstIndex(of: "mark"), at + 4 < words.count, words[at + 1] == "&",
                words[at + 3] == "!=", let mask = PacketMark.number(words[at + 2]),
                let value = PacketMark.number(words[at + 4]), value != 0, value & ~mask == 0
            else { return nil }
            return PacketMark(value: value, mask: mask)
        }
    }

    /// Both tools' rules that drop conntrack INVALID after the queue (either may be unreadable).
    static func invalidDrops(nftRuleset: String?, iptablesSave: String?) -> [String] {
        invalidDrops(nftRuleset: nftRuleset ?? "") + invalidDrops(iptablesSave: iptablesSave ?? "")
    }

    /// Rules after conntrack on the way in (any table but raw, PREROUTING or FORWARD) that drop or
    /// reject ctstate INVALID, as iptables-save prints them.
    public static func invalidDrops(iptablesSave rules: String) -> [String] {
        lines(iptablesSave: rules).filter { table, line in
            table != "raw" && (line.hasPrefix("-A PREROUTING ") || line.hasPrefix("-A FORWARD "))
                && line.contains("INVALID") && (line.contains("-j DROP") || line.contains("-j REJECT"))
        }.map { "iptables -t \($0.table) \($0.line)" }
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
        !lines(iptablesSave: rules).contains { table, line in
            table == "filter"
                && (line.hasPrefix(":FORWARD ") && !line.hasPrefix(":FORWARD ACCEPT") || line.hasPrefix("-A FORWARD "))
        }
    }
}
