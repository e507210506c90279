import CLinuxShims
import CNetfilterQueue
import Glibc
import LinuxSys
import Synchronization
import Telemetry

/// libmnl's MNL_SOCKET_BUFFER_SIZE for 4 KiB pages (the macro calls sysconf and is not imported).
let netlinkBufferSize = 8192

/// One NFQUEUE queue, read and answered over the libmnl-based libnetfilter_queue API.
///
/// Packets are read without blocking until the socket is empty (or `batchSize` is reached), and
/// their verdicts go back to the kernel as one netlink datagram: one sendto per batch, not per packet.
public final class NetfilterQueue {
    public enum Action {
        case accept
        /// Accept with the packet's mark set to this value (what goes to fou: `PacketMark`).
        case acceptMarking(UInt32)
        /// Accept with bytes `range` of the queued packet as its new payload (userspace decapsulation).
        case acceptReplacing(Range<Int>)
        case drop
    }

    public let number: UInt16
    /// Whether the socket was taken over from an earlier process rather than bound here.
    public private(set) var adopted = false
    /// Failed reads and messages that were not packets; read by the stats server.
    public let receiveErrors = Atomic<UInt64>(0)
    /// Turns of the read loop: one per batch, and at least one per receive timeout while idle, so
    /// a count that stops moving means the thread is stuck (the service watchdog's evidence).
    public let turns = Atomic<UInt64>(0)
    private let socket: OpaquePointer
    private let portID: UInt32
    /// One receive slot per packet of a batch: packets stay readable until their verdicts are sent.
    private let receiveSlots: UnsafeMutableRawPointer
    private let receiveBufferSize: Int
    private let slotPointers: [UnsafeMutableRawPointer?]
    /// nfq_nlmsg_parse's attribute table, reused for every packet.
    private let attributes: UnsafeMutablePointer<UnsafeMutablePointer<nlattr>?>
    public static let maximumBatch = 64
    private let verdictBuffer: UnsafeMutableRawPointer
    private static let verdictBufferSize = 1 << 21
    /// Requests' sequence numbers, from a random start: an adopted socket may still hold the answer
    /// to a request of the image before, which must not pass for one of this image's.
    private var sequence = UInt32.random(in: 1...UInt32.max / 2)
    /// Set on an adopted socket until the first packet read: see `init(adopting:)`.
    private var requeueUnanswered = false
    /// The sequence number of the requeue request, whose answer is awaited among the packets.
    private var requeueSequence: UInt32 = 0
    /// How many restarts in a row found packets an earlier reader died with (an eventfd's counter,
    /// kept in the service manager's fd store and across a re-exec). Set before `run`.
    public var replayGuard: ReplayGuard?
    /// Times the packets an earlier reader died with were dropped instead of requeued.
    public let crashReplaysDropped = Atomic<UInt64>(0)
    /// When the last requeue went out; once the daemon has served this long after it, the packets
    /// it requeued did it no harm and the guard's count starts again.
    private var requeuedAt: UInt64 = 0
    /// The last requeue dropped instead (counted at once, taken back if there was nothing to drop).
    private var requeueDropped = false
    static let replaySurvivedNanoseconds: UInt64 = 10_000_000_000

    public static let copyRange: UInt32 = 0xffff

    /// `failOpen`: when the queue holds `maximumQueueLength` packets the kernel accepts further ones
    /// unread instead of dropping them (NFQA_CFG_F_FAIL_OPEN).
    public convenience init(
        number: UInt16, maximumQueueLength: UInt32 = NetfilterQueue.defaultMaximumLength, failOpen: Bool = false
    ) throws {
        let socket = try Netlink.open(NETLINK_NETFILTER, name: "NETLINK_NETFILTER")
        self.init(number: number, socket: socket, socketBufferBytes: Self.socketBufferBytes(for: maximumQueueLength))
        try configure { nlh in nfq_nlmsg_cfg_put_cmd(nlh, UInt16(AF_INET), UInt8(NFQNL_CFG_CMD_BIND.rawValue)) }
        try configure { nlh in Self.putParameters(nlh, maximumQueueLength: maximumQueueLength, failOpen: failOpen) }
    }

    /// Takes over a netlink socket already bound to queue `number` by an earlier process (handed
    /// over by a re-exec or by the service manager's fd store): packets that arrived meanwhile are
    /// waiting in it. The parameters are sent again without waiting for an answer, since queued
    /// packets come before it (an error shows as a receive error). Packets the earlier process
    /// read but never answered are requeued (NF_REPEAT) once the first packet shows where its
    /// reading stopped.
    public convenience init(
        adopting descriptor: consuming OwnedDescriptor, number: UInt16,
        maximumQueueLength: UInt32 = NetfilterQueue.defaultMaximumLength, failOpen: Bool = false
    ) throws {
        let fd = descriptor.raw
        // The name came from the environment: the fd must be what it claims before anything is sent to it.
        var domain: Int32 = 0, proto: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0,
            getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &length) == 0,
            domain == AF_NETLINK, proto == NETLINK_NETFILTER
        else { throw SystemError("adopt NFQUEUE \(number): fd \(fd) is not a netfilter netlink socket", errno: EINVAL) }
        guard let socket = mnl_socket_fdopen(fd) else { throw SystemError("adopt NFQUEUE \(number) socket (fd \(fd))") }
        _ = descriptor.take()  // closed with the mnl socket from here on
        let boundPort = ProcFile.kernelQueueStatistics()[number]?.portID
        guard boundPort == mnl_socket_get_portid(socket) else {
            mnl_socket_close(socket)
            throw SystemError(
                "adopt NFQUEUE \(number): fd \(fd) is not the socket bound to queue \(number)", errno: EINVAL)
        }
        self.init(number: number, socket: socket, socketBufferBytes: Self.socketBufferBytes(for: maximumQueueLength))
        requeueUnanswered = true
        adopted = true
        let nlh = startMessage(Int32(NFQNL_MSG_CONFIG.rawValue), in: verdictBuffer)
        Self.putParameters(nlh, maximumQueueLength: maximumQueueLength, failOpen: failOpen)
        guard mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else {
            throw SystemError("sendto(NFQUEUE \(number) config)")
        }
    }

    /// Packets the kernel holds while no one reads: about a second at 65 000 packets/s, so that a
    /// restart through the fd store loses nothing at that rate. Each waiting packet holds its buffer.
    public static let defaultMaximumLength: UInt32 = 65536
    public static let maximumLengthLimit: UInt32 = 1 << 20

    /// Every queued packet is also a message waiting in the socket; a full socket drops the packet
    /// (user_dropped) before the queue is full, so the buffer grows with the queue: 1 KiB a packet,
    /// at least 16 MiB (memory is only used while packets wait).
    static func socketBufferBytes(for maximumQueueLength: UInt32) -> Int32 {
        Int32(clamping: max(16 << 20, Int(min(maximumQueueLength, maximumLengthLimit)) * 1024))
    }

    private init(number: UInt16, socket: OpaquePointer, socketBufferBytes: Int32) {
        self.number = number
        self.socket = socket
        receiveBufferSize = Int(Self.copyRange) + netlinkBufferSize
        receiveSlots = .allocate(byteCount: receiveBufferSize * Self.maximumBatch, alignment: 16)
        slotPointers = (0..<Self.maximumBatch).map { [receiveSlots, receiveBufferSize] in
            receiveSlots + $0 * receiveBufferSize
        }
        attributes = .allocate(capacity: Int(__NFQA_MAX.rawValue))
        verdictBuffer = .allocate(byteCount: Self.verdictBufferSize, alignment: 16)
        portID = mnl_socket_get_portid(socket)

        let fd = mnl_socket_get_fd(socket)
        Descriptors.setCloseOnExec(fd, true)
        // A full socket buffer must not turn into ENOBUFS on every read: the kernel drops (and counts) instead.
        SocketOptions.enable(fd, Int32(SOL_NETLINK), NETLINK_NO_ENOBUFS)
        if !SocketOptions.set(fd, SOL_SOCKET, SO_RCVBUFFORCE, socketBufferBytes) {
            SocketOptions.set(fd, SOL_SOCKET, SO_RCVBUF, socketBufferBytes)
        }
    }

    private static func putParameters(_ nlh: UnsafeMutablePointer<nlmsghdr>, maximumQueueLength: UInt32, failOpen: Bool)
    {
        nfq_nlmsg_cfg_put_params(nlh, UInt8(NFQNL_COPY_PACKET.rawValue), Int32(Self.copyRange))
        nfq_nlmsg_cfg_put_qmaxlen(nlh, maximumQueueLength)
        let failOpenFlag = UInt32(NFQA_CFG_F_FAIL_OPEN)
        mnl_attr_put_u32(nlh, UInt16(NFQA_CFG_FLAGS.rawValue), (failOpen ? failOpenFlag : 0).bigEndian)
        mnl_attr_put_u32(nlh, UInt16(NFQA_CFG_MASK.rawValue), failOpenFlag.bigEndian)
    }

    /// A message to this queue at `buffer`, with the next sequence number.
    private func startMessage(_ type: Int32, in buffer: UnsafeMutableRawPointer) -> UnsafeMutablePointer<nlmsghdr> {
        let nlh = nfq_nlmsg_put(buffer.assumingMemoryBound(to: CChar.self), type, UInt32(number))!
        sequence &+= 1
        nlh.pointee.nlmsg_seq = sequence
        return nlh
    }

    deinit {
        mnl_socket_close(socket)
        receiveSlots.deallocate()
        attributes.deallocate()
        verdictBuffer.deallocate()
    }

    public var fileDescriptor: Int32 { mnl_socket_get_fd(socket) }

    /// Sends one config message and waits for its acknowledgement, turning errors into advice.
    private func configure(_ fill: (UnsafeMutablePointer<nlmsghdr>) -> Void) throws {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: netlinkBufferSize, alignment: 16)
        defer { buffer.deallocate() }
        let nlh = startMessage(Int32(NFQNL_MSG_CONFIG.rawValue), in: buffer)
        nlh.pointee.nlmsg_flags |= UInt16(NLM_F_ACK)
        fill(nlh)
        guard mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else {
            throw SystemError("sendto(NFQUEUE config)")
        }
        let received = mnl_socket_recvfrom(socket, buffer, netlinkBufferSize)
        guard received >= 0 else { throw SystemError("recv(NFQUEUE config)") }
        if mnl_cb_run(buffer, received, sequence, portID, nil, nil) < 0 {
            let code = errno
            switch code {
            // The kernel answers EPERM both without CAP_NET_ADMIN and when another socket owns the queue.
            case EPERM where geteuid() != 0:
                throw SystemError("bind NFQUEUE \(number)", errno: code, hint: "needs CAP_NET_ADMIN: run as root")
            case EPERM, EBUSY:
                throw SystemError(
                    "bind NFQUEUE \(number)", errno: code, hint: "queue \(number) is already bound by another process")
            default: throw SystemError("configure NFQUEUE \(number)", errno: code)
            }
        }
    }

    /// A packet read from the queue; its payload may be edited in place until its verdict is sent.
    public struct QueuedPacket {
        public var id: UInt32
        public var payload: UnsafeMutableRawBufferPointer
        /// The interface it arrived on (NFQA_IFINDEX_INDEV), when the kernel says.
        public var arrival: UInt32? = nil
        /// Its mark (NFQA_MARK; the kernel leaves out a zero one).
        public var mark: UInt32 = 0
    }

    /// How long a stop may go on answering what is queued: under a sustained flood the queue never
    /// empties, and a stop must still end.
    public static let drainAfterStopNanoseconds: UInt64 = 250_000_000
    /// How long a read waits for a packet before the loop looks at `stop` again.
    static let receiveTimeoutMilliseconds = 100
    /// How often a queue that never runs dry still looks at `stop`.
    static let stopCheckNanoseconds: UInt64 = 10_000_000

    /// Reads and answers packets until `stop` is signalled, then answers what is still queued for
    /// at most `drainAfterStopNanoseconds` and returns: no packet read is left without a verdict.
    /// What the kernel still holds then is dropped as the queue goes away; later packets take the
    /// rule's --queue-bypass.
    ///
    /// Packets are read without blocking until the socket is empty or `batchSize` is reached; the
    /// whole batch goes to `handleBatch`, which appends one action per packet, and the verdicts go
    /// back as one netlink datagram.
    /// `afterVerdicts` runs once a batch's verdicts have been sent (the kernel has acted on them).
    ///
    /// When `drainOnStop` answers false (a re-exec: the socket, and what the kernel holds, go to
    /// the next image), the loop returns as soon as the batch in hand is answered.
    public func run(
        stop: EventFD, batchSize: Int = 64, drainOnStop: () -> Bool = { true }, idle: () -> Void = {},
        afterVerdicts: () -> Void = {},
        handleBatch: (UnsafeBufferPointer<QueuedPacket>, inout [Action]) -> Void
    ) throws {
        let fd = fileDescriptor
        let batchSize = max(1, min(batchSize, Self.maximumBatch))
        // Reads wait for packets in recvmmsg itself, not in a poll before it (a system call per
        // batch saved); the timeout makes an idle queue look at `stop` and run `idle`.
        SocketOptions.setTimeout(fd, SO_RCVTIMEO, milliseconds: Self.receiveTimeoutMilliseconds)
        var stopEvent = pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0)
        var lastStopCheck: UInt64 = 0
        var lastReadFoundNothing = true
        var stopping = false
        var stopDeadline: UInt64 = 0
        // Per-batch state lives in locals: a class's stored arrays would pay a dynamic exclusivity
        // check on every packet.
        var batch: [QueuedPacket] = []
        batch.reserveCapacity(Self.maximumBatch)
        var actions: [Action] = []
        actions.reserveCapacity(Self.maximumBatch)
        var slotLengths = [Int](repeating: 0, count: Self.maximumBatch)
        var verdicts = VerdictWriter(buffer: verdictBuffer, capacity: Self.verdictBufferSize, queue: number)
        while true {
            turns.add(1, ordering: .relaxed)
            // `stop` is looked at without waiting: after a read that found nothing (so at least once
            // per receive timeout while idle) and every `stopCheckNanoseconds` while packets keep coming.
            if !stopping {
                let now = MonotonicClock.nanoseconds()
                if lastReadFoundNothing || now &- lastStopCheck >= Self.stopCheckNanoseconds {
                    lastStopCheck = now
                    if poll(&stopEvent, 1, 0) > 0 {
                        stopping = true
                        stopDeadline = now + (drainOnStop() ? Self.drainAfterStopNanoseconds : 0)
                    }
                }
            }
            batch.removeAll(keepingCapacity: true)
            // One recvmmsg for the whole batch, a datagram per slot: it waits for the first (not
            // while stopping) and takes what else is there.
            while true {
                let received = proxyside_receive_batch(
                    fd, slotPointers, receiveBufferSize, &slotLengths, UInt32(batchSize), stopping ? 0 : 1)
                if received >= 0 {
                    for slot in 0..<Int(received) {
                        collectPackets(slotPointers[slot]!, slotLengths[slot], into: &batch)
                    }
                    break
                }
                if -received == EINTR { continue }
                // The socket's buffer overflowed: the kernel dropped packets (counted), reading goes on.
                if -received == ENOBUFS { receiveErrors.add(1, ordering: .relaxed); continue }
                throw SystemError("recvmmsg(NFQUEUE \(number))", errno: -received)
            }
            lastReadFoundNothing = batch.isEmpty
            if requeueUnanswered, let first = batch.first {
                requeueUnanswered = false
                try requeue(through: first.id &- 1)
            }
            if !batch.isEmpty {
                actions.removeAll(keepingCapacity: true)
                batch.withUnsafeBufferPointer { handleBatch($0, &actions) }
                precondition(actions.count == batch.count, "one action per packet")
                for (packet, action) in zip(batch, actions) {
                    // A failed send ends the loop like the batch's last one: the packets stay queued in
                    // the kernel, for the restarted daemon to requeue, instead of waiting for verdicts
                    // never sent.
                    if !verdicts.append(id: packet.id, action, packet.payload) {
                        try send(&verdicts)
                        _ = verdicts.append(id: packet.id, action, packet.payload)  // fits an empty buffer
                    }
                }
            }
            try send(&verdicts)
            if requeuedAt != 0, MonotonicClock.nanoseconds() &- requeuedAt >= Self.replaySurvivedNanoseconds {
                requeuedAt = 0
                replayGuard?.survived()
            }
            if !batch.isEmpty { afterVerdicts() }
            if stopping && (batch.isEmpty || MonotonicClock.nanoseconds() >= stopDeadline) { return }
            if batch.isEmpty { idle() }
        }
    }

    /// The same, one packet at a time.
    public func run(
        stop: EventFD, batchSize: Int = 64, idle: () -> Void = {},
        handler: (UnsafeMutableRawBufferPointer) -> Action
    ) throws {
        try run(stop: stop, batchSize: batchSize, idle: idle) { packets, actions in
            for packet in packets { actions.append(handler(packet.payload)) }
        }
    }

    /// Appends the packets of one datagram (normally exactly one) to the batch.
    private func collectPackets(
        _ datagram: UnsafeMutableRawPointer, _ length: Int, into batch: inout [QueuedPacket]
    ) {
        var remaining = Int32(length)
        var message: UnsafePointer<nlmsghdr>? = UnsafePointer(datagram.assumingMemoryBound(to: nlmsghdr.self))
        let packetType = UInt16(NFNL_SUBSYS_QUEUE << 8) | UInt16(NFQNL_MSG_PACKET.rawValue)
        while let nlh = message, mnl_nlmsg_ok(nlh, remaining) {
            defer { message = UnsafePointer(mnl_nlmsg_next(nlh, &remaining)) }
            guard nlh.pointee.nlmsg_type == packetType else {
                if nlh.pointee.nlmsg_type == UInt16(NLMSG_ERROR) { noteError(nlh) }
                continue
            }
            let (packet, intact) = Self.queuedPacket(nlh, attributes: attributes)
            if !intact { receiveErrors.add(1, ordering: .relaxed) }
            if let packet { batch.append(packet) }
        }
    }

    /// The packet of one NFQNL_MSG_PACKET message. A damaged message (an attribute that fails
    /// validation, no payload) whose id is still readable gives the packet with an empty payload,
    /// which the decision drops as malformed and counts: every packet the kernel queued gets a
    /// verdict, or it would hold a slot of the queue until the socket closes. `intact` is false
    /// for any damaged message; the packet is nil only when not even its id can be read.
    static func queuedPacket(
        _ nlh: UnsafePointer<nlmsghdr>, attributes: UnsafeMutablePointer<UnsafeMutablePointer<nlattr>?>
    ) -> (packet: QueuedPacket?, intact: Bool) {
        attributes.update(repeating: nil, count: Int(__NFQA_MAX.rawValue))
        // The table keeps what validated before a failure; the kernel puts the header first.
        let parsed = nfq_nlmsg_parse(nlh, attributes) >= 0
        guard let headerAttribute = attributes[Int(NFQA_PACKET_HDR.rawValue)] else { return (nil, false) }
        let header = mnl_attr_get_payload(headerAttribute).assumingMemoryBound(to: nfqnl_msg_packet_hdr.self)
        let id = UInt32(bigEndian: header.pointee.packet_id)
        guard parsed, let payloadAttribute = attributes[Int(NFQA_PAYLOAD.rawValue)] else {
            return (QueuedPacket(id: id, payload: UnsafeMutableRawBufferPointer(start: nil, count: 0)), false)
        }
        let payload = UnsafeMutableRawBufferPointer(
            start: mnl_attr_get_payload(payloadAttribute), count: Int(mnl_attr_get_payload_len(payloadAttribute)))
        let arrival = attributes[Int(NFQA_IFINDEX_INDEV.rawValue)].flatMap {
            mnl_attr_get_payload_len($0) >= 4 ? UInt32(bigEndian: mnl_attr_get_u32($0)) : nil
        }
        let mark = attributes[Int(NFQA_MARK.rawValue)].flatMap {
            mnl_attr_get_payload_len($0) >= 4 ? UInt32(bigEndian: mnl_attr_get_u32($0)) : nil
        }
        return (QueuedPacket(id: id, payload: payload, arrival: arrival, mark: mark ?? 0), true)
    }

    /// An answer to a message of ours, or of the image before ours on an adopted socket. A requeue
    /// request's ENOENT only says nothing was left unanswered; any other error is a receive error.
    private func noteError(_ nlh: UnsafePointer<nlmsghdr>) {
        guard Int(mnl_nlmsg_get_payload_len(nlh)) >= MemoryLayout<nlmsgerr>.size else {
            receiveErrors.add(1, ordering: .relaxed)
            return
        }
        let answer = UnsafeRawPointer(mnl_nlmsg_get_payload(nlh)).loadUnaligned(as: nlmsgerr.self)
        let error = answer.error
        // The answer to an earlier image's requeue, left in the socket when it re-executed before
        // reading it: nothing was left unanswered then, and this image asks for itself.
        let batch = UInt16(NFNL_SUBSYS_QUEUE) << 8 | UInt16(NFQNL_MSG_VERDICT_BATCH.rawValue)
        if error == -ENOENT && answer.msg.nlmsg_type == batch && nlh.pointee.nlmsg_seq != requeueSequence { return }
        if requeueSequence != 0 && nlh.pointee.nlmsg_seq == requeueSequence {
            requeueSequence = 0
            // Nothing was left unanswered: the earlier reader did not die with packets in hand
            // (and a drop in their place dropped nothing).
            if error == -ENOENT {
                replayGuard?.survived()
                if requeueDropped { crashReplaysDropped.subtract(1, ordering: .relaxed) }
                return
            }
        }
        if error != 0 { receiveErrors.add(1, ordering: .relaxed) }
    }

    /// Verdict NF_REPEAT for every queued packet up to `lastID` (one NFQNL_MSG_VERDICT_BATCH): the
    /// packets go through the hook again and are queued anew, to be read and decided here.
    ///
    /// Unless `replayGuard` says the earlier readers died with packets in hand `limit` times in a
    /// row: then one of those packets may be what kills them, and replaying it would kill this one
    /// too, and each restart after it. They are dropped instead (NF_DROP, the same batch), counted
    /// in `crashReplaysDropped`, and the count starts again.
    private func requeue(through lastID: UInt32) throws {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: netlinkBufferSize, alignment: 16)
        defer { buffer.deallocate() }
        let nlh = startMessage(Int32(NFQNL_MSG_VERDICT_BATCH.rawValue), in: buffer)
        nlh.pointee.nlmsg_flags |= UInt16(NLM_F_ACK)
        requeueSequence = nlh.pointee.nlmsg_seq
        let replay = replayGuard?.admitReplay() ?? true
        requeueDropped = !replay
        if !replay { crashReplaysDropped.add(1, ordering: .relaxed) }
        requeuedAt = max(1, MonotonicClock.nanoseconds())
        nfq_nlmsg_verdict_put(nlh, Int32(bitPattern: lastID), replay ? NF_REPEAT : NF_DROP)
        let sent = retryingOnInterrupt { mnl_socket_sendto(socket, nlh, Int(nlh.pointee.nlmsg_len)) }
        guard sent >= 0 else { throw SystemError("sendto(NFQUEUE \(number) requeue)") }
    }

    /// Sends every verdict `verdicts` holds in one datagram.
    private func send(_ verdicts: inout VerdictWriter) throws {
        guard verdicts.length > 0 else { return }
        defer { verdicts.length = 0 }
        let sent = retryingOnInterrupt { mnl_socket_sendto(socket, verdictBuffer, verdicts.length) }
        guard sent >= 0 else { throw SystemError("sendto(NFQUEUE \(number) verdicts)") }
    }
}

/// Verdict messages laid end to end in one buffer, sent as one netlink datagram.
private struct VerdictWriter {
    let buffer: UnsafeMutableRawPointer
    let capacity: Int
    let queue: UInt16
    var length = 0

    /// Appends the verdict; false (nothing appended) when the buffer must be sent first. An empty
    /// buffer always has room: a payload is at most `NetfilterQueue.copyRange` bytes.
    mutating func append(
        id: UInt32, _ action: NetfilterQueue.Action, _ payload: UnsafeMutableRawBufferPointer
    ) -> Bool {
        var replacement: UnsafeMutableRawBufferPointer? = nil
        if case .acceptReplacing(let range) = action {
            replacement = UnsafeMutableRawBufferPointer(rebasing: payload[range])
        }
        guard length + 64 + (replacement?.count ?? 0) <= capacity else { return false }
        let nlh = nfq_nlmsg_put(
            (buffer + length).assumingMemoryBound(to: CChar.self), Int32(NFQNL_MSG_VERDICT.rawValue), UInt32(queue))!
        switch action {
        case .accept: nfq_nlmsg_verdict_put(nlh, Int32(bitPattern: id), NF_ACCEPT)
        case .acceptMarking(let mark):
            nfq_nlmsg_verdict_put(nlh, Int32(bitPattern: id), NF_ACCEPT)
            nfq_nlmsg_verdict_put_mark(nlh, mark)
        case .drop: nfq_nlmsg_verdict_put(nlh, Int32(bitPattern: id), NF_DROP)
        case .acceptReplacing:
            nfq_nlmsg_verdict_put(nlh, Int32(bitPattern: id), NF_ACCEPT)
            nfq_nlmsg_verdict_put_pkt(nlh, replacement!.baseAddress, UInt32(replacement!.count))
        }
        length += Int((nlh.pointee.nlmsg_len + 3) & ~3)
        return true
    }
}
