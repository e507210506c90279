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

    /// A reload as a canary: the candidate starts on the other generation and takes its share.
    func startCanary(_ text: String) throws {
        guard let settings = options.canary, let current = instances.last else { return }
        if let canary {
            throw SystemError(
                "canary", errno: EBUSY,
                hint: "haproxy pid \(canary.pid) is a candidate until its verdict; reload after it")
        }
        guard text != failedTemplate else {
            throw SystemError(
                "canary", errno: EINVAL, hint: "this template failed its canary; it is refused until it changes")
        }
        let groups = try Self.groups(text)
        let generation = 1 - servedGeneration
        let path = options.rendered + ".canary"
        let prepared = try renderChecked(text, to: path, generation: generation)
        defer { prepared.release() }
        let pid = try Spawn.run(
            options.haproxy[0], Array(options.haproxy.dropFirst()) + ["-db", "-f", path],
            environment: Self.environment(generation))
        let now = MonotonicClock.nanoseconds()
        let candidate = Canary(
            pid: pid, generation: generation, template: text, started: now,
            ends: now + UInt64(settings.seconds) * 1_000_000_000)
        do {
            let served = Set(try Self.groups(current.template).map(\.addressKey))
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
            rollBack(candidate, because: "its share could not be steered: \(error)", running: true)
            throw error
        }
        canary = candidate
        logger.info(
            """
            canary: haproxy pid \(pid) takes \(settings.percent) % of new connections for \(settings.seconds) s; \
            pid \(current.pid) serves the rest
            """)
    }

    /// The window is over: the candidate passes or is rolled back.
    func judge(_ candidate: Canary) {
        canary = nil
        if let reason = verdict(candidate) {
            rollBack(candidate, because: reason, running: true)
        } else {
            promote(candidate)
        }
    }

    /// Why the candidate fails, or nil.
    func verdict(_ candidate: Canary) -> String? {
        guard let settings = options.canary else { return nil }
        if let path = settings.stats {
            let resolved = path.replacingOccurrences(of: "${BINDKEEPER_GENERATION}", with: "\(candidate.generation)")
            do {
                let judgement = CanaryJudgement.parse(try HAProxyStatsSocket.showStat(resolved))
                guard judgement.pid == candidate.pid else {
                    let answered = judgement.pid.map(String.init) ?? "none"
                    return "its stats socket answered for pid \(answered), not the candidate's"
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
            rollBack(candidate, because: "every new connection could not be steered to it: \(error)", running: true)
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
    /// candidate told to finish (when `running`), so that what was queued for it moves over.
    func rollBack(_ candidate: Canary, because reason: String, running: Bool) {
        canariesFailed += 1
        failedTemplate = candidate.template
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
            instances.insert(stopping, at: 0)
        }
        unlink(options.rendered + ".canary")
        logger.info(
            """
            canary failed and rolled back: haproxy pid \(candidate.pid): \(reason); the template is refused until \
            it changes (\(canariesFailed) failed since start)
            """)
    }

    /// Every new connection of `text`'s groups to the served generation; with `releasingOther`,
    /// the broker lets go of the other generation (left by an earlier supervisor, or a canary
    /// that was under way when it stopped).
    @discardableResult
    func steerToServed(_ text: String, releasingOther: Bool = true) -> Bool {
        do {
            let client = try brokerClient()
            for group in try Self.groups(text) { _ = try client.steer(served: group.inGeneration(servedGeneration)) }
        } catch {
            logger.info("steering to generation \(servedGeneration): \(error)")
            return false
        }
        if releasingOther { releaseGeneration(1 - servedGeneration, of: text, quietly: true) }
        return true
    }

    /// The generation of `text`'s groups the broker holds alone (1 after a canary passed), else 0.
    func heldGeneration(_ text: String) -> UInt8 {
        guard let groups = try? Self.groups(text), let listing = try? brokerClient().list() else { return 0 }
        let held = Set(listing.sockets.map(\.key))
        let onlyOther = groups.contains { group in
            !held.contains(BindRequest.memberKey(group.baseKey, 0))
                && held.contains(BindRequest.memberKey(group.inGeneration(1).baseKey, 0))
        }
        return onlyOther ? 1 : 0
    }

    /// The broker's client for a canary's steps: a broker that does not answer within 5 s (one
    /// re-executing) fails the step, which is tried again (a steering back) or rolled back (a
    /// promotion), rather than holding the supervisor.
    func brokerClient() throws -> BindkeeperClient { try BindkeeperClient(path: options.socketPath, timeoutSeconds: 5) }

    /// The broker lets go of `generation` of `text`'s groups (each on its own: one may be gone).
    func releaseGeneration(_ generation: UInt8, of text: String, quietly: Bool = false) {
        guard let groups = try? Self.groups(text), let client = try? brokerClient() else {
            return
        }
        for group in groups {
            do { _ = try client.release([group.inGeneration(generation)]) } catch {
                if !quietly { logger.info("releasing \(group.inGeneration(generation).baseKey): \(error)") }
            }
        }
    }
}

/// HAProxy's stats socket, read for a canary's verdict.
enum HAProxyStatsSocket {
    /// `show info` and `show stat`'s text, read within five seconds and
    /// CanaryJudgement.maximumBytes. The connection never blocks: a socket whose queue is full
    /// fails at once.
    static func showStat(_ path: String) throws -> String {
        let fd = try UnixAddress.connect(path, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
        defer { close(fd) }
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
        return String(decoding: text, as: UTF8.self)
    }
}
