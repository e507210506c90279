import NetTypes
import SecondChanceCore

/// Doctor's GUE MTU check. glb-director neither fragments nor sends ICMP fragmentation-needed, so
/// a client's full-size segment that no longer fits the director's path once encapsulated is lost
/// for good: small requests work, uploads stall. What a client sends is at most the MSS this host
/// advertised: the route's (advmss), clamped by the listener's TCP_MAXSEG (HAProxy's `mss`).
enum PathMTUChecks {
    /// A family's widest route to clients, and what each listener serving the family would
    /// advertise along it.
    struct Family {
        var ipv6: Bool
        var prefix: String
        var routeMSS: UInt16
        /// nil: the listeners were not read (judged on the route alone).
        var listeners: [(key: ListenerKey, mss: UInt16)]?
    }

    /// For each interface GUE arrives on: does every listener's full-size segment fit once
    /// encapsulated with `hops` hops?
    static func run(_ host: HostSnapshot, hops: UInt8) -> [HostCheck] {
        guard let routes = host.replyRoutes else { return [] }
        guard !routes.truncated else {
            return [
                HostCheck(
                    level: .info, subject: "GUE MTU",
                    finding: "more than \(ReplyRoutes.maximumRoutes) routes in a family: the MSS is not checked")
            ]
        }
        let families = families(routes, listeners: host.listenerMSS)
        return (host.peerInterfaces ?? []).compactMap { name in
            host.linkMTUs[name].map {
                var check = check(interface: name, mtu: $0, families: families, hops: hops)
                if host.listenersTruncated {
                    check.finding += " (of the first \(HostSnapshot.maximumListeners) listeners only)"
                }
                return check
            }
        }
    }

    /// Each family's widest route (link-local routes lead to no client) with its listeners: an
    /// IPv6 wildcard listener serves IPv4 clients too.
    static func families(_ routes: ReplyRoutes, listeners: [ListenerKey: UInt16]?) -> [Family] {
        let linkLocal: UInt64 = 0xfe80_0000_0000_0000
        let widest = [
            routes.ipv4.max { $0.route.mss < $1.route.mss }.map { ($0.prefix.description, $0.route.mss, false) },
            routes.ipv6.filter { $0.prefix.network.high & 0xffc0_0000_0000_0000 != linkLocal }
                .max { $0.route.mss < $1.route.mss }.map { ($0.prefix.description, $0.route.mss, true) },
        ].compactMap { $0 }
        let wildcard = IPv6Address(high: 0, low: 0)
        return widest.map { prefix, routeMSS, ipv6 in
            let serving = listeners.map { all in
                all.filter { key, _ in ipv6 ? key.isIPv6 : !key.isIPv6 || key.address == wildcard }
                    .map { key, user in (key: key, mss: user != 0 ? min(user, routeMSS) : routeMSS) }
                    .sorted { $0.key.description < $1.key.description }
            }
            return Family(ipv6: ipv6, prefix: prefix, routeMSS: routeMSS, listeners: serving)
        }
    }

    static func check(interface name: String, mtu: UInt32, families: [Family], hops: UInt8) -> HostCheck {
        var findings: [String] = [], limits: [(largest: Int, ipv6: Bool)] = []
        var level = HostCheck.Level.warn
        for family in families {
            let largest = GUEPathMTU.largestMSS(linkMTU: mtu, hops: hops, ipv6: family.ipv6)
            guard Int(family.routeMSS) > largest else { continue }
            let lost = family.listeners.map { $0.filter { Int($0.mss) > largest } }
            // Every listener clamps below the limit: nothing it advertises is lost.
            if let lost, lost.isEmpty, family.listeners?.isEmpty == false { continue }
            var finding = "the route to \(family.prefix) advertises MSS \(family.routeMSS)"
            if let lost, !lost.isEmpty {
                level = .fail
                let named = lost.prefix(3).map { "\($0.key) (MSS \($0.mss))" }.joined(separator: ", ")
                finding += " and listeners \(named)\(lost.count > 3 ? " and \(lost.count - 3) more" : "") offer it"
            } else if family.listeners == nil {
                level = .fail
            } else {
                finding += " (no listener yet)"
            }
            let size = Int(family.routeMSS) + (family.ipv6 ? 60 : 40) + GUEPathMTU.overhead(hops: hops)
            findings.append(finding + "; a full-size segment arrives as a \(size)-byte GUE packet")
            limits.append((largest, family.ipv6))
        }
        guard !findings.isEmpty else {
            return HostCheck(
                level: .ok, subject: "GUE MTU",
                finding: "\(name) (MTU \(mtu)) carries full-size segments with \(hops) hops")
        }
        var check = HostCheck(
            level: level, subject: "GUE MTU",
            finding:
                """
                \(name) (MTU \(mtu)), \(hops) hops: \(findings.joined(separator: "; and ")); it is lost \
                (glb-director neither fragments nor sends ICMP): uploads stall
                """,
            fix: fix(mtu: mtu, limits: limits))
        // Not starting would lose every flow, not only the full-size segments.
        check.blocksStart = false
        return check
    }

    static func fix(mtu: UInt32, limits: [(largest: Int, ipv6: Bool)]) -> String {
        guard !limits.contains(where: { $0.largest < ($0.ipv6 ? 1220 : 256) }) else {
            return "raise the MTU of the director's path: \(mtu) bytes carry no segment the kernel would send"
        }
        return limits.map { largest, ipv6 in
            """
            advertise at most MSS \(largest)\(limits.count > 1 ? (ipv6 ? " for IPv6" : " for IPv4") : ""): ip \
            \(ipv6 ? "-6 " : "")route change ROUTE advmss \(largest) for the routes to clients, or HAProxy's \
            `mss \(largest)` on its binds
            """
        }.joined(separator: "; ") + "; or raise the MTU of the director's path"
    }
}
