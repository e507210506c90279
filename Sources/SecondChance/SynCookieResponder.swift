import Glibc
import NetTypes
import SecondChanceCore

/// A queue thread's side of the responder: answers a batch's SYNs for published listeners with
/// kernel cookies, all of them with one BPF test run and one sendmmsg (IPv4) before the batch's
/// verdicts are decided.
final class SynCookieResponder {
    enum Outcome {
        /// Not served (or kept for the kernel): deliver the SYN as usual.
        case toKernel
        /// Answered with a cookie SYN-ACK: drop the SYN.
        case answered
        /// The cookie or the reply failed: deliver the SYN to the kernel.
        case failed
    }

    let board: ResponderBoard
    let oracle: SynCookieOracle
    let passInterval: UInt64
    private(set) var snapshot = ResponderBoard.Snapshot()
    private var lastPassed: [ListenerKey: UInt64] = [:]
    private var outcomes: [Outcome] = []
    private var requests: [[SynCookieOracle.SynRequest]] = [[], []]
    private var requestContext: [[(index: Int, listener: ResponderListener)]] = [[], []]
    private let replies = ForwardBatch()
    private var replyIndexes: [Int] = []
    private var replyRecords: [ListenerRecord] = []
    /// One slot per reply a sendmmsg batch holds, and one for an IPv6 reply.
    private static let replySlot = 128
    private let replyPool = UnsafeMutableRawPointer.allocate(
        byteCount: (ForwardBatch.capacity + 1) * replySlot, alignment: 16)

    init(board: ResponderBoard, oracle: SynCookieOracle, passInterval: UInt64) {
        self.board = board
        self.oracle = oracle
        self.passInterval = passInterval
    }

    deinit { replyPool.deallocate() }

    func outcome(at index: Int) -> Outcome { index < outcomes.count ? outcomes[index] : .toKernel }

    /// The published listener a flow's ACK reaches, if the responder serves it.
    func listener(for flow: FlowKey) -> ResponderListener? { snapshot.listener(for: flow) }

    /// Decides and answers every SYN of a batch; `outcome(at:)` then tells each packet's fate.
    /// Only SYNs the decider would deliver here are answered: the reply's source is the SYN's
    /// destination, so a wildcard listener must never make it one this host does not own.
    func prepare(
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
        guard !snapshot.listeners.isEmpty else { return }
        for family in 0..<2 {
            requests[family].removeAll(keepingCapacity: true)
            requestContext[family].removeAll(keepingCapacity: true)
        }
        for (index, result) in parsed.enumerated() {
            guard case .parsed(let packet) = result, case .tcp(let segment) = packet.inner,
                segment.flags.intersection([.syn, .ack, .fin, .rst]) == .syn,
                let listener = snapshot.listener(for: segment.flow), !listener.acceptQueueFull,
                decider.localRefusal(UnsafeRawBufferPointer(packets[index].payload), packet.gue) == nil
            else { continue }
            let key = listener.record.key
            // The kernel accepts a cookie ACK only within two minutes of a cookie of its own for the
            // listener (tcp_synq_no_recent_overflow), with tcp_syncookies=2 too: one SYN per interval
            // goes to the kernel, which answers it with a cookie and so keeps that mark.
            if now &- (lastPassed[key] ?? 0) >= passInterval {
                lastPassed[key] = now
                listener.record.add(.synsPassedToKernel)
                continue
            }
            let bytes = UnsafeRawBufferPointer(packets[index].payload)
            guard let options = SynOptions.parse(bytes, tcpOffset: segment.tcpOffset, end: packet.gue.innerEnd) else {
                outcomes[index] = .failed
                continue
            }
            let family = segment.flow.isIPv6 ? 1 : 0
            requests[family].append(.init(packet: bytes, segment: segment, options: options))
            requestContext[family].append((index, listener))
        }
        for family in 0..<2 where !requests[family].isEmpty {
            let cookies = oracle.cookies(forSYNs: requests[family][...], ipv6: family == 1)
            for (position, cookie) in cookies.enumerated() {
                let (index, listener) = requestContext[family][position]
                guard let (value, mss) = cookie else { outcomes[index] = .failed; continue }
                outcomes[index] = answer(
                    requests[family][position], cookie: value, mss: mss, listener: listener, index: index,
                    now: now, sender: sender)
            }
        }
        flushReplies(sender)
    }

    /// Writes the SYN-ACK into a slot of the pool: IPv4 replies wait there for one sendmmsg
    /// (counted as answered, corrected if the send fails); IPv6 ones go out at once from the last slot.
    private func answer(
        _ request: SynCookieOracle.SynRequest, cookie: UInt32, mss: UInt16, listener: ResponderListener,
        index: Int, now: UInt64, sender: RawIPSender
    ) -> Outcome {
        let ipv6 = request.segment.flow.isIPv6
        if !ipv6 && replies.count == ForwardBatch.capacity { flushReplies(sender) }
        let slotIndex = ipv6 ? ForwardBatch.capacity : replies.count
        let slot = UnsafeMutableRawBufferPointer(start: replyPool + slotIndex * Self.replySlot, count: Self.replySlot)
        let offer = SynCookieReply.offer(
            request.options, settings: snapshot.settings, ourWindowScale: listener.windowScale,
            nowMilliseconds: now / 1_000_000)
        let window = TCPWindow.synAckWindow(
            listenerReceiveBuffer: listener.receiveBuffer,
            mss: offer.timestamp == nil ? mss : mss - 12)
        let length = SynCookieReply.write(
            into: slot, answering: request.packet, request.segment, cookie: cookie, mss: mss,
            offer: offer, window: window, ttl: snapshot.settings.defaultTTL)
        let reply = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot)[0..<length])
        if ipv6 {
            guard sender.sendIPv6(reply) == 0 else { return .failed }
            listener.record.add(.cookiesSent)
            return .answered
        }
        _ = replies.append(reply)
        replyIndexes.append(index)
        replyRecords.append(listener.record)
        return .answered
    }

    private func flushReplies(_ sender: RawIPSender) {
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
