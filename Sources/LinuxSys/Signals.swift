import CLinuxShims
import Glibc

public enum Signals {
    /// SIGTERM/SIGINT signal `shutdown`; SIGHUP signals `reload` when given.
    public static func install(shutdown: EventFD, reload: EventFD? = nil) throws {
        let result = proxyside_install_signal_eventfds(shutdown.fd, reload?.fd ?? -1)
        guard result == 0 else { throw SystemError("sigaction", errno: -result) }
    }

    /// `signal` signals `event` instead of its default action.
    public static func forward(_ signal: Int32, to event: EventFD) throws {
        guard proxyside_signal_to_eventfd(signal, event.fd) == 0 else { throw SystemError("sigaction \(signal)") }
    }
}
