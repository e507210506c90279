import CMnl
import Glibc
import LinuxSys
import Logging
import NetTypes
import SecondChanceCore
import Synchronization

/// A value the watcher keeps current (this host's addresses, the ways back to the peers),
/// published for every queue thread, read once per batch (one atomic load; the lock only when
/// something changed).
public final class Board<Value: Equatable & Sendable>: Sendable {
    private let state: Mutex<(generation: UInt64, value: Value)>
    private let published = Atomic<UInt64>(0)

    public init(_ initial: Value) {
        state = Mutex((0, initial))
    }

    public var generation: UInt64 { published.load(ordering: .acquiring) }

    public func snapshot() -> (generation: UInt64, value: Value) { state.withLock { $0 } }

    /// Replaces the value; false when nothing changed. The observer, if any, is then told, on
    /// the publishing thread: the tc fast path's maps follow the queue threads' view at once.
    @discardableResult
    public func publish(_ value: Value) -> Bool {
        let generation = state.withLock { current -> UInt64? in
            guard current.value != value else { return nil }
            current = (current.generation + 1, value)
            published.store(current.generation, ordering: .releasing)
            return current.generation
        }
        guard let generation else { return false }
        observer.withLock { $0 }?(generation, value)
        return true
    }

    /// Called with every new value and its generation, after it is published.
    public func observe(_ body: @escaping @Sendable (UInt64, Value) -> Void) {
        observer.withLock { $0 = body }
    }

    private let observer = Mutex<(@Sendable (UInt64, Value) -> Void)?>(nil)
}

/// This host's current addresses.
public typealias LocalAddressBoard = Board<LocalAddresses>
/// Where the routes back to the peers leave (`ReversePaths`).
public typealias ReversePathBoard = Board<ReversePaths>

/// Keeps a `LocalAddressBoard` current from rtnetlink: it subscribes to address and route changes
/// (IPv4 and IPv6) in each namespace it watches and dumps every address and the local routing
/// table again whenever an address or a local route is reported, so a VIP added to `lo`, or a
/// range routed to it (`ip route add local 198.19.0.0/24 dev lo`), is deliverable at once and a
/// removed one no longer is. No system call is made per packet.
///
/// `@unchecked Sendable`: the netlink sockets are used by the thread that runs `run` alone; other
/// threads read `board`, which is thread-safe.
public final class LocalAddressWatcher: @unchecked Sendable {
    public let board: LocalAddressBoard
    /// The ways back to `peers` in the first namespace (where GUE arrives), kept current from its
    /// main table's routes and its rules.
    public let reversePaths: ReversePathBoard
    private let peers: [IPv4Prefix]
    private let namespaces: [NetworkNamespace?]
    private let subscriptions: [OpaquePointer]
    private let logger: Logger

    /// Watches the calling thread's namespace (nil) and the sockets' namespace if given (its
    /// addresses the host routes there are destinations, nothing more: `current`). `peers`: the
    /// --allow-source prefixes whose ways back are kept (none: none).
    public init(namespaces: [NetworkNamespace?] = [nil], peers: [IPv4Prefix] = [], logger: Logger) throws {
        self.namespaces = namespaces
        self.peers = peers
        self.logger = logger
        var opened: [OpaquePointer] = []
        do {
            for namespace in namespaces {
                // Subscribe before the first dump, so no change falls between the two.
                let socket = try Netlink.open(
                    NETLINK_ROUTE, name: "NETLINK_ROUTE",
                    groups: UInt32(
                        RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
                            | RTMGRP_IPV4_RULE | RTMGRP_LINK),
                    namespace: namespace)
                opened.append(socket)
                let fd = mnl_socket_get_fd(socket)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            }
            board = LocalAddressBoard(try Self.current(namespaces))
            reversePaths = ReversePathBoard(
                try ReversePathReader.read(peers: peers, namespace: namespaces.first ?? nil))
        } catch {
            opened.forEach { mnl_socket_close($0) }
            throw error
        }
        subscriptions = opened
    }

    deinit { subscriptions.forEach { mnl_socket_close($0) } }

    public var addresses: LocalAddresses { board.snapshot().value }

    /// Waits for address and route changes until `stop` is signalled. A dump that fails is retried
    /// every second.
    public func run(stop: EventFD) {
        var fds = subscriptions.map { pollfd(fd: mnl_socket_get_fd($0), events: Int16(POLLIN), revents: 0) }
        fds.append(pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0))
        var stale = (addresses: false, reversePaths: false)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 16384, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let timeout: Int32 = stale.addresses || stale.reversePaths ? 1000 : -1
            guard (try? Syscall.poll(&fds, milliseconds: timeout)) != nil else {
                logger.info("local addresses: poll: \(SystemError("poll"))")
                return
            }
            if fds.last!.revents != 0 { return }
            for index in subscriptions.indices where fds[index].revents != 0 {
                let changed = readNotifications(fds[index].fd, buffer, hostNamespace: index == 0)
                stale.addresses = stale.addresses || changed.addresses
                stale.reversePaths = stale.reversePaths || changed.reversePaths
            }
            if stale.addresses { stale.addresses = !refreshAddresses() }
            if stale.reversePaths { stale.reversePaths = !refreshReversePaths() }
        }
    }

    /// Reads the notifications away and says what they concern: what changed does not matter,
    /// only that an address or a local route did, or a route or rule that decides a peer's way
    /// back (a proxy's main table may change often, and most of that is none of ours). ENOBUFS
    /// means some were lost, which fresh dumps cover.
    private func readNotifications(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, hostNamespace: Bool) -> (
        addresses: Bool, reversePaths: Bool
    ) {
        var changed = (addresses: false, reversePaths: false)
        while true {
            let count = recv(fd, buffer, 16384, Int32(MSG_DONTWAIT))
            if count > 0 {
                let local = Self.concernsLocalAddresses(buffer, count)
                // With a sockets' namespace, any route or link of the host's may change which of
                // its addresses the host routes there (the ways back to the peers are not theirs).
                let routedThere =
                    hostNamespace && namespaces.count > 1 && Self.concernsRoutesOrLinks(buffer, count)
                changed.addresses = changed.addresses || local || routedThere
                // This host's own addresses are in the ways back too.
                changed.reversePaths =
                    changed.reversePaths
                    || (hostNamespace && (local || Self.concernsReversePaths(buffer, count, peers: peers)))
            } else if count < 0 && errno == ENOBUFS {
                changed = (true, hostNamespace)
            } else if count == 0 || errno != EINTR {
                return changed
            }
        }
    }

    /// True once the current addresses are published (or were the same).
    private func refreshAddresses() -> Bool {
        do {
            let addresses = try Self.current(namespaces)
            if board.publish(addresses) {
                logger.info(
                    """
                    local addresses: \(addresses.ipv4.count) IPv4, \(addresses.ipv6.count) IPv6, local routes: \
                    \(addresses.ipv4Ranges.count) IPv4, \(addresses.ipv6Ranges.count) IPv6\(namespaceSummary(addresses))
                    """)
            }
            return true
        } catch {
            logger.info("local addresses: \(error); keeping the previous set, retrying")
            return false
        }
    }

    private func namespaceSummary(_ addresses: LocalAddresses) -> String {
        guard namespaces.count > 1 else { return "" }
        return ", routed into the sockets' namespace: \(addresses.deliverableIPv4.count) IPv4, "
            + "\(addresses.deliverableIPv6.count) IPv6"
    }

    private func refreshReversePaths() -> Bool {
        do {
            let paths = try ReversePathReader.read(peers: peers, namespace: namespaces.first ?? nil)
            if reversePaths.publish(paths) {
                logger.info("ways back to the peers: \(paths.entries.count) prefixes")
            }
            return true
        } catch {
            logger.info("ways back to the peers: \(error); keeping the previous ones, retrying")
            return false
        }
    }

    /// Of the sockets' namespace's addresses, at most this many of each family are looked up.
    static let maximumRouted = 1024

    /// The first namespace's addresses and local routes; of the others' (the sockets' namespace),
    /// the single addresses the first routes into them, as destinations only.
    static func current(_ namespaces: [NetworkNamespace?]) throws -> LocalAddresses {
        let host = namespaces.first ?? nil
        var all = try dump(namespace: host)
        for case let namespace? in namespaces.dropFirst() {
            let theirs = try dump(namespace: namespace)
            // Root there decides how many addresses it has: the host asks about a bounded number
            // (the program's map holds no more), each one route look-up per change.
            let ipv4 = theirs.ipv4.filter { !all.owns($0) && $0.value >> 24 != 127 }.sorted { $0.value < $1.value }
                .prefix(maximumRouted)
            let ipv6 = theirs.ipv6.filter { !all.owns($0) && !LocalAddresses.isLoopbackOrLinkLocal($0) }
                .sorted { ($0.high, $0.low) < ($1.high, $1.low) }.prefix(maximumRouted)
            let routed = try NamespaceRoutes.routedInto(namespace, ipv4: Set(ipv4), ipv6: Set(ipv6), from: host)
            all.deliverableIPv4.formUnion(routed.ipv4)
            all.deliverableIPv6.formUnion(routed.ipv6)
        }
        return all
    }

    /// Whether a datagram of notifications tells of an address or a local route.
    static func concernsLocalAddresses(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        anyMessage(buffer, count) { message in
            switch Int32(message.pointee.nlmsg_type) {
            case Int32(RTM_NEWADDR), Int32(RTM_DELADDR): true
            case Int32(RTM_NEWROUTE), Int32(RTM_DELROUTE): localRoute(message) != nil
            default: false
            }
        }
    }

    /// Whether a datagram of notifications tells of any route, rule or link.
    static func concernsRoutesOrLinks(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        anyMessage(buffer, count) { message in
            [RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWRULE, RTM_DELRULE, RTM_NEWLINK, RTM_DELLINK].map { Int32($0) }
                .contains(Int32(message.pointee.nlmsg_type))
        }
    }

    /// Whether a datagram of notifications tells of a routing rule, or of a main-table route that
    /// covers or lies inside a peer prefix.
    static func concernsReversePaths(_ buffer: UnsafeMutableRawPointer, _ count: Int, peers: [IPv4Prefix]) -> Bool {
        guard !peers.isEmpty else { return false }
        return anyMessage(buffer, count) { message in
            switch Int32(message.pointee.nlmsg_type) {
            // A link going down takes its IPv4 routes with it without a route notification.
            case Int32(RTM_NEWRULE), Int32(RTM_DELRULE), Int32(RTM_NEWLINK), Int32(RTM_DELLINK): true
            case Int32(RTM_NEWROUTE), Int32(RTM_DELROUTE):
                ReversePathReader.mainRoute(message).map { ReversePathReader.concerns($0.prefix, peers: peers) }
                    ?? false
            default: false
            }
        }
    }

    /// Whether any message of a datagram of notifications (`count` bytes at `buffer`) matches.
    static func anyMessage(
        _ buffer: UnsafeMutableRawPointer, _ count: Int, _ matches: (UnsafePointer<nlmsghdr>) -> Bool
    ) -> Bool {
        var remaining = Int32(count)
        var message: UnsafePointer<nlmsghdr>? = UnsafePointer(buffer.assumingMemoryBound(to: nlmsghdr.self))
        while let current = message, mnl_nlmsg_ok(current, remaining) {
            if matches(current) { return true }
            message = UnsafePointer(mnl_nlmsg_next(current, &remaining))
        }
        return false
    }

    /// Every address of a namespace (RTM_GETADDR dump), as `ip addr` lists them, and every local
    /// route of its local table (RTM_GETROUTE), as `ip route show table local type local` does.
    public static func dump(namespace: NetworkNamespace? = nil) throws -> LocalAddresses {
        let socket = try RouteDumpSocket(namespace: namespace)
        var addresses = LocalAddresses.none
        try socket.dump(
            RTM_GETADDR, sequence: 1, name: "RTM_GETADDR", ifaddrmsg.self,
            fill: {
                $0.pointee.ifa_family = UInt8(AF_UNSPEC)
            }
        ) { message in
            if message.pointee.nlmsg_type == UInt16(RTM_NEWADDR) { add(message, to: &addresses) }
        }
        for (sequence, family) in [(UInt32(2), AF_INET), (3, AF_INET6)] {
            try socket.routes(family: family, table: RT_TABLE_LOCAL.rawValue, sequence: sequence) { message in
                guard let route = localRoute(message) else { return }
                switch route {
                case .broadcast(let address): addresses.broadcast.insert(address)
                // 127.0.0.0/8 is loopback's, which no packet from outside may reach; the host's
                // own routes (one per address, ::1 and link-local among them) are its addresses.
                case .v4(let prefix) where prefix.network.value >> 24 != 127:
                    if prefix.length == 32 {
                        addresses.ipv4.insert(prefix.network)
                    } else {
                        addresses.ipv4Ranges.insert(prefix)
                    }
                case .v6(let prefix):
                    if prefix.length == 128 {
                        addresses.ipv6.insert(prefix.network)
                    } else {
                        addresses.ipv6Ranges.insert(prefix)
                    }
                default: break
                }
            }
        }
        return addresses
    }

    enum LocalRoute {
        case v4(IPv4Prefix), v6(IPv6Prefix)
        /// A broadcast route: the kernel adds one for each subnet's directed broadcast address,
        /// whether or not the address was given one (IFA_BROADCAST).
        case broadcast(IPv4Address)
    }

    /// The destination of an RTM_NEWROUTE or RTM_DELROUTE of type local or broadcast in the local
    /// table (a route's table is RTA_TABLE where present, as tables above 255 need); nil for any other.
    static func localRoute(_ message: UnsafePointer<nlmsghdr>) -> LocalRoute? {
        guard Int(mnl_nlmsg_get_payload_len(message)) >= MemoryLayout<rtmsg>.size else { return nil }
        let header = UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).loadUnaligned(as: rtmsg.self)
        let attributes = Netlink.attributes(of: message, after: MemoryLayout<rtmsg>.size)
        let table =
            attributes[UInt16(RTA_TABLE.rawValue)].flatMap { $0.count >= 4 ? $0.loadUnaligned(as: UInt32.self) : nil }
            ?? UInt32(header.rtm_table)
        guard table == RT_TABLE_LOCAL.rawValue,
            header.rtm_type == UInt8(RTN_LOCAL) || header.rtm_type == UInt8(RTN_BROADCAST)
        else { return nil }
        let destination = attributes[UInt16(RTA_DST.rawValue)]
        if header.rtm_type == UInt8(RTN_BROADCAST) {
            guard header.rtm_family == UInt8(AF_INET), header.rtm_dst_len == 32, let destination, destination.count == 4
            else { return nil }
            return .broadcast(IPv4Address(destination.be32(0)))
        }
        switch (Int32(header.rtm_family), destination?.count) {
        case (AF_INET, 4?) where header.rtm_dst_len <= 32:
            return .v4(IPv4Prefix(network: IPv4Address(destination!.be32(0)), length: header.rtm_dst_len))
        case (AF_INET6, 16?) where header.rtm_dst_len <= 128:
            return .v6(
                IPv6Prefix(
                    network: IPv6Address(high: destination!.be64(0), low: destination!.be64(8)),
                    length: header.rtm_dst_len))
        default: return nil
        }
    }

    /// One RTM_NEWADDR: IFA_LOCAL is this host's address where present (IFA_ADDRESS is then the
    /// peer of a point-to-point link), else IFA_ADDRESS.
    private static func add(_ message: UnsafePointer<nlmsghdr>, to addresses: inout LocalAddresses) {
        guard Int(mnl_nlmsg_get_payload_len(message)) >= MemoryLayout<ifaddrmsg>.size else { return }
        let family = Int32(UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).load(as: ifaddrmsg.self).ifa_family)
        let attributes = Netlink.attributes(of: message, after: MemoryLayout<ifaddrmsg>.size)
        let (local, address, broadcast) = (
            attributes[UInt16(IFA_LOCAL)], attributes[UInt16(IFA_ADDRESS)],
            attributes[UInt16(IFA_BROADCAST)]
        )
        guard let own = local ?? address else { return }
        switch family {
        case AF_INET where own.count == 4:
            addresses.ipv4.insert(IPv4Address(own.be32(0)))
            if let broadcast, broadcast.count == 4 { addresses.broadcast.insert(IPv4Address(broadcast.be32(0))) }
        case AF_INET6 where own.count == 16:
            addresses.ipv6.insert(IPv6Address(high: own.be64(0), low: own.be64(8)))
        default: break
        }
    }
}
