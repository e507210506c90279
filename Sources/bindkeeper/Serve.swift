import ArgumentParser
import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import LinuxSys
import NetTypes
import ProxysideArguments
import Telemetry

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the broker (SIGUSR1 re-executes it, keeping every socket).")

    @Option(help: "The control socket (multibinder's JSON-RPC and bindkeeper's framed form).")
    var socket = defaultSocket

    @Option(help: "Policy file (JSON): who may bind what, the control socket's mode and group.")
    var config: String?

    @Option(help: "listen(2) backlog for requests that name none (the kernel caps it at net.core.somaxconn).")
    var backlog: Int32 = 65535

    @Option(help: "Serve Prometheus metrics on ADDRESS:PORT (IPv4).")
    var metrics: Endpoint?

    @Option(help: "Cut off a client whose message stays incomplete this many seconds (1...86400).")
    var stalledSeconds: UInt64 = 10

    @Option(help: "Cut off a client that has sent no whole request for this many seconds (1...86400).")
    var idleSeconds: UInt64 = 60

    @Option(help: "Connections one uid may hold at once; more are refused and counted.")
    var maxClientsPerUser = 64

    @Option(help: "Sockets one uid other than root and the broker's own may have the broker create.")
    var maxSocketsPerUser = 256

    @OptionGroup var logging: LoggingOptions

    @Flag(
        help: """
            Read the policy and every flag, print the version line and exit: 0 when a broker would \
            start with them (a re-exec runs the new file this way first), 78 when not.
            """)
    var check = false

    func run() throws {
        LineLogHandler.setThreshold(logging.logLevel)
        let policy: Policy
        let (read, unanswered) = readPolicy()
        switch read {
        case .success(let value): policy = value
        case .failure(let error):
            StandardError.write("Error: \(error)\n")
            // 75 (EX_TEMPFAIL) when a name could not be looked up at all (the unit restarts the
            // broker: a directory service may be back), 78 (EX_CONFIG) otherwise (it does not).
            if let name = unanswered {
                StandardError.write("Error: the user and group databases did not answer for \(name)\n")
                throw ExitCode(75)
            }
            throw ExitCode(78)
        }
        var options = BrokerOptions(controlPath: socket, policy: policy)
        guard backlog > 0 else { throw ValidationError("--backlog must be positive") }
        options.defaultBacklog = backlog
        guard (1...86400).contains(stalledSeconds), (1...86400).contains(idleSeconds) else {
            throw ValidationError("--stalled-seconds and --idle-seconds are 1...86400")
        }
        guard maxClientsPerUser >= 1, maxSocketsPerUser >= 0 else {
            throw ValidationError("--max-clients-per-user is at least 1, --max-sockets-per-user at least 0")
        }
        options.stalledMessageSeconds = stalledSeconds
        options.idleSeconds = idleSeconds
        options.maximumClientsPerUser = maxClientsPerUser
        options.maximumSocketsPerUser = maxSocketsPerUser
        if let metrics {
            guard metrics.ipv4 != nil else { throw ValidationError("--metrics takes IPv4:PORT") }
            options.metrics = metrics
        }
        if check {
            print(ProgramImage.versionLine("bindkeeper"))
            return
        }
        UnixAddress.makeDirectory(for: socket)
        let broker = try Broker(options: options, logger: logger)
        logger.info("serving on \(socket)")
        broker.run()
    }

    /// The policy file, its names resolved; and the first name the databases failed to look up
    /// (rather than found missing), if one was.
    func readPolicy() -> (Result<Policy, BindError>, unanswered: String?) {
        guard let config else { return (.success(Policy(brokerUID: geteuid())), nil) }
        guard let data = FileManager.default.contents(atPath: config) else {
            return (.failure(BindError("cannot read \(config)")), nil)
        }
        var unanswered: String?
        func id(_ lookup: Accounts.Lookup, _ name: String) -> UInt32? {
            switch lookup {
            case .found(let id): return id
            case .notFound: return nil
            case .failed(let code):
                unanswered = unanswered ?? "\(name) (\(String(cString: strerror(code))))"
                return nil
            }
        }
        let policy = Policy.parse(
            Array(data), brokerUID: geteuid(),
            resolveUser: { id(Accounts.user($0), $0) }, resolveGroup: { id(Accounts.group($0), $0) })
        return (policy, unanswered)
    }
}
