import LinuxSys

/// The Prometheus text exposition format, for both daemons' metrics: each family once, with its
/// HELP and TYPE lines before its samples, and label values escaped so that no value can end its
/// label or its line early.
public struct PrometheusText {
    public enum Kind: String { case counter, gauge }

    public private(set) var text = ""
    private var families: Set<String> = []

    public init() {}

    /// Starts family `name` (a second call for the same name writes nothing).
    public mutating func family(_ name: String, _ kind: Kind, help: String) {
        guard families.insert(name).inserted else { return }
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(kind.rawValue)\n"
    }

    public mutating func sample(_ name: String, _ value: some BinaryInteger) { sample(name, [:], value) }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: some BinaryInteger) {
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { "\($0.key)=\"\(Self.escapeLabel($0.value))\"" }.joined(separator: ",") + "}"
        }
        text += " \(value)\n"
    }

    /// A family with one unlabelled sample.
    public mutating func single(_ name: String, _ kind: Kind, help: String, _ value: some BinaryInteger) {
        family(name, kind, help: help)
        sample(name, value)
    }

    /// Read once: a process's start does not move (a re-exec reads the same again).
    private static let processStartSeconds = ProcFile.processStartSeconds()

    /// process_start_time_seconds, as Prometheus' client libraries name it (for uptime and
    /// restart alerts); nothing when /proc cannot say.
    public mutating func processStart() {
        guard let seconds = Self.processStartSeconds else { return }
        single(
            "process_start_time_seconds", .gauge, help: "Start time of the process since the epoch, in seconds.",
            seconds)
    }

    /// A label value as the format requires: backslash, double quote and line feed escaped, by
    /// Unicode scalar (a quote followed by a combining mark is one Character, and would otherwise
    /// end the value unescaped). The format has no other escape: the rest of what a log would
    /// escape (control characters, invisible ones) is written as U+FFFD.
    public static func escapeLabel(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            case _ where LogText.needsEscape(scalar): out.unicodeScalars.append("\u{FFFD}")
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
