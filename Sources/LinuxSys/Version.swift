/// The release both daemons report (`version`, `stats`, the metrics' build_info).
public enum ProxysideVersion {
    public static let number = "0.4.0"
}
