import Glibc
import LinuxSys
import Logging

extension FastPath {
    /// The XDP entry point in the driver on every one of `interfaces`, beside tc, in place of one
    /// an earlier daemon left: all or none (a driver without native XDP, or another program in
    /// its place, fails the start). Not `wanted`, one an earlier daemon left is removed: it would
    /// decide with maps nobody may keep current (from every interface: the routes, or the flags,
    /// may name others than when it was attached).
    static func attachXDP(_ object: FastPathObject, interfaces: [String], wanted: Bool, logger: Logger) throws
        -> BPFProgramInfo?
    {
        guard wanted else {
            removeXDP(logger: logger)
            return nil
        }
        guard object.xdpFD >= 0 else {
            throw FastPathError(.load, "the XDP entry point was not loaded", errno: ENOENT)
        }
        do {
            for interface in interfaces {
                let current = NativeXDP.program(on: interface)
                if let current, !isOurXDP(current) {
                    throw FastPathError(.attach, "\(interface) carries another XDP program (\(current))", errno: EEXIST)
                }
                let fd = object.xdpFD
                try FastPathError.at(.attach) {
                    try NativeXDP.attach(programFD: fd, interface: interface, replacing: current)
                }
            }
            let fd = object.xdpFD
            return try FastPathError.at(.inspect) { try BPF.programInfo(fd: fd) }
        } catch {
            // All or none, an earlier daemon's included; tc stays until the caller removes it.
            removeXDP(logger: logger)
            throw error
        }
    }

    /// Whether program `id` is an XDP entry point of second-chance's (the kernel keeps 15
    /// characters of a name).
    static func isOurXDP(_ id: UInt32) -> Bool {
        (try? BPF.programInfo(id: id).name) == String(FastPathObject.xdpName.prefix(15))
    }

    /// Removes second-chance's XDP entry point from every interface of the namespace (the routes,
    /// or the flags, may name others than when it was attached); another program stays.
    static func removeXDP(logger: Logger) {
        for interface in NetworkInterface.all() {
            guard let id = NativeXDP.program(on: interface), isOurXDP(id) else { continue }
            do { try NativeXDP.detach(id, from: interface) } catch { logger.warning("fast path: \(error)") }
        }
    }
}
