import CLinuxShims
import Glibc

public enum Signals {
    /// SIGTERM/SIGINT signal `shutdown`; SIGHUP signals `reload` when given.
    public static func install(shutdown: EventFD, reload: EventFD? = nil) throws {
        _ = try Syscall.negated("sigaction") { proxyside_install_signal_eventfds(shutdown.fd, reload?.fd ?? -1) }
    }

    /// `signal` signals `event` instead of its default action.
    public static func forward(_ signal: Int32, to event: EventFD) throws {
        _ = try Syscall.negated("sigaction \(signal)") { proxyside_signal_to_eventfd(signal, event.fd) }
    }

    /// Signals a daemon handles itself: between exec(2) and the new image's handlers their
    /// default action would end it, so they stay blocked (pending) across the exec.
    public static let handled = [SIGUSR1, SIGTERM, SIGINT, SIGHUP]

    public static func setHandledBlocked(_ blocked: Bool) {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in handled { sigaddset(&set, signal) }
        sigprocmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &set, nil)
    }

    /// Back to the default action (before exec(2) of a program that expects it).
    public static func restoreDefault(_ signal: Int32) {
        Glibc.signal(signal, SIG_DFL)
    }
}
