import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import Logging
import LinuxSys
import NetTypes
import Telemetry

public struct BrokerOptions: Sendable {
    public var controlPath: String
    public var policy: Policy
    /// listen(2) backlog when a request names none; the kernel caps it at somaxconn.
    public var defaultBacklog: Int32 = 65535
    public var maximumClients = 4096
    /// A client whose message stays incomplete this long is cut off (it holds a slot, not the loop).
    public var stalledMessageSeconds: UInt64 = 10
    /// A client that sends no whole request for this long is cut off (it may not hold a slot forever).
    public var idleSeconds: UInt64 = 60
    /// Connections one uid may hold; beyond it a new one is closed at once.
    public var maximumClientsPerUser = 64
    /// Sockets one uid (not root, not the broker's) may have created.
    public var maximumSocketsPerUser = 256
    /// Replies a client has not read, in bytes, before it is cut off.
    public var maximumUnreadReplies = 1 << 20
    public var metrics: Endpoint?

    public init(controlPath: String, policy: Policy) {
        self.controlPath = controlPath
        self.policy = policy
    }
}

/// The socket broker: owns every socket it binds, hands the same kernel socket to every client that
/// asks (SCM_RIGHTS), serves many clients from one poll loop (non-blocking, bounded per client), and
/// keeps its sockets across re-exec and, under systemd, across crashes (the fd store).
public final class Broker: @unchecked Sendable {
    struct Entry {
        var request: BindRequest
        var fd: Int32
        var handedOut: UInt64
        var backlog: BacklogReport?
        /// Whose request made it; nil when unknown (recovered from the fd store).
        var creator: UInt32?
    }

    /// SO_PEERCRED: who connected (uid 0 and the broker's own uid may do anything).
    struct Peer {
        var pid: Int32 = 0
        var uid = UInt32.max
        var gid = UInt32.max
    }

    final class Client {
        let fd: Int32
        var reader: RequestReader
        var outbox: [(bytes: [UInt8], offset: Int, fds: [Int32])] = []
        var unread = 0
        var incompleteSince: UInt64?
        /// When it connected or last sent a whole request.
        var lastRequest = MonotonicClock.nanoseconds()
        var closing = false
        var peer = Peer()

        init(fd: Int32, wire: Wire? = nil, pending: [UInt8] = []) {
            self.fd = fd
            reader = RequestReader(wire: wire)
            reader.append(pending)
            var pid: Int32 = 0, uid = UInt32.max, gid = UInt32.max
            if proxyside_peer_credentials(fd, &pid, &uid, &gid) == 0 { peer = Peer(pid: pid, uid: uid, gid: gid) }
        }
    }

    public struct Statistics: Sendable {
        public var binds = 0, bindsCreated = 0, bindErrors = 0, denied = 0, conflicts = 0, badRequests = 0
        public var clientsAccepted = 0, clientsConnected = 0, clientsCutOff = 0, incompleteAtEOF = 0
        /// Connections refused for --max-clients-per-user, idle clients cut off, binds refused for
        /// --max-sockets-per-user.
        public var clientsOverLimit = 0, clientsIdle = 0, socketLimitRefusals = 0
        public var reexecs = 0
        public var sockets: [(key: String, handedOut: UInt64)] = []
    }

    private let options: BrokerOptions
    private var control: Int32 = -1
    private var sockets: [String: Entry] = [:]
    private var order: [String] = []
    private var clients: [Int32: Client] = [:]
    private var clientsPerUser: [UInt32: Int] = [:]
    /// When a limit was last logged: a flood of refusals is counted, and logged once a second.
    private var lastLimitLog: UInt64 = 0
    private let notifier: SDNotify?
    private let shutdown: EventFD
    private let reexecSignal: EventFD
    private var reexecRequested = false
    /// What `version` printed when a client's request checked the installed file.
    private var checkedImage: String?
    private var statistics = Statistics()
    private var published = Statistics()
    private let statisticsLock = NSLock()
    private var metricsServer: StatsServer?
    private let logger: Logger
    /// The program's path, resolved at start: a re-exec runs whatever is installed there now (after
    /// an upgrade, the new binary; /proc/self/exe would name the deleted old one).
    private let executable: String

    public init(options: BrokerOptions, environment: [String: String] = ProcessInfo.processInfo.environment,
                logger: Logger) throws {
        self.options = options
        self.logger = logger
        executable = ProgramImage.startPath()
        shutdown = try EventFD()
        reexecSignal = try EventFD()
        notifier = SDNotify(environment: environment)
        raiseFileLimit()
        try Signals.install(shutdown: shutdown)
        try Signals.forward(SIGUSR1, to: reexecSignal)
        // A re-exec blocks these before exec(2): one that arrived meanwhile is pending, and is
        // delivered to the handlers just installed instead of killing the new program.
        ProgramImage.setHandledSignalsBlocked(false)
        try adopt(environment)
        if control < 0 {
            control = try Self.listenControl(options)
            // In the store, the control socket outlives a crash too: clients queue, not fail, until the restart.
            do { try notifier?.store(control, name: FDStoreName.control) } catch { logger.info("fd store control socket: \(error)") }
        }
        if let metrics = options.metrics {
            metricsServer = try StatsServer(metrics: metrics, controlPath: nil) { [unowned self] _ in self.prometheus() }
        }
        try? notifier?.send("READY=1\nSTATUS=serving \(sockets.count) sockets on \(options.controlPath)")
    }

    /// Serves until SIGTERM/SIGINT. Returns normally; the control socket file is removed.
    public func run() {
        if let metricsServer {
            let stop = shutdown
            _ = try? WorkerThread { metricsServer.serve(stop: stop) }
        }
        var fds: [pollfd] = []
        while true {
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: shutdown.fd, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: reexecSignal.fd, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: control, events: clients.count < options.maximumClients ? Int16(POLLIN) : 0, revents: 0))
            for client in clients.values {
                let events = (client.closing ? 0 : POLLIN) | (client.outbox.isEmpty ? 0 : POLLOUT)
                fds.append(pollfd(fd: client.fd, events: Int16(events), revents: 0))
            }
            let ready = poll(&fds, nfds_t(fds.count), 1000)
            if ready < 0 && errno != EINTR { logger.info("poll: \(String(cString: strerror(errno)))"); break }
            if fds[0].revents != 0 { break }
            if fds[1].revents != 0 { reexecSignal.consume(); reexecRequested = true }
            if fds[2].revents != 0 { acceptClients() }
            for entry in fds.dropFirst(3) where entry.revents != 0 {
                guard let client = clients[entry.fd] else { continue }
                if entry.revents & Int16(POLLOUT) != 0 { flush(client) }
                if entry.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { readFrom(client) }
            }
            cutOffStalledClients()
            if metricsServer != nil { publishStatistics() }
            if reexecRequested {
                reexecRequested = false
                reexec()
            }
        }
        for client in clients.values { flush(client); close(client.fd) }
        clients.removeAll()
        closeControl()
        logger.info("stopped")
    }

    // MARK: Clients

    private func acceptClients() {
        while clients.count < options.maximumClients {
            let fd = accept(control, nil, nil)
            guard fd >= 0 else { return }
            Descriptors.setCloseOnExec(fd, true)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            let client = Client(fd: fd)
            guard clientsPerUser[client.peer.uid, default: 0] < options.maximumClientsPerUser else {
                statistics.clientsOverLimit += 1
                logLimited("uid \(client.peer.uid) holds \(options.maximumClientsPerUser) connections (--max-clients-per-user); refused one")
                close(fd)
                continue
            }
            register(client)
            statistics.clientsAccepted += 1
        }
    }

    private func register(_ client: Client) {
        clients[client.fd] = client
        clientsPerUser[client.peer.uid, default: 0] += 1
    }

    private func logLimited(_ message: String) {
        let now = MonotonicClock.nanoseconds()
        guard now &- lastLimitLog >= 1_000_000_000 else { return }
        lastLimitLog = now
        logger.info("\(message)")
    }

    /// One read buffer for every client: the loop reads one client at a time.
    private var readBuffer = [UInt8](repeating: 0, count: 65536)

    private func readFrom(_ client: Client) {
        let count = read(client.fd, &readBuffer, readBuffer.count)
        if count < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            drop(client, "read: \(String(cString: strerror(errno)))")
            return
        }
        if count == 0 {
            if client.reader.bufferedBytes > 0 {
                statistics.incompleteAtEOF += 1
                logger.info("client pid \(client.peer.pid) closed in the middle of a message (\(client.reader.bufferedBytes) bytes)")
            }
            flush(client)
            drop(client, nil)
            return
        }
        client.reader.append(readBuffer[0..<count])
        while !client.closing, let next = client.reader.next() {
            switch next {
            case .request(let request):
                client.lastRequest = MonotonicClock.nanoseconds()
                handle(request, from: client)
            case .failure(let failure, let fatal):
                statistics.badRequests += 1
                logger.info("client pid \(client.peer.pid): \(failure.error.message)")
                enqueue(failure.wire.error(id: failure.id, failure.error), fds: [], to: client)
                if fatal { client.closing = true }
            }
        }
        client.incompleteSince = client.reader.bufferedBytes > 0 ? (client.incompleteSince ?? MonotonicClock.nanoseconds()) : nil
        flush(client)  // drops a closing client once its last reply is out
    }

    private func cutOffStalledClients() {
        let now = MonotonicClock.nanoseconds()
        for client in clients.values {
            if let since = client.incompleteSince, now &- since > options.stalledMessageSeconds * 1_000_000_000 {
                statistics.clientsCutOff += 1
                drop(client, "client pid \(client.peer.pid) sent an incomplete message for \(options.stalledMessageSeconds) s; cut off")
            } else if client.outbox.isEmpty, now &- client.lastRequest > options.idleSeconds * 1_000_000_000 {
                statistics.clientsIdle += 1
                drop(client, nil)
                logLimited("client pid \(client.peer.pid) uid \(client.peer.uid) sent no request for \(options.idleSeconds) s; cut off")
            }
        }
    }

    private func enqueue(_ bytes: [UInt8], fds: [Int32], to client: Client) {
        client.outbox.append((bytes, 0, fds))
        client.unread += bytes.count
        if client.unread > options.maximumUnreadReplies {
            statistics.clientsCutOff += 1
            client.outbox.removeAll()
            client.closing = true
            logger.info("client pid \(client.peer.pid) does not read its replies; cut off")
        }
    }

    private func flush(_ client: Client) {
        while let first = client.outbox.first {
            let sent: Int
            do {
                sent = try FDPassing.send(client.fd, first.bytes[first.offset...], fds: first.offset == 0 ? first.fds : [], flags: Int32(MSG_DONTWAIT))
            } catch {
                drop(client, nil)
                return
            }
            if sent == 0 { return }
            client.unread -= sent
            if first.offset + sent == first.bytes.count {
                client.outbox.removeFirst()
            } else {
                client.outbox[0].offset += sent
            }
        }
        if client.closing { drop(client, nil) }
    }

    private func drop(_ client: Client, _ reason: String?) {
        if let reason { logger.info("\(reason)") }
        guard clients.removeValue(forKey: client.fd) != nil else { return }
        if let count = clientsPerUser[client.peer.uid] { clientsPerUser[client.peer.uid] = count > 1 ? count - 1 : nil }
        close(client.fd)
    }

    // MARK: Requests

    private func handle(_ request: Wire.Request, from client: Client) {
        let wire = request.wire
        switch request.method {
        case .bind(let binds):
            statistics.binds += binds.count
            switch bind(binds, peer: client.peer) {
            case .success(let entries):
                for key in entries { sockets[key]!.handedOut += 1 }
                let result: [String: Any] = ["sockets": entries.map { key -> [String: Any] in
                    let entry = sockets[key]!
                    var item: [String: Any] = ["key": key, "url": entry.request.url]
                    if let backlog = entry.backlog {
                        item["backlog"] = backlog.json
                        if let warning = backlog.warning { item["warning"] = warning }
                    }
                    return item
                }]
                enqueue(wire.result(id: request.id, result), fds: entries.map { sockets[$0]!.fd }, to: client)
            case .failure(let error):
                statistics.bindErrors += 1
                logger.info("client pid \(client.peer.pid) uid \(client.peer.uid): \(error.message)")
                enqueue(wire.error(id: request.id, error), fds: [], to: client)
            }
        case .list:
            enqueue(wire.result(id: request.id, listing()), fds: [], to: client)
        case .reexec:
            guard client.peer.uid == 0 || client.peer.uid == options.policy.brokerUID else {
                statistics.denied += 1
                enqueue(wire.error(id: request.id, .permissionDenied("uid \(client.peer.uid) may not re-execute the broker")), fds: [], to: client)
                return
            }
            // The installed file is checked before the answer, so the client learns of a bad upgrade.
            switch ProgramImage.check(executable) {
            case .success(let line):
                checkedImage = line
                enqueue(wire.result(id: request.id, ["pid": Int(getpid()), "image": line]), fds: [], to: client)
                reexecRequested = true
            case .failure(let error):
                logger.info("re-exec refused: \(error); still serving")
                enqueue(wire.error(id: request.id, .reexecRefused("\(executable): \(error)")), fds: [], to: client)
            }
        }
    }

    /// All or none: every request is checked (policy, conflicts, the user's socket limit) before
    /// any socket is made.
    private func bind(_ requests: [BindRequest], peer: Peer) -> Result<[String], Wire.RPCError> {
        var creating: Set<String> = []
        for request in requests {
            let owner: UInt32?, group: UInt32?
            do {
                owner = try request.owner.map { try Accounts.uid($0) }
                group = try request.group.map { try Accounts.gid($0) }
            } catch {
                return .failure(.bindFailed("\(error)"))
            }
            if let denial = options.policy.denial(uid: peer.uid, gid: peer.gid, request: request, owner: owner, group: group) {
                statistics.denied += 1
                return .failure(.permissionDenied(denial))
            }
            if let existing = sockets[request.key], let conflict = existing.request.conflict(with: request) {
                statistics.conflicts += 1
                return .failure(.conflict(conflict))
            }
            if sockets[request.key] == nil { creating.insert(request.key) }
        }
        if peer.uid != 0, peer.uid != options.policy.brokerUID, !creating.isEmpty {
            let owned = sockets.values.filter { $0.creator == peer.uid }.count
            guard owned + creating.count <= options.maximumSocketsPerUser else {
                statistics.socketLimitRefusals += 1
                logLimited("uid \(peer.uid) has \(owned) sockets (--max-sockets-per-user \(options.maximumSocketsPerUser)); refused \(creating.count) more")
                return .failure(.limit("uid \(peer.uid) may have the broker create at most \(options.maximumSocketsPerUser) sockets; it has \(owned)"))
            }
        }
        var keys: [String] = []
        for request in requests {
            if sockets[request.key] == nil {
                let report = backlogReport(for: request)
                do {
                    let fd = try OwnedSocket.open(request, backlog: report?.requested ?? 0)
                    add(Entry(request: request, fd: fd, handedOut: 0, backlog: report, creator: peer.uid), stored: false)
                    statistics.bindsCreated += 1
                    if let warning = report?.warning { logger.info("\(request.key): \(warning)") }
                    logger.info("bound \(request.url)\(report.map { " (backlog \($0.effective))" } ?? "")")
                } catch {
                    return .failure(.bindFailed("\(error)"))
                }
            }
            keys.append(request.key)
        }
        return .success(keys)
    }

    /// What listen(2) gets for a stream socket, against this namespace's somaxconn; nil for UDP.
    private func backlogReport(for request: BindRequest) -> BacklogReport? {
        request.isStream ? BacklogReport(requested: request.backlog, default: options.defaultBacklog, somaxconn: OwnedSocket.somaxconn()) : nil
    }

    private func add(_ entry: Entry, stored: Bool) {
        sockets[entry.request.key] = entry
        order.append(entry.request.key)
        guard let notifier, !stored else { return }
        if let name = FDStoreName.encode(entry.request) {
            do { try notifier.store(entry.fd, name: name) } catch { logger.info("fd store \(entry.request.key): \(error)") }
        } else {
            logger.info("\(entry.request.key): name too long for the fd store; it will not survive a crash")
        }
    }

    private func listing() -> [String: Any] {
        let listeners = (try? SockDiag().dumpListeners()) ?? []
        let queues = Dictionary(listeners.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        let items: [[String: Any]] = order.compactMap { key in
            guard let entry = sockets[key] else { return nil }
            var item: [String: Any] = ["key": key, "url": entry.request.url, "fd": Int(entry.fd), "handed_out": entry.handedOut,
                                       "cookie": OwnedSocket.cookie(entry.fd) ?? 0]
            if let backlog = entry.backlog { item["backlog"] = backlog.json }
            if entry.request.kind == .tcp, let address = IPAddress(entry.request.address.split(separator: "%").first.map(String.init) ?? ""),
               let observed = queues[ListenerKey(address: address, port: entry.request.port)] {
                item["accept_queue"] = Int(observed.acceptQueue)
                item["syn_queue"] = Int(observed.requestSockets)
                item["kernel_backlog"] = Int(observed.backlog)
            }
            return item
        }
        return ["pid": Int(getpid()), "control": options.controlPath, "sockets": items,
                "clients_connected": clients.count, "clients_served": statistics.clientsAccepted]
    }

    // MARK: Start-up: what a previous broker left

    /// Takes over a re-executed broker's state, or the sockets systemd hands back from the fd store.
    private func adopt(_ environment: [String: String]) throws {
        // Fds handed to this process (the state below, or systemd's) are for it alone, not its children.
        for name in ListenFDs.variables { unsetenv(name) }
        if let text = environment[BrokerState.environmentName], let fd = Int32(text) {
            unsetenv(BrokerState.environmentName)
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            lseek(fd, 0, SEEK_SET)
            while true {
                let count = read(fd, &chunk, chunk.count)
                if count <= 0 { break }
                bytes += chunk[0..<count]
            }
            close(fd)
            let state = try BrokerState.decode(bytes).get()
            control = state.control
            Descriptors.setCloseOnExec(control, true)
            for socket in state.sockets {
                Descriptors.setCloseOnExec(socket.fd, true)
                add(Entry(request: socket.request, fd: socket.fd, handedOut: socket.handedOut, backlog: backlogReport(for: socket.request),
                          creator: socket.creator), stored: true)
            }
            for saved in state.clients {
                Descriptors.setCloseOnExec(saved.fd, true)
                register(Client(fd: saved.fd, wire: saved.wire, pending: saved.pending))
            }
            logger.info("re-executed: kept \(state.sockets.count) sockets, \(state.clients.count) clients and the control socket")
            return
        }
        let passed = ListenFDs.parse(environment, pid: getpid())
        guard !passed.isEmpty else { return }
        for (fd, name) in passed {
            Descriptors.setCloseOnExec(fd, true)
            if name == FDStoreName.control {
                control = fd
            } else if let request = FDStoreName.decode(name) {
                add(Entry(request: request, fd: fd, handedOut: 0, backlog: backlogReport(for: request)), stored: true)
            } else {
                logger.info("passed fd \(fd) named \(name) is not a bindkeeper socket; closed")
                close(fd)
            }
        }
        logger.info("recovered \(sockets.count) sockets from the service manager\(control >= 0 ? " and the control socket" : "")")
    }

    /// The control socket, placed like every Unix socket the broker makes (no symlink followed,
    /// mode and group set before it appears at its path).
    private static func listenControl(_ options: BrokerOptions) throws -> Int32 {
        var request: BindRequest
        switch BindRequest.validated(kind: .unix, address: options.controlPath, port: 0) {
        case .success(let valid): request = valid
        case .failure(let error): throw SystemError("control socket: \(error)", errno: EINVAL)
        }
        request.mode = options.policy.controlMode ?? 0o660
        request.group = options.policy.controlGroup
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(AF_UNIX)") }
        do {
            try OwnedSocket.placeUnix(fd, request)
            guard listen(fd, 1024) == 0 else { throw SystemError("listen \(options.controlPath)") }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    private func closeControl() {
        close(control)
        unlink(options.controlPath)
    }

    // MARK: Re-exec

    /// Replaces the program in place: sockets, the control socket and connected clients stay open
    /// across exec(2), described in a memfd. On failure the broker goes on serving.
    private func reexec() {
        // A file that does not run is found before this image is given up.
        let checked: String
        switch checkedImage.map({ .success($0) }) ?? ProgramImage.check(executable) {
        case .success(let line): checked = line
        case .failure(let error):
            logger.info("re-exec refused: \(error); still serving")
            return
        }
        checkedImage = nil
        for client in clients.values {
            // Replies already promised go out first (briefly blocking); the client keeps its connection.
            let flags = fcntl(client.fd, F_GETFL)
            _ = fcntl(client.fd, F_SETFL, flags & ~O_NONBLOCK)
            SocketOptions.setTimeout(client.fd, SO_SNDTIMEO, seconds: 1)
            flush(client)
            _ = fcntl(client.fd, F_SETFL, flags)
        }
        let state = BrokerState(
            control: control,
            sockets: order.compactMap { sockets[$0] }.map { .init(fd: $0.fd, request: $0.request, handedOut: $0.handedOut, creator: $0.creator) },
            clients: clients.values.filter { !$0.closing }.map { .init(fd: $0.fd, wire: $0.reader.wire, pending: $0.reader.pending) })
        let memfd = proxyside_memfd("bindkeeper-state")
        guard memfd >= 0 else { logger.info("re-exec: memfd: \(String(cString: strerror(-memfd)))"); return }
        let bytes = state.encoded()
        guard bytes.withUnsafeBytes({ write(memfd, $0.baseAddress, $0.count) }) == bytes.count else {
            logger.info("re-exec: writing state failed")
            close(memfd)
            return
        }
        let kept = [(control, "control")] + state.sockets.map { ($0.fd, "socket") } + state.clients.map { ($0.fd, "client") }
        statistics.reexecs += 1
        logger.info("re-executing \(executable) (\(checked)) with \(state.sockets.count) sockets and \(state.clients.count) clients")
        try? notifier?.send("RELOADING=1\nMONOTONIC_USEC=\(MonotonicClock.nanoseconds() / 1000)")
        let failure = ProgramImage.execute(executable, arguments: CommandLine.arguments, keeping: kept,
                                           extraEnvironment: [BrokerState.environmentName: String(memfd)])
        statistics.reexecs -= 1
        close(memfd)
        try? notifier?.send("READY=1")
        logger.info("re-exec of \(executable) failed: \(String(cString: strerror(failure))); still serving")
    }

    // MARK: Metrics

    private func raiseFileLimit() {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }

    /// The loop's counters, copied for the metrics thread once per loop turn.
    private func publishStatistics() {
        statistics.clientsConnected = clients.count
        statistics.sockets = order.compactMap { key in sockets[key].map { (key, $0.handedOut) } }
        statisticsLock.lock()
        published = statistics
        statisticsLock.unlock()
    }

    public func snapshot() -> Statistics {
        statisticsLock.lock()
        defer { statisticsLock.unlock() }
        return published
    }

    private func prometheus() -> String {
        let s = snapshot()
        var lines = [
            "# TYPE bindkeeper_sockets gauge", "bindkeeper_sockets \(s.sockets.count)",
            "# TYPE bindkeeper_clients_connected gauge", "bindkeeper_clients_connected \(s.clientsConnected)",
            "# TYPE bindkeeper_clients_total counter", "bindkeeper_clients_total \(s.clientsAccepted)",
            "# TYPE bindkeeper_binds_total counter", "bindkeeper_binds_total \(s.binds)",
            "# TYPE bindkeeper_sockets_created_total counter", "bindkeeper_sockets_created_total \(s.bindsCreated)",
            "# TYPE bindkeeper_bind_errors_total counter", "bindkeeper_bind_errors_total \(s.bindErrors)",
            "# TYPE bindkeeper_denied_total counter", "bindkeeper_denied_total \(s.denied)",
            "# TYPE bindkeeper_conflicts_total counter", "bindkeeper_conflicts_total \(s.conflicts)",
            "# TYPE bindkeeper_bad_requests_total counter", "bindkeeper_bad_requests_total \(s.badRequests)",
            "# TYPE bindkeeper_clients_cut_off_total counter", "bindkeeper_clients_cut_off_total \(s.clientsCutOff)",
            "# TYPE bindkeeper_incomplete_at_eof_total counter", "bindkeeper_incomplete_at_eof_total \(s.incompleteAtEOF)",
            "# TYPE bindkeeper_reexecs_total counter", "bindkeeper_reexecs_total \(s.reexecs)",
            "# TYPE bindkeeper_clients_over_limit_total counter", "bindkeeper_clients_over_limit_total \(s.clientsOverLimit)",
            "# TYPE bindkeeper_clients_idle_cut_off_total counter", "bindkeeper_clients_idle_cut_off_total \(s.clientsIdle)",
            "# TYPE bindkeeper_socket_limit_refusals_total counter", "bindkeeper_socket_limit_refusals_total \(s.socketLimitRefusals)",
            "# TYPE bindkeeper_socket_handed_out_total counter",
        ]
        for socket in s.sockets {
            lines.append("bindkeeper_socket_handed_out_total{key=\"\(PrometheusText.escapeLabel(socket.key))\"} \(socket.handedOut)")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
