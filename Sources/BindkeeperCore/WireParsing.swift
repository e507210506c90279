/// Requests read in either form.
extension Wire {
    /// Parses one message of this form.
    public func parse(_ message: [UInt8]) -> Result<Request, Failure> {
        guard let request = JSONValue.parse(message)?.object else {
            return .failure(Failure(wire: self, id: .null, error: .parse("not a JSON object")))
        }
        let id = RequestID(json: request["id"])
        func fail(_ error: RPCError) -> Result<Request, Failure> { .failure(Failure(wire: self, id: id, error: error)) }
        switch self {
        case .multibinder:
            if let version = request["jsonrpc"], version.string != "2.0" {
                return fail(.invalidRequest("jsonrpc must be \"2.0\""))
            }
        case .framed:
            guard request["v"]?.integer == Int64(Wire.version) else {
                return fail(.invalidRequest("v must be \(Wire.version)"))
            }
        }
        guard let method = request["method"]?.string else { return fail(.invalidRequest("no method")) }
        switch (self, method) {
        case (.multibinder, "bind"):
            guard let params = request["params"]?.array, params.count == 1, let first = params[0].object else {
                return fail(.invalidParams("params must be [{\"address\": ..., \"port\": ...}]"))
            }
            switch Wire.bindRequest(json: first) {
            case .success(let bind): return .success(Request(wire: self, id: id, method: .bind([bind])))
            case .failure(let error): return fail(.invalidParams(error.description))
            }
        case (.framed, "bind"), (.framed, "release"):
            guard let binds = request["binds"]?.array, !binds.isEmpty, binds.count <= Wire.maximumBatch else {
                return fail(.invalidParams("binds must list 1 to \(Wire.maximumBatch) sockets"))
            }
            var requests: [BindRequest] = []
            for (index, item) in binds.enumerated() {
                let parsed: Result<BindRequest, BindError>
                switch item {
                case .string(let url): parsed = BindRequest.parse(url: url)
                case .object(let object): parsed = Wire.bindRequest(json: object)
                default: parsed = .failure(BindError("not a URL or an object"))
                }
                switch parsed {
                case .success(let bind): requests.append(bind)
                case .failure(let error): return fail(.invalidParams("binds[\(index)]: \(error)"))
                }
            }
            return .success(
                Request(wire: self, id: id, method: method == "bind" ? .bind(requests) : .release(requests)))
        case (.framed, "steer"): return parseSteer(request, id: id)
        case (.framed, "list"): return .success(Request(wire: self, id: id, method: .list))
        case (.framed, "reexec"): return .success(Request(wire: self, id: id, method: .reexec))
        default: return fail(.methodNotFound)
        }
    }

    /// `steer`: `binds` names a group's served generation, then optionally a candidate generation
    /// that takes `percent` of new connections (1 to 100).
    func parseSteer(_ request: [String: JSONValue], id: RequestID) -> Result<Request, Failure> {
        func fail(_ detail: String) -> Result<Request, Failure> {
            .failure(Failure(wire: self, id: id, error: .invalidParams(detail)))
        }
        guard let binds = request["binds"]?.array, (1...2).contains(binds.count) else {
            return fail("binds must name a group's served generation and at most one candidate")
        }
        var groups: [BindRequest] = []
        for (index, item) in binds.enumerated() {
            guard case .string(let url) = item else { return fail("binds[\(index)]: not a URL") }
            switch BindRequest.parse(url: url) {
            case .success(let group) where group.shards != nil && group.member == nil: groups.append(group)
            case .success: return fail("binds[\(index)]: a group (shards=N) is steered, not one socket")
            case .failure(let error): return fail("binds[\(index)]: \(error)")
            }
        }
        let percent = request["percent"]?.integer ?? 0
        guard groups.count == 2 ? (1...100).contains(percent) : percent == 0 else {
            return fail("percent is 1 to 100 for a candidate, 0 or absent without one")
        }
        if groups.count == 2,
            groups[0].addressKey != groups[1].addressKey || groups[0].generation == groups[1].generation
        {
            return fail("the candidate is another generation of the same address and port")
        }
        return .success(
            Request(wire: self, id: id, method: .steer(Steering(groups: groups, candidatePercent: UInt8(percent)))))
    }

    /// A bind in JSON: multibinder's `address`, `port`, `backlog`, plus `type`, `v6only`,
    /// `freebind`, `mode` (a number, or an octal string), `owner`, `group`, and `shards` and
    /// `member` (the broker refuses both from multibinder's clients, and `member` from anyone).
    static func bindRequest(json params: [String: JSONValue]) -> Result<BindRequest, BindError> {
        let known: Set<String> = [
            "type", "address", "port", "backlog", "v6only", "freebind", "mode", "owner", "group", "shards", "member",
            "generation",
        ]
        if let unknown = params.keys.sorted().first(where: { !known.contains($0) }) {
            return .failure(BindError("unknown option \(unknown)"))
        }
        var kind = BindRequest.Kind.tcp
        if let type = params["type"] {
            guard let name = type.string, let parsed = BindRequest.Kind(rawValue: name) else {
                return .failure(BindError("type is tcp, udp or unix"))
            }
            kind = parsed
        }
        guard let address = params["address"]?.string, !address.isEmpty else {
            return .failure(BindError("address must be a non-empty string"))
        }
        var port: UInt16 = 0
        if kind != .unix {
            guard let number = params["port"]?.integer, let value = UInt16(exactly: number) else {
                return .failure(BindError("port must be 0...65535"))
            }
            port = value
        }
        var request: BindRequest
        switch BindRequest.validated(kind: kind, address: address, port: port) {
        case .success(let valid): request = valid
        case .failure(let error): return .failure(error)
        }
        for name in BindRequest.optionNames {
            guard let value = params[name], value != .null else { continue }
            if let error = setOption(name, value, on: &request) { return .failure(BindError(error)) }
        }
        if let problem = request.groupProblem { return .failure(BindError(problem)) }
        return .success(request)
    }

    /// One option from its JSON value: a number or a boolean set as it is typed, a string read
    /// as a URL's text is.
    static func setOption(_ name: String, _ value: JSONValue, on request: inout BindRequest) -> String? {
        switch value {
        case .bool(let on) where name == "v6only" || name == "freebind":
            return request.setFlag(name, on)
        case .integer, .number:
            guard let number = value.integer else {
                return name == "mode" ? "mode must be a permission number" : "\(name) must be an integer"
            }
            switch name {
            case "backlog": return request.setBacklog(number)
            case "mode":
                guard let bits = UInt32(exactly: number) else { return "mode must be a permission number" }
                return request.setMode(bits)
            case "shards", "member", "generation": return request.setOption(name, String(number))
            case "v6only", "freebind":
                if let problem = request.optionProblem(name) { return problem }
                guard number == 0 || number == 1 else { return "\(name) is 0 or 1" }
                return request.setFlag(name, number == 1)
            default: return request.setAccount(name, String(number))
            }
        case .string(let text): return request.setOption(name, text)
        default: return "\(name) has the wrong type"
        }
    }

    static func jsonParams(_ request: BindRequest) -> [String: JSONValue] {
        var params: [String: JSONValue] = ["type": .string(request.kind.rawValue), "address": .string(request.address)]
        if request.kind != .unix { params["port"] = .integer(Int64(request.port)) }
        if let backlog = request.backlog { params["backlog"] = .integer(Int64(backlog)) }
        if let ipv6Only = request.ipv6Only { params["v6only"] = .bool(ipv6Only) }
        if let freebind = request.freebind { params["freebind"] = .bool(freebind) }
        if let mode = request.mode { params["mode"] = .string("0" + String(mode, radix: 8)) }
        if let owner = request.owner { params["owner"] = .string(owner) }
        if let group = request.group { params["group"] = .string(group) }
        if let shards = request.shards { params["shards"] = .string("\(shards)") }
        if let member = request.member { params["member"] = .integer(Int64(member)) }
        if let generation = request.generation { params["generation"] = .integer(Int64(generation)) }
        return params
    }
}
