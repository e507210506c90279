import CFastPathABI
import Glibc
import LinuxSys
import Logging
import NetTypes
import SecondChanceCore
import Synchronization

/// `--fast-path`: where packets are decided.
public enum FastPathChoice: String, Sendable, CaseIterable {
    /// XDP in the driver beside tc where the interfaces run native XDP and the kernel verifies the
    /// entry point (5.12 and later), tc alone where not, NFQUEUE alone where the tc program does
    /// not load or attach (each said once, with the reason). The bulk benchmark measured XDP ahead
    /// of tc in throughput and in CPU per byte (BENCHMARKS.md).
    case auto
    /// XDP in the driver (native mode) beside tc, which decides what XDP passes on; or the
    /// daemon does not start.
    case xdp
    /// tc alone, or the daemon does not start.
    case tc
    /// NFQUEUE alone; a program an earlier process left is removed.
    case off

    /// Whether a start fails without the program.
    public var mustLoad: Bool { self == .tc || self == .xdp }

    /// Whether the XDP entry point goes beside tc.
    public var xdp: XDPUse {
        switch self {
        case .xdp: .required
        case .auto: .preferred
        case .tc, .off: .none
        }
    }
}

/// Whether the XDP entry point goes beside the tc program.
public enum XDPUse: Sendable {
    case none
    /// Or the fast path does not start.
    case required
    /// Where it loads and attaches in every interface's driver; tc alone otherwise.
    case preferred
}

/// Whether the XDP entry point sends a forward back out of the interface it arrived on (XDP_TX),
/// rather than passing it to tc, which redirects it. Either way the same bytes go to the same hop.
public enum XDPForwardChoice: String, Sendable, CaseIterable {
    /// Where no interface is a veth: a veth's XDP_TX reaches its peer only while the peer runs an
    /// XDP program of its own (its receive ring), which this side cannot see, and is lost otherwise.
    case auto
    /// On every interface (every veth's peer runs an XDP program).
    case on
    /// Never: tc forwards.
    case off

    /// Whether XDP may send forwards on `interfaces`.
    public func allows(_ interfaces: [String]) -> Bool {
        switch self {
        case .on: true
        case .off: false
        case .auto: interfaces.allSatisfy { Self.isVeth($0) == false }
        }
    }

    /// Whether `interface` is a veth; nil when its link cannot be read (gone, or netlink failed),
    /// which `auto` takes as a veth.
    static func isVeth(_ interface: String) -> Bool? {
        do { return try NetworkInterface.kind(interface) == "veth" } catch { return nil }
    }
}

/// What a clean stop does with the program.
public enum FastPathStop: String, Sendable, CaseIterable {
    /// Removed: after the stop every GUE packet meets the NFQUEUE rule.
    case detach
    /// Left deciding with the maps as they were (for a restart); the next daemon adopts it.
    case keep
}

/// second-chance's tc program at work: loaded, configured, attached at ingress of the interfaces
/// GUE arrives on, pinned, kept current. A new process adopts the maps of the program it finds
/// attached (when they have this build's layout) and replaces the program in place, so flows it
/// decides never see a gap: not across a re-exec, an upgrade, or a crash and restart.
///
/// `@unchecked Sendable`: the settings are behind a mutex; everything else is set in `init`.
public final class FastPath: @unchecked Sendable {
    public let object: FastPathObject
    public let maps: FastPathMaps
    public let interfaces: [String]
    public let program: BPFProgramInfo
    /// The XDP entry point, when it is attached in the driver on every interface (beside tc).
    public let xdpProgram: BPFProgramInfo?
    /// The id of the program this one replaced, when maps were adopted from it.
    public let adoptedFrom: UInt32?
    /// Where the program and maps are pinned, if a bpffs is mounted at /sys/fs/bpf.
    public let pinDirectory: String?
    private let settings: Mutex<FastPathSettings>

    public static let bpffs = "/sys/fs/bpf"

    /// Where second-chance's filter sits in an interface's ingress list: a fixed place, so that a
    /// new program replaces the old one in one step and a new process finds it.
    public static let filter = TCIngressFilter(handle: 0x19523, priority: 1)

    /// Where the program attaches: the interfaces named (`--fast-path-interface`, each must parse
    /// as Ethernet), or else the Ethernet ones of those the peers' routes leave by; `notEthernet`
    /// are the others, whose GUE is decided from NFQUEUE.
    public static func interfaces(named: [String], peerInterfaces: [String]) -> (
        attach: [String], notEthernet: [String]
    ) {
        guard named.isEmpty else { return (named, []) }
        let ethernet = peerInterfaces.filter { (try? NetworkInterface.isEthernet($0)) != false }
        return (ethernet, peerInterfaces.filter { !ethernet.contains($0) })
    }

    /// The pin directories of this network namespace: one for each instance (by its first queue),
    /// so that one instance never takes another's objects for its predecessor's.
    public static func namespacePinDirectory() -> String {
        var info = stat()
        let namespace = stat("/proc/self/ns/net", &info) == 0 ? String(info.st_ino) : "unknown"
        return "\(bpffs)/proxyside/second-chance/netns-\(namespace)"
    }

    /// The pin directory of the instance that reads `queue` first.
    public static func defaultPinDirectory(queue: UInt16) -> String { namespacePinDirectory() + "/queue-\(queue)" }

    /// Whether every directory from the bpffs down to `path` is this user's and no one else may
    /// write it (a bpffs mounted by hand lets anyone make directories at its top).
    static func ownedDirectory(_ path: String) -> Bool {
        guard path.hasPrefix(bpffs + "/") else { return false }
        var prefix = bpffs
        for part in path.dropFirst(bpffs.count).split(separator: "/") {
            prefix += "/" + part
            var info = stat()
            guard lstat(prefix, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid(),
                info.st_mode & 0o022 == 0
            else { return false }
        }
        return true
    }

    public init(
        settings: FastPathSettings, local: LocalAddresses, reversePaths: ReversePaths = .none, interfaces: [String],
        xdp: XDPUse = .none, xdpForward: XDPForwardChoice = .auto, pinDirectory: String?,
        handles: FastPathHandles = .none, logger: Logger
    ) throws {
        try Self.checkInterfaces(interfaces)
        var settings = settings
        settings.xdpForward = xdp != .none && xdpForward.allows(interfaces)
        // The maps of the program already deciding, if it is ours and of this layout: counters
        // and sets carry on, and nothing is ever read under another layout.
        let (reusable, adoptedFrom) = Self.adoptableMaps(on: interfaces, handles: handles, logger: logger)
        // The loader takes its own copies of the named maps (open until it has: the set closes
        // them when it goes); its read-only data (.rodata, if any) is the object's own and does
        // not carry on.
        object = try withExtendedLifetime(reusable) {
            try Self.load(
                reusing: reusable.byName.filter { FastPathMap.names.contains($0.key) }, xdp: xdp, logger: logger)
        }
        maps = FastPathMaps(object)
        self.interfaces = interfaces
        self.adoptedFrom = adoptedFrom
        self.settings = Mutex(settings)
        // Maps first, then the attachment: the program decides nothing with a half-written map.
        try maps.write(local)
        try maps.write(reversePaths)
        try maps.write(settings)
        try Self.attachTC(object, interfaces: interfaces, logger: logger)
        let programFD = object.programFD
        program = try FastPathError.at(.inspect) { try BPF.programInfo(fd: programFD) }
        // XDP goes in after tc, which decides everything it passes on.
        xdpProgram = try Self.attachXDP(object, interfaces: interfaces, wanted: xdp, handles: handles, logger: logger)
        if xdpProgram == nil { Self.warnOfOtherXDP(on: interfaces, logger: logger) }
        Self.removeLeftovers(outside: interfaces, handles: handles, logger: logger)
        self.pinDirectory = Self.pin(object, xdp: xdpProgram != nil, in: pinDirectory, logger: logger)
    }

    /// The object, with the XDP entry point as `xdp` asks: one the kernel does not verify (before
    /// 5.12) is left out when it is only preferred.
    static func load(reusing maps: [String: Int32], xdp: XDPUse, logger: Logger) throws -> FastPathObject {
        guard xdp == .preferred else { return try FastPathObject(reusing: maps, xdp: xdp == .required) }
        let (object, refused) = try FastPathObject.preferringXDP(reusing: maps)
        if let refused {
            logger.info("fast path: the XDP entry point does not load here, tc decides alone: \(refused)")
        }
        return object
    }

    static func checkInterfaces(_ interfaces: [String]) throws {
        guard !interfaces.isEmpty else {
            throw FastPathError(
                .interface, "no interface to attach to (no route to the peers; give --fast-path-interface)",
                errno: ENODEV)
        }
        for interface in interfaces
        where try FastPathError.at(.interface, { try !NetworkInterface.isEthernet(interface) }) {
            throw FastPathError(
                .interface, "\(interface) is not an Ethernet device: the program reads an Ethernet header",
                errno: EPROTOTYPE)
        }
    }

    /// The maps of the program attached to one of `interfaces`, when they have this build's layout:
    /// those handed over with it, or else opened by its id (which takes CAP_SYS_ADMIN).
    static func adoptableMaps(on interfaces: [String], handles: FastPathHandles, logger: Logger) -> (
        NamedDescriptors, UInt32?
    ) {
        for interface in interfaces {
            guard let id = Self.filter.program(on: interface) else { continue }
            guard let maps = handles.maps(ofProgram: id) ?? (try? BPF.openMaps(ofProgram: id)) else {
                logger.info(
                    """
                    fast path: the program attached to \(interface) (id \(id)) was not handed over and cannot \
                    be opened by id (CAP_SYS_ADMIN); it is replaced with new maps
                    """
                )
                continue
            }
            let layout = maps[FastPathMap.config.rawValue].flatMap {
                FastPathMaps.configuredLayout(configMap: $0, slotMap: maps[FastPathMap.configSlot.rawValue])
            }
            if layout == UInt32(FP_LAYOUT), Set(maps.byName.keys).isSuperset(of: FastPathMap.names) {
                return (maps, id)
            }
            logger.info(
                """
                fast path: the program attached to \(interface) (id \(id)) has maps of another layout \
                (\(layout.map(String.init) ?? "unreadable")); it is replaced with new maps
                """
            )
        }
        return (NamedDescriptors(adopting: [:]), nil)
    }

    /// The tc program on every interface, in place of what held the filter's place: all or none.
    static func attachTC(_ object: FastPathObject, interfaces: [String], logger: Logger) throws {
        var attached: [String] = []
        do {
            for interface in interfaces {
                let programFD = object.programFD
                try FastPathError.at(.attach) { try Self.filter.attach(programFD: programFD, interface: interface) }
                attached.append(interface)
            }
        } catch {
            // A program left on some interfaces would decide there unattended.
            Self.removeTC(interfaces: attached, pinDirectory: nil, logger: logger)
            throw error
        }
    }

    /// The program, the XDP entry point and the maps pinned in `directory` (on a bpffs); nil when
    /// not pinned.
    static func pin(_ object: FastPathObject, xdp: Bool, in directory: String?, logger: Logger) -> String? {
        guard let directory, BPF.isFilesystem(FastPath.bpffs) else { return nil }
        do {
            try Self.makeDirectories(directory)
            try BPF.pin(object.programFD, at: directory + "/program")
            if xdp { try BPF.pin(object.xdpFD, at: directory + "/xdp") } else { unlink(directory + "/xdp") }
            for (name, fd) in object.maps { try BPF.pin(fd, at: directory + "/" + name) }
            // A build before one directory per instance pinned in the namespace's: those pins
            // would keep its objects loaded, and they were read once, above.
            unlinkPins(in: namespacePinDirectory())
            return directory
        } catch {
            logger.info("fast path: not pinned: \(error)")
            return nil
        }
    }

    /// Makes the directories below the bpffs down to `path`, each checked before the next is made
    /// in it: one another user made (or a symbolic link) is never written through.
    static func makeDirectories(_ path: String) throws {
        guard path.hasPrefix(bpffs + "/") else {
            throw FastPathError(.pin, "\(path) is not on \(bpffs)", errno: EINVAL)
        }
        var prefix = bpffs
        for part in path.dropFirst(bpffs.count).split(separator: "/") {
            prefix += "/" + part
            guard mkdir(prefix, 0o700) == 0 || errno == EEXIST else {
                throw FastPathError(.pin, "mkdir \(prefix)", errno: errno)
            }
            guard ownedDirectory(prefix) else {
                throw FastPathError(.pin, "\(prefix) is not a directory only this user may write", errno: EPERM)
            }
        }
    }

    /// Removes this daemon's pins from `directory`, where every directory on the way is its own.
    static func unlinkPins(in directory: String) {
        guard ownedDirectory(directory) else { return }
        for name in ["program", "xdp"] + FastPathMap.names { unlink(directory + "/" + name) }
    }

    /// One line for the log and `stats`.
    public var summary: String {
        let adopted = adoptedFrom.map { ", maps adopted from program \($0)" } ?? ""
        let pinned = pinDirectory.map { ", pinned in \($0)" } ?? ""
        let where_ = xdpProgram == nil ? "tc" : "XDP (native) and tc"
        let forwards = settings.withLock { $0.xdpForward } ? "XDP" : "tc"
        let xdp = xdpProgram.map { ", XDP program \($0.id), forwards and cookie answers in \(forwards)" } ?? ""
        let on = interfaces.joined(separator: ",")
        return "\(where_) on \(on) (program \(program.id), tag \(program.tag)\(xdp)\(adopted)\(pinned))"
    }

    /// Where packets are decided first, for `stats` and the metrics: xdp, or tc.
    public var hook: String { xdpProgram == nil ? "tc" : "xdp" }

    /// Follows the responder's board (`ResponderBoard.observe`): the listeners it serves, their
    /// counts, the reply MSS table, then the configuration word with the host's TCP settings.
    public func responderChanged(
        _ snapshot: ResponderBoard.Snapshot, records: [ListenerKey], passIntervalNanoseconds: UInt64, logger: Logger
    ) {
        responderWritten.withLock { written in
            guard written.generation.map({ snapshot.generation > $0 }) ?? true else { return }
            written.generation = snapshot.generation
            do {
                written.state = try maps.write(responder: snapshot, records: records, after: written.state)
            } catch {
                written.state = FastPathMaps.ResponderState()  // all of it again next time
                // The listeners then stay as they were: what the queue's responder serves, the
                // kernel's may not yet (or still) serve; both answer with the kernel's cookies.
                logger.warning("fast path: the responder's maps: \(error)")
            }
            let changed = settings.withLock { settings -> FastPathSettings? in
                var next = settings
                next.responderServing = !snapshot.listeners.isEmpty
                next.passIntervalNanoseconds = passIntervalNanoseconds
                next.tcp = snapshot.settings
                guard next != settings else { return nil }
                settings = next
                return next
            }
            if changed != nil { publishSettings(logger: logger) }
        }
    }

    private let responderWritten = Mutex<(generation: UInt64?, state: FastPathMaps.ResponderState)>(
        (nil, FastPathMaps.ResponderState()))

    /// The program's counts for these listeners, by `fp_listener_count` slot.
    public func listenerCounts(_ keys: [ListenerKey]) -> [ListenerKey: [UInt64]] { maps.readListenerCounts(keys) }

    public func counters() -> FastPathCounterValues { maps.readCounters() }

    /// The SYN-ACKs the programs sent: each carries a cookie the kernel gave through the listener
    /// and counted in TcpExt's TCPReqQFullDoCookies. Nil when the counters cannot be read.
    public func cookiesSent() -> UInt64? { maps.readCounterSlots()?[Int(FP_COOKIES_SENT.rawValue)] }

    /// Writes this host's addresses into the maps (the watcher's board calls it as it publishes;
    /// `LocalAddressBoard.observe`). A map that cannot take them would refuse what the queue
    /// accepts: the program then sends everything up until an update succeeds.
    public func addressesChanged(_ local: LocalAddresses, generation: UInt64, logger: Logger) {
        // Serialized, newest first: the watcher's thread and the starting one may both call.
        writtenGeneration.withLock { written in
            guard written.map({ generation > $0 }) ?? true else { return }
            written = generation
            write("this host's addresses", logger: logger) { try maps.write(local) }
            let changed = settings.withLock { settings -> FastPathSettings? in
                let owned = local.ipv4.contains(settings.selfAddress)
                guard owned != settings.selfOwned else { return nil }
                settings.selfOwned = owned
                return settings
            }
            guard let changed else { return }
            logger.warning(
                changed.selfOwned
                    ? "--self \(changed.selfAddress) is this host's again: forwarding"
                    : "--self \(changed.selfAddress) is no longer this host's: nothing is forwarded until it is again")
            publishSettings(logger: logger)
        }
    }

    /// Writes the ways back to the peers, as `addressesChanged` writes the addresses.
    public func reversePathsChanged(_ paths: ReversePaths, generation: UInt64, logger: Logger) {
        writtenReverseGeneration.withLock { written in
            guard written.map({ generation > $0 }) ?? true else { return }
            written = generation
            write("the ways back to the peers", logger: logger) { try maps.write(paths) }
        }
    }

    private let writtenGeneration = Mutex<UInt64?>(nil)
    private let writtenReverseGeneration = Mutex<UInt64?>(nil)
    /// What could not be written last time it was published: the program stays suspended while
    /// any of it is.
    private let failing = Mutex<Set<String>>([])

    /// A map that cannot take what the watcher publishes would refuse what the queue accepts (or
    /// hear what it refuses): the program then sends everything up until every map that failed
    /// (the addresses, the ways back) has taken what was published since.
    private func write(_ what: String, logger: Logger, _ body: () throws -> Void) {
        do {
            try body()
        } catch {
            logger.warning("fast path: \(error); every packet goes up to NFQUEUE until the maps take \(what)")
            failing.withLock { _ = $0.insert(what) }
            publishSettings(logger: logger)
            return
        }
        guard failing.withLock({ $0.remove(what) != nil }) else { return }
        if publishSettings(logger: logger) {
            logger.info("fast path: the maps hold \(what) again; deciding in the kernel")
        }
    }

    /// Writes the settings and the suspension as they are when it runs, whichever thread changed
    /// them: one writer at a time, each reading the latest of both, so that an older configuration
    /// never lands after a newer one (a lost FP_F_SELF_GONE, a suspension undone). True when the
    /// program decides with them.
    @discardableResult
    private func publishSettings(logger: Logger) -> Bool {
        publishing.withLock { _ in
            let current = settings.withLock { $0 }
            var suspend = failing.withLock { !$0.isEmpty }
            if !suspend {
                do { try maps.write(current) } catch {
                    logger.warning("fast path: \(error); every packet goes up to NFQUEUE until it is written")
                    suspend = true
                }
            }
            if suspend { maps.suspend(current) }
            return !suspend
        }
    }

    private let publishing = Mutex(())

    /// The clean stop's choice; a crash leaves the program attached, like `keep`.
    public func stop(_ choice: FastPathStop, logger: Logger) {
        guard choice == .detach else {
            logger.info("fast path: left attached (--fast-path-stop keep); the next daemon adopts it")
            return
        }
        // Only what is still this process's: another instance, or the next daemon, may have put
        // its own program there since (same filter handle, same pin directory).
        if let xdpProgram {
            for interface in interfaces where NativeXDP.program(on: interface) == xdpProgram.id {
                do { try NativeXDP.detach(programFD: object.xdpFD, from: interface) } catch {
                    logger.warning("fast path: \(error)")
                }
            }
        }
        let mine = interfaces.filter { Self.filter.program(on: $0) == program.id }
        let others = interfaces.filter { !mine.contains($0) }
        if !others.isEmpty {
            logger.info("fast path: \(others.joined(separator: ",")) carry another program now; left as they are")
        }
        let pins = pinDirectory.flatMap { BPF.pinnedProgram(at: $0 + "/program") == program.id ? $0 : nil }
        Self.removeTC(interfaces: mine, pinDirectory: pins, logger: logger)
    }

    /// What this daemon hands its successor (a re-exec, the fd store): its programs and maps.
    public var handedOn: [Int32] { FastPathHandles.handedOn(object, xdp: xdpProgram != nil) }

    /// Removes second-chance's XDP entry point and its filter from `interfaces`, and its pins; and
    /// what an earlier daemon of this instance attached elsewhere.
    public static func remove(interfaces: [String], pinDirectory: String?, handles: FastPathHandles, logger: Logger) {
        removeXDP(on: interfaces, handles: handles, logger: logger)
        removeTC(interfaces: interfaces, pinDirectory: pinDirectory, logger: logger)
        removeLeftovers(outside: interfaces, handles: handles, logger: logger)
    }

    /// Removes second-chance's filter from `interfaces`, and its pins.
    static func removeTC(interfaces: [String], pinDirectory: String?, logger: Logger) {
        for interface in interfaces {
            do { try Self.filter.detach(from: interface) } catch { logger.warning("fast path: \(error)") }
        }
        if let pinDirectory, ownedDirectory(pinDirectory) {
            unlinkPins(in: pinDirectory)
            rmdir(pinDirectory)
        }
    }
}
