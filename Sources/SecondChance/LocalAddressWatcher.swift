import CMnl
import Glibc
import LinuxSys
import Logging
import NetTypes
import SecondChanceCore
import Synchronization

/// This host's current addresses, published by `LocalAddressWatcher` and read by every queue
/// thread once per batch (one atomic load; the lock only when something changed).
public final class LocalAddressBoard: Sendable {
    private let state: Mutex<(generation: UInt64, addresses: LocalAddresses)>
    private let published = Atomic<UInt64>(0)

    public init(_ initial: LocalAddresses) {
        state = Mutex((0, initial))
    }

    public var generation: UInt64 { published.load(ordering: .acquiring) }

    public func snapshot() -> (generation: UInt64, addresses: LocalAddresses) { state.withLock { $0 } }

    /// Replaces the addresses; false when nothing changed.
    @discardableResult
    public func publish(_ addresses: LocalAddresses) -> Bool {
        state.withLock { current in
            guard current.addresses != addresses else { return false }
            current = (current.generation + 1, addresses)
            published.store(current.generation, ordering: .releasing)
            return true
        }
    }
}

/// Keeps a `LocalAddressBoard` current from rtnetlink: it subscribes to address changes (IPv4 and
/// IPv6) in each namespace it watches and dumps every address again whenever one is reported, so a
/// VIP added to `lo` is deliverable at once and a removed one no longer is. No system call is made
/// per packet.
///
/// `@unchecked Sendable`: the netlink sockets are used by the thread that runs `run` alone; other
/// threads read `board`, which is thread-safe.
public final class LocalAddressWatcher: @unchecked Sendable {
    public let board: LocalAddressBoard
    private let namespaces: [NetworkNamespace?]
    private let subscriptions: [OpaquePointer]
    private let logger: Logger

    /// Watches the calling thread's namespace (nil) and any others given; their addresses are
    /// taken together.
    public init(namespaces: [NetworkNamespace?] = [nil], logger: Logger) throws {
        self.namespaces = namespaces
        self.logger = logger
        var opened: [OpaquePointer] = []
        do {
            for namespace in namespaces {
                // Subscribe before the first dump, so no change falls between the two.
                let socket = try Netlink.open(
                    NETLINK_ROUTE, name: "NETLINK_ROUTE", groups: UInt32(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
                    namespace: namespace)
                opened.append(socket)
                let fd = mnl_socket_get_fd(socket)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            }
            board = LocalAddressBoard(try Self.current(namespaces))
        } catch {
            opened.forEach { mnl_socket_close($0) }
            throw error
        }
        subscriptions = opened
    }

    deinit { subscriptions.forEach { mnl_socket_close($0) } }

    public var addresses: LocalAddresses { board.snapshot().addresses }

    /// Waits for address changes until `stop` is signalled. A dump that fails is retried every second.
    public func run(stop: EventFD) {
        var fds = subscriptions.map { pollfd(fd: mnl_socket_get_fd($0), events: Int16(POLLIN), revents: 0) }
        fds.append(pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0))
        var stale = false
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 16384, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let ready = poll(&fds, nfds_t(fds.count), stale ? 1000 : -1)
            if ready < 0 && errno != EINTR { logger.info("local addresses: poll: \(SystemError("poll"))"); return }
            if fds.last!.revents != 0 { return }
            for index in subscriptions.indices where fds[index].revents != 0 {
                // What changed does not matter, only that something did: read the notifications
                // away (ENOBUFS means some were lost, which a fresh dump covers too).
                while recv(fds[index].fd, buffer, 16384, Int32(MSG_DONTWAIT)) > 0 || errno == ENOBUFS || errno == EINTR
                {}
                stale = true
            }
            guard stale else { continue }
            do {
                let addresses = try Self.current(namespaces)
                stale = false
                if board.publish(addresses) {
                    logger.info("local addresses: \(addresses.ipv4.count) IPv4, \(addresses.ipv6.count) IPv6")
                }
            } catch {
                logger.info("local addresses: \(error); keeping the previous set, retrying")
            }
        }
    }

    static func current(_ namespaces: [NetworkNamespace?]) throws -> LocalAddresses {
        var all = LocalAddresses.none
        for namespace in namespaces { all.formUnion(try dump(namespace: namespace)) }
        return all
    }

    /// Every address of a namespace (RTM_GETADDR dump), as `ip addr` lists them.
    public static func dump(namespace: NetworkNamespace? = nil) throws -> LocalAddresses {
        let socket = try Netlink.open(NETLINK_ROUTE, name: "NETLINK_ROUTE", namespace: namespace)
        defer { mnl_socket_close(socket) }
        let size = 32768
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        let (nlh, request) = Netlink.putRequest(
            at: buffer, type: UInt16(RTM_GETADDR), flags: NLM_F_REQUEST | NLM_F_DUMP, sequence: 1, ifaddrmsg.self)
        request.pointee.ifa_family = UInt8(AF_UNSPEC)
        guard mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else {
            throw SystemError("RTM_GETADDR request")
        }

        var addresses = LocalAddresses.none
        try Netlink.receiveDump(socket, buffer: buffer, size: size, sequence: 1, name: "RTM_GETADDR dump") { message in
            if message.pointee.nlmsg_type == UInt16(RTM_NEWADDR) { add(message, to: &addresses) }
        }
        return addresses
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
