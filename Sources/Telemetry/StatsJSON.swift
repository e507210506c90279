/// `stats --json`: the control socket's text (`name: value` lines, and `listener KEY name value
/// ...` lines for the responder's listeners) as one JSON object, for scripts and fleet tooling.
/// Numbers stay numbers; every other value is a JSON string, escaped so that no value from
/// outside (an interface name, a listener's address) can end it early.
public enum StatsJSON {
    public static func render(_ text: String) -> String {
        var fields: [String] = []
        var listeners: [String] = []
        for line in text.split(separator: "\n") {
            if line.hasPrefix("listener ") {
                let words = line.split(separator: " ")
                guard words.count >= 2 else { continue }
                var entries = ["\"key\":" + string(words[1])]
                var index = 2
                while index + 1 < words.count {
                    entries.append(string(words[index]) + ":" + value(words[index + 1]))
                    index += 2
                }
                listeners.append("{" + entries.joined(separator: ",") + "}")
            } else if let colon = line.firstIndex(of: ":"), line[line.index(after: colon)...].hasPrefix(" ") {
                let rest = line[line.index(colon, offsetBy: 2)...]
                fields.append(string(line[..<colon]) + ":" + value(rest))
            }
        }
        if !listeners.isEmpty { fields.append("\"listeners\":[" + listeners.joined(separator: ",") + "]") }
        return "{" + fields.joined(separator: ",") + "}\n"
    }

    static func value(_ text: Substring) -> String { UInt64(text) == nil ? string(text) : String(text) }

    /// A JSON string: quotes, backslashes and every control character escaped, and the two
    /// Unicode line separators too (some JSON readers take them as line ends).
    public static func string(_ text: some StringProtocol) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _
            where scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar.value == 0x2028
                || scalar.value == 0x2029:
                out += "\\u" + LogText.hex(scalar.value, digits: 4)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
