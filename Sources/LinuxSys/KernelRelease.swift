import Glibc

/// The running kernel's release (`uname -r`), and the version numbers features are judged by.
public enum KernelRelease {
    public static var current: String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Major and minor of a release such as `6.1.0-57-amd64`; nil when it does not start so.
    public static func version(of release: String) -> (major: Int, minor: Int)? {
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return numbers.count == 2 ? (numbers[0], numbers[1]) : nil
    }
}
