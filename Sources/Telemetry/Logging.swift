import Glibc
import Logging
import Synchronization

/// One line per event on stderr, `LABEL: message key=value ...`, written with one write(2) so
/// that lines of several threads never interleave. Under systemd (JOURNAL_STREAM set) each line
/// starts with its syslog priority, `<N>`, which journald takes as the entry's level.
///
/// Messages carry text from outside (a client's request, a file, an interface name), so the
/// message and every metadata value are escaped here, once for every line of both daemons
/// (`LogText.escaped`): no text can end a line and start another, with a priority of its choosing.
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    /// The process's threshold (`--log-level`), shared by every logger of the process: the daemons'
    /// loggers are made before their options are parsed.
    public var logLevel: Logger.Level {
        get { Logger.Level.allCases[Int(Self.threshold.load(ordering: .relaxed))] }
        set { Self.setThreshold(newValue) }
    }
    private static let threshold = Atomic<UInt8>(UInt8(Logger.Level.allCases.firstIndex(of: .info)!))

    /// Sets the level below which no logger of this process writes.
    public static func setThreshold(_ level: Logger.Level) {
        threshold.store(UInt8(Logger.Level.allCases.firstIndex(of: level)!), ordering: .relaxed)
    }
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
        StandardError.write(format(level: event.level, message: event.message, metadata: event.metadata) + "\n")
    }

    /// The line for one event, without its line feed.
    public func format(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?) -> String {
        var line = priorityPrefix ? "<\(Self.syslogPriority(level))>" : ""
        line += "\(label): \(LogText.escaped(message.description))"
        let fields = metadata.merging(extra ?? [:]) { _, new in new }
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            line += " \(LogText.escaped(key))=\(LogText.escaped(value.description, quotingSpaces: true))"
        }
        return line
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

/// Text made safe for one log line.
public enum LogText {
    /// `text` with every character that could end the line or disguise it written as an escape:
    /// control characters (C0, DEL, C1) as `\n`, `\r`, `\t` or `\xNN`; as `\u{NNNN}` the Unicode
    /// line and paragraph separators, the spaces other than ASCII's (one would pass for a field's
    /// end), and what draws nothing or reorders what follows (format characters: the
    /// bidirectional overrides and marks, zero-width spaces and joiners, the byte order mark;
    /// default-ignorable code points: variation selectors, fillers, tags; the characters of the
    /// right-to-left scripts' blocks, which make a bidirectional viewer reorder the line's numbers
    /// and punctuation around them; code points this build's Unicode tables leave unassigned); a
    /// combining mark (or another character that joins the one before it) that would draw over
    /// the line's own text: one after anything but a letter or number, as at a value's start, a
    /// double diacritic (it spans the next character too), a fifth nonspacing mark on one letter;
    /// and the backslash itself doubled, so that an escape in the log always means the daemon
    /// wrote it. With `quotingSpaces` (a metadata value), a value with a space, `=` or `"` is put
    /// in quotes, so it cannot pass for more fields.
    public static func escaped(_ text: String, quotingSpaces: Bool = false) -> String {
        var needsQuotes = false
        var clean = true
        var context = MarkContext()
        for scalar in text.unicodeScalars {
            if context.escapes(scalar) { clean = false }
            if scalar == " " || scalar == "=" || scalar == "\"" { needsQuotes = true }
        }
        needsQuotes = needsQuotes && quotingSpaces
        if clean && !needsQuotes { return text }
        var out = needsQuotes ? "\"" : ""
        context = MarkContext()
        for scalar in text.unicodeScalars {
            let escape = context.escapes(scalar)
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\"" where needsQuotes: out += "\\\""
            case _ where escape && scalar.value < 0x100: out += "\\x" + hex(scalar.value, digits: 2)
            case _ where escape: out += "\\u{" + hex(scalar.value, digits: 4) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + (needsQuotes ? "\"" : "")
    }

    /// What a combining mark would draw on: the scalar before it, as the line shows it.
    struct MarkContext {
        /// Whether the last scalar shown as itself is a letter or number a mark may combine with.
        private var base = false
        /// Whether it is an emoji a skin tone may follow.
        private var emoji = false
        /// Nonspacing and enclosing marks shown on that base so far.
        private var marks = 0

        /// Whether `scalar`, following what this context saw, is written as an escape.
        mutating func escapes(_ scalar: Unicode.Scalar) -> Bool {
            let value = scalar.value
            if value < 0x80 {
                (base, emoji, marks) = (
                    (0x30...0x39).contains(value) || (0x41...0x5a).contains(value & ~0x20), false, 0
                )
                return LogText.needsEscape(scalar)
            }
            let properties = scalar.properties
            let category = properties.generalCategory
            // Unassigned in this build's tables: a later Unicode's may make it a mark.
            let escape =
                LogText.needsEscape(scalar) || LogText.isRightToLeft(scalar) || category == .unassigned
                || LogText.spansTheNextCharacter(scalar)
            if properties.isEmojiModifier {
                defer { (base, emoji) = (false, false) }
                return escape || !emoji
            }
            // What joins the character before it (marks; the extenders that are not marks, such
            // as the half-width sound marks) needs a base of the text's own, and nonspacing marks
            // stack four deep at most.
            if properties.isGraphemeExtend || category == .spacingMark {
                let stacking = category == .nonspacingMark || category == .enclosingMark
                let shown = base && !escape && !(stacking && marks >= 4)
                if !shown { (base, emoji) = (false, false) } else if stacking { marks += 1 }
                return !shown
            }
            switch category {
            case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
                .decimalNumber, .letterNumber, .otherNumber:
                base = !escape
            default:
                base = false
            }
            (emoji, marks) = (!escape && properties.isEmojiModifierBase, 0)
            return escape
        }
    }

    /// The double diacritics, drawn over the character before them and the one after: the
    /// line's own next character, after a value's last.
    static func spansTheNextCharacter(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x035c...0x0362, 0x1dcd, 0x1dfc: true
        default: false
        }
    }

    /// A scalar of the blocks of the right-to-left scripts (Hebrew, Arabic, Syriac, Thaana, N'Ko,
    /// Samaritan, Mandaic, their presentation forms, and the supplementary planes' ranges that
    /// Unicode sets aside for such scripts).
    static func isRightToLeft(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x0590...0x08ff, 0xfb1d...0xfdff, 0xfe70...0xfeff, 0x10800...0x10fff, 0x1e800...0x1efff: true
        default: false
        }
    }

    @inline(__always)
    public static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0..<0x20, 0x7f...0x9f, 0x5c: true
        case 0x20..<0x7f: false
        default: isInvisibleOrSeparator(scalar)
        }
    }

    /// A character outside ASCII that a reader of the line would not see as itself (symbols that
    /// draw a blank included: U+2800, the empty Braille pattern, and U+1D159, a null notehead).
    static func isInvisibleOrSeparator(_ scalar: Unicode.Scalar) -> Bool {
        if scalar.value == 0x2800 || scalar.value == 0x1d159 { return true }
        let properties = scalar.properties
        switch properties.generalCategory {
        case .format, .spaceSeparator, .lineSeparator, .paragraphSeparator: return true
        default: return properties.isDefaultIgnorableCodePoint
        }
    }

    static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
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
