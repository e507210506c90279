import ArgumentParser
import Bindkeeper
import Glibc
import ProxysideArguments
import Telemetry

struct HAProxy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "haproxy",
        abstract:
            """
            Run HAProxy on the broker's sockets: {{bind URL}} in the template becomes fd@N; SIGUSR2 or SIGHUP reloads \
            (checked first).
            """
    )

    @Option(help: "The broker's control socket.")
    var socket = defaultSocket

    @Option(name: .customShort("f"), help: "The configuration template.")
    var template: String

    @Option(help: "Where the rendered configuration goes (default: the template without .tmpl).")
    var rendered: String?

    @Option(name: .customShort("p"), help: "Pid file the supervisor keeps (current pid first).")
    var pidFile: String?

    @Option(help: "Seconds stopping instances may finish their connections before SIGTERM.")
    var stopTimeout = 30

    @Option(
        help: """
            The most older instances left finishing their connections after reloads; past it the oldest is \
            stopped (SIGTERM).
            """)
    var maxDraining = 8

    @Option(
        help: "Seconds an older instance may finish its connections after a reload before SIGTERM (default: no limit).")
    var drainTimeout: Int?

    @Option(
        help: """
            Reload as a canary: the new HAProxy takes this share of new connections (1 to 100 %) on a second \
            generation of the sockets, and is judged before it takes them all (every bind must be a group, shards=N).
            """)
    var canaryPercent: Int?

    @Option(help: "Seconds a canary takes its share before its verdict (default 30).")
    var canarySeconds: Int?

    @Option(
        help: """
            The canary's HAProxy stats socket, read at the verdict (${BINDKEEPER_GENERATION} in it as in the \
            configuration).
            """)
    var canaryStats: String?

    @Option(help: "The most 5xx responses, and failed connections to servers, in % a canary may have (default 1).")
    var canaryMaxErrors: Int?

    @Option(
        help: """
            A command (sh -c) run at the verdict with BINDKEEPER_CANDIDATE_PID and BINDKEEPER_GENERATION; the canary \
            passes only if it exits 0 within 30 s.
            """)
    var canaryCheck: String?

    @Flag(help: "Render and have HAProxy check the result, then exit with its status (for ExecReload).")
    var check = false

    @Argument(parsing: .captureForPassthrough, help: "-- HAPROXY [ARGUMENTS]")
    var command: [String] = []

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        LineLogHandler.setThreshold(logging.logLevel)
        let haproxy = command.first == "--" ? Array(command.dropFirst()) : command
        guard !haproxy.isEmpty else {
            throw ValidationError("give the HAProxy binary after --, such as -- /usr/sbin/haproxy")
        }
        if let reserved = haproxy.dropFirst().first(where: { HAProxyOptions.reservedArguments.contains($0) }) {
            throw ValidationError("\(reserved) is set by bindkeeper; leave it out of the HAProxy arguments")
        }
        var options = HAProxyOptions(
            socketPath: socket, template: template, rendered: rendered, pidFile: pidFile, haproxy: haproxy)
        guard (0...86_400).contains(stopTimeout) else { throw ValidationError("--stop-timeout is 0...86400 seconds") }
        guard (0...1024).contains(maxDraining) else { throw ValidationError("--max-draining is 0...1024") }
        guard drainTimeout.map({ (1...86_400).contains($0) }) ?? true else {
            throw ValidationError("--drain-timeout is 1...86400 seconds")
        }
        options.canary = try canaryOptions()
        options.stopTimeoutSeconds = stopTimeout
        (options.maxDraining, options.drainSeconds) = (maxDraining, drainTimeout)
        let supervisor = HAProxySupervisor(options: options, logger: logger)
        throw ExitCode(check ? supervisor.checkOnly() : supervisor.run())
    }

    func canaryOptions() throws -> CanaryOptions? {
        guard let canaryPercent else {
            guard canaryStats == nil, canaryCheck == nil, canarySeconds == nil, canaryMaxErrors == nil else {
                throw ValidationError("the --canary-* options shape a canary: give --canary-percent")
            }
            return nil
        }
        guard (1...100).contains(canaryPercent) else { throw ValidationError("--canary-percent is 1...100") }
        let (seconds, maximumErrors) = (canarySeconds ?? 30, canaryMaxErrors ?? 1)
        guard (1...3600).contains(seconds) else { throw ValidationError("--canary-seconds is 1...3600") }
        guard (0...100).contains(maximumErrors) else { throw ValidationError("--canary-max-errors is 0...100") }
        var canary = CanaryOptions(percent: canaryPercent)
        (canary.seconds, canary.stats, canary.check) = (seconds, canaryStats, canaryCheck)
        canary.maximumErrorPercent = maximumErrors
        return canary
    }
}
