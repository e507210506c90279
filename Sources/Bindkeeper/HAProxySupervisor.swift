import BindkeeperCore
import Foundation
import Glibc
import LinuxSys
import Logging

public struct HAProxyOptions: Sendable {
    public var socketPath: String
    public var template: String
    /// Where the rendered configuration goes (HAProxy reads it at start and on reload).
    public var rendered: String
    public var pidFile: String?
    /// The HAProxy binary and arguments of the operator's own (not -f, -p, -D, -W, -sf, -st).
    public var haproxy: [String]
    /// How long stopping instances may take to finish their connections before SIGTERM.
    public var stopTimeoutSeconds: Int = 30
    /// The most older instances left finishing their connections after reloads; past it the
    /// oldest is stopped (SIGTERM), so that a reload storm cannot pile up processes.
    public var maxDraining: Int = 8
    /// How long an older instance may finish its connections after a reload before SIGTERM; nil:
    /// as long as they last (HAProxy's own `hard-stop-after`, if set, still applies).
    public var drainSeconds: Int?
    /// Reloads as canaries: nil, a reload replaces the running instance at once.
    public var canary: CanaryOptions?

    public init(socketPath: String, template: String, rendered: String?, pidFile: String?, haproxy: [String]) {
        self.socketPath = socketPath
        self.template = template
        self.rendered = rendered ?? Self.renderedPath(for: template)
        self.pidFile = pidFile
        self.haproxy = haproxy
    }

    /// `site.cfg.tmpl` renders to `site.cfg`; any other name gets `.rendered` appended.
    public static func renderedPath(for template: String) -> String {
        template.hasSuffix(".tmpl") ? String(template.dropLast(5)) : template + ".rendered"
    }

    public static let reservedArguments: Set<String> = ["-f", "-p", "-D", "-W", "-Ws", "-sf", "-st", "-x", "-c"]
}

/// Runs HAProxy on sockets bindkeeper owns and reloads it without dropping a connection: each
/// reload renders the template again (the broker hands back the same kernel sockets), has HAProxy
/// check the result, and only then starts a new HAProxy with `-sf` and the pids of the running ones,
/// which it knows as their parent: no pidfile is read, so none can be stale. A failed check leaves
/// the running instance serving.
///
/// When the current instance exits on its own (killed, crashed, or dead in start-up), the older
/// ones may already be soft-stopping, having been told to finish by it: nobody would accept, and
/// connections would wait in the broker's sockets. So a replacement is started at once, rendered
/// again from the dead one's template text if it ran past its start-up, else from the one before
/// it (an instance still running, or the last that ran past its start-up), at most
/// `maximumReplacements` a minute; past that the supervisor gives up as before when no instance
/// is left, and the service manager restarts it.
public final class HAProxySupervisor {
    let options: HAProxyOptions
    let logger: Logger
    struct Instance {
        var pid: pid_t
        /// The generation of the broker's socket groups it serves (see `CanaryOptions`).
        var generation: UInt8 = 0
        /// The template text it was rendered from.
        var template: String
        var started: UInt64
        /// When a newer instance took over and this one was told to finish (`-sf`).
        var superseded: UInt64?
        /// SIGTERM sent: past the drain deadline or the draining limit.
        var terminated = false
    }
    /// Running instances, oldest first; the last one is the current one.
    var instances: [Instance] = []
    /// A reload's candidate while it serves its share, outside `instances` until it passes.
    var canary: Canary?
    /// Candidates rolled back and finishing what they accepted: never current, never a template
    /// to start again from.
    var rolledBack: [Instance] = []
    /// Generations of a template's groups the broker is still to let go of (it did not answer).
    var releasesDue: [(generation: UInt8, template: String)] = []
    /// The generation the current instance's groups are in; a candidate gets the other one.
    var servedGeneration: UInt8 = 0
    /// The text of the last template whose candidate failed: refused until it changes.
    var failedTemplate: String?
    /// A template whose groups must be steered back to the served generation: a rollback's
    /// steering that failed (the broker restarting), tried again every turn until it holds.
    var steeringDue: String?
    var canariesFailed = 0
    /// The template of the newest instance that lived past `startupNanoseconds`.
    private var lastGoodTemplate: String?
    private var replacements: [UInt64] = []
    private var stopping = false
    static let startupNanoseconds: UInt64 = 2_000_000_000
    static let maximumReplacements = 5

    /// The service manager's notify socket (Type=notify): READY=1 once the first instance runs on
    /// the broker's sockets (which listen already), RELOADING=1 and READY=1 around each reload.
    private let notifier: SDNotify?

    public init(options: HAProxyOptions, logger: Logger) {
        self.options = options
        self.logger = logger
        notifier = SDNotify(environment: ProgramImage.environment())
        // HAProxy itself must not answer for the service (it would with -Ws).
        unsetenv("NOTIFY_SOCKET")
    }

    /// A rendered configuration and the fds it names (still open, not close-on-exec).
    struct Prepared {
        var path: String
        var fds: [Int32]
        func release() { for fd in fds { close(fd) } }
    }

    /// The template as it is on disk now.
    func templateText() throws -> String { try String(contentsOfFile: options.template, encoding: .utf8) }

    /// Renders template `text` to `path` with sockets from the broker, its groups' in `generation`.
    func prepare(_ text: String, to path: String, generation: UInt8 = 0) throws -> Prepared {
        let template = try ConfigTemplate.parse(text).get()
        let binds = template.binds.map { $0.shards == nil ? $0 : $0.inGeneration(generation) }
        // A template that binds nothing through the broker needs no broker.
        let bound = binds.isEmpty ? [] : try BindkeeperClient(path: options.socketPath).bind(binds)
        for socket in bound {
            Descriptors.setCloseOnExec(socket.fd, false)
            if let warning = socket.warning { logger.info("\(socket.key): \(warning)") }
        }
        // A group's members come in member order, each under its URL (member=K); a socket the
        // template names twice (two spellings of one group) is rendered once per name, not twice.
        var seen: Set<String> = []
        let fds = Dictionary(
            bound.filter { seen.insert($0.key).inserted }.map { socket in
                ((try? BindRequest.parse(url: socket.url).get())?.addressKey ?? socket.key, [socket.fd])
            }, uniquingKeysWith: +)
        let prepared = Prepared(path: path, fds: bound.map(\.fd))
        do {
            try template.render(fds: fds).write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            prepared.release()
            throw error
        }
        return prepared
    }

    /// Renders `text` to `path` (groups in `generation`) and has HAProxy check it: the sockets it
    /// names, or an error when the check failed (nothing left at `path`).
    func renderChecked(_ text: String, to path: String, generation: UInt8) throws -> Prepared {
        let prepared = try prepare(text, to: path, generation: generation)
        do {
            let status = try check(path, generation: generation)
            guard status == 0 else {
                throw SystemError("configuration check", errno: EINVAL, hint: "haproxy -c exited \(status)")
            }
        } catch {
            prepared.release()
            unlink(path)
            throw error
        }
        return prepared
    }

    /// HAProxy's own check of a rendered configuration: its exit status.
    func check(_ path: String, generation: UInt8 = 0) throws -> Int32 {
        Spawn.wait(
            try Spawn.run(
                options.haproxy[0], Array(options.haproxy.dropFirst()) + ["-c", "-q", "-f", path],
                environment: Self.environment(generation)))
    }

    /// HAProxy's environment: the supervisor's, and BINDKEEPER_GENERATION, which a configuration
    /// can name ("${BINDKEEPER_GENERATION}") where two generations must not share a path, such
    /// as a stats socket's.
    static func environment(_ generation: UInt8) -> [String: String] {
        var environment = ProgramImage.environment()
        environment["BINDKEEPER_GENERATION"] = "\(generation)"
        return environment
    }

    /// `--check`: renders and checks, as a reload would, without starting anything.
    public func checkOnly() -> Int32 {
        let path = options.rendered + ".check"
        defer { unlink(path) }
        do {
            let text = try templateText()
            // On the generation served now: another would be made for the check and left held.
            let generation = heldGeneration(text)
            let prepared = try prepare(text, to: path, generation: generation)
            defer { prepared.release() }
            let status = try check(path, generation: generation)
            logger.info(
                "\(status == 0 ? "configuration is valid" : "configuration check failed (haproxy exited \(status))")")
            return status
        } catch {
            logger.info("\(error)")
            return 1
        }
    }

    /// Starts HAProxy and supervises it until SIGTERM/SIGINT (soft-stops every instance, then
    /// exits) or until no instance is left. SIGUSR2 or SIGHUP reloads.
    public func run() -> Int32 {
        let stop: EventFD, reload: EventFD, child: EventFD
        do {
            (stop, reload, child) = (try EventFD(), try EventFD(), try EventFD())
            try Signals.install(shutdown: stop, reload: reload)
            try Signals.forward(SIGUSR2, to: reload)
            try Signals.forward(SIGCHLD, to: child)
            let text = try templateText()
            if options.canary != nil { _ = try Self.groups(text) }
            // A supervisor started again (with or without canaries) keeps the generation that serves.
            servedGeneration = heldGeneration(text)
            try start(text)
        } catch {
            logger.info("start: \(error)")
            return 1
        }
        try? notifier?.send("READY=1\nSTATUS=haproxy pid \(instances.last?.pid ?? 0)")
        var fds = [stop.fd, reload.fd, child.fd].map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while true {
            guard (try? Syscall.poll(&fds, milliseconds: 1000)) != nil else { return 1 }
            if fds[0].revents != 0 { return shutDown() }
            if fds[1].revents != 0 {
                reload.consume()
                try? notifier?.send("RELOADING=1\nMONOTONIC_USEC=\(MonotonicClock.nanoseconds() / 1000)")
                do {
                    let text = try templateText()
                    try options.canary == nil || instances.isEmpty ? start(text) : startCanary(text)
                } catch {
                    logger.info("reload refused, the running instance keeps serving: \(error)")
                }
                try? notifier?.send("READY=1\nSTATUS=haproxy pid \(instances.last?.pid ?? 0)")
            }
            child.consume()
            reap()
            tendCanary()
            governDraining()
            if let current = instances.last, MonotonicClock.nanoseconds() &- current.started >= Self.startupNanoseconds
            {
                lastGoodTemplate = current.template
            }
            if instances.isEmpty {
                // A candidate is no instance to serve on: it goes with the supervisor.
                for pid in [canary?.pid].compactMap({ $0 }) + rolledBack.map(\.pid) { kill(pid, SIGTERM) }
                logger.info("no HAProxy instance is left; exiting")
                removePidFile()
                return 1
            }
        }
    }

    /// Starts an instance rendered from `text`, telling the running ones to finish once it serves.
    private func start(_ text: String) throws {
        // Not those stopped already: -sf would signal their pids after they are reaped, and reused.
        let running = instances.filter { !$0.terminated }.map(\.pid)
        let next = options.rendered + ".next"
        let prepared = try renderChecked(text, to: next, generation: servedGeneration)
        defer { prepared.release() }
        guard rename(next, options.rendered) == 0 else { throw SystemError("rename \(next)") }
        var arguments = Array(options.haproxy.dropFirst()) + ["-db", "-f", options.rendered]
        if !running.isEmpty { arguments += ["-sf"] + running.map { String($0) } }
        let pid = try Spawn.run(options.haproxy[0], arguments, environment: Self.environment(servedGeneration))
        let now = MonotonicClock.nanoseconds()
        for index in instances.indices where instances[index].superseded == nil { instances[index].superseded = now }
        instances.append(Instance(pid: pid, generation: servedGeneration, template: text, started: now))
        if running.isEmpty {
            // Whatever an earlier supervisor left steered (a canary's share, the other generation
            // served); a canary under way keeps its share. Tried again until it holds.
            if canary == nil, !steerToServed(text) { steeringDue = text }
            logger.info("started haproxy pid \(pid)")
        } else {
            logger.info("reloaded: haproxy pid \(pid) replaces \(running.map(String.init).joined(separator: " "))")
        }
        writePidFile()
    }

    /// Older instances past the drain deadline, and the oldest beyond `maxDraining`, are stopped
    /// (SIGTERM: their remaining connections are closed), each said once in the log.
    func governDraining() {
        let now = MonotonicClock.nanoseconds()
        // Rolled-back candidates: past the drain deadline, as older instances.
        for index in rolledBack.indices where !rolledBack[index].terminated {
            guard let seconds = options.drainSeconds, let since = rolledBack[index].superseded,
                now &- since >= UInt64(seconds) * 1_000_000_000
            else { continue }
            kill(rolledBack[index].pid, SIGTERM)
            rolledBack[index].terminated = true
            logger.info(
                "haproxy pid \(rolledBack[index].pid), rolled back, stopped with its connections (--drain-timeout)")
        }
        let draining = instances.indices.dropLast().filter { !instances[$0].terminated }
        for (rank, index) in draining.enumerated() {
            let instance = instances[index]
            let overLimit = draining.count - rank > options.maxDraining
            let overdue =
                options.drainSeconds.map { seconds in
                    instance.superseded.map { now &- $0 >= UInt64(max(0, seconds)) * 1_000_000_000 } ?? false
                } ?? false
            guard overLimit || overdue else { continue }
            kill(instance.pid, SIGTERM)
            instances[index].terminated = true
            logger.info(
                overLimit
                    ? """
                    haproxy pid \(instance.pid) stopped with its connections: more than \(options.maxDraining) older \
                    instances were finishing (--max-draining)
                    """
                    : """
                    haproxy pid \(instance.pid) stopped with its connections: still finishing \
                    \(options.drainSeconds ?? 0) s after it was replaced (--drain-timeout)
                    """)
        }
    }

    private func reap() {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            guard pid > 0 else { return }
            if let canary, canary.pid == pid {
                self.canary = nil
                rollBack(canary, because: "it exited (\(Spawn.exitCode(status)))", running: false, judged: true)
                continue
            }
            if let index = rolledBack.firstIndex(where: { $0.pid == pid }) {
                rolledBack.remove(at: index)
                continue
            }
            guard let index = instances.firstIndex(where: { $0.pid == pid }) else { continue }
            let exited = instances.remove(at: index)
            // An older one current again (its replacement died) is no longer finishing.
            if let last = instances.indices.last { instances[last].superseded = nil }
            writePidFile()
            guard index == instances.count, !stopping else { continue }
            replace(exited, code: Spawn.exitCode(status))
        }
    }

    /// The current instance exited on its own: start another, unless that happened too often.
    private func replace(_ exited: Instance, code: Int32) {
        let now = MonotonicClock.nanoseconds()
        replacements = replacements.filter { now &- $0 < 60_000_000_000 }
        // One that died in start-up had a configuration that passes the check and still fails:
        // the replacement takes the one before it (still running, or the last that ran). HAProxy
        // exits 1 when it cannot start (a listener it cannot bind, a fatal error in the
        // configuration), however long that took on a loaded host; a crash at run time is a signal.
        let diedStarting = now &- exited.started < Self.startupNanoseconds || code == 1
        let template =
            diedStarting ? instances.last?.template ?? lastGoodTemplate ?? exited.template : exited.template
        guard replacements.count < Self.maximumReplacements else {
            logger.info(
                """
                haproxy pid \(exited.pid) exited (\(code)); not replaced: \(Self.maximumReplacements) replacements \
                within a minute\(instances.isEmpty ? "" : ", older instances finish their connections")
                """)
            return
        }
        replacements.append(now)
        do {
            try start(template)
            logger.info(
                """
                haproxy pid \(exited.pid) exited (\(code)); replaced by pid \(instances.last!.pid) from the last good \
                configuration
                """)
        } catch {
            logger.info("haproxy pid \(exited.pid) exited (\(code)); its replacement failed: \(error)")
        }
    }

    private func shutDown() -> Int32 {
        stopping = true
        if let canary {
            instances.insert(Instance(pid: canary.pid, template: canary.template, started: canary.ends), at: 0)
            self.canary = nil
        }
        instances.insert(contentsOf: rolledBack, at: 0)
        rolledBack = []
        for instance in instances { kill(instance.pid, SIGUSR1) }
        let deadline = MonotonicClock.nanoseconds() + UInt64(max(0, options.stopTimeoutSeconds)) * 1_000_000_000
        while !instances.isEmpty && MonotonicClock.nanoseconds() < deadline {
            reap()
            usleep(50_000)
        }
        for instance in instances { kill(instance.pid, SIGTERM) }
        while !instances.isEmpty { _ = Spawn.wait(instances.removeLast().pid) }
        removePidFile()
        logger.info("stopped")
        return 0
    }

    /// The running pids, current first, replaced atomically (rename) so a reader never sees half.
    func writePidFile() {
        guard let pidFile = options.pidFile else { return }
        let text = instances.reversed().map { String($0.pid) }.joined(separator: "\n") + "\n"
        try? text.write(toFile: pidFile, atomically: true, encoding: .utf8)
    }

    private func removePidFile() {
        if let pidFile = options.pidFile { unlink(pidFile) }
    }
}
