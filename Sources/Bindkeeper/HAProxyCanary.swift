import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import LinuxSys

/// Reloads as canaries (`bindkeeper haproxy --canary-percent`). A reload starts the new HAProxy
/// beside the running one, on a second generation of the broker's socket groups, and the groups'
/// reuseport program gives it `percent` of new connections (by the flow's hash) for `seconds`.
/// Then it is judged: alive, its own counters (`show stat` on `stats`) within
/// `maximumErrorPercent`, every backend up, and `check` (if any) exiting 0.
/// - Pass: every new connection goes to it, the older instances are told to finish (as `-sf`
///   does), and the broker lets go of the old generation; connections still queued there move to
///   the new one as the last holder closes it.
/// - Fail: new connections go back to the running generation; the broker lets go of the
///   candidate's, and the candidate is told to finish; what was queued on its sockets moves to
///   the running generation, none reset (Linux 5.14's migration). The template is refused until
///   it changes. The running instance is never restarted.
public struct CanaryOptions: Sendable {
    public var percent: Int
    public var seconds: Int = 30
    /// Run by /bin/sh -c at the verdict, with BINDKEEPER_CANDIDATE_PID and BINDKEEPER_GENERATION:
    /// exit 0 passes. It may take at most `checkSeconds`.
    public var check: String?
    public static let checkSeconds = 30
    /// The candidate's HAProxy stats socket; `${BINDKEEPER_GENERATION}` in it is the candidate's
    /// generation, as HAProxy reads it in the configuration.
    public var stats: String?
    public var maximumErrorPercent: Int = 1

    public init(percent: Int) { self.percent = percent }
}

extension HAProxySupervisor {
    struct Canary {
        var pid: pid_t
        var generation: UInt8
        var template: String
        var started: UInt64
        var ends: UInt64
    }

    /// The socket groups a template binds; a canary needs every bind to be one, since a plain
    /// socket would be shared, and the candidate would take half its connections, not a share.
    static func groups(_ text: String) throws -> [BindRequest] {
        let binds = try ConfigTemplate.parse(text).get().binds
        if let plain = binds.first(where: { $0.shards == nil }) {
            throw SystemError(
                "canary", errno: EINVAL, hint: "\(plain.key) is not a socket group (shards=N); a canary steers groups")
        }
        return binds
    }

    /// The socket groups a template binds, beside whatever else it binds.
    static func groupBinds(_ text: String) -> [BindRequest] {
        ((try? ConfigTemplate.parse(text).get())?.binds ?? []).filter { $0.shards != nil }
    }

    /// A reload as a canary: the candidate starts on the other generation and takes its share.
    func startCanary(_ text: String) throws {
        guard let settings = options.canary, let current = instances.last else { return }
        try refuseCanary(text)
        let groups = try Self.groups(text)
        let generation = 1 - servedGeneration
        let path = options.rendered + ".canary"
        let pid: pid_t
        do {
            let prepared = try renderChecked(text, to: path, generation: generation)
            defer { prepared.release() }
            pid = try Spawn.run(
                options.haproxy[0], Array(options.haproxy.dropFirst()) + ["-db", "-f", path],
                environment: Self.environment(generation))
        } catch {
            releaseGeneration(generation, of: text, quietly: true)
            throw error
        }
        let now = MonotonicClock.nanoseconds()
        let candidate = Canary(
            pid: pid, generation: generation, template: text, started: now,
            ends: now + UInt64(settings.seconds) * 1_000_000_000)
        do {
            let served = Set(Self.groupBinds(current.template).map(\.addressKey))
            let client = try brokerClient()
            for group in groups {
                // An address only the candidate binds is its alone.
                _ =
                    try served.contains(group.addressKey)
                    ? client.steer(
                        served: group.inGeneration(servedGeneration), candidate: group.inGeneration(generation),
                        percent: settings.percent)
                    : client.steer(served: group.inGeneration(generation))
            }
        } catch {
            rollBack(candidate, because: "its share could not be steered: \(error)", running: true, judged: false)
            throw error
        }
        canary = candidate
        logger.info(
            """
            canary: haproxy pid \(pid) takes \(settings.percent) % of new connections for \(settings.seconds) s; \
            pid \(current.pid) serves the rest
            """)
    }

    /// Why a canary of `text` may not start now.
    func refuseCanary(_ text: String) throws {
        if let canary {
            throw SystemError(
                "canary", errno: EBUSY,
                hint: "haproxy pid \(canary.pid) is a candidate until its verdict; reload after it")
        }
        // A steering back still due would take the new candidate's share away in this turn.
        guard steeringDue == nil, releasesDue.isEmpty else {
            throw SystemError(
                "canary", errno: EBUSY, hint: "the last rollback is not through (the broker did not answer)")
        }
        guard text != failedTemplate else {
            throw SystemError(
                "canary", errno: EINVAL, hint: "this template failed its canary; it is refused until it changes")
        }
    }

    /// One turn's canary work: the verdict when the window is over, and what the broker is still
    /// to do (a steering back, releases) tried again.
    func tendCanary() {
        if let canary, MonotonicClock.nanoseconds() >= canary.ends { judge(canary) }
        if let due = steeringDue, steerToServed(due, releasingOther: false) {
            steeringDue = nil
            logger.info("new connections go to generation \(servedGeneration) again")
        }
        let due = releasesDue
        releasesDue = []
        for (generation, template) in due { releaseGeneration(generation, of: template) }
    }

    /// The window is over: the candidate passes or is rolled back.
    func judge(_ candidate: Canary) {
        canary = nil
        if let (reason, gone) = verdict(candidate) {
            rollBack(candidate, because: reason, running: !gone, judged: true)
        } else {
            promote(candidate)
        }
    }

    /// The candidate's exit code when it has exited (it is reaped here, then).
    func exited(_ candidate: Canary) -> Int32? {
        var status: Int32 = 0
        return waitpid(candidate.pid, &status, WNOHANG) == candidate.pid ? Spawn.exitCode(status) : nil
    }

    /// Why the candidate fails, and whether it is gone (exited, and reaped here), or nil.
    func verdict(_ candidate: Canary) -> (reason: String, gone: Bool)? {
        if let code = exited(candidate) { return ("it exited (\(code))", true) }
        // It may die while it is judged.
        return judgement(candidate).map { ($0, false) } ?? exited(candidate).map { ("it exited (\($0))", true) }
    }

    /// Why the candidate's counters or the check command fail it, or nil.
    func judgement(_ candidate: Canary) -> String? {
        guard let settings = options.canary else { return nil }
        if let path = settings.stats {
            let resolved = path.replacingOccurrences(of: "${BINDKEEPER_GENERATION}", with: "\(candidate.generation)")
            do {
                let (text, peer) = try HAProxyStatsSocket.showStat(resolved)
                let judgement = CanaryJudgement.parse(text)
                // The process that listens there, not what the text says.
                guard peer == candidate.pid, judgement.pid == candidate.pid else {
                    return "its stats socket is pid \(peer)'s, not the candidate's"
                }
                if let failure = judgement.failure(maximumPercent: UInt64(settings.maximumErrorPercent)) {
                    return failure
                }
            } catch {
                return "its stats socket did not answer: \(error)"
            }
        }
        if let command = settings.check {
            var environment = Self.environment(candidate.generation)
            environment["BINDKEEPER_CANDIDATE_PID"] = "\(candidate.pid)"
            do {
                let pid = try Spawn.run("/bin/sh", ["-c", command], environment: environment, ownGroup: true)
                let status = Spawn.wait(pid, atMostSeconds: CanaryOptions.checkSeconds)
                guard status == 0 else {
                    return status == nil
                        ? "the check command ran longer than \(CanaryOptions.checkSeconds) s"
                        : "the check command exited \(status!)"
                }
            } catch {
                return "the check command did not start: \(error)"
            }
        }
        return nil
    }

    /// Every new connection to the candidate; the older instances finish theirs.
    func promote(_ candidate: Canary) {
        let old = servedGeneration
        do {
            let client = try brokerClient()
            for group in try Self.groups(candidate.template) {
                _ = try client.steer(served: group.inGeneration(candidate.generation))
            }
        } catch {
            rollBack(
                candidate, because: "every new connection could not be steered to it: \(error)", running: true,
                judged: false)
            return
        }
        let now = MonotonicClock.nanoseconds()
        let older = instances.filter { !$0.terminated }
        for index in instances.indices where instances[index].superseded == nil { instances[index].superseded = now }
        // What -sf asks of them.
        for instance in older { kill(instance.pid, SIGUSR1) }
        instances.append(
            Instance(
                pid: candidate.pid, generation: candidate.generation, template: candidate.template,
                started: candidate.started))
        servedGeneration = candidate.generation
        rename(options.rendered + ".canary", options.rendered)
        writePidFile()
        releaseGeneration(old, of: candidate.template)
        logger.info(
            """
            canary passed: haproxy pid \(candidate.pid) takes every new connection; \
            \(older.map { String($0.pid) }.joined(separator: " ")) finish theirs
            """)
    }

    /// New connections back to the running generation; the candidate's sockets let go of and the
    /// candidate told to finish (when `running`), so that what was queued for it moves over. A
    /// `judged` failure (its verdict, its exit) keeps its template out until it changes; one the
    /// broker caused (no answer while it re-executes) does not.
    func rollBack(_ candidate: Canary, because reason: String, running: Bool, judged: Bool) {
        if judged {
            canariesFailed += 1
            failedTemplate = candidate.template
        }
        if let current = instances.last, !steerToServed(current.template, releasingOther: false) {
            steeringDue = current.template
        }
        releaseGeneration(candidate.generation, of: candidate.template)
        if running {
            kill(candidate.pid, SIGUSR1)
            var stopping = Instance(
                pid: candidate.pid, generation: candidate.generation, template: candidate.template,
                started: candidate.started)
            stopping.superseded = MonotonicClock.nanoseconds()
            rolledBack.append(stopping)
        }
        unlink(options.rendered + ".canary")
        logger.info(
            judged
                ? """
                canary failed and rolled back: haproxy pid \(candidate.pid): \(reason); the template is refused \
                until it changes (\(canariesFailed) failed since start)
                """
                : "canary rolled back: haproxy pid \(candidate.pid): \(reason); the template may be reloaded again")
    }

    /// Every new connection of `text`'s groups to the served generation; with `releasingOther`,
    /// the broker lets go of the other generation (left by an earlier supervisor, or a canary
    /// that was under way when it stopped). Whether the broker steered them (true when the
    /// template has no group).
    @discardableResult
    func steerToServed(_ text: String, releasingOther: Bool = true) -> Bool {
        let groups = Self.groupBinds(text)
        guard !groups.isEmpty else { return true }
        do {
            let client = try brokerClient()
            for group in groups { _ = try client.steer(served: group.inGeneration(servedGeneration)) }
        } catch {
            logger.info("steering to generation \(servedGeneration): \(error)")
            return false
        }
        if releasingOther { releaseGeneration(1 - servedGeneration, of: text, quietly: true) }
        return true
    }

    /// The generation of `text`'s groups the broker holds alone (1 after a canary passed), else 0.
    func heldGeneration(_ text: String) -> UInt8 {
        let groups = Self.groupBinds(text)
        guard !groups.isEmpty, let listing = try? brokerClient().list() else { return 0 }
        let held = Set(listing.sockets.map(\.key))
        let onlyOther = groups.contains { group in
            !held.contains(BindRequest.memberKey(group.baseKey, 0))
                && held.contains(BindRequest.memberKey(group.inGeneration(1).baseKey, 0))
        }
        return onlyOther ? 1 : 0
    }

    /// The broker's client for a canary's steps: a broker that does not answer within 5 s (one
    /// re-executing) fails the step, which is tried again (a steering back, a release) or rolled
    /// back (a promotion), rather than holding the supervisor.
    func brokerClient() throws -> BindkeeperClient { try BindkeeperClient(path: options.socketPath, timeoutSeconds: 5) }

    /// The broker lets go of `generation` of `text`'s groups (each on its own: one may be gone).
    /// A broker that did not answer gets the release again next turn (`releasesDue`): until then
    /// the generation's queued connections wait in its sockets.
    func releaseGeneration(_ generation: UInt8, of text: String, quietly: Bool = false) {
        let groups = Self.groupBinds(text)
        guard !groups.isEmpty else { return }
        do {
            let client = try brokerClient()
            for group in groups {
                do { _ = try client.release([group.inGeneration(generation)]) } catch let error
                    as BindkeeperClient.ReplyError where error.code != -1
                {
                    // Answered: the broker holds no such group (or may not let it go).
                    if !quietly { logger.info("releasing \(group.inGeneration(generation).baseKey): \(error)") }
                }
            }
        } catch {
            logger.info("releasing generation \(generation): \(error); tried again")
            releasesDue.append((generation, text))
        }
    }
}

/// HAProxy's stats socket, read for a canary's verdict.
enum HAProxyStatsSocket {
    /// `show info` and `show stat`'s text, read within five seconds and
    /// CanaryJudgement.maximumBytes, and the pid of the process that listens (SO_PEERCRED). The
    /// connection never blocks: a socket whose queue is full fails at once.
    static func showStat(_ path: String) throws -> (text: String, pid: Int32) {
        let fd = try UnixAddress.connect(path, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
        defer { close(fd) }
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        let credentials = proxyside_peer_credentials(fd, &pid, &uid, &gid)
        guard credentials == 0 else { throw SystemError("SO_PEERCRED of \(path)", errno: -credentials) }
        let deadline = MonotonicClock.nanoseconds() + 5_000_000_000
        let request = Array("show info;show stat\n".utf8)
        guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else {
            throw SystemError("sending show stat to \(path)")
        }
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while text.count < CanaryJudgement.maximumBytes {
            guard Descriptors.waitReady(fd, events: POLLIN, until: deadline) else {
                throw SystemError("reading \(path)", errno: ETIMEDOUT)
            }
            let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count == 0 { break }
            if count < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                throw SystemError("reading \(path)")
            }
            text += buffer[..<count]
        }
        return (String(decoding: text, as: UTF8.self), pid)
    }
}
