import Glibc
import Logging

/// One line per event on stderr, `LABEL: message key=value ...`, written with one write(2) so
/// that lines of several threads never interleave. Under systemd (JOURNAL_STREAM set) each line
/// starts with its syslog priority, `<N>`, which journald takes as the entry's level.
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String
    private let priorityPrefix: Bool

    public init(label: String, priorityPrefix: Bool = getenv("JOURNAL_STREAM") != nil) {
        self.label = label
        self.priorityPrefix = priorityPrefix
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = priorityPrefix ? "<\(Self.syslogPriority(event.level))>" : ""
        line += "\(label): \(event.message)"
        let fields = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
        StandardError.write(line + "\n")
    }

    /// sd-daemon(3)'s priorities.
    static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }
}

extension Logger {
    /// The process's logger, after routing swift-log to `LineLogHandler` (once per process).
    public static func process(_ label: String) -> Logger {
        LoggingSystem.bootstrapOnce
        return Logger(label: label)
    }
}

extension LoggingSystem {
    fileprivate static let bootstrapOnce: Void = LoggingSystem.bootstrap { LineLogHandler(label: $0) }
}

/// Text to stderr in one write(2).
public enum StandardError {
    public static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = Glibc.write(STDERR_FILENO, &bytes, bytes.count)
    }
}

/// How many lines others may make a daemon log: `linesPerSecond` a second at most, the rest held
/// back and counted. Without it a client sending bad requests in a loop writes a line per request,
/// and journald's rate limit for the service then swallows the daemon's own lines too.
public struct LogBudget {
    public let linesPerSecond: Int
    private var secondStart: UInt64 = 0
    private var linesThisSecond = 0
    private var heldBack = 0

    public init(linesPerSecond: Int) { self.linesPerSecond = max(1, linesPerSecond) }

    /// nil when the line is to be held back; otherwise how many were held back since the last line
    /// logged (for that line to say so). `now`: a monotonic clock in nanoseconds.
    public mutating func admit(now: UInt64) -> Int? {
        if now &- secondStart >= 1_000_000_000 {
            secondStart = now
            linesThisSecond = 0
        }
        guard linesThisSecond < linesPerSecond else {
            heldBack += 1
            return nil
        }
        linesThisSecond += 1
        defer { heldBack = 0 }
        return heldBack
    }
}
