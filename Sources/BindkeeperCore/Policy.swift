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
///         {"group": "web", "binds": ["unix:/run/web/*"]}
///       ]
///     }
///
/// `control` sets the control socket file's mode and owning group (who may connect at all).
public struct Policy: Equatable, Sendable {
    public enum Subject: Equatable, Sendable {
        case uid(UInt32), gid(UInt32), anyone
    }

    public struct Rule: Equatable, Sendable {
        public var subject: Subject
        public var patterns: [BindPattern]
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

    /// nil when allowed; otherwise why not.
    public func denial(uid: UInt32, gid: UInt32, request: BindRequest) -> String? {
        if uid == 0 || uid == brokerUID { return nil }
        for rule in rules {
            let applies = switch rule.subject {
            case .uid(let allowed): allowed == uid
            case .gid(let allowed): allowed == gid
            case .anyone: true
            }
            if applies, rule.patterns.contains(where: { $0.matches(request) }) { return nil }
        }
        return "uid \(uid) gid \(gid) may not bind \(request.key)"
    }

    /// Parses a policy file. Names of users and groups are resolved by `resolveUser`/`resolveGroup`
    /// (the system's databases), so a typo is an error at start-up, not a silent deny later.
    public static func parse(_ data: [UInt8], brokerUID: UInt32,
                             resolveUser: (String) -> UInt32?, resolveGroup: (String) -> UInt32?) -> Result<Policy, BindError> {
        guard let object = try? JSONSerialization.jsonObject(with: Data(data)), let root = object as? [String: Any] else {
            return .failure(BindError("policy: not a JSON object"))
        }
        if let unknown = root.keys.sorted().first(where: { $0 != "control" && $0 != "allow" }) {
            return .failure(BindError("policy: unknown key \(unknown)"))
        }
        var policy = Policy(brokerUID: brokerUID)
        if let control = root["control"] {
            guard let control = control as? [String: Any] else { return .failure(BindError("policy: control must be an object")) }
            if let mode = control["mode"] {
                guard let text = mode as? String, let value = UInt32(text, radix: 8), value <= 0o777 else {
                    return .failure(BindError("policy: control.mode is an octal string such as \"0660\""))
                }
                policy.controlMode = value
            }
            if let group = control["group"] {
                guard let name = group as? String, resolveGroup(name) != nil else { return .failure(BindError("policy: control.group: no such group")) }
                policy.controlGroup = name
            }
        }
        for (index, item) in ((root["allow"] as? [Any]) ?? []).enumerated() {
            guard let rule = item as? [String: Any] else { return .failure(BindError("policy: allow[\(index)] must be an object")) }
            let subject: Subject
            switch (rule["user"], rule["uid"], rule["group"], rule["gid"], rule["anyone"]) {
            case (let name as String, nil, nil, nil, nil):
                guard let uid = resolveUser(name) else { return .failure(BindError("policy: allow[\(index)]: no such user \(name)")) }
                subject = .uid(uid)
            case (nil, let uid as Int, nil, nil, nil) where uid >= 0: subject = .uid(UInt32(uid))
            case (nil, nil, let name as String, nil, nil):
                guard let gid = resolveGroup(name) else { return .failure(BindError("policy: allow[\(index)]: no such group \(name)")) }
                subject = .gid(gid)
            case (nil, nil, nil, let gid as Int, nil) where gid >= 0: subject = .gid(UInt32(gid))
            case (nil, nil, nil, nil, true as Bool): subject = .anyone
            default:
                return .failure(BindError("policy: allow[\(index)] names exactly one of user, uid, group, gid or \"anyone\": true"))
            }
            guard let patterns = rule["binds"] as? [String], !patterns.isEmpty else {
                return .failure(BindError("policy: allow[\(index)].binds must list patterns"))
            }
            var parsed: [BindPattern] = []
            for pattern in patterns {
                switch BindPattern.parse(pattern) {
                case .success(let value): parsed.append(value)
                case .failure(let error): return .failure(BindError("policy: allow[\(index)]: \(error)"))
                }
            }
            policy.rules.append(Rule(subject: subject, patterns: parsed))
        }
        return .success(policy)
    }
}

/// A pattern over bind keys: `tcp://*:443`, `udp://198.19.0.10:*`, `tcp://[::]:8000-8999`,
/// `*://*:*`, `unix:/run/web/*` (`*` in a path matches any run of characters, `/` included).
public struct BindPattern: Equatable, Sendable {
    public var kind: BindRequest.Kind?
    /// nil: any address (IP) or path; otherwise a canonical address or a path glob.
    public var address: String?
    public var ports: ClosedRange<UInt16>

    public static func parse(_ text: String) -> Result<BindPattern, BindError> {
        if text == "*" { return .success(BindPattern(kind: nil, address: nil, ports: 0...UInt16.max)) }
        if text.hasPrefix("unix:") {
            let glob = String(text.dropFirst(5))
            guard glob.hasPrefix("/") || glob == "*" else { return .failure(BindError("\(text): a Unix pattern is an absolute path")) }
            return .success(BindPattern(kind: .unix, address: glob == "*" ? nil : glob, ports: 0...0))
        }
        let (scheme, rest) = BindRequest.split(text, at: "://")
        guard let rest, scheme == "*" || BindRequest.Kind(rawValue: scheme).map({ $0 != .unix }) == true,
              let colon = rest.lastIndex(of: ":") else {
            return .failure(BindError("\(text): expected KIND://ADDRESS:PORTS (KIND tcp, udp or *; ADDRESS or *; PORTS n, a-b or *)"))
        }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var address: String?
        if host != "*" {
            guard let canonical = BindRequest.canonicalAddress(host) else { return .failure(BindError("\(text): \(host) is not an address")) }
            address = canonical
        }
        let portText = rest[rest.index(after: colon)...]
        let ports: ClosedRange<UInt16>
        if portText == "*" {
            ports = 0...UInt16.max
        } else if let dash = portText.firstIndex(of: "-") {
            guard let low = UInt16(portText[..<dash]), let high = UInt16(portText[portText.index(after: dash)...]), low <= high else {
                return .failure(BindError("\(text): bad port range"))
            }
            ports = low...high
        } else {
            guard let port = UInt16(portText) else { return .failure(BindError("\(text): bad port")) }
            ports = port...port
        }
        return .success(BindPattern(kind: scheme == "*" ? nil : BindRequest.Kind(rawValue: scheme), address: address, ports: ports))
    }

    public func matches(_ request: BindRequest) -> Bool {
        if let kind, kind != request.kind { return false }
        if kind == nil && address == nil { return request.kind == .unix || ports.contains(request.port) }
        if request.kind == .unix {
            return kind == .unix && (address.map { Self.glob($0, matches: request.address) } ?? true)
        }
        if let address, address != request.address { return false }
        return ports.contains(request.port)
    }

    /// `*` matches any run of characters; everything else literally.
    static func glob(_ pattern: String, matches text: String) -> Bool {
        let parts = pattern.split(separator: "*", omittingEmptySubsequences: false).map(String.init)
        guard parts.count > 1 else { return pattern == text }
        guard text.hasPrefix(parts[0]), text.dropFirst(parts[0].count).hasSuffix(parts.last!) else { return false }
        var rest = Substring(text.dropFirst(parts[0].count).dropLast(parts.last!.count))
        if parts[0].count + parts.last!.count > text.count { return false }
        for middle in parts.dropFirst().dropLast() where !middle.isEmpty {
            guard let range = rest.range(of: middle) else { return false }
            rest = rest[range.upperBound...]
        }
        return true
    }
}
