/// The release both daemons report (`version`, `stats`, the metrics' build_info): from git, by
/// scripts/version.sh through VersionPlugin.
public enum ProxysideVersion {
    public static let number = generatedVersion
}
