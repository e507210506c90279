import NetTypes

/// Rendezvous (highest random weight) hashing over proxies, as glb-director builds its tables:
/// each flow ranks every proxy by hash(flow, proxy); the first active one is the primary, the rest
/// follow as second-chance hops. A draining proxy ranks after every active one, so its existing
/// flows still reach it as the next hop while new flows go elsewhere.
public struct RendezvousTable: Sendable {
    public enum State: String, Sendable { case active, draining }

    public struct Proxy: Sendable, Equatable {
        public var address: IPv4Address
        public var state: State
        public init(address: IPv4Address, state: State) {
            self.address = address
            self.state = state
        }
    }

    public var proxies: [Proxy]
    /// How many proxies each flow is sent through at most (GLB uses 2: primary and secondary).
    public var maximumHops: Int

    public init(proxies: [Proxy], maximumHops: Int = 2) {
        self.proxies = proxies
        self.maximumHops = maximumHops
    }

    /// Parses lines `ADDRESS [active|draining]`; `#` starts a comment.
    public static func parse(_ text: String, maximumHops: Int = 2) throws -> RendezvousTable {
        var proxies: [Proxy] = []
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.prefix { $0 != "#" }.split(whereSeparator: \.isWhitespace)
            if line.isEmpty { continue }
            guard let address = IPv4Address(line[0]), line.count <= 2,
                let state = line.count == 2 ? State(rawValue: String(line[1])) : .active
            else { throw TableError.badLine(number + 1, String(rawLine)) }
            proxies.append(Proxy(address: address, state: state))
        }
        guard !proxies.isEmpty else { throw TableError.empty }
        return RendezvousTable(proxies: proxies, maximumHops: maximumHops)
    }

    public enum TableError: Error, CustomStringConvertible {
        case badLine(Int, String)
        case empty
        public var description: String {
            switch self {
            case .badLine(let number, let line): "line \(number): expected 'ADDRESS [active|draining]', got '\(line)'"
            case .empty: "the table names no proxy"
            }
        }
    }

    /// The proxies a flow visits, in order: element 0 is the outer destination, the rest are the hops.
    public func route(flowHash: UInt64) -> [IPv4Address] {
        let ranked = proxies.map { proxy in
            (proxy, RendezvousTable.mix(flowHash ^ RendezvousTable.mix(UInt64(proxy.address.value))))
        }.sorted { a, b in
            if (a.0.state == .active) != (b.0.state == .active) { return a.0.state == .active }
            return a.1 > b.1
        }
        return ranked.prefix(maximumHops).map(\.0.address)
    }

    /// A stable hash of a flow's addresses and ports (FNV-1a, then mixed), the same in every process.
    public static func flowHash(_ flow: FlowKey) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for word in [
            flow.source.high, flow.source.low, flow.destination.high, flow.destination.low,
            UInt64(flow.sourcePort) << 16 | UInt64(flow.destinationPort),
        ] {
            for shift in stride(from: 0, to: 64, by: 8) {
                hash = (hash ^ (word >> UInt64(shift) & 0xff)) &* 0x100_0000_01b3
            }
        }
        return mix(hash)
    }

    /// splitmix64's finaliser.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
