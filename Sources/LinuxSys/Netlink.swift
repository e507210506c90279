import CMnl
import Glibc

/// libmnl sockets: opened in a network namespace, bound, closed again if binding fails.
public enum Netlink {
    /// A bound socket of netlink `family` (NETLINK_ROUTE, NETLINK_SOCK_DIAG, ...) in `namespace`
    /// (the calling thread's when nil), subscribed to multicast `groups`. `name` names it in errors.
    /// Close-on-exec: one opened on another thread while the daemon re-executes or starts a
    /// check must not leak into the new image (what a re-exec carries it marks itself).
    public static func open(_ family: Int32, name: String, groups: UInt32 = 0, namespace: NetworkNamespace? = nil)
        throws -> OpaquePointer
    {
        // SOCK_CLOEXEC by value: named in a file that imports CMnl, the socket type constants
        // become CMnl's in a whole-module build, and the module's other files lose them.
        let closeOnExec: Int32 = 0o2000000
        guard let socket: OpaquePointer = try namespace.run({ mnl_socket_open2(family, closeOnExec) }) else {
            throw SystemError("socket(\(name))")
        }
        guard mnl_socket_bind(socket, groups, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let error = SystemError("bind(\(name))")
            mnl_socket_close(socket)
            throw error
        }
        return socket
    }

    /// Reads a dump's replies into `buffer` until NLMSG_DONE (a request's until its
    /// acknowledgement), handing every other message of `sequence` to `each`; an NLMSG_ERROR reply
    /// other than the acknowledgement throws with its errno.
    public static func receiveDump(
        _ socket: OpaquePointer, buffer: UnsafeMutableRawPointer, size: Int, sequence: UInt32, name: String,
        _ each: (UnsafePointer<nlmsghdr>) -> Void
    ) throws {
        while true {
            let received = retryingOnInterrupt { mnl_socket_recvfrom(socket, buffer, size) }
            guard received > 0 else { throw SystemError(name) }
            var remaining = Int32(received)
            var message: UnsafePointer<nlmsghdr>? = UnsafePointer(buffer.assumingMemoryBound(to: nlmsghdr.self))
            while let current = message, mnl_nlmsg_ok(current, remaining) {
                defer { message = UnsafePointer(mnl_nlmsg_next(current, &remaining)) }
                guard current.pointee.nlmsg_seq == sequence else { continue }
                switch Int32(current.pointee.nlmsg_type) {
                case NLMSG_DONE: return
                case NLMSG_ERROR:
                    // Error 0 is the acknowledgement that ends a request made with NLM_F_ACK.
                    let code = -mnl_nlmsg_get_payload(current)!.load(as: Int32.self)
                    if code == 0 { return }
                    throw SystemError(name, errno: code)
                default: each(current)
                }
            }
        }
    }

    /// Starts a request at `buffer`: the netlink header, then a zeroed `Header` (the family's
    /// fixed header: genlmsghdr, ifaddrmsg, inet_diag_req_v2) for the caller to fill in.
    public static func putRequest<Header>(
        at buffer: UnsafeMutableRawPointer, type: UInt16, flags: Int32, sequence: UInt32, _ header: Header.Type
    ) -> (message: UnsafeMutablePointer<nlmsghdr>, header: UnsafeMutablePointer<Header>) {
        let message = mnl_nlmsg_put_header(buffer)!
        message.pointee.nlmsg_type = type
        message.pointee.nlmsg_flags = UInt16(flags)
        message.pointee.nlmsg_seq = sequence
        // mnl_nlmsg_put_extra_header zeroes what it adds.
        let extra = mnl_nlmsg_put_extra_header(message, MemoryLayout<Header>.size)!
        return (message, extra.bindMemory(to: Header.self, capacity: 1))
    }

    /// The attributes that follow a message's `headerSize`-byte family header, by type (the last
    /// one of a type wins); none when the message is shorter than its header. Each value lies
    /// inside the message.
    public static func attributes(of message: UnsafePointer<nlmsghdr>, after headerSize: Int) -> [UInt16:
        UnsafeRawBufferPointer]
    {
        let payloadLength = Int(mnl_nlmsg_get_payload_len(message))
        guard payloadLength >= headerSize else { return [:] }
        var out: [UInt16: UnsafeRawBufferPointer] = [:]
        var remaining = Int32(payloadLength - headerSize)
        var attribute = UnsafePointer<nlattr>?(
            UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).advanced(by: headerSize).assumingMemoryBound(
                to: nlattr.self))
        while let current = attribute, mnl_attr_ok(current, remaining) {
            out[mnl_attr_get_type(current)] = UnsafeRawBufferPointer(
                start: mnl_attr_get_payload(current), count: Int(mnl_attr_get_payload_len(current)))
            remaining -= Int32(current.pointee.nla_len + 3) & ~3
            attribute = UnsafePointer(mnl_attr_next(current))
        }
        return out
    }
}

/// A NETLINK_ROUTE socket for dumps (addresses, links, one routing table) and single questions
/// (one route, one link), with its buffer.
/// Strict checking is on: the kernel then dumps the table asked for alone, not a main table that
/// may hold the Internet (Linux 4.20; older kernels dump every table, which callers filter).
public final class RouteDumpSocket {
    private let socket: OpaquePointer
    private let buffer: UnsafeMutableRawPointer
    private static let size = 32768

    public init(namespace: NetworkNamespace? = nil) throws {
        socket = try Netlink.open(NETLINK_ROUTE, name: "NETLINK_ROUTE", namespace: namespace)
        var strict: Int32 = 1
        _ = setsockopt(
            mnl_socket_get_fd(socket), SOL_NETLINK, NETLINK_GET_STRICT_CHK, &strict, socklen_t(MemoryLayout<Int32>.size)
        )
        buffer = .allocate(byteCount: Self.size, alignment: 16)
    }

    deinit {
        buffer.deallocate()
        mnl_socket_close(socket)
    }

    /// Sends a dump request of `type` whose family header `fill` sets up, and hands every reply to `each`.
    public func dump<Header>(
        _ type: Int, sequence: UInt32, name: String, _ header: Header.Type,
        fill: (UnsafeMutablePointer<Header>) -> Void, _ each: (UnsafePointer<nlmsghdr>) -> Void
    ) throws {
        let (message, request) = Netlink.putRequest(
            at: buffer, type: UInt16(type), flags: NLM_F_REQUEST | NLM_F_DUMP, sequence: sequence, Header.self)
        fill(request)
        guard mnl_socket_sendto(socket, message, Int(message.pointee.nlmsg_len)) >= 0 else {
            throw SystemError("\(name) request")
        }
        try Netlink.receiveDump(socket, buffer: buffer, size: Self.size, sequence: sequence, name: "\(name) dump", each)
    }

    /// Sends one request of `type` (not a dump) whose family header and attributes `fill` sets up
    /// (the message is `buffer`'s, with room for a few attributes), and hands the answer to `each`.
    public func request<Header>(
        _ type: Int, sequence: UInt32, name: String, _ header: Header.Type,
        fill: (UnsafeMutablePointer<nlmsghdr>, UnsafeMutablePointer<Header>) -> Void,
        _ each: (UnsafePointer<nlmsghdr>) -> Void
    ) throws {
        let (message, request) = Netlink.putRequest(
            at: buffer, type: UInt16(type), flags: NLM_F_REQUEST | NLM_F_ACK, sequence: sequence, Header.self)
        fill(message, request)
        guard mnl_socket_sendto(socket, message, Int(message.pointee.nlmsg_len)) >= 0 else {
            throw SystemError("\(name) request")
        }
        try Netlink.receiveDump(socket, buffer: buffer, size: Self.size, sequence: sequence, name: name, each)
    }

    /// What `ip -d link` shows of a link that its users here need.
    public struct Link: Sendable {
        /// ARPHRD_*: 1 for Ethernet and everything that frames like it.
        public var type: UInt16
        /// IFLA_INFO_KIND: the driver ("veth", "gre", ...); nil for a physical device.
        public var kind: String?
        /// IFLA_LINK_NETNSID: the id, in this namespace, of the one the link's other end is in.
        public var peerNamespace: Int32?
    }

    /// Interface `index` (RTM_GETLINK); nil when the kernel does not answer for it.
    public func link(index: UInt32, sequence: UInt32) -> Link? {
        var link: Link?
        try? request(
            RTM_GETLINK, sequence: sequence, name: "RTM_GETLINK", ifinfomsg.self,
            fill: { _, header in header.pointee.ifi_index = Int32(bitPattern: index) }
        ) { message in
            guard message.pointee.nlmsg_type == UInt16(RTM_NEWLINK),
                Int(mnl_nlmsg_get_payload_len(message)) >= MemoryLayout<ifinfomsg>.size
            else { return }
            let header = UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).loadUnaligned(as: ifinfomsg.self)
            let attributes = Netlink.attributes(of: message, after: MemoryLayout<ifinfomsg>.size)
            link = Link(
                type: header.ifi_type, kind: attributes[UInt16(IFLA_LINKINFO)].flatMap(Self.kind),
                peerNamespace: attributes[UInt16(IFLA_LINK_NETNSID)].flatMap {
                    $0.count >= 4 ? $0.loadUnaligned(as: Int32.self) : nil
                })
        }
        return link
    }

    /// IFLA_INFO_KIND inside an IFLA_LINKINFO attribute.
    static func kind(_ info: UnsafeRawBufferPointer) -> String? {
        var offset = 0
        while offset + 4 <= info.count {
            let length = Int(info.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let type = info.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & 0x3fff
            guard length >= 4, offset + length <= info.count else { return nil }
            if type == UInt16(IFLA_INFO_KIND) {
                let bytes = info[(offset + 4)..<(offset + length)].prefix { $0 != 0 }
                return String(decoding: bytes, as: UTF8.self)
            }
            offset += (length + 3) & ~3
        }
        return nil
    }

    /// Every route of `table` in `family`, as RTM_NEWROUTE messages.
    public func routes(
        family: Int32, table: UInt32, sequence: UInt32, _ each: (UnsafePointer<nlmsghdr>) -> Void
    ) throws {
        try dump(
            RTM_GETROUTE, sequence: sequence, name: "RTM_GETROUTE", rtmsg.self,
            fill: {
                $0.pointee.rtm_family = UInt8(family)
                $0.pointee.rtm_table = UInt8(table)
            }
        ) { message in
            if message.pointee.nlmsg_type == UInt16(RTM_NEWROUTE) { each(message) }
        }
    }
}
