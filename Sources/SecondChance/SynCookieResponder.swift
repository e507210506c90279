import Glibc
import NetTypes
import SecondChanceCore

/// A queue thread's side of the responder: answers a batch's SYNs for published listeners with
/// kernel cookies, all of them with one BPF test run before the batch's verdicts are decided.
///
/// Where the kernel forwards for us (`--forward kernel`), an IPv4 SYN-ACK goes back as the queued
/// SYN's own verdict payload: the kernel forwards it like a rewritten GUE packet, with no socket
/// send and no second buffer per SYN. Elsewhere the replies leave through one sendmmsg.
struct SynCookieResponder {
    enum Outcome {
        /// Not served (or kept for the kernel): deliver the SYN as usual.
        case toKernel
        /// Answered with a cookie SYN-ACK already sent: drop the SYN.
        case answered
        /// Answered with a cookie SYN-ACK that replaces the SYN (`moveReply`) and is accepted.
        case answeredInVerdict
        /// The cookie or the reply failed: deliver the SYN to the kernel.
        case failed

        /// Whether a SYN-ACK answers the SYN (which the kernel then never sees).
        var answersTheSYN: Bool { self == .answered || self == .answeredInVerdict }
    }

    let board: ResponderBoard
    let oracle: SynCookieOracle
    let passInterval: UInt64
    /// Whether IPv4 replies may replace their SYN in its verdict (the kernel forwards them).
    let repliesInVerdicts: Bool
    private(set) var snapshot = ResponderBoard.Snapshot()
    private var lastPassed: [ListenerKey: UInt64] = [:]
    private var outcomes: [Outcome] = []
    private var requests: [[SynCookieOracle.SynRequest]] = [[], []]
    private var requestContext: [[(index: Int, listener: ResponderListener)]] = [[], []]
    private var cookies: [(cookie: UInt32, mss: UInt16)?] = []
    private var replies = ForwardBatch()
    private var replyIndexes: [Int] = []
    private var replyRecords: [ListenerRecord] = []
    private var replyLengths: [Int] = []
    /// A slot per packet of a batch (an IPv4 reply stays in its SYN's slot until sent or moved),
    /// and one for an IPv6 reply.
    private static let replySlot = 128
    private let replyPool = ReplyPool(bytes: (NetfilterQueue.maximumBatch + 1) * replySlot)

    init(board: ResponderBoard, oracle: SynCookieOracle, passInterval: UInt64, repliesInVerdicts: Bool) {
        self.board = board
        self.oracle = oracle
        self.passInterval = passInterval
        self.repliesInVerdicts = repliesInVerdicts
    }

    func outcome(at index: Int) -> Outcome { index < outcomes.count ? outcomes[index] : .toKernel }

    /// Copies the SYN-ACK answering packet `index` over that packet's bytes (called once the
    /// packet has been decided, since deciding reads them); returns the reply's length.
    func moveReply(at index: Int, into packet: UnsafeMutableRawBufferPointer) -> Int {
        let length = replyLengths[index]
        packet.baseAddress!.copyMemory(from: replyPool.base + index * Self.replySlot, byteCount: length)
        return length
    }

    /// The published listener a flow's ACK reaches, if the responder serves it.
    func listener(for flow: FlowKey) -> ResponderListener? { snapshot.listener(for: flow) }

    /// Decides and answers every SYN of a batch; `outcome(at:)` then tells each packet's fate.
    /// Only SYNs the decider would deliver here are answered: the reply's source is the SYN's
    /// destination, so a wildcard listener must never make it one this host does not own.
    mutating func prepare(
        _ packets: UnsafeBufferPointer<NetfilterQueue.QueuedPacket>, _ parsed: [Decider.Parsed], now: UInt64,
        sender: RawIPSender,
        decider: Decider
    ) {
        if board.generation != snapshot.generation {
            snapshot = board.snapshot()
            lastPassed = lastPassed.filter { snapshot.listeners[$0.key] != nil }
        }
        outcomes.removeAll(keepingCapacity: true)
        outcomes.append(contentsOf: repeatElement(.toKernel, count: packets.count))
        if repliesInVerdicts {
            replyLengths.removeAll(keepingCapacity: true)
            replyLengths.append(contentsOf: repeatElement(0, count: packets.count))
        }
        guard !snapshot.listeners.isEmpty else { return }
        for family in 0..<2 {
            requests[family].removeAll(keepingCapacity: true)
            requestContext[family].removeAll(keepingCapacity: true)
        }
        // A reply lives in its SYN's slot: the pool has one per packet of a full batch. (A batch is
        // longer only if a datagram held several packets; those SYNs are left to the kernel.)
        for (index, result) in parsed.enumerated().prefix(NetfilterQueue.maximumBatch) {
            guard case .parsed(let packet) = result, case .tcp(let segment) = packet.inner,
                segment.flags.intersection([.syn, .ack, .fin, .rst]) == .syn,
                let listener = snapshot.listener(for: segment.flow), !listener.acceptQueueFull,
                decider.localRefusal(UnsafeRawBufferPointer(packets[index].payload), packet.gue) == nil
            else { continue }
            let bytes = UnsafeRawBufferPointer(packets[index].payload)
            // A SYN the kernel would drop (or one with data) is the kernel's, and is not the one
            // that keeps its overflow mark either.
            guard SynIntegrity.isAnswerable(bytes, segment) else { continue }
            let key = listener.record.key
            // The kernel accepts a cookie ACK only within two minutes of a cookie of its own for the
            // listener (tcp_synq_no_recent_overflow), with tcp_syncookies=2 too: one SYN per interval
            // goes to the kernel, which answers it with a cookie while its queue is full and so keeps
            // that mark. A queue not seen full for the mark's lifetime turns the responder off
            // (ListenerOverflow), and the kernel's own cookies for the flood renew the mark.
            if now &- (lastPassed[key] ?? 0) >= passInterval {
                lastPassed[key] = now
                listener.record.add(.synsPassedToKernel)
                continue
            }
            guard let options = SynOptions.parse(bytes, tcpOffset: segment.tcpOffset, end: packet.gue.innerEnd) else {
                outcomes[index] = .failed
                continue
            }
            let family = segment.flow.isIPv6 ? 1 : 0
            requests[family].append(.init(packet: bytes, segment: segment, options: options))
            requestContext[family].append((index, listener))
        }
        for family in 0..<2 where !requests[family].isEmpty {
            cookies.removeAll(keepingCapacity: true)
            oracle.cookies(forSYNs: requests[family][...], ipv6: family == 1, into: &cookies)
            for (position, cookie) in cookies.enumerated() {
                let (index, listener) = requestContext[family][position]
                guard let (value, _) = cookie else { outcomes[index] = .failed; continue }
                outcomes[index] = answer(
                    requests[family][position], cookie: value, listener: listener, index: index,
                    room: packets[index].payload.count, now: now, sender: sender)
            }
        }
        flushReplies(sender)
    }

    /// Writes the SYN-ACK into a slot of the pool. An IPv4 reply that fits in its SYN's buffer
    /// becomes that SYN's verdict when the kernel forwards for us (`room`: the SYN's length);
    /// other IPv4 replies wait in their slot for one sendmmsg (counted as answered, corrected if
    /// the send fails); IPv6 ones go out at once from the last slot.
    private mutating func answer(
        _ request: SynCookieOracle.SynRequest, cookie: UInt32, listener: ResponderListener,
        index: Int, room: Int, now: UInt64, sender: RawIPSender
    ) -> Outcome {
        let ipv6 = request.segment.flow.isIPv6
        let slotIndex = ipv6 ? NetfilterQueue.maximumBatch : index
        let slot = UnsafeMutableRawBufferPointer(
            start: replyPool.base + slotIndex * Self.replySlot, count: Self.replySlot)
        // The MSS offered is the kernel's own for this client (the cookie carries the client's).
        guard let route = snapshot.replyRoutes.route(towards: request.segment.flow.sourceAddress) else {
            return .toKernel  // no route back in the main table: the kernel's to answer
        }
        let ourMSS = ReplyRoutes.clamp(route.mss, userMSS: listener.userMSS)
        let offer = SynCookieReply.offer(
            request.options, settings: snapshot.settings, ourWindowScale: listener.windowScale,
            nowMilliseconds: now / 1_000_000)
        let window = TCPWindow.synAckWindow(
            listenerReceiveBuffer: listener.receiveBuffer,
            mss: offer.timestamp == nil ? ourMSS : ourMSS - 12)
        // A SYN always has room for its reply (its GUE headers alone outweigh the reply's options);
        // the check keeps that an assumption the code does not rely on.
        let inVerdict =
            repliesInVerdicts && !ipv6 && snapshot.settings.defaultTTL < 255
            && SynCookieReply.length(offer, ipv6: false) <= room
        // The forwarding path takes one off the TTL: the client sees the kernel's own.
        let length = SynCookieReply.write(
            into: slot, answering: request.packet, request.segment, cookie: cookie, mss: ourMSS,
            offer: offer, window: window,
            ttl: snapshot.settings.replyTTL(ipv6: ipv6) + (inVerdict ? 1 : 0))
        if inVerdict {
            replyLengths[index] = length
            listener.record.add(.cookiesSent)
            return .answeredInVerdict
        }
        let reply = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot)[0..<length])
        if ipv6 {
            guard sender.sendIPv6(reply) == 0 else { return .failed }
            listener.record.add(.cookiesSent)
            return .answered
        }
        // A batch holds no more packets than a sendmmsg batch; the flush keeps that an assumption.
        if replies.count == ForwardBatch.capacity { flushReplies(sender) }
        _ = replies.append(reply)
        replyIndexes.append(index)
        replyRecords.append(listener.record)
        return .answered
    }

    private mutating func flushReplies(_ sender: RawIPSender) {
        guard replies.count > 0 else { return }
        let failed = replies.flush(sender)
        for position in failed { outcomes[replyIndexes[position]] = .failed }
        for (position, record) in replyRecords.enumerated() where !failed.contains(position) {
            record.add(.cookiesSent)
        }
        replyIndexes.removeAll(keepingCapacity: true)
        replyRecords.removeAll(keepingCapacity: true)
    }
}

/// The memory SYN-ACKs are written into, one slot per packet of a batch.
private final class ReplyPool {
    let base: UnsafeMutableRawPointer
    init(bytes: Int) { base = .allocate(byteCount: bytes, alignment: 16) }
    deinit { base.deallocate() }
}
