import Foundation

/// Who may bind what. A peer is known by SO_PEERCRED (uid and primary gid). Root may bind anything;
/// without a policy file, so may the broker's own user, and nobody else. A policy file lists what
/// other users and groups may bind:
///
///     {
///       "control": {"mode": "0660", "group": "haproxy"},
///       "allow": [
///         {"user": "haproxy", "binds": ["tcp://*:80", "tcp://*:443", "tcp://[::]:443"]},
///         {"uid": 1000, "binds": ["tcp://127.0.0.1:8000-8999"]},
///         {"group": "web", "binds": ["unix:/run/web/*"], "owners": ["haproxy"], "groups": ["haproxy"]}
///       ]
///     }
///
/// `control` sets the control socket file's mode and owning group (who may connect at all). A Unix
/// socket's `owner` and `group` may be the requester's own uid and gid; any other needs the rule's
/// `owners` / `groups` (names or numbers).
public struct Policy: Equatable, Sendable {
    public enum Subject: Equatable, Sendable {
        case uid(UInt32), gid(UInt32), anyone
    }

    public struct Rule: Equatable, Sendable {
        public var subject: Subject
        public var patterns: [BindPattern]
        /// Owners and groups a Unix socket of this rule may be given besides the requester's own.
        public var owners: Set<UInt32> = []
        public var groups: Set<UInt32> = []

        public init(subject: Subject, patterns: [BindPattern], owners: Set<UInt32> = [], groups: Set<UInt32> = []) {
            self.subject = subject
            self.patterns = patterns
            self.owners = owners
            self.groups = groups
        }
    }

    public var rules: [Rule]
    public var controlMode: UInt32?
    public var controlGroup: String?
    /// The broker's own uid, allowed everything like root.
    public var brokerUID: UInt32

    public init(rules: [Rule] = [], controlMode: UInt32? = nil, controlGroup: String? = nil, brokerUID: UInt32) {
        self.rules = rules
        self.controlMode = controlMode
        self.controlGroup = controlGroup
        self.brokerUID = brokerUID
    }

    /// nil when allowed; otherwise why not. `owner` and `group` are the request's Unix socket owner
    /// and group, resolved to numbers (nil when the request names none).
    public func denial(uid: UInt32, gid: UInt32, request: BindRequest, owner: UInt32? = nil, group: UInt32? = nil)
        -> String?
    {
        if uid == 0 || uid == brokerUID { return nil }
        var ownership: String?
        for rule in rules {
            let applies =
                switch rule.subject {
                case .uid(let allowed): allowed == uid
                case .gid(let allowed): allowed == gid
                case .anyone: true
                }
            guard applies, rule.patterns.contains(where: { $0.matches(request) }) else { continue }
            if let owner, owner != uid, !rule.owners.contains(owner) {
                ownership = "uid \(uid) may not give \(request.key) to owner \(owner)"
            } else if let group, group != gid, !rule.groups.contains(group) {
                ownership = "uid \(uid) may not give \(request.key) to group \(group)"
            } else {
                return nil
            }
        }
        return ownership ?? "uid \(uid) gid \(gid) may not bind \(request.key)"
    }

    /// Parses a policy file. Names of users and groups are resolved by `resolveUser`/`resolveGroup`
    /// (the system's databases), so a typo is an error at start-up, not a silent deny later.
    public static func parse(
        _ data: [UInt8], brokerUID: UInt32,
        resolveUser: (String) -> UInt32?, resolveGroup: (String) -> UInt32?
    ) -> Result<Policy, BindError> {
        Result { () throws(BindError) in
            guard let root = JSONValue.parse(data)?.object else { throw BindError("policy: not a JSON object") }
            if let unknown = root.keys.sorted().first(where: { $0 != "control" && $0 != "allow" }) {
                throw BindError("policy: unknown key \(unknown)")
            }
            var policy = Policy(brokerUID: brokerUID)
            if let control = root["control"] { try policy.parseControl(control, resolveGroup: resolveGroup) }
            for (index, item) in (root["allow"]?.array ?? []).enumerated() {
                policy.rules.append(
                    try Rule.parse(item, index: index, resolveUser: resolveUser, resolveGroup: resolveGroup))
            }
            return policy
        }
    }

    mutating func parseControl(_ control: JSONValue, resolveGroup: (String) -> UInt32?) throws(BindError) {
        guard let control = control.object else { throw BindError("policy: control must be an object") }
        if let mode = control["mode"] {
            guard let text = mode.string, let value = UInt32(text, radix: 8), value <= 0o777 else {
                throw BindError("policy: control.mode is an octal string such as \"0660\"")
            }
            controlMode = value
        }
        if let group = control["group"] {
            guard let name = group.string, resolveGroup(name) != nil else {
                throw BindError("policy: control.group: no such group")
            }
            controlGroup = name
        }
    }
}

extension Policy.Rule {
    static let keys = ["user", "uid", "group", "gid", "anyone", "binds", "owners", "groups"]

    /// One `allow` entry: whom it names, the patterns it grants, and the owners and groups a
    /// granted unix socket may be given.
    static func parse(
        _ item: JSONValue, index: Int, resolveUser: (String) -> UInt32?, resolveGroup: (String) -> UInt32?
    ) throws(BindError) -> Self {
        guard let rule = item.object else { throw BindError("policy: allow[\(index)] must be an object") }
        let subject = try self.subject(rule, index: index, resolveUser: resolveUser, resolveGroup: resolveGroup)
        if let unknown = rule.keys.sorted().first(where: { !keys.contains($0) }) {
            throw BindError("policy: allow[\(index)]: unknown key \(unknown)")
        }
        guard let patterns = rule["binds"]?.array?.compactMap(\.string),
            patterns.count == rule["binds"]?.array?.count,
            !patterns.isEmpty
        else {
            throw BindError("policy: allow[\(index)].binds must list patterns")
        }
        let owners = try ids(rule["owners"], "owners", index: index, resolveUser)
        let groups = try ids(rule["groups"], "groups", index: index, resolveGroup)
        var parsed: [BindPattern] = []
        for pattern in patterns {
            switch BindPattern.parse(pattern) {
            case .success(let value): parsed.append(value)
            case .failure(let error): throw BindError("policy: allow[\(index)]: \(error)")
            }
        }
        return Self(subject: subject, patterns: parsed, owners: owners, groups: groups)
    }

    /// Exactly one of user, uid, group, gid or `"anyone": true`.
    static func subject(
        _ rule: [String: JSONValue], index: Int, resolveUser: (String) -> UInt32?, resolveGroup: (String) -> UInt32?
    ) throws(BindError) -> Policy.Subject {
        switch (
            rule["user"], rule["uid"]?.integer.flatMap(UInt32.init(exactly:)), rule["group"],
            rule["gid"]?.integer.flatMap(UInt32.init(exactly:)), rule["anyone"]
        ) {
        case (.string(let name)?, nil, nil, nil, nil) where rule["uid"] == nil:
            guard let uid = resolveUser(name) else {
                throw BindError("policy: allow[\(index)]: no such user \(name)")
            }
            return .uid(uid)
        case (nil, let uid?, nil, nil, nil): return .uid(uid)
        case (nil, nil, .string(let name)?, nil, nil) where rule["gid"] == nil:
            guard let gid = resolveGroup(name) else {
                throw BindError("policy: allow[\(index)]: no such group \(name)")
            }
            return .gid(gid)
        case (nil, nil, nil, let gid?, nil): return .gid(gid)
        case (nil, nil, nil, nil, .bool(true)?) where rule["uid"] == nil && rule["gid"] == nil: return .anyone
        default:
            throw BindError("policy: allow[\(index)] names exactly one of user, uid, group, gid or \"anyone\": true")
        }
    }

    /// `owners` or `groups`: names resolved now, or numbers below 2^32 - 1.
    static func ids(_ list: JSONValue?, _ key: String, index: Int, _ resolve: (String) -> UInt32?) throws(BindError)
        -> Set<UInt32>
    {
        guard let list else { return [] }
        guard let names = list.array else {
            throw BindError("policy: allow[\(index)].\(key) must list names or numbers")
        }
        var out: Set<UInt32> = []
        for name in names {
            if let number = name.integer, number >= 0, number < Int64(UInt32.max) {
                out.insert(UInt32(number))
                continue
            }
            guard case .string(let text) = name else {
                throw BindError("policy: allow[\(index)].\(key) must list names or numbers")
            }
            guard let id = resolve(text) else {
                throw BindError("policy: allow[\(index)].\(key): no such \(key.dropLast()) \(text)")
            }
            out.insert(id)
        }
        return out
    }
}

/// A pattern over bind keys: `tcp://*:443`, `udp://198.19.0.10:*`, `tcp://[::]:8000-8999`,
/// `*://*:*` (TCP and UDP), `unix:/run/web/*` (in a path `*` matches within one component, `**`
/// across them), `*` (everything, paths included).
public struct BindPattern: Equatable, Sendable {
    public var kind: BindRequest.Kind?
    /// nil: any address (IP) or path; otherwise a canonical address or a path glob.
    public var address: String?
    public var ports: ClosedRange<UInt16>
    /// Only the pattern `*` grants Unix paths besides `unix:` patterns: a port pattern with a
    /// wildcard kind (`*://*:8443`) grants TCP and UDP, never a path.
    public var includesUnix = false

    public static func parse(_ text: String) -> Result<BindPattern, BindError> {
        if text == "*" {
            return .success(BindPattern(kind: nil, address: nil, ports: 0...UInt16.max, includesUnix: true))
        }
        if text.hasPrefix("unix:") {
            let glob = String(text.dropFirst(5))
            // The pattern must be a canonical path too, with `*` allowed: `/run/web/../etc/*` is not.
            let literal = glob.replacingOccurrences(of: "*", with: "x")
            guard glob == "*" || BindRequest.unixPathProblem(literal) == nil else {
                return .failure(
                    BindError(
                        """
                        \(text): a Unix pattern is an absolute, canonical path \
                        (\(BindRequest.unixPathProblem(literal) ?? ""))
                        """
                    ))
            }
            return .success(BindPattern(kind: .unix, address: glob == "*" ? nil : glob, ports: 0...0))
        }
        let (scheme, rest) = BindRequest.split(text, at: "://")
        guard let rest, scheme == "*" || BindRequest.Kind(rawValue: scheme).map({ $0 != .unix }) == true,
            let colon = rest.lastIndex(of: ":")
        else {
            return .failure(
                BindError(
                    "\(text): expected KIND://ADDRESS:PORTS (KIND tcp, udp or *; ADDRESS or *; PORTS n, a-b or *)"))
        }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var address: String?
        if host != "*" {
            guard let canonical = BindRequest.canonicalAddress(host) else {
                return .failure(BindError("\(text): \(host) is not an address"))
            }
            address = canonical
        }
        let portText = rest[rest.index(after: colon)...]
        let ports: ClosedRange<UInt16>
        if portText == "*" {
            ports = 0...UInt16.max
        } else if let dash = portText.firstIndex(of: "-") {
            guard let low = UInt16(portText[..<dash]), let high = UInt16(portText[portText.index(after: dash)...]),
                low <= high
            else {
                return .failure(BindError("\(text): bad port range"))
            }
            ports = low...high
        } else {
            guard let port = UInt16(portText) else { return .failure(BindError("\(text): bad port")) }
            ports = port...port
        }
        return .success(
            BindPattern(kind: scheme == "*" ? nil : BindRequest.Kind(rawValue: scheme), address: address, ports: ports))
    }

    public func matches(_ request: BindRequest) -> Bool {
        if request.kind == .unix {
            guard kind == .unix || includesUnix else { return false }
            return address.map { Self.glob($0, matches: request.address) } ?? true
        }
        if let kind, kind != request.kind { return false }
        if let address, address != request.address { return false }
        return ports.contains(request.port)
    }

    /// `*` matches any run of bytes but `/`, `**` any run at all; everything else literally.
    /// Dynamic programming over (pattern, text) positions: linear in their product, no backtracking.
    static func glob(_ pattern: String, matches text: String) -> Bool {
        let p = Array(pattern.utf8), t = Array(text.utf8)
        let star = UInt8(ascii: "*"), slash = UInt8(ascii: "/")
        // matched[j]: pattern[..<i] matches text[..<j], for the current i.
        var matched = [Bool](repeating: false, count: t.count + 1)
        matched[0] = true
        var i = 0
        while i < p.count {
            var next = [Bool](repeating: false, count: t.count + 1)
            if p[i] == star {
                let crossesComponents = i + 1 < p.count && p[i + 1] == star
                for j in 0...t.count {
                    // Zero bytes, or one more byte than a shorter match, as long as it may be eaten.
                    next[j] = matched[j] || (j > 0 && next[j - 1] && (crossesComponents || t[j - 1] != slash))
                }
                i += crossesComponents ? 2 : 1
            } else {
                for j in 1...max(1, t.count) where j <= t.count { next[j] = matched[j - 1] && t[j - 1] == p[i] }
                i += 1
            }
            matched = next
        }
        return matched[t.count]
    }
}
