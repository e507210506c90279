import CLinuxShims
import Glibc
import ProxysideCore

/// Counters of one listener, written by the queue threads and the monitor, read by the stats server.
public final class ListenerRecord: @unchecked Sendable {
    public enum Counter: Int, CaseIterable {
        case activations, cookiesSent, cookieAcksValid, cookieAcksInvalid, synsPassedToKernel

        var metric: String {
            switch self {
            case .activations: "second_chance_listener_syn_cookie_activations_total"
            case .cookiesSent: "second_chance_listener_syn_cookies_sent_total"
            case .cookieAcksValid: "second_chance_listener_syn_cookie_acks_valid_total"
            case .cookieAcksInvalid: "second_chance_listener_syn_cookie_acks_invalid_total"
            case .synsPassedToKernel: "second_chance_listener_syns_passed_to_kernel_total"
            }
        }

        var shortName: String {
            switch self {
            case .activations: "activations"
            case .cookiesSent: "cookies_sent"
            case .cookieAcksValid: "cookie_acks_valid"
            case .cookieAcksInvalid: "cookie_acks_invalid"
            case .synsPassedToKernel: "syns_passed_to_kernel"
            }
        }
    }

    public let key: ListenerKey
    private let storage: UnsafeMutablePointer<UInt64>
    /// 1 while the responder serves this listener (read per SYN by the queue threads).
    private let activeFlag: UnsafeMutablePointer<UInt64>

    init(key: ListenerKey) {
        self.key = key
        storage = .allocate(capacity: Counter.allCases.count + 1)
        storage.initialize(repeating: 0, count: Counter.allCases.count + 1)
        activeFlag = storage + Counter.allCases.count
    }

    deinit { storage.deallocate() }

    @inline(__always) public func add(_ counter: Counter) { proxyside_counter_add(storage + counter.rawValue, 1) }
    public func value(_ counter: Counter) -> UInt64 { proxyside_counter_load(storage + counter.rawValue) }
    public var isActive: Bool { proxyside_counter_load(activeFlag) != 0 }
    func setActive(_ active: Bool) { proxyside_counter_store(activeFlag, active ? 1 : 0) }
}

/// What the queue threads need to answer a SYN for one listener.
public struct ResponderListener: Sendable {
    public var record: ListenerRecord
    public var windowScale: UInt8
    public var receiveBuffer: UInt32
    /// The accept queue is full: the kernel would drop the handshake's ACK, so SYNs go to the kernel.
    public var acceptQueueFull: Bool
}

/// The monitor's latest view, shared with the queue threads: they copy it when the generation changes.
public final class ResponderBoard: @unchecked Sendable {
    public struct Snapshot: Sendable {
        public var generation: UInt64 = 0
        public var listeners: [ListenerKey: ResponderListener] = [:]
        public var settings = TCPHostSettings()

        public func listener(for flow: FlowKey) -> ResponderListener? {
            for key in ListenerKey.candidates(for: flow) {
                if let listener = listeners[key] { return listener }
            }
            return nil
        }
    }

    public static let maximumRecords = 4096
    private var lock = pthread_mutex_t()
    private var current = Snapshot()
    private var records: [ListenerKey: ListenerRecord] = [:]
    private let generationCell = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(&lock, nil)
        generationCell.initialize(to: 0)
    }

    deinit { generationCell.deallocate() }

    public var generation: UInt64 { proxyside_counter_load(generationCell) }

    public func snapshot() -> Snapshot {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return current
    }

    /// The record for `key`; made when `create` (at most `maximumRecords`, then nil).
    func record(for key: ListenerKey, create: Bool = true) -> ListenerRecord? {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        if let record = records[key] { return record }
        guard create, records.count < Self.maximumRecords else { return nil }
        let record = ListenerRecord(key: key)
        records[key] = record
        return record
    }

    public var allRecords: [ListenerRecord] {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return records.values.sorted { $0.key.description < $1.key.description }
    }

    func publish(_ listeners: [ListenerKey: ResponderListener], settings: TCPHostSettings) {
        pthread_mutex_lock(&lock)
        current.generation &+= 1
        current.listeners = listeners
        current.settings = settings
        let generation = current.generation
        pthread_mutex_unlock(&lock)
        proxyside_counter_store(generationCell, generation)
    }
}

/// The sysctls of one network namespace that shape a cookie handshake; the files are opened inside
/// the namespace once and re-read on every refresh.
final class TCPSettingsReader {
    private enum Field: CaseIterable {
        case syncookies, timestamps, sack, windowScaling, tcpReceiveMemory, receiveMemoryMaximum, defaultTTL

        var path: String {
            switch self {
            case .syncookies: "/proc/sys/net/ipv4/tcp_syncookies"
            case .timestamps: "/proc/sys/net/ipv4/tcp_timestamps"
            case .sack: "/proc/sys/net/ipv4/tcp_sack"
            case .windowScaling: "/proc/sys/net/ipv4/tcp_window_scaling"
            case .tcpReceiveMemory: "/proc/sys/net/ipv4/tcp_rmem"
            case .receiveMemoryMaximum: "/proc/sys/net/core/rmem_max"
            case .defaultTTL: "/proc/sys/net/ipv4/ip_default_ttl"
            }
        }
    }

    private var files: [(Field, Int32)] = []

    init(namespace: NetworkNamespace?) throws {
        files = try namespace.run { Field.allCases.map { ($0, open($0.path, O_RDONLY | O_CLOEXEC)) } }
    }

    deinit { files.forEach { if $0.1 >= 0 { close($0.1) } } }

    func read() -> TCPHostSettings {
        var settings = TCPHostSettings()
        for (field, fd) in files where fd >= 0 {
            guard let text = KernelCookieState.readAll(fd) else { continue }
            let numbers = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { UInt32($0) }
            guard let first = numbers.first else { continue }
            switch field {
            case .syncookies: settings.syncookies = Int(first)
            case .timestamps: settings.timestamps = Int(first)
            case .sack: settings.sack = first != 0
            case .windowScaling: settings.windowScaling = first != 0
            case .tcpReceiveMemory:
                if numbers.count == 3 { (settings.tcpReceiveMemoryDefault, settings.tcpReceiveMemoryMaximum) = (numbers[1], numbers[2]) }
            case .receiveMemoryMaximum: settings.receiveMemoryMaximum = first
            case .defaultTTL: settings.defaultTTL = UInt8(clamping: first)
            }
        }
        return settings
    }
}

public struct ResponderConfiguration: Sendable {
    public var mode: ResponderMode
    public var policy: OverflowPolicy
    public var scanIntervalNanoseconds: UInt64
    /// While active, one SYN per listener and interval (per queue thread) still reaches the kernel,
    /// which answers it with its own cookie while the queue is full and so keeps its overflow mark.
    public var passIntervalNanoseconds: UInt64

    public init(mode: ResponderMode = .auto, policy: OverflowPolicy = OverflowPolicy(),
                scanIntervalNanoseconds: UInt64 = 200_000_000, passIntervalNanoseconds: UInt64 = 1_000_000_000) {
        self.mode = mode
        self.policy = policy
        self.scanIntervalNanoseconds = scanIntervalNanoseconds
        self.passIntervalNanoseconds = passIntervalNanoseconds
    }
}

/// Watches the namespace's listeners through sock_diag and publishes the ones whose SYN queue
/// overflows (or all of them, in `always` mode). The netns counters of SYN-queue overflow make it
/// scan at once instead of waiting for the next interval.
public final class ListenerMonitor: @unchecked Sendable {
    public let board = ResponderBoard()
    public let configuration: ResponderConfiguration
    private let sockDiag: SockDiag
    private let settingsReader: TCPSettingsReader
    private let netstatFD: Int32
    private var tracker: ListenerOverflowTracker
    private var overflowSignal: UInt64?
    private let log: @Sendable (String) -> Void
    public private(set) var settings: TCPHostSettings
    /// TcpExt counters exported with the metrics (read on every poll).
    public static let kernelCounters = ["TCPReqQFullDoCookies", "TCPReqQFullDrop", "ListenOverflows", "SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed"]
    private let kernelValues: UnsafeMutablePointer<UInt64>

    public init(configuration: ResponderConfiguration, namespace: String?, log: @escaping @Sendable (String) -> Void) throws {
        self.configuration = configuration
        self.log = log
        let namespace = try namespace.map { try NetworkNamespace(nameOrPath: $0) }
        sockDiag = try SockDiag(namespace: namespace)
        settingsReader = try TCPSettingsReader(namespace: namespace)
        netstatFD = try namespace.run { open("/proc/thread-self/net/netstat", O_RDONLY | O_CLOEXEC) }
        guard netstatFD >= 0 else { throw SystemError("open /proc/net/netstat") }
        settings = settingsReader.read()
        tracker = ListenerOverflowTracker(policy: configuration.policy, kernelNeedsOverflowMark: settings.syncookies != 2)
        kernelValues = .allocate(capacity: Self.kernelCounters.count)
        kernelValues.initialize(repeating: 0, count: Self.kernelCounters.count)
        if configuration.mode == .always && settings.syncookies != 2 {
            throw SystemError("--syn-cookies always", errno: EINVAL,
                              hint: "the kernel accepts cookies for listeners that did not overflow only with net.ipv4.tcp_syncookies=2 (now \(settings.syncookies))")
        }
        if configuration.mode != .off && settings.syncookies == 0 {
            throw SystemError("--syn-cookies \(configuration.mode.rawValue)", errno: EINVAL,
                              hint: "net.ipv4.tcp_syncookies=0: the kernel accepts no cookie; set it to 1 or use --syn-cookies off")
        }
    }

    deinit {
        close(netstatFD)
        kernelValues.deallocate()
    }

    public func kernelCounter(_ index: Int) -> UInt64 { proxyside_counter_load(kernelValues + index) }

    /// Scans until `stop` is signalled: every scan interval, and at once when overflow counters rise.
    public func run(stop: EventFD) {
        var lastScan: UInt64 = 0
        let poll = min(configuration.scanIntervalNanoseconds, 50_000_000)
        while true {
            var descriptor = pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0)
            if Glibc.poll(&descriptor, 1, Int32(poll / 1_000_000)) > 0 { return }
            let now = MonotonicClock.nanoseconds()
            let overflowed = readKernelCounters()
            if overflowed || now &- lastScan >= configuration.scanIntervalNanoseconds {
                lastScan = now
                scan(now: now)
            }
        }
    }

    /// Reads the TcpExt counters; true when a SYN-queue or accept-queue overflow counter rose.
    private func readKernelCounters() -> Bool {
        guard let text = KernelCookieState.readAll(netstatFD) else { return false }
        for (index, name) in Self.kernelCounters.enumerated() {
            if let value = KernelCookieState.tcpExtCounter(name, in: text) {
                proxyside_counter_store(kernelValues + index, value)
            }
        }
        let signal = kernelCounter(0) &+ kernelCounter(1) &+ kernelCounter(2)
        defer { overflowSignal = signal }
        return overflowSignal.map { signal != $0 } ?? false
    }

    public func scan(now: UInt64) {
        settings = settingsReader.read()
        tracker.kernelNeedsOverflowMark = settings.syncookies != 2
        let observations: [ListenerObservation]
        do { observations = try sockDiag.dumpListeners() } catch {
            log("listener scan failed, keeping the last one: \(error)")
            return
        }
        for event in tracker.update(observations, now: now) {
            switch event {
            case .activated(let observation):
                board.record(for: observation.key)?.add(.activations)
                log("SYN cookies on for \(observation.key): SYN queue \(observation.requestSockets)/\(observation.backlog), accept queue \(observation.acceptQueue)")
            case .deactivated(let key, let reason):
                log("SYN cookies off for \(key): \(reason)")
            }
        }
        var published: [ListenerKey: ResponderListener] = [:]
        for (key, state) in tracker.states {
            let serve = configuration.mode == .always || (configuration.mode == .auto && state.active)
            let record = board.record(for: key, create: serve)
            record?.setActive(serve)
            guard serve, let record else { continue }
            let observation = state.observation
            // A listener starts with tcp_rmem[1]; any other size was set with SO_RCVBUF, which the
            // kernel treats as a cap on the child's window. (Unknown: assume the default.)
            let receiveBuffer = observation.receiveBuffer == 0 ? settings.tcpReceiveMemoryDefault : observation.receiveBuffer
            let locked = receiveBuffer != settings.tcpReceiveMemoryDefault
            published[key] = ResponderListener(
                record: record,
                windowScale: TCPWindow.receiveScale(listenerReceiveBuffer: receiveBuffer, receiveBufferLocked: locked, settings: settings),
                receiveBuffer: receiveBuffer,
                acceptQueueFull: observation.backlog > 0 && observation.acceptQueue >= observation.backlog)
        }
        board.publish(published, settings: settings)
    }
}

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
    private static let replySlot = 128
    private let replyPool = UnsafeMutableRawPointer.allocate(byteCount: ForwardBatch.capacity * replySlot, alignment: 16)

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
    func prepare(_ packets: UnsafeBufferPointer<NetfilterQueue.QueuedPacket>, _ parsed: [Decider.Parsed], now: UInt64, sender: RawIPSender,
                 decider: Decider) {
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
                let request = requests[family][position]
                let offer = SynCookieReply.offer(request.options, settings: snapshot.settings, ourWindowScale: listener.windowScale,
                                                 nowMilliseconds: now / 1_000_000)
                let window = TCPWindow.synAckWindow(listenerReceiveBuffer: listener.receiveBuffer,
                                                    mss: offer.timestamp == nil ? mss : mss - 12)
                let reply = SynCookieReply.build(request.packet, request.segment, cookie: value, mss: mss, offer: offer,
                                                 window: window, ttl: snapshot.settings.defaultTTL)
                outcomes[index] = send(reply, ipv6: family == 1, index: index, record: listener.record, sender: sender)
            }
        }
        flushReplies(sender)
    }

    /// IPv4 replies wait for one sendmmsg (counted as answered, corrected if the send fails);
    /// IPv6 ones go out at once.
    private func send(_ reply: [UInt8], ipv6: Bool, index: Int, record: ListenerRecord, sender: RawIPSender) -> Outcome {
        if ipv6 {
            guard reply.withUnsafeBytes({ sender.sendIPv6($0) }) == 0 else { return .failed }
            record.add(.cookiesSent)
            return .answered
        }
        if replies.count == ForwardBatch.capacity { flushReplies(sender) }
        let slot = replyPool + replies.count * Self.replySlot
        reply.withUnsafeBytes { slot.copyMemory(from: $0.baseAddress!, byteCount: min($0.count, Self.replySlot)) }
        _ = replies.append(UnsafeRawBufferPointer(start: slot, count: min(reply.count, Self.replySlot)))
        replyIndexes.append(index)
        replyRecords.append(record)
        return .answered
    }

    private func flushReplies(_ sender: RawIPSender) {
        guard replies.count > 0 else { return }
        let failed = replies.flush(sender)
        for position in failed { outcomes[replyIndexes[position]] = .failed }
        for (position, record) in replyRecords.enumerated() where !failed.contains(position) { record.add(.cookiesSent) }
        replyIndexes.removeAll(keepingCapacity: true)
        replyRecords.removeAll(keepingCapacity: true)
    }
}

/// The responder's per-listener counters and the namespace's TcpExt cookie counters, for the stats server.
public enum ResponderReport {
    public static func prometheus(_ monitor: ListenerMonitor) -> String {
        var out = "# HELP second_chance_listener_syn_cookies_active 1 while the responder answers this listener's SYNs.\n"
        out += "# TYPE second_chance_listener_syn_cookies_active gauge\n"
        let records = monitor.board.allRecords
        for record in records { out += "second_chance_listener_syn_cookies_active{listener=\"\(record.key)\"} \(record.isActive ? 1 : 0)\n" }
        for counter in ListenerRecord.Counter.allCases {
            out += "# TYPE \(counter.metric) counter\n"
            for record in records { out += "\(counter.metric){listener=\"\(record.key)\"} \(record.value(counter))\n" }
        }
        out += "# HELP second_chance_kernel_tcpext TcpExt counters of the namespace whose listeners are watched.\n"
        out += "# TYPE second_chance_kernel_tcpext counter\n"
        for (index, name) in ListenerMonitor.kernelCounters.enumerated() {
            out += "second_chance_kernel_tcpext{name=\"\(name)\"} \(monitor.kernelCounter(index))\n"
        }
        return out
    }

    /// One line per listener the responder has seen overflow (or serves), then the kernel counters.
    public static func text(_ monitor: ListenerMonitor) -> String {
        var out = "syn_cookies_mode: \(monitor.configuration.mode.rawValue)\n"
        for record in monitor.board.allRecords {
            out += "listener \(record.key) active \(record.isActive ? 1 : 0)"
            for counter in ListenerRecord.Counter.allCases { out += " \(counter.shortName) \(record.value(counter))" }
            out += "\n"
        }
        for (index, name) in ListenerMonitor.kernelCounters.enumerated() { out += "kernel_\(name): \(monitor.kernelCounter(index))\n" }
        return out
    }
}
