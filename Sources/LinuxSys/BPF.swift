import CBPF
import CBPFShims
import Glibc

/// A BPF program's identity as the kernel reports it.
public struct BPFProgramInfo: Sendable, Equatable {
    public var id: UInt32
    /// The kernel's hash of the instructions: equal tags, equal programs.
    public var tag: String
    public var name: String
    /// Map ids by name (only with CAP_SYS_ADMIN, which opening a map by id takes).
    public var maps: [String: UInt32]
    /// The ids of every map the program uses.
    public var mapIDs: [UInt32] = []
}

/// The kernel's BPF objects by descriptor, id and pin path (bpf(2), through libbpf): what a
/// program is, which maps it uses, pinning, and running a program on given bytes. Failures are
/// `SystemError`s with the kernel's errno; the caller says what it was doing.
public enum BPF {
    /// libbpf prints its own messages to stderr; failures are reported through errors instead.
    public static func silenceLibbpf() { _ = silenced }
    private static let silenced: Void = { _ = libbpf_set_print(nil) }()

    /// A descriptor of program `id` (the caller closes it).
    public static func openProgram(id: UInt32) throws -> Int32 {
        let fd = bpf_prog_get_fd_by_id(id)
        guard fd >= 0 else { throw SystemError("program \(id)") }
        return fd
    }

    /// Name, tag and maps of program `id`.
    public static func programInfo(id: UInt32) throws -> BPFProgramInfo {
        let fd = bpf_prog_get_fd_by_id(id)
        guard fd >= 0 else { throw SystemError("program \(id)") }
        defer { close(fd) }
        return try programInfo(fd: fd, id: id)
    }

    /// The same of the program `fd` refers to (`id`, when known, stands in for a kernel that does
    /// not report it).
    public static func programInfo(fd: Int32, id: UInt32 = 0) throws -> BPFProgramInfo {
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else { throw SystemError("program info") }
        var ids = [UInt32](repeating: 0, count: Int(info.nr_map_ids))
        if !ids.isEmpty {
            var again = bpf_prog_info()
            again.nr_map_ids = UInt32(ids.count)
            let result = ids.withUnsafeMutableBufferPointer { buffer in
                again.map_ids = UInt64(UInt(bitPattern: buffer.baseAddress))
                length = UInt32(MemoryLayout<bpf_prog_info>.size)
                return bpf_obj_get_info_by_fd(fd, &again, &length)
            }
            guard result == 0 else { throw SystemError("program map ids") }
        }
        var maps: [String: UInt32] = [:]
        for mapID in ids {
            let mapFD = bpf_map_get_fd_by_id(mapID)
            guard mapFD >= 0 else { continue }
            if let name = try? mapInfo(fd: mapFD).name { maps[name] = mapID }
            close(mapFD)
        }
        let tag = withUnsafeBytes(of: info.tag) { $0.map { hexByte($0) }.joined() }
        return BPFProgramInfo(
            id: info.id == 0 ? id : info.id, tag: tag, name: cName(info.name), maps: maps, mapIDs: ids)
    }

    /// The kernel's description of a map: name, key and value sizes, entries.
    public struct MapInfo: Sendable, Equatable {
        public var id: UInt32
        public var name: String
        public var keySize: UInt32
        public var valueSize: UInt32
        public var maxEntries: UInt32
        public var type: UInt32
    }

    public static func mapInfo(fd: Int32) throws -> MapInfo {
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else { throw SystemError("map info") }
        return MapInfo(
            id: info.id, name: cName(info.name), keySize: info.key_size, valueSize: info.value_size,
            maxEntries: info.max_entries,
            type: info.type)
    }

    /// BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: a socket group's array, as `MapInfo.type` says it.
    public static let reuseportSocketArray = BPF_MAP_TYPE_REUSEPORT_SOCKARRAY.rawValue

    /// A descriptor of the map of `type` named `name` whose `key` holds `value` (for a socket
    /// array, a socket's SO_COOKIE): the kernel's maps searched by id, since a map a program
    /// attached to sockets is reachable by nothing else. nil when there is none (the caller closes
    /// it otherwise).
    public static func findMap(type: UInt32, name: String, key: UInt32, holding value: UInt64) -> Int32? {
        var id: UInt32 = 0
        while bpf_map_get_next_id(id, &id) == 0 {
            let fd = bpf_map_get_fd_by_id(id)
            guard fd >= 0 else { continue }
            if let info = try? mapInfo(fd: fd), info.type == type, info.name == name, info.keySize == 4,
                info.valueSize == 8
            {
                var key = key, found: UInt64 = 0
                if bpf_map_lookup_elem(fd, &key, &found) == 0, found == value { return fd }
            }
            close(fd)
        }
        return nil
    }

    /// Descriptors of the maps of program `id`, by name, closed with the set.
    public static func openMaps(ofProgram id: UInt32) throws -> NamedDescriptors {
        var maps: [String: Int32] = [:]
        for (name, mapID) in try programInfo(id: id).maps {
            let fd = bpf_map_get_fd_by_id(mapID)
            guard fd >= 0 else {
                let error = SystemError("map \(name) (id \(mapID))")
                _ = NamedDescriptors(adopting: maps)
                throw error
            }
            maps[name] = fd
        }
        return NamedDescriptors(adopting: maps)
    }

    /// Where a program runs: its context, and so how a test run builds one.
    public enum Hook: Sendable { case tc, xdp }

    /// Runs program `fd` once on `frame` (an Ethernet frame) as if it had arrived on interface
    /// `interfaceIndex` (BPF_PROG_TEST_RUN): the action it returned and the bytes it left. Nothing
    /// is sent; the program's helpers see this namespace's sockets, routes and neighbours (for
    /// XDP, those of the interface's namespace; Linux 5.15 and later take its context).
    public static func testRun(programFD fd: Int32, frame: [UInt8], interfaceIndex: UInt32, hook: Hook = .tc) throws
        -> (action: UInt32, output: [UInt8])
    {
        var output = [UInt8](repeating: 0, count: frame.count + 256)
        var size = UInt32(output.count)
        var action: UInt32 = 0
        let run = hook == .tc ? proxyside_tc_test_run : proxyside_xdp_test_run
        let result = frame.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                run(fd, input.baseAddress, UInt32(input.count), out.baseAddress, &size, interfaceIndex, &action)
            }
        }
        guard result == 0 else { throw SystemError("BPF_PROG_TEST_RUN", errno: -result) }
        return (action, Array(output.prefix(Int(size))))
    }

    /// What kind of BPF object a descriptor refers to. (BPF_OBJ_GET_INFO_BY_FD answers for any
    /// kind, in that kind's layout: a map's info read as a program's would make a name of bytes.)
    public enum ObjectKind: Sendable { case program, map }

    /// The kind of `fd`'s object, from its anonymous inode's name; nil for anything else.
    public static func kind(of fd: Int32) -> ObjectKind? {
        var buffer = [CChar](repeating: 0, count: 64)
        let length = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        switch String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self) {
        case "anon_inode:bpf-prog": return .program
        case "anon_inode:bpf-map": return .map
        default: return nil
        }
    }

    /// A descriptor of the object pinned at `path` (the caller closes it); nil when none is. Unlike
    /// opening by id, which takes CAP_SYS_ADMIN, this takes only the file's permissions.
    public static func openPinned(_ path: String) -> Int32? {
        let fd = bpf_obj_get(path)
        return fd >= 0 ? fd : nil
    }

    /// The id of the program pinned at `path`; nil when none is.
    public static func pinnedProgram(at path: String) -> UInt32? {
        guard let fd = openPinned(path) else { return nil }
        defer { close(fd) }
        return try? programInfo(fd: fd).id
    }

    /// Pins `fd` at `path` (on a bpffs), replacing what was pinned there.
    public static func pin(_ fd: Int32, at path: String) throws {
        unlink(path)
        guard bpf_obj_pin(fd, path) == 0 else { throw SystemError("pinning \(path)") }
    }

    /// Whether a BPF filesystem is mounted at `path` (in this mount namespace), where objects can be pinned.
    public static func isFilesystem(_ path: String) -> Bool {
        (ProcFile.read("/proc/self/mounts") ?? "").split(separator: "\n").contains { line in
            let fields = line.split(separator: " ")
            return fields.count > 2 && fields[1] == path && fields[2] == "bpf"
        }
    }

    private static func hexByte(_ byte: UInt8) -> String {
        let text = String(byte, radix: 16)
        return text.count == 2 ? text : "0" + text
    }

    private static func cName<T>(_ field: T) -> String {
        withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}

/// A place in an interface's tc ingress list (a clsact filter at a fixed handle and priority, as
/// `tc filter add ... bpf da` makes: every kernel with BPF has it), where one program at a time
/// decides: attaching replaces the one there in a single step, and a later process finds it.
public struct TCIngressFilter: Sendable, Equatable {
    public var handle: UInt32
    public var priority: UInt32

    public init(handle: UInt32, priority: UInt32) { (self.handle, self.priority) = (handle, priority) }

    /// Attaches `programFD` here on `interface`, adding the clsact qdisc if needed.
    public func attach(programFD: Int32, interface: String) throws {
        let index = Int32(bitPattern: try NetworkInterface.index(interface))
        let attached = proxyside_tc_attach(index, programFD, handle, priority)
        guard attached == 0 else { throw SystemError("attaching to \(interface) ingress", errno: -attached) }
    }

    /// The id of the program here on `interface`, if there is one.
    public func program(on interface: String) -> UInt32? {
        guard let index = try? NetworkInterface.index(interface) else { return nil }
        let id = proxyside_tc_query(Int32(bitPattern: index), handle, priority)
        return id == 0 ? nil : id
    }

    /// Removes this filter (nothing else) from `interface`; the clsact qdisc stays, since other
    /// filters may use it. No filter there is no error.
    public func detach(from interface: String) throws {
        let index = Int32(bitPattern: try NetworkInterface.index(interface))
        let result = proxyside_tc_detach(index, handle, priority)
        guard result == 0 || result == -ENOENT || result == -EINVAL else {
            throw SystemError("detaching from \(interface)", errno: -result)
        }
    }
}

/// Network interfaces by name.
public enum NetworkInterface {
    /// Every interface of this thread's network namespace (if_nameindex: rtnetlink).
    public static func all() -> [String] {
        guard let list = if_nameindex() else { return [] }
        defer { if_freenameindex(list) }
        var names: [String] = []
        var entry = list
        while entry.pointee.if_index != 0 {
            if let name = entry.pointee.if_name { names.append(String(cString: name)) }
            entry += 1
        }
        return names
    }

    public static func index(_ name: String) throws -> UInt32 {
        let index = if_nametoindex(name)
        guard index != 0 else { throw SystemError("interface \(name)") }
        return index
    }

    /// An interface's driver as rtnetlink names it (IFLA_INFO_KIND: "veth", "bond", ...); nil for a
    /// physical device.
    public static func kind(_ name: String) throws -> String? {
        let index = try Self.index(name)
        guard let link = try RouteDumpSocket().link(index: index, sequence: 1) else {
            throw SystemError("reading the link of \(name)", errno: ENODEV)
        }
        return link.kind
    }

    /// Whether an interface's frames carry an Ethernet header (ARPHRD_ETHER: Ethernet, veth,
    /// bonds, bridges, VLANs, macvlan), rather than bare IP packets (an L3 device: WireGuard, tun,
    /// ipip).
    public static func isEthernet(_ name: String) throws -> Bool {
        let index = try Self.index(name)
        guard let type = try RouteDumpSocket().link(index: index, sequence: 1)?.type else {
            throw SystemError("reading the link type of \(name)", errno: ENODEV)
        }
        return type == 1  // ARPHRD_ETHER (linux/if_arp.h)
    }
}

/// An interface's XDP program in the driver's own (native) mode, run before an skb exists. The
/// generic (skb) mode is never used: it runs once the skb is built, no earlier than tc.
public enum NativeXDP {
    /// Attaches `programFD` to `interface`: in place of the program `replacing` refers to, in one
    /// step and only while that one is still attached, or where none is. EOPNOTSUPP: the driver
    /// has no native XDP. (A descriptor, not an id: opening a program by id takes CAP_SYS_ADMIN.)
    public static func attach(programFD: Int32, interface: String, replacing old: Int32?) throws {
        let index = Int32(bitPattern: try NetworkInterface.index(interface))
        let result = proxyside_xdp_attach(index, programFD, old ?? -1)
        guard result == 0 else { throw SystemError("attaching XDP to \(interface)", errno: -result) }
    }

    /// The id of the native XDP program on `interface`, if there is one.
    public static func program(on interface: String) -> UInt32? { query(interface, generic: false) }

    /// The id of a generic-mode XDP program on `interface` (someone else's: it runs after the skb
    /// is built, still before tc).
    public static func genericProgram(on interface: String) -> UInt32? { query(interface, generic: true) }

    static func query(_ interface: String, generic: Bool) -> UInt32? {
        guard let index = try? NetworkInterface.index(interface) else { return nil }
        let id = proxyside_xdp_query(Int32(bitPattern: index), generic ? 1 : 0)
        return id == 0 ? nil : id
    }

    /// Whether this kernel lets XDP programs call bpf_check_mtu (Linux 5.12); nil when it could not
    /// be asked (no CAP_BPF), as loading will then say.
    public static var checksMTU: Bool? {
        let answer = proxyside_xdp_checks_mtu()
        return answer < 0 ? nil : answer == 1
    }

    /// Removes the program `programFD` refers to from `interface`, only if it is still the one
    /// attached there.
    public static func detach(programFD: Int32, from interface: String) throws {
        let index = Int32(bitPattern: try NetworkInterface.index(interface))
        let result = proxyside_xdp_detach(index, programFD)
        guard result == 0 else { throw SystemError("detaching XDP from \(interface)", errno: -result) }
    }
}
