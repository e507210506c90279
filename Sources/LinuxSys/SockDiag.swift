import CLinuxShims
import CMnl
import Glibc
import NetTypes

/// Exact TCP socket lookups through sock_diag (inet_diag over NETLINK_SOCK_DIAG).
///
/// The kernel resolves an exact request with the same lookup the receive path uses (established
/// hash, which holds request and TIME_WAIT sockets too, then listeners), so a reply in LISTEN state
/// means "no connection here".
public final class SockDiag {
    private let socket: OpaquePointer
    private let portID: UInt32
    private var sequence: UInt32 = 1
    private let buffer: UnsafeMutableRawPointer
    private let requestBuffer: UnsafeMutableRawPointer
    private static let bufferSize = 8192
    private static let tcpListen = UInt8(TCP_LISTEN)

    /// Opens the netlink socket inside `namespace` (when given), so lookups see that namespace's sockets.
    public init(namespace: NetworkNamespace? = nil) throws {
        socket = try Netlink.open(NETLINK_SOCK_DIAG, name: "NETLINK_SOCK_DIAG", namespace: namespace)
        portID = mnl_socket_get_portid(socket)
        buffer = .allocate(byteCount: Self.bufferSize, alignment: 16)
        requestBuffer = .allocate(byteCount: Self.maximumBatch * 128, alignment: 16)
    }

    deinit {
        mnl_socket_close(socket)
        buffer.deallocate()
        requestBuffer.deallocate()
        for slot in batchBuffers { slot?.deallocate() }
        dumpBuffer.deallocate()
    }

    public func lookup(_ flow: FlowKey) -> SocketLookup {
        let nlh = putRequest(flow, at: buffer)
        guard mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else { return .failed }
        while true {
            let received = retryingOnInterrupt { mnl_socket_recvfrom(socket, buffer, Self.bufferSize) }
            guard received >= Int(MemoryLayout<nlmsghdr>.size) else { return .failed }
            let reply = buffer.assumingMemoryBound(to: nlmsghdr.self)
            // A reply to an earlier, abandoned request: skip it.
            if reply.pointee.nlmsg_seq != sequence { continue }
            return Self.answer(reply)
        }
    }

    public static let maximumBatch = 64
    private lazy var batchBuffers: [UnsafeMutableRawPointer?] = (0..<Self.maximumBatch).map { _ in
        UnsafeMutableRawPointer.allocate(byteCount: Self.replySize, alignment: 16)
    }
    private var batchLengths = [Int](repeating: 0, count: maximumBatch)
    private static let replySize = 1024

    /// Looks up several flows with one sendmsg (the kernel answers every request in the datagram)
    /// and one recvmmsg. Flows beyond `maximumBatch` are looked up in further rounds.
    public func lookup(batch flows: [FlowKey]) -> [SocketLookup] {
        var answers = [SocketLookup](repeating: .failed, count: flows.count)
        var start = 0
        while start < flows.count {
            let end = min(flows.count, start + Self.maximumBatch)
            lookupRound(flows, start..<end, &answers)
            start = end
        }
        return answers
    }

    private func lookupRound(_ flows: [FlowKey], _ range: Range<Int>, _ answers: inout [SocketLookup]) {
        let firstSequence = sequence &+ 1
        var length = 0
        for index in range {
            let nlh = putRequest(flows[index], at: requestBuffer + length)
            length += Int(nlh.pointee.nlmsg_len)
        }
        guard mnl_socket_sendto(socket, requestBuffer, length) >= 0 else { return }
        var pending = range.count
        var idleRounds = 0
        while pending > 0 {
            let received = batchBuffers.withUnsafeBufferPointer { buffers in
                batchLengths.withUnsafeMutableBufferPointer { lengths in
                    proxyside_receive_batch(
                        mnl_socket_get_fd(socket), buffers.baseAddress, Self.replySize, lengths.baseAddress,
                        UInt32(pending), 0)
                }
            }
            if received < 0 { return }
            if received == 0 {
                // The kernel answers synchronously within sendmsg; nothing queued means nothing more is coming.
                idleRounds += 1
                if idleRounds > 2 { return }
                continue
            }
            for slot in 0..<Int(received) where batchLengths[slot] >= MemoryLayout<nlmsghdr>.size {
                let reply = batchBuffers[slot]!.assumingMemoryBound(to: nlmsghdr.self)
                let offset = Int(reply.pointee.nlmsg_seq &- firstSequence)
                guard offset >= 0, offset < range.count else { continue }  // a stale reply
                answers[range.lowerBound + offset] = Self.answer(reply)
                pending -= 1
            }
        }
    }

    private static func answer(_ reply: UnsafeMutablePointer<nlmsghdr>) -> SocketLookup {
        let payload = mnl_nlmsg_get_payload(reply)!
        if reply.pointee.nlmsg_type == UInt16(NLMSG_ERROR) {
            let code = payload.load(as: Int32.self)
            return code == -ENOENT ? .none : .failed
        }
        guard reply.pointee.nlmsg_type == UInt16(SOCK_DIAG_BY_FAMILY),
            Int(mnl_nlmsg_get_payload_len(reply)) >= MemoryLayout<inet_diag_msg>.size
        else { return .failed }
        return payload.loadUnaligned(as: inet_diag_msg.self).idiag_state == tcpListen ? .listener : .connected
    }

    /// The kernel's TCP_NEW_SYN_RECV (request sockets), which no user-space header names.
    private static let tcpNewSynRecv: UInt8 = 12
    private static let tcpEstablished = UInt8(TCP_ESTABLISHED)
    /// The receive buffer's index in INET_DIAG_SKMEMINFO.
    private static let skMemInfoReceiveBuffer = Int(SK_MEMINFO_RCVBUF)

    /// Every TCP listener of the namespace (of `ports`, when given) with its queues; request
    /// sockets are counted for the listener that owns their address and port (the exact address
    /// first, then the wildcards, as a SYN finds it). The members of an SO_REUSEPORT group are one
    /// listener (`ListenerObservation.addMember`).
    ///
    /// Two dumps for each family, filtered in the kernel: LISTEN sockets, which the kernel finds in
    /// its listening hash alone, then, with `requestSockets`, NEW_SYN_RECV sockets on the
    /// listeners' ports only (an INET_DIAG_REQ_BYTECODE filter), skipped when there is no
    /// listener. Request sockets live in the established hash, which that second dump walks whole
    /// (the kernel checks every socket's state): with 100 000 established sockets it takes some
    /// 20 ms, the listeners alone a few microseconds (BENCHMARKS.md). Without `requestSockets`
    /// every `requestSockets` count is 0.
    public func dumpListeners(ports: Set<UInt16>? = nil, requestSockets: Bool = true) throws -> [ListenerObservation] {
        var listeners: [ListenerKey: ListenerObservation] = [:]
        var requests: [ListenerKey: UInt32] = [:]
        if let ports, ports.isEmpty { return [] }
        let families = [UInt8(AF_INET), UInt8(AF_INET6)]
        for family in families {
            let listening = ports.flatMap { InetDiagFilter.localPort(in: $0) }
            try dump(family: family, states: 1 << UInt32(Self.tcpListen), filter: listening) {
                message, attributes in
                let key = ListenerKey(
                    address: Self.localAddress(message), port: UInt16(bigEndian: message.id.idiag_sport))
                guard ports?.contains(key.port) ?? true else { return }
                if message.idiag_state == Self.tcpListen {
                    var receiveBuffer: UInt32 = 0
                    if let memory = attributes[UInt16(INET_DIAG_SKMEMINFO)],
                        memory.count >= 4 * (Self.skMemInfoReceiveBuffer + 1)
                    {
                        receiveBuffer = memory.loadUnaligned(
                            fromByteOffset: 4 * Self.skMemInfoReceiveBuffer, as: UInt32.self)
                    }
                    // For a listener, rqueue is the accept queue and wqueue its backlog (inet_diag_msg_common_fill).
                    var listener = ListenerObservation(
                        key: key, backlog: message.idiag_wqueue, acceptQueue: message.idiag_rqueue, requestSockets: 0,
                        receiveBuffer: receiveBuffer)
                    listener.boundDevice = message.id.idiag_if
                    // A dual-stack socket's IPv4 replies carry its IP_TOS, its IPv6 ones its traffic class.
                    for type in [INET_DIAG_TOS, INET_DIAG_TCLASS] {
                        if let value = attributes[UInt16(type)], value.count >= 1 {
                            listener.dscp = max(listener.dscp, value[0] & 0xfc)
                        }
                    }
                    if listeners[key] == nil { listeners[key] = listener } else { listeners[key]!.addMember(listener) }
                }
            }
        }
        // An IPv6 listener's request sockets for IPv4 clients are IPv6 ones (mapped addresses):
        // every family's dump asks for every listener's port.
        guard !listeners.isEmpty else { return [] }
        guard requestSockets else { return Array(listeners.values) }
        let requestFilter = InetDiagFilter.localPort(in: listeners.keys.map(\.port))
        for family in families {
            try dump(family: family, states: 1 << UInt32(Self.tcpNewSynRecv), filter: requestFilter) {
                message, _ in
                // Every reply is a request socket (the kernel reports their state as SYN_RECV).
                let key = ListenerKey(
                    address: Self.localAddress(message), port: UInt16(bigEndian: message.id.idiag_sport))
                requests[key, default: 0] += 1
            }
        }
        for (key, count) in requests {
            if let owner = key.lookupOrder.first(where: { listeners[$0] != nil }) {
                listeners[owner]!.requestSockets += count
            }
        }
        return Array(listeners.values)
    }

    /// The inode and local address and port of every established TCP socket on `ports`, both
    /// families (an IPv4 client of a dual-stack listener is an IPv6 socket with a mapped address).
    public func establishedSockets(ports: Set<UInt16>) throws -> [UInt64: ListenerKey] {
        guard !ports.isEmpty else { return [:] }
        var sockets: [UInt64: ListenerKey] = [:]
        let filter = InetDiagFilter.localPort(in: ports)
        for family in [UInt8(AF_INET), UInt8(AF_INET6)] {
            try dump(family: family, states: 1 << UInt32(Self.tcpEstablished), filter: filter) { message, _ in
                let key = ListenerKey(
                    address: Self.localAddress(message), port: UInt16(bigEndian: message.id.idiag_sport))
                guard ports.contains(key.port), message.idiag_inode != 0 else { return }
                sockets[UInt64(message.idiag_inode)] = key
            }
        }
        return sockets
    }

    private static func localAddress(_ message: inet_diag_msg) -> IPAddress {
        withUnsafeBytes(of: message.id.idiag_src) { bytes in
            message.idiag_family == UInt8(AF_INET6)
                ? .v6(IPv6Address(high: bytes.be64(0), low: bytes.be64(8))) : .v4(IPv4Address(bytes.be32(0)))
        }
    }

    private let dumpBuffer = UnsafeMutableRawPointer.allocate(byteCount: SockDiag.dumpBufferSize, alignment: 16)
    private static let dumpBufferSize = 65536

    /// Runs one sock_diag dump of TCP sockets in `states` (a mask of 1 << state), kept by the
    /// bytecode `filter` when given (`InetDiagFilter`); `each` gets every inet_diag_msg and its
    /// attributes by type. Public for the cost benchmark (`glb-lab sockdiag-cost`).
    public func dump(
        family: UInt8, states: UInt32, filter: [UInt8]? = nil,
        _ each: (inet_diag_msg, [UInt16: UnsafeRawBufferPointer]) -> Void
    ) throws {
        sequence &+= 1
        let (nlh, request) = Netlink.putRequest(
            at: buffer, type: UInt16(SOCK_DIAG_BY_FAMILY), flags: NLM_F_REQUEST | NLM_F_DUMP, sequence: sequence,
            inet_diag_req_v2.self)
        request.pointee.sdiag_family = family
        request.pointee.sdiag_protocol = UInt8(IPPROTO_TCP)
        request.pointee.idiag_ext = UInt8(
            1 << (INET_DIAG_SKMEMINFO - 1) | 1 << (INET_DIAG_TOS - 1) | 1 << (INET_DIAG_TCLASS - 1))
        request.pointee.idiag_states = states
        request.pointee.id.idiag_cookie = (UInt32.max, UInt32.max)  // INET_DIAG_NOCOOKIE
        // A filter longer than the request buffer holds (over 661 ports) is left out: the dump is
        // then only larger, and the caller keeps what it asked for.
        if let filter, filter.count <= Self.bufferSize - 256 {
            filter.withUnsafeBytes { mnl_attr_put(nlh, UInt16(INET_DIAG_REQ_BYTECODE), $0.count, $0.baseAddress) }
        }
        guard mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else {
            throw SystemError("sock_diag dump request")
        }
        try Netlink.receiveDump(
            socket, buffer: dumpBuffer, size: Self.dumpBufferSize, sequence: sequence, name: "sock_diag dump"
        ) { message in
            guard message.pointee.nlmsg_type == UInt16(SOCK_DIAG_BY_FAMILY),
                Int(mnl_nlmsg_get_payload_len(message)) >= MemoryLayout<inet_diag_msg>.size
            else { return }
            let diag = UnsafeRawPointer(mnl_nlmsg_get_payload(message)!).loadUnaligned(as: inet_diag_msg.self)
            each(diag, Netlink.attributes(of: message, after: MemoryLayout<inet_diag_msg>.size))
        }
    }

    /// Writes one exact-lookup request at `at` and returns it.
    private func putRequest(_ flow: FlowKey, at: UnsafeMutableRawPointer) -> UnsafeMutablePointer<nlmsghdr> {
        sequence &+= 1
        let (nlh, request) = Netlink.putRequest(
            at: at, type: UInt16(SOCK_DIAG_BY_FAMILY), flags: NLM_F_REQUEST, sequence: sequence, inet_diag_req_v2.self)
        request.pointee.sdiag_family = UInt8(flow.isIPv6 ? AF_INET6 : AF_INET)
        request.pointee.sdiag_protocol = UInt8(IPPROTO_TCP)
        request.pointee.idiag_states = UInt32.max  // all states
        // The socket's view: its local end is the packet's destination (the VIP), its remote end the client.
        request.pointee.id.idiag_sport = flow.destinationPort.bigEndian
        request.pointee.id.idiag_dport = flow.sourcePort.bigEndian
        withUnsafeMutableBytes(of: &request.pointee.id.idiag_src) {
            Self.store(flow.destination, ipv6: flow.isIPv6, into: $0)
        }
        withUnsafeMutableBytes(of: &request.pointee.id.idiag_dst) {
            Self.store(flow.source, ipv6: flow.isIPv6, into: $0)
        }
        request.pointee.id.idiag_cookie = (UInt32.max, UInt32.max)  // INET_DIAG_NOCOOKIE
        return nlh
    }

    /// An address as inet_diag_sockid holds it: IPv4 in the first 4 bytes, network order.
    private static func store(_ address: IPv6Address, ipv6: Bool, into bytes: UnsafeMutableRawBufferPointer) {
        if ipv6 {
            for (index, byte) in address.bytes.enumerated() { bytes[index] = byte }
        } else {
            bytes.setBE32(0, UInt32(truncatingIfNeeded: address.low))
        }
    }
}
