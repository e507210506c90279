import Glibc

public enum ResourceLimits {
    /// Raises the soft limit on open files to the hard one: a broker holds a socket per listener
    /// and per client.
    public static func raiseOpenFiles() {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }
}
