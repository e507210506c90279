import LinuxSys
import Logging

/// The fd store as the daemons use it: a store or a removal the service manager refuses is
/// logged and the daemon goes on (it then only loses what a crash would have kept).
extension SDNotify {
    /// Whether the service manager was sent it.
    @discardableResult
    public func store(_ fd: Int32, name: String, reportingTo logger: Logger) -> Bool {
        store([fd], name: name, reportingTo: logger)
    }

    /// Several under one name, in one message.
    @discardableResult
    public func store(_ fds: [Int32], name: String, watched: Bool = true, reportingTo logger: Logger) -> Bool {
        do { try store(fds, name: name, watched: watched) } catch {
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
        replaceStored([fd], name: name, reportingTo: logger)
    }

    /// Replaces whatever is stored as `name` with `fds`; whether the service manager was sent them.
    @discardableResult
    public func replaceStored(_ fds: [Int32], name: String, watched: Bool = true, reportingTo logger: Logger) -> Bool {
        removeStored(name: name, reportingTo: logger)
        return store(fds, name: name, watched: watched, reportingTo: logger)
    }
}
