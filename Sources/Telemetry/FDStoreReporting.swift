import LinuxSys
import Logging

/// The fd store as the daemons use it: a store or a removal the service manager refuses is
/// logged and the daemon goes on (it then only loses what a crash would have kept).
extension SDNotify {
    /// Whether the service manager was sent it.
    @discardableResult
    public func store(_ fd: Int32, name: String, reportingTo logger: Logger) -> Bool {
        do { try store(fd, name: name) } catch {
            logger.info("fd store \(name): \(error)")
            return false
        }
        return true
    }

    public func removeStored(name: String, reportingTo logger: Logger) {
        do { try removeStored(name: name) } catch { logger.info("fd store \(name): \(error)") }
    }

    /// Replaces whatever is stored as `name` with `fd`.
    public func replaceStored(_ fd: Int32, name: String, reportingTo logger: Logger) {
        removeStored(name: name, reportingTo: logger)
        store(fd, name: name, reportingTo: logger)
    }
}
