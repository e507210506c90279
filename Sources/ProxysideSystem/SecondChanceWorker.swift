import ProxysideCore

/// How a packet this host owns reaches the local stack.
public enum DecapsulationMode: String, Sendable, CaseIterable {
    /// fou (ip fou add port 19523 gue) decapsulates: accept the GUE packet unchanged.
    case kernel
    /// No fou: accept with the inner IPv4 packet as the new payload; inner IPv6 is sent to the
    /// local stack through a raw IPv6 socket (an IPv4 hook cannot carry it) and the original dropped.
    case userspace
}

public struct SecondChanceConfiguration: Sendable {
    public var selfAddress: IPv4Address
    public var decapsulation: DecapsulationMode
    public var namespace: String?
    public var cacheLifetimeNanoseconds: UInt64
    public var negativeCacheLifetimeNanoseconds: UInt64
    public var batchSize: Int
    public var checkCookies: Bool

    public init(selfAddress: IPv4Address, decapsulation: DecapsulationMode, namespace: String? = nil,
                cacheLifetimeNanoseconds: UInt64 = 1_000_000_000, negativeCacheLifetimeNanoseconds: UInt64 = 0,
                batchSize: Int = 64, checkCookies: Bool = true) {
        self.selfAddress = selfAddress
        self.decapsulation = decapsulation
        self.namespace = namespace
        self.cacheLifetimeNanoseconds = cacheLifetimeNanoseconds
        self.negativeCacheLifetimeNanoseconds = negativeCacheLifetimeNanoseconds
        self.batchSize = batchSize
        self.checkCookies = checkCookies
    }
}

/// The host's answers to the decider: sock_diag with a per-thread cache, and the kernel's cookie check.
struct KernelFlowOwnership: FlowOwnership {
    let sockDiag: SockDiag
    let cookieState: KernelCookieState
    let oracle: SynCookieOracle?
    let counters: CounterBlock
    var cache: FlowCache
    var now: UInt64 = 0
    /// Answers fetched for the current batch in one round trip (see `SecondChanceWorker.decideBatch`).
    var prefetched: [FlowKey: SocketLookup] = [:]

    mutating func lookup(_ flow: FlowKey) -> SocketLookup {
        if let cached = cache.answer(for: flow, now: now) {
            counters.add(.lookupCacheHits)
            return cached
        }
        if let answer = prefetched[flow] {
            cache.remember(answer, for: flow, now: now)
            return answer
        }
        counters.add(.lookups)
        let answer = sockDiag.lookup(flow)
        cache.remember(answer, for: flow, now: now)
        return answer
    }

    mutating func listenerAcceptsCookies(_ flow: FlowKey) -> Bool {
        oracle != nil && cookieState.acceptsCookies(now: now)
    }

    mutating func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool {
        guard let oracle else { return false }
        counters.add(.cookieChecks)
        return oracle.isValidCookie(packet, segment)
    }
}

/// Phase one of a batch: runs the decision only to learn which flows it would ask the socket table
/// about (and the cache cannot answer). Cookie checks are not run here.
struct LookupRecorder: FlowOwnership {
    let cache: FlowCache
    let now: UInt64
    var flows: [FlowKey] = []
    var seen: Set<FlowKey> = []

    mutating func lookup(_ flow: FlowKey) -> SocketLookup {
        if let cached = cache.answer(for: flow, now: now) { return cached }
        if seen.insert(flow).inserted { flows.append(flow) }
        return .none
    }
    mutating func listenerAcceptsCookies(_ flow: FlowKey) -> Bool { false }
    mutating func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool { false }
}

/// One NFQUEUE queue and everything its thread needs; nothing here is shared between threads
/// except the counter block, which the stats server only reads.
public final class SecondChanceWorker: @unchecked Sendable {
    public let queue: NetfilterQueue
    public let counters = CounterBlock()
    let configuration: SecondChanceConfiguration
    let decider: Decider
    let sender: RawIPSender
    let forwards = ForwardBatch()
    var ownership: KernelFlowOwnership

    public init(queueNumber: UInt16, configuration: SecondChanceConfiguration, oracle: SynCookieOracle?) throws {
        self.configuration = configuration
        let namespace = try configuration.namespace.map { try NetworkNamespace(nameOrPath: $0) }
        queue = try NetfilterQueue(number: queueNumber)
        sender = try RawIPSender(ipv6: configuration.decapsulation == .userspace)
        decider = Decider(selfAddress: configuration.selfAddress)
        ownership = KernelFlowOwnership(
            sockDiag: try SockDiag(namespace: namespace), cookieState: try KernelCookieState(namespace: namespace),
            oracle: configuration.checkCookies ? oracle : nil, counters: counters,
            cache: FlowCache(positiveLifetime: configuration.cacheLifetimeNanoseconds,
                             negativeLifetime: configuration.negativeCacheLifetimeNanoseconds))
    }

    public func run(stop: EventFD) throws {
        try queue.run(stop: stop, batchSize: min(configuration.batchSize, ForwardBatch.capacity),
                      idle: { [self] in ownership.cache.evictExpired(now: MonotonicClock.nanoseconds()) },
                      handleBatch: { [self] packets, actions in decideBatch(packets, &actions) })
    }

    /// Decides a batch: first asks the socket table about every flow the batch needs, in one round
    /// trip, then decides each packet with those answers and sends the forwarded ones together.
    ///
    /// Answers taken before the batch's verdicts are sent cannot miss a socket that a packet of the
    /// same batch creates: a client sends a flow's next packet only after our stack answered one
    /// whose verdict went out in an earlier batch.
    public func decideBatch(_ packets: UnsafeBufferPointer<NetfilterQueue.QueuedPacket>, _ actions: inout [NetfilterQueue.Action]) {
        if packets.count > 1 {
            var recorder = LookupRecorder(cache: ownership.cache, now: MonotonicClock.nanoseconds())
            for packet in packets { _ = decider.decide(UnsafeRawBufferPointer(packet.payload), ownership: &recorder) }
            if !recorder.flows.isEmpty {
                counters.add(.lookups, UInt64(recorder.flows.count))
                let answers = ownership.sockDiag.lookup(batch: recorder.flows)
                ownership.prefetched = Dictionary(uniqueKeysWithValues: zip(recorder.flows, answers))
            }
        }
        for packet in packets { actions.append(handle(packet.payload)) }
        ownership.prefetched.removeAll(keepingCapacity: true)
        flushForwards()
    }

    /// Sends the batch's forwarded packets (one sendmmsg) and counts them.
    public func flushForwards() {
        let queued = forwards.count
        guard queued > 0 else { return }
        let failed = forwards.flush(sender)
        counters.add(.forwarded, UInt64(queued - failed))
        if failed > 0 { counters.add(.forwardFailed, UInt64(failed)) }
    }

    /// Decides one packet and carries the decision out.
    @inline(__always)
    public func handle(_ packet: UnsafeMutableRawBufferPointer) -> NetfilterQueue.Action {
        counters.add(.total)
        ownership.now = MonotonicClock.nanoseconds()
        let decision = decider.decide(UnsafeRawBufferPointer(packet), ownership: &ownership)
        if case .tcp(let segment) = decision.inner, !segment.flags.isDisjoint(with: [.syn, .fin, .rst]) {
            ownership.cache.forget(segment.flow)
        }
        switch decision.verdict {
        case .drop(let reason):
            counters.add(.dropped(reason))
            return .drop
        case .local(let reason):
            counters.add(.local(reason))
            return deliverLocally(packet, decision.gue!)
        case .forward(let hop):
            let gue = decision.gue!
            GUEForwarding.rewrite(packet, gue, source: configuration.selfAddress, destination: hop)
            let outgoing = UnsafeRawBufferPointer(rebasing: packet[0..<gue.innerEnd])
            if !forwards.append(outgoing) {
                let error = sender.sendIPv4(outgoing)
                counters.add(error == 0 ? .forwarded : .forwardFailed)
            }
            return .drop
        }
    }

    private func deliverLocally(_ packet: UnsafeMutableRawBufferPointer, _ gue: GUEPacket) -> NetfilterQueue.Action {
        switch (configuration.decapsulation, gue.innerFamily) {
        case (.kernel, _):
            return .accept
        case (.userspace, .ipv4):
            return .acceptReplacing(gue.innerOffset..<gue.innerEnd)
        case (.userspace, .ipv6):
            let error = sender.sendIPv6(UnsafeRawBufferPointer(rebasing: packet[gue.innerOffset..<gue.innerEnd]))
            if error != 0 { counters.add(.injectFailed) }
            return .drop
        }
    }
}
