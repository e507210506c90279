import Glibc
import LinuxSys
import Logging

extension FastPath {
    /// The XDP entry point in the driver on every one of `interfaces`, beside tc, in place of one
    /// an earlier daemon left: all or none. `.required`: a driver without native XDP, or another
    /// program in its place, fails the start; `.preferred`: tc decides alone then (said once, a
    /// warning where another program runs before tc). `.none`, or not loaded: one an earlier
    /// daemon left is removed, as it would decide with maps nobody may keep current (elsewhere,
    /// where the routes or the flags named other interfaces, FastPath.init's removeLeftovers).
    static func attachXDP(
        _ object: FastPathObject, interfaces: [String], wanted: XDPUse, handles: FastPathHandles, logger: Logger
    ) throws -> BPFProgramInfo? {
        guard wanted != .none, wanted == .required || object.xdpFD >= 0 else {
            removeXDP(on: interfaces, handles: handles, logger: logger)
            return nil
        }
        do {
            return try attachXDPEverywhere(object, interfaces: interfaces, handles: handles, logger: logger)
        } catch  where wanted == .preferred {
            // A driver without native XDP (generic mode is no fast path), or another program there.
            let why = (error as? FastPathError)?.explained ?? "\(error)"
            logger.info("fast path: XDP not attached, tc decides alone: \(why)")
            return nil
        }
    }

    /// Warns of every XDP program left on the interfaces when this daemon's is not there (in the
    /// driver, or generic): it sees the GLB peers' packets before the tc program does, and may pass,
    /// drop or rewrite them. It may be an earlier second-chance's that was neither handed over nor
    /// pinned, which without CAP_SYS_ADMIN cannot be told apart: doctor, as root, can.
    static func warnOfOtherXDP(on interfaces: [String], logger: Logger) {
        for interface in interfaces {
            if let id = NativeXDP.program(on: interface) {
                logger.warning(
                    """
                    warning: fast path: another XDP program (\(id)) runs on \(interface) before the tc program \
                    (second-chance doctor, as root, says whether it is an earlier second-chance's)
                    """)
            }
            // second-chance never attaches in generic mode.
            if let id = NativeXDP.genericProgram(on: interface) {
                logger.warning(
                    "warning: fast path: another generic XDP program (\(id)) runs on \(interface) before the tc program"
                )
            }
        }
    }

    /// Attaches the XDP entry point in the driver of every interface, all or none.
    private static func attachXDPEverywhere(
        _ object: FastPathObject, interfaces: [String], handles: FastPathHandles, logger: Logger
    ) throws -> BPFProgramInfo? {
        guard object.xdpFD >= 0 else {
            throw FastPathError(.load, "the XDP entry point was not loaded", errno: ENOENT)
        }
        var attached: [String] = []
        do {
            for interface in interfaces {
                try replaceXDP(with: object.xdpFD, on: interface, handles: handles)
                attached.append(interface)
            }
            let fd = object.xdpFD
            return try FastPathError.at(.inspect) { try BPF.programInfo(fd: fd) }
        } catch {
            // All or none: this program where it went in (by its own descriptor: without
            // CAP_SYS_ADMIN it cannot be opened by id), and an earlier daemon's. tc stays until the
            // caller removes it.
            for interface in attached {
                do { try NativeXDP.detach(programFD: object.xdpFD, from: interface) } catch {
                    logger.warning("fast path: \(error)")
                }
            }
            removeXDP(on: interfaces, handles: handles, logger: logger)
            throw error
        }
    }

    /// Removes what an earlier daemon attached where this one does not (the routes, or the flags,
    /// name other interfaces than when it started): its tc program and XDP entry point, known by
    /// the descriptors it handed over or pinned in this instance's directory only (by name, or by
    /// the namespace's shared pins of older builds, another instance's would match).
    static func removeLeftovers(outside interfaces: [String], handles: FastPathHandles, logger: Logger) {
        for interface in NetworkInterface.all() where !interfaces.contains(interface) {
            if let id = filter.program(on: interface), handles.isPredecessorsProgram(id) {
                do { try filter.detach(from: interface) } catch { logger.warning("fast path: \(error)") }
            }
            if let id = NativeXDP.program(on: interface), let fd = handles.predecessorsXDP(ifID: id) {
                do { try NativeXDP.detach(programFD: fd, from: interface) } catch {
                    logger.warning("fast path: \(error)")
                }
            }
        }
    }

    /// Attaches `fd` to `interface`, in place of an earlier daemon's XDP entry point if one is there.
    private static func replaceXDP(with fd: Int32, on interface: String, handles: FastPathHandles) throws {
        guard let current = NativeXDP.program(on: interface) else {
            try FastPathError.at(.attach) { try NativeXDP.attach(programFD: fd, interface: interface, replacing: nil) }
            return
        }
        let replaced = try withOurXDP(current, handles: handles) { expected in
            try FastPathError.at(.attach) {
                try NativeXDP.attach(programFD: fd, interface: interface, replacing: expected)
            }
        }
        guard replaced else {
            throw FastPathError(
                .attach, "\(interface) carries another XDP program (\(current)), or one not handed over",
                errno: EEXIST)
        }
    }

    /// Calls `body` with a descriptor of program `id` when it is an XDP entry point of
    /// second-chance's: the one handed over, or else one whose name says so (the kernel keeps 15
    /// characters), opened by id, which takes CAP_SYS_ADMIN. False when it is not ours, or cannot
    /// be known to be.
    @discardableResult
    static func withOurXDP(_ id: UInt32, handles: FastPathHandles, _ body: (Int32) throws -> Void) rethrows -> Bool {
        if let fd = handles.xdpDescriptor(ifID: id) {
            try body(fd)
            return true
        }
        guard let fd = try? BPF.openProgram(id: id) else { return false }
        defer { close(fd) }
        guard (try? BPF.programInfo(fd: fd, id: id).name) == String(FastPathObject.xdpName.prefix(15)) else {
            return false
        }
        try body(fd)
        return true
    }

    /// Whether program `id` is an XDP entry point of second-chance's (for doctor: the pins of every
    /// instance stand in for a caller without CAP_SYS_ADMIN).
    static func isOurXDP(_ id: UInt32) -> Bool {
        let namespace = namespacePinDirectory()
        let directories = [namespace] + ProcFile.entries(ofDirectory: namespace).map { namespace + "/" + $0 }
        let pinned = directories.map { FastPathHandles.pinned(in: $0) }
        return pinned.contains { $0.xdpDescriptor(ifID: id) != nil } || withOurXDP(id, handles: .none) { _ in }
    }

    /// Removes second-chance's XDP entry point from `interfaces` (an earlier daemon's elsewhere is
    /// removeLeftovers' to take off, by its descriptors alone); another program stays.
    static func removeXDP(on interfaces: [String], handles: FastPathHandles, logger: Logger) {
        for interface in interfaces {
            guard let id = NativeXDP.program(on: interface) else { continue }
            withOurXDP(id, handles: handles) { fd in
                do { try NativeXDP.detach(programFD: fd, from: interface) } catch {
                    logger.warning("fast path: \(error)")
                }
            }
        }
    }
}
