/// How a canary's candidate did, from HAProxy's own counters (`show stat` on its stats socket):
/// what its frontends answered, what its backends failed to connect to, which backends are down.
/// Pure: the supervisor reads the socket, this reads the text.
public struct CanaryJudgement: Equatable, Sendable {
    /// Responses the frontends sent (every `hrsp_*`), and of them 5xx.
    public var responses: UInt64 = 0
    public var serverErrors: UInt64 = 0
    /// Connections the backends opened to servers (`stot`), and the attempts that failed (`econ`).
    public var backendConnections: UInt64 = 0
    public var connectionErrors: UInt64 = 0
    /// Backends HAProxy reports DOWN (no server left to send to).
    public var backendsDown: [String] = []
    /// The process that answered (`show info`'s Pid): the candidate's, or the verdict is not its.
    public var pid: Int32?

    public init() {}

    /// The most bytes of `show stat` read: a proxy's configuration of thousands of servers fits.
    public static let maximumBytes = 8 << 20

    /// Reads `show info`'s Pid line, then `show stat`'s CSV (a `# ` header naming the columns,
    /// then one row a proxy or server). Counters that do not parse count as 0; sums saturate.
    public static func parse(_ text: String) -> CanaryJudgement {
        var judgement = CanaryJudgement()
        var lines = text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }).makeIterator()
        var found: Substring?
        while let line = lines.next() {
            if line.hasPrefix("Pid: ") { judgement.pid = Int32(line.dropFirst(5)) }
            if line.hasPrefix("# ") {
                found = line
                break
            }
        }
        guard let header = found else { return judgement }
        let names = header.dropFirst(2).split(separator: ",", omittingEmptySubsequences: false)
        let column = Dictionary(names.enumerated().map { (String($1), $0) }, uniquingKeysWith: { first, _ in first })
        let responseColumns = ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"]
            .compactMap { column[$0] }
        while let line = lines.next() {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
            func number(_ name: String) -> UInt64 {
                guard let index = column[name], index < fields.count else { return 0 }
                return UInt64(fields[index]) ?? 0
            }
            func field(_ name: String) -> Substring? {
                column[name].flatMap { $0 < fields.count ? fields[$0] : nil }
            }
            switch field("svname") {
            case "FRONTEND":
                for index in responseColumns where index < fields.count {
                    judgement.responses.add(UInt64(fields[index]) ?? 0)
                }
                judgement.serverErrors.add(number("hrsp_5xx"))
            case "BACKEND":
                judgement.backendConnections.add(number("stot"))
                judgement.connectionErrors.add(number("econ"))
                if field("status") == "DOWN", let name = field("pxname") { judgement.backendsDown.append(String(name)) }
            default: continue
            }
        }
        return judgement
    }

    /// Why the candidate fails, or nil when it passes: a backend down, or more than
    /// `maximumPercent` of its responses 5xx or of its backends' connections failed.
    public func failure(maximumPercent: UInt64) -> String? {
        if let down = backendsDown.first {
            return "backend \(down) is down\(backendsDown.count > 1 ? " (and \(backendsDown.count - 1) more)" : "")"
        }
        if Self.exceeds(serverErrors, of: responses, maximumPercent) {
            return "\(serverErrors) of its \(responses) responses were 5xx (at most \(maximumPercent) % may be)"
        }
        // A failed attempt is retried or answered 503; attempts are the connections plus the failures.
        let attempts = backendConnections.addingReportingOverflow(connectionErrors)
        if Self.exceeds(connectionErrors, of: attempts.overflow ? .max : attempts.partialValue, maximumPercent) {
            return """
                \(connectionErrors) of its connections to servers failed, of \(attempts.partialValue) attempted \
                (at most \(maximumPercent) % may)
                """
        }
        return nil
    }

    /// `part` is more than `percent` % of `whole`, computed without overflow.
    static func exceeds(_ part: UInt64, of whole: UInt64, _ percent: UInt64) -> Bool {
        guard whole > 0 else { return false }
        return part.multipliedFullWidth(by: 100) > whole.multipliedFullWidth(by: percent)
    }
}

extension UInt64 {
    /// Adds, stopping at the largest value rather than trapping.
    fileprivate mutating func add(_ other: UInt64) {
        let (sum, overflow) = addingReportingOverflow(other)
        self = overflow ? .max : sum
    }
}
