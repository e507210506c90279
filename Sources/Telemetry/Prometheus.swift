/// The Prometheus text exposition format's rules that both daemons' metrics share.
public enum PrometheusText {
    /// A label value as the format requires: backslash, double quote and line feed escaped, so no
    /// value can end its label or its line early.
    public static func escapeLabel(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count)
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}
