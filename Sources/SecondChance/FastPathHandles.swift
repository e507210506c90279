import Glibc
import LinuxSys

/// Descriptors of the programs and maps an earlier process of this daemon loaded: handed over
/// across a re-exec, kept in the service manager's fd store across a crash and restart, or opened
/// from the pins. Opening a program or a map by id takes CAP_SYS_ADMIN, which the shipped unit
/// does not grant; with these descriptors a daemon still knows its predecessor's programs for its
/// own, adopts their maps, and replaces or removes its XDP program (the kernel names the program
/// an XDP replace or detach expects by descriptor).
///
/// `@unchecked Sendable`: nothing changes after `init`; the descriptors are closed with the set.
public final class FastPathHandles: @unchecked Sendable {
    /// The tc program's descriptor and id.
    let program: (fd: Int32, id: UInt32)?
    /// The XDP entry point's descriptor and id.
    let xdp: (fd: Int32, id: UInt32)?
    /// Map descriptors by map name (fp_config, ...).
    let maps: [String: Int32]
    /// The pinned set, beside a handed-over one: a start that failed after it attached (or a crash
    /// before it stored its own) leaves the store holding its predecessor's, while the pins name
    /// what is attached.
    let pinnedSet: FastPathHandles?
    /// Pinned where every instance in the namespace pinned before one directory per instance: a
    /// predecessor's, or another instance's. Good for adopting what this start attaches over; never
    /// a reason to remove anything elsewhere.
    let shared: Bool

    /// The name they all go by, in the fd store and across a re-exec: each is told apart by the
    /// kernel's own name for it (the program's, the map's), and one message stores them all.
    public static let storeName = "fast-path"

    /// Takes the descriptors over. One that is not what its name says (not a program, another
    /// map) is closed and left out.
    init(program: Int32?, xdp: Int32?, maps: [String: Int32], pinned: FastPathHandles? = nil, shared: Bool = false) {
        pinnedSet = pinned
        self.shared = shared
        self.program = program.flatMap(Self.identified)
        self.xdp = xdp.flatMap(Self.identified)
        var named: [String: Int32] = [:]
        for (name, fd) in maps {
            if BPF.kind(of: fd) == .map, (try? BPF.mapInfo(fd: fd).name) == name { named[name] = fd } else { close(fd) }
        }
        self.maps = named
    }

    public static let none = FastPathHandles(program: nil, xdp: nil, maps: [:])

    deinit {
        [program?.fd, xdp?.fd].compactMap { $0 }.forEach { close($0) }
        maps.values.forEach { close($0) }
    }

    private static func identified(_ fd: Int32) -> (fd: Int32, id: UInt32)? {
        guard BPF.kind(of: fd) == .program, let id = try? BPF.programInfo(fd: fd).id, id != 0 else {
            close(fd)
            return nil
        }
        return (fd, id)
    }

    /// What an earlier process handed over (a re-exec, or the fd store after a restart), or else
    /// what is pinned in `pinDirectory` (a start after a stop that kept the program).
    public static func inherited(from handover: inout Handover, pinDirectory: String?) -> FastPathHandles {
        var programs: [String: Int32] = [:]
        var maps: [String: Int32] = [:]
        for fd in handover.claimAll(storeName) {
            let kind = BPF.kind(of: fd)
            let name: String? =
                switch kind {
                case .program: try? BPF.programInfo(fd: fd).name
                case .map: try? BPF.mapInfo(fd: fd).name
                case nil: nil
                }
            guard let name, programs[name] == nil, maps[name] == nil else {
                close(fd)
                continue
            }
            if kind == .map { maps[name] = fd } else { programs[name] = fd }
        }
        let program = programs.removeValue(forKey: String(FastPathObject.programName.prefix(15)))
        let xdp = programs.removeValue(forKey: String(FastPathObject.xdpName.prefix(15)))
        programs.values.forEach { close($0) }
        // Then the namespace's directory, where a build before one directory per instance pinned.
        let pins = pinDirectory.map {
            pinned(in: $0, before: pinned(in: FastPath.namespacePinDirectory(), shared: true))
        }
        guard program != nil || xdp != nil || !maps.isEmpty else { return pins ?? .none }
        return FastPathHandles(program: program, xdp: xdp, maps: maps, pinned: pins)
    }

    /// The objects pinned in `directory` (FastPath.pin's names), where every directory on its way
    /// belongs to this user and no one else may write it: another local user's objects are never
    /// taken for this daemon's.
    public static func pinned(in directory: String, before next: FastPathHandles? = nil, shared: Bool = false)
        -> FastPathHandles
    {
        guard FastPath.ownedDirectory(directory) else { return next ?? .none }
        var maps: [String: Int32] = [:]
        for name in FastPathMap.names {
            if let fd = BPF.openPinned(directory + "/" + name) { maps[name] = fd }
        }
        return FastPathHandles(
            program: BPF.openPinned(directory + "/program"), xdp: BPF.openPinned(directory + "/xdp"), maps: maps,
            pinned: next, shared: shared)
    }

    /// Copies of the maps, when program `id` is the tc program handed over and they are all its
    /// own; nil otherwise.
    func maps(ofProgram id: UInt32) -> NamedDescriptors? {
        guard let program, program.id == id, let info = try? BPF.programInfo(fd: program.fd) else {
            return pinnedSet?.maps(ofProgram: id)
        }
        let used = Set(info.mapIDs)
        var copies: [String: Int32] = [:]
        for (name, fd) in maps {
            guard let mapID = try? BPF.mapInfo(fd: fd).id, used.contains(mapID) else { continue }
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            if copy >= 0 { copies[name] = copy }
        }
        return NamedDescriptors(adopting: copies)
    }

    /// Whether program `id` is this instance's predecessor's tc program: handed over, or pinned in
    /// its own directory.
    func isPredecessorsProgram(_ id: UInt32) -> Bool {
        (!shared && program?.id == id) || pinnedSet?.isPredecessorsProgram(id) == true
    }

    /// The XDP entry point's descriptor, when program `id` is this instance's predecessor's.
    func predecessorsXDP(ifID id: UInt32) -> Int32? {
        !shared && xdp?.id == id ? xdp?.fd : pinnedSet?.predecessorsXDP(ifID: id)
    }

    /// The XDP entry point's descriptor, when program `id` is the one handed over.
    func xdpDescriptor(ifID id: UInt32) -> Int32? { xdp?.id == id ? xdp?.fd : pinnedSet?.xdpDescriptor(ifID: id) }

    /// What a daemon hands its successor of the programs and maps it attached.
    static func handedOn(_ object: FastPathObject, xdp: Bool) -> [Int32] {
        [object.programFD] + (xdp ? [object.xdpFD] : []) + FastPathMap.allCases.map { object.map($0) }
    }
}
