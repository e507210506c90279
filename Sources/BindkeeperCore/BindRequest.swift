import Glibc
import NetTypes

/// What a client asks bindkeeper to bind, and the key under which the socket is kept: two requests
/// with the same key get the same kernel socket; a request whose key matches but whose options
/// differ gets an error, never a silently different socket.
public struct BindRequest: Hashable, Sendable {
    public enum Kind: String, Sendable, CaseIterable { case tcp, udp, unix }

    public var kind: Kind
    /// A canonical IPv4 or IPv6 literal (IPv6 may carry a %scope), or the path of a Unix socket.
    public var address: String
    public var port: UInt16
    /// listen(2) backlog (stream sockets); nil: the broker's default.
    public var backlog: Int32?
    /// IPV6_V6ONLY for IPv6 sockets; nil: the kernel's default (net.ipv6.bindv6only).
    public var ipv6Only: Bool?
    /// IP_FREEBIND: bind an address not (yet) configured here, such as a VIP.
    public var freebind: Bool?
    /// Unix sockets: the file's mode, owner and group (names or numbers).
    public var mode: UInt32?
    public var owner: String?
    public var group: String?
    /// A socket group (TCP): this many SO_REUSEPORT sockets under the address and port, made all
    /// or none and handed out together, each for one thread of the server; nil: one socket.
    public var shards: Shards?
    /// Which member of its group this socket is (0-based). The broker names its members so; a
    /// client asks for the whole group.
    public var member: UInt16?
    /// A group's generation: 0 (nil), the sockets it serves on, or 1, a second set of sockets in
    /// the same SO_REUSEPORT group for a candidate server (a canary) that the group's steering
    /// gives a share of new connections. Generations alternate: a candidate that passes becomes
    /// the one served, and the other is released.
    public var generation: UInt8?

    /// How many sockets a group has: a number, or one per online CPU (resolved by the broker).
    public enum Shards: Hashable, Sendable, CustomStringConvertible {
        case count(UInt16)
        case auto

        public var description: String {
            switch self {
            case .count(let count): "\(count)"
            case .auto: "auto"
            }
        }
    }

    /// The most members a group may have (the reuseport program's socket array holds more).
    /// A group is handed out in one reply: at most what one SCM_RIGHTS message carries.
    public static let maximumShards = UInt16(Wire.maximumBatch)

    public init(
        kind: Kind, address: String, port: UInt16, backlog: Int32? = nil, ipv6Only: Bool? = nil,
        freebind: Bool? = nil, mode: UInt32? = nil, owner: String? = nil, group: String? = nil
    ) {
        self.kind = kind
        self.address = address
        self.port = port
        self.backlog = backlog
        self.ipv6Only = ipv6Only
        self.freebind = freebind
        self.mode = mode
        self.owner = owner
        self.group = group
    }

    public var isIPv6: Bool { kind != .unix && address.contains(":") }
    public var isStream: Bool { kind != .udp }

    /// The socket's identity: family, type, address and port, and its place in a group. Options
    /// are compared separately.
    public var key: String { member.map { Self.memberKey(baseKey, $0) } ?? baseKey }

    /// The key of member `index` of the group at `baseKey`: the one spelling of a member's key.
    public static func memberKey(_ baseKey: String, _ index: UInt16) -> String { "\(baseKey)#\(index)" }

    /// A group's identity: the address's, with the generation when it is not 0. Every member of
    /// the group shares it.
    public var baseKey: String { Self.generationKey(addressKey, generation ?? 0) }

    /// The key of generation `number` of the group at `addressKey`: the one spelling of it.
    public static func generationKey(_ addressKey: String, _ number: UInt8) -> String {
        number == 0 ? addressKey : "\(addressKey)~g\(number)"
    }

    /// The address's identity, shared by every generation of a group.
    public var addressKey: String {
        switch kind {
        case .unix: "unix:\(address)"
        case .tcp, .udp: isIPv6 ? "\(kind.rawValue)://[\(address)]:\(port)" : "\(kind.rawValue)://\(address):\(port)"
        }
    }

    /// The key with every option that was given, in a fixed order: parses back to an equal request.
    public var url: String {
        var options: [String] = []
        if let backlog { options.append("backlog=\(backlog)") }
        if let ipv6Only { options.append("v6only=\(ipv6Only ? 1 : 0)") }
        if let freebind { options.append("freebind=\(freebind ? 1 : 0)") }
        if let mode { options.append("mode=0\(String(mode, radix: 8))") }
        if let owner { options.append("owner=\(owner)") }
        if let group { options.append("group=\(group)") }
        if let shards { options.append("shards=\(shards)") }
        if let member { options.append("member=\(member)") }
        if let generation { options.append("generation=\(generation)") }
        return options.isEmpty ? addressKey : addressKey + "?" + options.joined(separator: "&")
    }

    /// Why `other` (same key) cannot be served by the socket made for `self`, or nil. An option the
    /// other request leaves out takes the existing socket's value.
    public func conflict(with other: BindRequest) -> String? {
        func differs<T: Equatable>(_ name: String, _ mine: T?, _ theirs: T?, _ show: (T) -> String) -> String? {
            guard let theirs, mine != theirs else { return nil }
            return "\(key) exists with \(name)=\(mine.map(show) ?? "default"), requested \(name)=\(show(theirs))"
        }
        return differs("v6only", ipv6Only, other.ipv6Only) { $0 ? "1" : "0" }
            ?? differs("backlog", backlog, other.backlog) { "\($0)" }
            ?? differs("freebind", freebind, other.freebind) { $0 ? "1" : "0" }
            ?? differs("mode", mode, other.mode) { "0" + String($0, radix: 8) }
            ?? differs("owner", owner, other.owner) { $0 }
            ?? differs("group", group, other.group) { $0 }
            ?? differs("shards", shards, other.shards) { "\($0)" }
    }

    /// This request for generation `number` (a group's), or for the group's usual sockets (0).
    public func inGeneration(_ number: UInt8) -> BindRequest {
        var request = self
        request.generation = number == 0 ? nil : number
        return request
    }

    /// The members of the group this request asks for, `count` of them (`shards` resolved), in
    /// order; the request itself when it asks for one socket.
    public func members(count: UInt16) -> [BindRequest] {
        guard shards != nil else { return [self] }
        return (0..<count).map { index in
            var member = self
            member.shards = .count(count)
            member.member = index
            return member
        }
    }

    // MARK: Parsing

    /// `tcp://198.19.0.10:443`, `udp://[::]:53?v6only=1`, `tcp://[fe80::1%eth0]:80?backlog=512`,
    /// `unix:/run/app.sock?mode=0660&owner=haproxy`.
    public static func parse(url text: String) -> Result<BindRequest, BindError> {
        let (base, query) = split(text, at: "?")
        var request: BindRequest
        if base.hasPrefix("unix:") {
            let path = String(base.dropFirst("unix:".count))
            switch validated(kind: .unix, address: path, port: 0) {
            case .success(let valid): request = valid
            case .failure(let error): return .failure(error)
            }
        } else {
            let (scheme, rest) = split(base, at: "://")
            guard let kind = Kind(rawValue: scheme), kind != .unix, let rest else {
                return .failure(BindError("\(text): expected tcp://ADDRESS:PORT, udp://ADDRESS:PORT or unix:PATH"))
            }
            let host: Substring, portText: Substring
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else {
                    return .failure(BindError("\(text): an IPv6 address goes in brackets, then :PORT"))
                }
                host = rest[rest.index(after: rest.startIndex)..<close]
                portText = rest[rest.index(close, offsetBy: 2)...]
            } else {
                guard let colon = rest.lastIndex(of: ":") else { return .failure(BindError("\(text): no port")) }
                host = rest[..<colon]
                portText = rest[rest.index(after: colon)...]
            }
            guard let port = UInt16(portText) else { return .failure(BindError("\(text): port must be 0...65535")) }
            switch validated(kind: kind, address: String(host), port: port) {
            case .success(let valid): request = valid
            case .failure(let error): return .failure(error)
            }
        }
        for item in (query ?? "").split(separator: "&") {
            let (name, value) = split(String(item), at: "=")
            if let error = request.setOption(name, value ?? "") { return .failure(BindError("\(text): \(error)")) }
        }
        if let problem = request.groupProblem { return .failure(BindError("\(text): \(problem)")) }
        return .success(request)
    }

    /// Checks the address for its kind and puts it in canonical form (so 0:0::0 and :: are one key).
    /// Every way a request arrives (URL, JSON, framed batch, re-exec state, fd-store name) comes
    /// through here, so whatever is accepted has one spelling and round-trips through all of them.
    public static func validated(kind: Kind, address: String, port: UInt16) -> Result<BindRequest, BindError> {
        if kind == .unix {
            if let problem = unixPathProblem(address) { return .failure(BindError("unix:\(address): \(problem)")) }
            return .success(BindRequest(kind: .unix, address: address, port: 0))
        }
        guard let canonical = canonicalAddress(address) else {
            return .failure(BindError("\(address) is not an IPv4 or IPv6 address literal"))
        }
        return .success(BindRequest(kind: kind, address: canonical, port: port))
    }

    /// Bytes a Unix socket path may hold: letters, digits and `. _ - + , = @ ~ /`. Enough for any
    /// sane path, and nothing that a URL, an fd-store name, a metrics label or a log line would
    /// have to escape (`?`, `&`, `%`, quotes, blanks and control characters are all refused).
    static func isPathByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default: "._-+,=@~/".utf8.contains(byte)
        }
    }

    /// Why `path` is not an absolute, canonical Unix socket path, or nil: no empty, `.` or `..`
    /// components (so no `//` and no trailing `/`), shorter than sun_path.
    public static func unixPathProblem(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return "the path must be absolute" }
        guard path.utf8.count < 108 else { return "the path must be shorter than 108 bytes" }
        guard path.utf8.allSatisfy(isPathByte) else {
            return "the path may hold only letters, digits and . _ - + , = @ ~ /"
        }
        let components = path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst()
        guard components.allSatisfy({ !$0.isEmpty && !$0.elementsEqual(".".utf8) && !$0.elementsEqual("..".utf8) })
        else {
            return "the path must be canonical: no empty, '.' or '..' components, no trailing '/'"
        }
        return nil
    }

    /// The directory a Unix socket goes in, and its name there.
    public var unixLocation: (directory: String, name: String) {
        let slash = address.lastIndex(of: "/")!
        let directory = String(address[..<slash])
        return (directory.isEmpty ? "/" : directory, String(address[address.index(after: slash)...]))
    }

    /// The options a URL's query and a JSON bind may set.
    static let optionNames = [
        "backlog", "v6only", "freebind", "mode", "owner", "group", "shards", "member", "generation",
    ]

    /// Why option `name` does not apply to this socket, or nil.
    func optionProblem(_ name: String) -> String? {
        switch name {
        case "backlog": kind == .udp ? "backlog applies to stream sockets" : nil
        case "v6only": isIPv6 ? nil : "v6only applies to IPv6 addresses"
        case "freebind": kind == .unix ? "freebind applies to IP sockets" : nil
        case "mode", "owner", "group": kind == .unix ? nil : "\(name) applies to Unix sockets"
        case "shards", "member", "generation": kind == .tcp ? nil : "\(name) applies to TCP sockets"
        default: "unknown option \(name)"
        }
    }

    /// Sets one option from its text (a URL's query, a JSON string): read into its type, then set
    /// as a JSON number or boolean is. An error message when it does not apply or is not a value.
    mutating func setOption(_ name: String, _ text: String) -> String? {
        if let problem = optionProblem(name) { return problem }
        switch name {
        case "backlog":
            guard let number = Int64(text) else { return Self.backlogRange }
            return setBacklog(number)
        case "v6only", "freebind":
            let on = ["1", "true", "yes"].contains(text) ? true : ["0", "false", "no"].contains(text) ? false : nil
            guard let on else { return "\(name) is 0 or 1" }
            return setFlag(name, on)
        case "mode":
            guard text.utf8.count <= 5, let bits = UInt32(text, radix: 8) else { return Self.modeRange }
            return setMode(bits)
        case "shards":
            guard text != "auto" else { return setShards(.auto) }
            guard let count = UInt16(text), (1...Self.maximumShards).contains(count) else { return Self.shardsRange }
            return setShards(.count(count))
        case "member":
            guard let index = UInt16(text), index < Self.maximumShards else { return Self.memberRange }
            return setMember(index)
        case "generation":
            guard let number = UInt8(text), number <= Self.maximumGeneration else { return Self.generationRange }
            generation = number == 0 ? nil : number
            return nil
        default:
            return setAccount(name, text)
        }
    }

    static let backlogRange = "backlog must be a positive integer"
    static let modeRange = "mode is octal permission bits, at most 0777, such as 0660"
    static let shardsRange = "shards is auto or a number of sockets, 1 to \(maximumShards)"
    static let memberRange = "member is a group's socket, 0 to \(maximumShards - 1)"
    static let generationRange = "generation is 0 or \(maximumGeneration)"
    /// Two generations: the served one and a candidate.
    public static let maximumGeneration: UInt8 = 1

    /// A member names its group's size.
    var groupProblem: String? {
        if generation != nil, shards == nil { return "generation needs shards=N (a socket group)" }
        guard member != nil else { return nil }
        if case .count = shards { return nil }
        return "member needs shards=N"
    }

    mutating func setShards(_ value: Shards) -> String? {
        if let problem = optionProblem("shards") { return problem }
        if let member, case .count(let count) = value, member >= count { return "member \(member) of \(count) sockets" }
        shards = value
        return nil
    }

    /// A member names one socket of a group of a known size.
    mutating func setMember(_ index: UInt16) -> String? {
        if let problem = optionProblem("member") { return problem }
        if case .count(let count) = shards, index >= count { return "member \(index) of \(count) sockets" }
        member = index
        return nil
    }

    /// listen(2)'s backlog: 1 to 2^31 - 1 (the kernel caps it at somaxconn).
    mutating func setBacklog(_ number: Int64) -> String? {
        if let problem = optionProblem("backlog") { return problem }
        guard let value = Int32(exactly: number), value > 0 else { return Self.backlogRange }
        backlog = value
        return nil
    }

    /// `v6only` or `freebind`.
    mutating func setFlag(_ name: String, _ on: Bool) -> String? {
        if let problem = optionProblem(name) { return problem }
        if name == "v6only" { ipv6Only = on } else { freebind = on }
        return nil
    }

    /// Permission bits only: no setuid, setgid or sticky bit on a file root makes for a client.
    mutating func setMode(_ bits: UInt32) -> String? {
        if let problem = optionProblem("mode") { return problem }
        guard bits <= 0o777 else { return Self.modeRange }
        mode = bits
        return nil
    }

    /// `owner` or `group`: a name or number, 32 bytes at most, as useradd allows, so that every
    /// URL, however long its parts, fits an fd-store name.
    mutating func setAccount(_ name: String, _ value: String) -> String? {
        if let problem = optionProblem(name) { return problem }
        guard (1...32).contains(value.utf8.count),
            value.allSatisfy({ $0.isLetter || $0.isNumber || "_-.".contains($0) })
        else {
            return "\(name) must be a user or group name or number (at most 32 characters)"
        }
        if name == "owner" { owner = value } else { group = value }
        return nil
    }

    static func canonicalAddress(_ text: String) -> String? {
        let (host, scope) = split(text, at: "%")
        if let scope {
            guard host.contains(":"), !scope.isEmpty, scope.utf8.count < 16,
                scope.allSatisfy({ $0.isLetter || $0.isNumber || "_-.@".contains($0) })
            else { return nil }
        }
        // The one IP parser of the project (NetTypes), whose text is inet_ntop's.
        guard let canonical = IPAddress(host)?.description else { return nil }
        return scope.map { canonical + "%" + $0 } ?? canonical
    }

    static func split(_ text: String, at separator: String) -> (String, String?) {
        guard let range = text.range(of: separator) else { return (text, nil) }
        return (String(text[..<range.lowerBound]), String(text[range.upperBound...]))
    }
}

public struct BindError: Error, Equatable, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The kernel caps listen(2)'s backlog at net.core.somaxconn of the socket's namespace
/// (`__sys_listen`); this reports what a request gets.
public struct BacklogReport: Equatable, Sendable, Codable {
    public var requested: Int32
    public var effective: Int32
    public var explicit: Bool

    public init(requested: Int32?, default defaultBacklog: Int32, somaxconn: Int32) {
        self.requested = requested ?? defaultBacklog
        explicit = requested != nil
        effective = min(self.requested, somaxconn)
    }

    /// As replies and `list` show it: requested and effective.
    enum CodingKeys: String, CodingKey { case requested, effective }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        requested = try container.decode(Int32.self, forKey: .requested)
        effective = try container.decode(Int32.self, forKey: .effective)
        explicit = true
    }

    /// A warning when the application asked for more than it gets.
    public var warning: String? {
        guard explicit, effective < requested else { return nil }
        return "backlog \(requested) capped to \(effective) by net.core.somaxconn"
    }
}
