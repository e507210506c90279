/// File descriptors a process is handed at start, by name.
///
/// systemd's socket-passing convention (sd_listen_fds(3)): fds from 3 on, LISTEN_FDS their count,
/// LISTEN_PID the process meant to take them, LISTEN_FDNAMES their names joined by ':'. A program
/// re-executing itself keeps its fds where they are instead (moving them to 3.. would close what
/// the old image still needs if exec fails), and names them in `reexecVariable` as NAME=FD pairs.
public enum ListenFDs {
    public static let first: Int32 = 3
    public static let reexecVariable = "PROXYSIDE_REEXEC_FDS"
    public static let variables = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", reexecVariable]

    /// The variables for `names.count` fds placed at 3, 4, ... in process `pid`.
    public static func environment(names: [String], pid: Int32) -> [String: String] {
        ["LISTEN_FDS": String(names.count), "LISTEN_PID": String(pid), "LISTEN_FDNAMES": names.joined(separator: ":")]
    }

    /// The fds passed to process `pid`, with their names ("unknown" where none was given), or []
    /// when the variables are absent or meant for another process.
    public static func parse(_ environment: [String: String], pid: Int32) -> [(fd: Int32, name: String)] {
        guard environment["LISTEN_PID"] == String(pid), let count = environment["LISTEN_FDS"].flatMap(Int32.init),
            count > 0, count < 65536
        else { return [] }
        let names =
            environment["LISTEN_FDNAMES"].map {
                $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            } ?? []
        return (0..<count).map { index in (first + index, Int(index) < names.count ? names[Int(index)] : "unknown") }
    }

    /// The value of `reexecVariable` for these fds.
    public static func reexecValue(_ fds: [(fd: Int32, name: String)]) -> String {
        fds.map { "\($0.name)=\($0.fd)" }.joined(separator: ":")
    }

    /// The fds named by `reexecVariable`; nil when a pair is malformed (no fd is then trusted).
    public static func parseReexec(_ value: String) -> [(fd: Int32, name: String)]? {
        var out: [(fd: Int32, name: String)] = []
        for pair in value.split(separator: ":") {
            guard let equals = pair.lastIndex(of: "="), let fd = Int32(pair[pair.index(after: equals)...]), fd >= 0,
                equals != pair.startIndex
            else { return nil }
            out.append((fd, String(pair[..<equals])))
        }
        return out
    }

    /// Every fd handed to process `pid`: the re-exec form when present, else systemd's.
    public static func inherited(_ environment: [String: String], pid: Int32) -> [(fd: Int32, name: String)] {
        if let value = environment[reexecVariable] { return parseReexec(value) ?? [] }
        return parse(environment, pid: pid)
    }
}
