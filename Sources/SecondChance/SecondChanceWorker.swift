import LinuxSys
import NetTypes
import SecondChanceCore

/// The host's answers to the decider: sock_diag with a per-thread cache, and the kernel's cookie check.
struct KernelFlowOwnership: FlowOwnership {
    let sockDiag: SockDiag
    let cookieState: KernelCookieState
    let oracle: SynCookieOracle?
    let counters: CounterBlock
    /// Present while the responder runs: listeners it serves accept cookies whatever the netns counters say.
    var responder: SynCookieResponder?
    var cache: FlowCache
    /// Shared with every queue thread: what keeps cached "not here" answers honest.
    let epochs: FlowEpochs
    var now: UInt64 = 0
    /// The current batch's answers, from the cache or from one sock_diag round trip
    /// (see `SecondChanceWorker.decideBatch`).
    var prefetched: [FlowKey: SocketLookup] = [:]

    mutating func lookup(_ flow: FlowKey) -> SocketLookup {
        if let answer = prefetched[flow] { return answer }
        // decideBatch prefetches every flow Decider.firstStep names, so this is not reached from
        // there; it keeps the ownership correct on its own.
        counters.add(.lookups)
        let epoch = epochs.current(flow)
        let answer = sockDiag.lookup(flow)
        cache.remember(answer, for: flow, now: now, epoch: epoch)
        return answer
    }

    mutating func listenerAcceptsCookies(_ flow: FlowKey) -> Bool {
        oracle != nil && (responder?.listener(for: flow) != nil || cookieState.acceptsCookies(now: now))
    }

    mutating func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool {
        guard let oracle else { return false }
        counters.add(.cookieChecks)
        let valid = oracle.isValidCookie(packet, segment)
        if !valid { counters.add(.cookieAcksInvalid) }
        responder?.listener(for: segment.flow)?.record.add(valid ? .cookieAcksValid : .cookieAcksInvalid)
        return valid
    }
}

/// One NFQUEUE queue and everything its thread needs; nothing here is shared between threads
/// except the counter block, which the stats server only reads, and the flow epochs.
///
/// `@unchecked Sendable`: created on the main thread and then used by its queue thread alone; the
/// stats server reads only `counters` and `queue.receiveErrors`, which are atomic.
public final class SecondChanceWorker: @unchecked Sendable {
    public let queue: NetfilterQueue
    /// Also held here, not read through `state`: the stats server reads it from its own thread
    /// while the queue thread is modifying `state`.
    public let counters: CounterBlock
    /// The queue thread's decision state, touched once per batch (see `State`).
    private var state: State

    /// `monitor`, when given, runs the SYN-cookie responder for the listeners it publishes.
    /// `adopting`: the queue's netlink socket, already bound by an earlier process.
    public init(
        queueNumber: UInt16, adopting adopted: consuming OwnedDescriptor? = nil,
        configuration: SecondChanceConfiguration,
        addresses: LocalAddressBoard, reversePaths: ReversePathBoard = ReversePathBoard(.none),
        oracle: SynCookieOracle?, monitor: ListenerMonitor? = nil, epochs: FlowEpochs = FlowEpochs()
    ) throws {
        let namespace = try configuration.namespace.map { try NetworkNamespace(nameOrPath: $0) }
        if let adopted = adopted.take() {
            queue = try NetfilterQueue(
                adopting: adopted, number: queueNumber, maximumQueueLength: configuration.queueMaximumLength,
                failOpen: configuration.failOpen)
        } else {
            queue = try NetfilterQueue(
                number: queueNumber, maximumQueueLength: configuration.queueMaximumLength,
                failOpen: configuration.failOpen)
        }
        let responder = monitor.flatMap { monitor in
            oracle.map {
                SynCookieResponder(
                    board: monitor.board, oracle: $0, passInterval: monitor.configuration.passIntervalNanoseconds,
                    repliesInVerdicts: configuration.forwarding == .kernel)
            }
        }
        counters = CounterBlock()
        let (generation, local) = addresses.snapshot()
        state = State(
            configuration: configuration, counters: counters,
            decider: Decider(selfAddress: configuration.selfAddress, peers: configuration.peers, local: local),
            addresses: addresses, addressGeneration: generation, reversePaths: reversePaths,
            // IPv6 is injected with userspace decapsulation, by the responder, and with fou for
            // what sit would drop (6to4 sources).
            sender: try RawIPSender(ipv6: true),
            ownership: KernelFlowOwnership(
                sockDiag: try SockDiag(namespace: namespace), cookieState: try KernelCookieState(namespace: namespace),
                oracle: configuration.checkCookies ? oracle : nil, counters: counters, responder: responder,
                cache: FlowCache(
                    positiveLifetime: configuration.cacheLifetimeNanoseconds,
                    negativeLifetime: configuration.negativeCacheLifetimeNanoseconds),
                epochs: epochs))
    }

    /// Decides packets until `stop`; then drains the queue for a moment unless `drainOnStop` says
    /// the queue is being handed to a new image.
    public func run(stop: EventFD, drainOnStop: () -> Bool = { true }) throws {
        try queue.run(
            stop: stop, batchSize: state.configuration.batchSize, drainOnStop: drainOnStop,
            idle: { [self] in state.ownership.cache.evictExpired(now: MonotonicClock.nanoseconds()) },
            afterVerdicts: { [self] in state.afterVerdicts() },
            handleBatch: { [self] packets, actions in state.decideBatch(packets, &actions) })
    }

    /// What the queue thread decides with. A struct reached through one access per batch: were
    /// these the class's stored properties, every packet would pay dynamic exclusivity checks on
    /// each of them.
    struct State {
        let configuration: SecondChanceConfiguration
        let counters: CounterBlock
        var decider: Decider
        /// Where this host's current addresses come from, and the generation `decider.local` holds.
        let addresses: LocalAddressBoard
        var addressGeneration: UInt64
        /// --self is this host's (as `decider.local` says): nothing is forwarded while it is not.
        var selfOwned = true
        /// Where the ways back to the peers come from; `decider.reversePaths` holds this generation.
        let reversePaths: ReversePathBoard
        var reversePathGeneration: UInt64?
        let sender: RawIPSender
        var forwards = ForwardBatch()
        var ownership: KernelFlowOwnership
        var parsed: [Decider.Parsed] = []
        var lookups = BatchLookups()
        /// Flows of packets this batch lets make a local socket: their epochs go up again after the verdicts.
        var socketsMade: [FlowKey] = []

        init(
            configuration: SecondChanceConfiguration, counters: CounterBlock, decider: Decider,
            addresses: LocalAddressBoard, addressGeneration: UInt64, reversePaths: ReversePathBoard,
            sender: RawIPSender, ownership: KernelFlowOwnership
        ) {
            self.reversePaths = reversePaths
            selfOwned = decider.local.ipv4.contains(configuration.selfAddress)
            self.configuration = configuration
            self.counters = counters
            self.decider = decider
            self.addresses = addresses
            self.addressGeneration = addressGeneration
            self.sender = sender
            self.ownership = ownership
        }

        mutating func afterVerdicts() {
            for flow in socketsMade { ownership.epochs.bump(flow) }
            socketsMade.removeAll(keepingCapacity: true)
        }

        /// Decides a batch: parses every packet, answers the batch's flows from the cache or with one
        /// sock_diag round trip, decides each packet with those answers, and sends the forwarded ones
        /// together.
        ///
        /// Answers taken before the batch's verdicts are sent cannot miss a socket that a packet of the
        /// same batch creates: a client sends a flow's next packet only after our stack answered one
        /// whose verdict went out in an earlier batch. The exception is a cookie ACK, which makes the
        /// connection without any earlier answer: `carryOut` marks its flow connected for the rest of
        /// the batch.
        mutating func decideBatch(
            _ packets: UnsafeBufferPointer<NetfilterQueue.QueuedPacket>, _ actions: inout [NetfilterQueue.Action]
        ) {
            let now = MonotonicClock.nanoseconds()
            ownership.now = now
            if addresses.generation != addressGeneration {
                (addressGeneration, self.decider.local) = addresses.snapshot()
                selfOwned = decider.local.ipv4.contains(configuration.selfAddress)
            }
            if reversePaths.generation != reversePathGeneration {
                let ways = reversePaths.snapshot()
                (reversePathGeneration, self.decider.reversePaths) = (ways.generation, ways.value)
            }
            // A copy: the calls below mutate the state while they read it.
            let decider = self.decider
            parsed.removeAll(keepingCapacity: true)
            lookups.start()
            for packet in packets {
                let result = decider.parse(UnsafeRawBufferPointer(packet.payload), arrival: packet.arrival)
                parsed.append(result)
                guard case .parsed(let parsedPacket) = result,
                    case .lookUp(let flow, _) = Decider.firstStep(parsedPacket.inner)
                else { continue }
                lookups.ask(flow, ownership: &ownership, counters: counters, now: now)
            }
            lookups.answer(ownership: &ownership, counters: counters, now: now)
            ownership.responder?.prepare(packets, parsed, now: now, sender: sender, decider: decider)
            let fouMark =
                configuration.decapsulation == .kernel && configuration.fouMark != .none ? configuration.fouMark : nil
            for (index, (packet, result)) in zip(packets, parsed).enumerated() {
                let action = carryOut(packet.payload, result, index: index, decider: decider)
                // With kernel decapsulation a plain accept is what hands the packet to fou.
                if case .accept = action, let fouMark {
                    actions.append(.acceptMarking(fouMark.applied(to: packet.mark)))
                } else {
                    actions.append(action)
                }
            }
            ownership.prefetched.removeAll(keepingCapacity: true)
            flushForwards()
        }

        /// Sends the batch's forwarded packets (one sendmmsg) and counts them.
        mutating func flushForwards() {
            let queued = forwards.count
            guard queued > 0 else { return }
            let failed = forwards.flush(sender).count
            counters.add(.forwarded, UInt64(queued - failed))
            if failed > 0 { counters.add(.forwardFailed, UInt64(failed)) }
        }

        /// Decides one packet and carries the decision out: one refused or dropped at parsing is
        /// only counted; one that parsed has its GUE header for delivery and forwarding.
        @inline(__always)
        mutating func carryOut(
            _ packet: UnsafeMutableRawBufferPointer, _ parsed: Decider.Parsed, index: Int, decider: Decider
        )
            -> NetfilterQueue.Action
        {
            counters.add(.total)
            switch parsed {
            case .rejected(let rejected):
                return refuse(rejected.verdict)
            case .parsed(let parsedPacket):
                let decision = decider.decide(UnsafeRawBufferPointer(packet), parsedPacket, ownership: &ownership)
                return carryOut(packet, decision, parsedPacket.gue, index: index)
            }
        }

        /// Counts a drop or a refusal: the packet goes nowhere.
        @inline(__always)
        func refuse(_ verdict: Verdict) -> NetfilterQueue.Action {
            switch verdict {
            case .drop(let reason): counters.add(.dropped(reason))
            case .refuse(let refusal): counters.add(.refused(refusal))
            case .local, .forward: break  // not a refusal: the callers pass none
            }
            return .drop
        }

        @inline(__always)
        mutating func carryOut(
            _ packet: UnsafeMutableRawBufferPointer, _ decision: Decision, _ gue: GUEPacket, index: Int
        ) -> NetfilterQueue.Action {
            // What the responder did with a SYN; one it answered never reaches the kernel, so makes no socket.
            let responderOutcome = decision.verdict == .local(.syn) ? ownership.responder?.outcome(at: index) : nil
            remember(decision, answeredByResponder: responderOutcome?.answersTheSYN == true)
            if case .pathMTU = decision.inner { counters.add(.pathMTU(PathMTUOutcome(decision.verdict))) }
            switch decision.verdict {
            case .drop, .refuse:
                return refuse(decision.verdict)
            case .local(.syn):
                switch responderOutcome {
                case .answered:
                    counters.add(.cookiesSent)
                    return .drop
                case .answeredInVerdict:
                    counters.add(.cookiesSent)
                    let length = ownership.responder?.moveReply(at: index, into: packet) ?? 0
                    return .acceptReplacing(0..<length)
                case .failed: counters.add(.cookieReplyFailed)
                case .toKernel, nil: break
                }
                counters.add(.local(.syn))
                return deliverLocally(packet, gue)
            case .local(let reason):
                counters.add(.local(reason))
                return deliverLocally(packet, gue)
            case .forward(let hop):
                return forward(packet, gue, to: hop)
            }
        }

        /// What a decision tells the flow's cache and epoch.
        @inline(__always)
        mutating func remember(_ decision: Decision, answeredByResponder: Bool) {
            guard case .tcp(let segment) = decision.inner else { return }
            if (decision.verdict == .local(.syn) && !answeredByResponder) || decision.verdict == .local(.synCookie) {
                // This packet may make a socket: no thread may trust a "not here" from before it.
                ownership.epochs.bump(segment.flow)
                socketsMade.append(segment.flow)
            }
            if !segment.flags.isDisjoint(with: [.syn, .fin, .rst]) {
                ownership.cache.forget(segment.flow)
            } else if decision.verdict == .local(.synCookie) {
                // The kernel makes the connection when this verdict goes out; the client's data
                // often follows its ACK in the same batch, looked up before that happened.
                ownership.prefetched[segment.flow] = .connected
                ownership.cache.remember(.connected, for: segment.flow, now: ownership.now)
            }
        }

        @inline(__always)
        mutating func forward(_ packet: UnsafeMutableRawBufferPointer, _ gue: GUEPacket, to hop: IPv4Address)
            -> NetfilterQueue.Action
        {
            // A packet never leaves with a source this host does not own (`ip addr del` of --self).
            guard selfOwned else {
                counters.add(.forwardFailed)
                return .drop
            }
            if configuration.forwarding == .kernel && GUEForwarding.kernelCanForward(packet) {
                GUEForwarding.rewrite(
                    packet, gue, source: configuration.selfAddress, destination: hop, forKernelForwarding: true)
                counters.add(.forwarded)
                return .acceptReplacing(0..<gue.innerEnd)
            }
            GUEForwarding.rewrite(packet, gue, source: configuration.selfAddress, destination: hop)
            let outgoing = UnsafeRawBufferPointer(rebasing: packet[0..<gue.innerEnd])
            if !forwards.append(outgoing) {
                let error = sender.sendIPv4(outgoing)
                counters.add(error == 0 ? .forwarded : .forwardFailed)
            }
            return .drop
        }

        private mutating func deliverLocally(_ packet: UnsafeMutableRawBufferPointer, _ gue: GUEPacket)
            -> NetfilterQueue.Action
        {
            // With fou, what the tunnel devices would drop is decapsulated here instead: a packet
            // this host sent itself over loopback would arrive on tunl0 from a local address (a
            // martian there), and sit drops a 6to4 source it takes for spoofed.
            let kernel =
                configuration.decapsulation == .kernel && !gue.overLoopback
                && !(gue.innerFamily == .ipv6 && Self.sitWouldRefuse(packet, gue))
            switch (kernel, gue.innerFamily) {
            case (true, _): return .accept
            case (false, .ipv4): return .acceptReplacing(gue.innerOffset..<gue.innerEnd)
            case (false, .ipv6): return injectIPv6(packet, gue)
            }
        }

        /// Hands the inner IPv6 packet to the local stack through the raw IPv6 socket (an IPv4
        /// hook cannot carry it); the queued original is dropped.
        private func injectIPv6(_ packet: UnsafeMutableRawBufferPointer, _ gue: GUEPacket) -> NetfilterQueue.Action {
            let error = sender.sendIPv6(UnsafeRawBufferPointer(rebasing: packet[gue.innerOffset..<gue.innerEnd]))
            if error != 0 { counters.add(.injectFailed) }
            return .drop
        }

        /// Whether sit, given this inner IPv6 packet by fou, would drop it as spoofed: a 6to4
        /// (2002::/16) source or destination whose embedded IPv4 address is not the outer
        /// packet's (the director's, this proxy's). A client behind a 6to4 relay is real
        /// (glb-director #64): such a packet reaches the stack as userspace decapsulation sends it.
        static func sitWouldRefuse(_ packet: UnsafeMutableRawBufferPointer, _ gue: GUEPacket) -> Bool {
            let bytes = UnsafeRawBufferPointer(packet), inner = gue.innerOffset
            guard gue.innerEnd - inner >= 40 else { return false }
            func embedded(_ at: Int) -> UInt32? { bytes.be16(at) == 0x2002 ? bytes.be32(at + 2) : nil }
            if let source = embedded(inner + 8), source != gue.outerSource.value { return true }
            if let destination = embedded(inner + 24), destination != gue.outerDestination.value { return true }
            return false
        }
    }
}
