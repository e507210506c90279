import CBPF
import CFastPathABI
import CFastPathLoader
import FastPathProgram
import Glibc
import LinuxSys
import NetTypes

/// What failed when the tc program was loaded, attached or read, with the kernel's words for it.
/// The tc program loaded into the kernel, with its maps: libbpf's object, kept open while it is used.
///
/// `@unchecked Sendable`: after `load` nothing here changes; the descriptors are the kernel's.
public final class FastPathObject: @unchecked Sendable {
    private let object: OpaquePointer
    public let programFD: Int32
    /// The listener probe (`listener_probe`), loaded with the program.
    public let probeFD: Int32
    /// The map descriptors by name (fp_config, fp_sources, ...).
    public let maps: [String: Int32]
    /// Whether the maps are those of a program already attached (adopted), rather than new.
    public let adoptedMaps: Bool

    public static let programName = "second_chance_fast_path"
    /// Never attached: test-run by the listener monitor (`ListenerProbe`).
    public static let probeName = "listener_probe"
    /// Loads the embedded object (the kernel verifies it). `reusing`: maps by name, of the layout
    /// this build writes, that the new program is to use instead of new ones. `probeOnly`: the
    /// listener probe alone is loaded (`programFD` is then -1), which verifies in a fraction of
    /// the time the decision takes.
    public init(reusing: [String: Int32] = [:], probeOnly: Bool = false) throws {
        FastPathKernel.silenceLibbpf()
        let logSize = 1 << 20
        let log = UnsafeMutablePointer<CChar>.allocate(capacity: logSize)
        defer { log.deallocate() }
        log[0] = 0
        let bytes = FastPathProgram.object
        let opened = bytes.withUnsafeBytes { buffer in
            proxyside_bpf_open(buffer.baseAddress, buffer.count, "second-chance", log, logSize)
        }
        guard let object = opened else { throw FastPathError(.load, "opening the embedded BPF object", errno: errno) }
        var reused = false
        for (name, fd) in reusing {
            guard let map = bpf_object__find_map_by_name(object, name) else { continue }
            let result = bpf_map__reuse_fd(map, fd)
            if result < 0 {
                bpf_object__close(object)
                throw FastPathError(.load, "reusing map \(name)", errno: -result)
            }
            reused = true
        }
        if probeOnly, let decision = bpf_object__find_program_by_name(object, Self.programName) {
            _ = bpf_program__set_autoload(decision, false)
        }
        let loaded = bpf_object__load(object)
        if loaded < 0 {
            let text = String(cString: log)
            bpf_object__close(object)
            throw FastPathError(.load, "loading the tc program", errno: -loaded, log: text)
        }
        guard let program = bpf_object__find_program_by_name(object, Self.programName) else {
            bpf_object__close(object)
            throw FastPathError(.load, "the object has no program \(Self.programName)", errno: ENOENT)
        }
        guard let probe = bpf_object__find_program_by_name(object, Self.probeName) else {
            bpf_object__close(object)
            throw FastPathError(.load, "the object has no program \(Self.probeName)", errno: ENOENT)
        }
        var maps: [String: Int32] = [:]
        for name in FastPathMap.names {
            guard let map = bpf_object__find_map_by_name(object, name) else {
                bpf_object__close(object)
                throw FastPathError(.load, "the object has no map \(name)", errno: ENOENT)
            }
            maps[name] = bpf_map__fd(map)
        }
        self.object = object
        programFD = bpf_program__fd(program)
        probeFD = bpf_program__fd(probe)
        self.maps = maps
        adoptedMaps = reused
    }

    deinit { bpf_object__close(object) }

    /// A map's descriptor: the loader found every one, or threw.
    public func map(_ map: FastPathMap) -> Int32 { maps[map.rawValue]! }
}

/// The program's identity as the kernel reports it.
public struct FastPathProgramInfo: Sendable, Equatable {
    public var id: UInt32
    /// The kernel's hash of the instructions: equal tags, equal programs.
    public var tag: String
    public var name: String
    /// Map ids by name.
    public var maps: [String: UInt32]
}

/// tc attachment (a clsact ingress filter, as `tc filter add ... bpf da` makes: every kernel with
/// BPF has it) and the kernel's view of programs and maps by id.
public enum FastPathKernel {
    /// Where second-chance's filter sits in an interface's ingress list: a fixed priority and handle,
    /// so that a new program replaces the old one in place and a new process finds it.
    public static let filterPriority: UInt32 = 1
    public static let filterHandle: UInt32 = 0x19523

    /// libbpf prints its own messages to stderr; failures here are reported through errors instead,
    /// in the daemon's log lines.
    static func silenceLibbpf() { _ = silenced }
    private static let silenced: Void = { _ = libbpf_set_print(nil) }()

    public static func interfaceIndex(_ name: String) throws -> UInt32 {
        silenceLibbpf()
        let index = if_nametoindex(name)
        guard index != 0 else { throw FastPathError(.interface, "interface \(name)", errno: errno) }
        return index
    }

    /// Whether an interface's frames carry an Ethernet header, which is what the program parses
    /// (ARPHRD_ETHER: Ethernet, veth, bonds, bridges, VLANs, macvlan). An L3 device (WireGuard,
    /// tun, ipip: ARPHRD_NONE and others) hands tc bare IP packets; its GUE is left to NFQUEUE.
    public static func isEthernet(_ name: String) throws -> Bool {
        let index = try interfaceIndex(name)
        guard let type = try RouteDumpSocket().link(index: index, sequence: 1)?.type else {
            throw FastPathError(.interface, "reading the link type of \(name)", errno: ENODEV)
        }
        return type == 1  // ARPHRD_ETHER (linux/if_arp.h)
    }

    /// Attaches `programFD`, replacing in one step whatever program held the filter's place.
    public static func attach(programFD: Int32, interface: String) throws {
        let index = Int32(bitPattern: try interfaceIndex(interface))
        let attached = proxyside_tc_attach(index, programFD, filterHandle, filterPriority)
        guard attached == 0 else { throw FastPathError(.attach, "attaching to \(interface) ingress", errno: -attached) }
    }

    /// The program in second-chance's filter place on `interface`, if there is one.
    public static func attachedProgram(interface: String) -> UInt32? {
        guard let index = try? interfaceIndex(interface) else { return nil }
        let id = proxyside_tc_query(Int32(bitPattern: index), filterHandle, filterPriority)
        return id == 0 ? nil : id
    }

    /// Removes second-chance's filter (nothing else) from `interface`; the clsact qdisc stays,
    /// since other filters may use it.
    public static func detach(interface: String) throws {
        let index = Int32(bitPattern: try interfaceIndex(interface))
        let result = proxyside_tc_detach(index, filterHandle, filterPriority)
        guard result == 0 || result == -ENOENT || result == -EINVAL else {
            throw FastPathError(.detach, "detaching from \(interface)", errno: -result)
        }
    }

    /// Name, tag and maps of program `id`.
    public static func programInfo(id: UInt32) throws -> FastPathProgramInfo {
        let fd = bpf_prog_get_fd_by_id(id)
        guard fd >= 0 else { throw FastPathError(.inspect, "program \(id)", errno: errno) }
        defer { close(fd) }
        return try programInfo(fd: fd, id: id)
    }

    static func programInfo(fd: Int32, id: UInt32) throws -> FastPathProgramInfo {
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else {
            throw FastPathError(.inspect, "program info", errno: errno)
        }
        var ids = [UInt32](repeating: 0, count: Int(info.nr_map_ids))
        if !ids.isEmpty {
            var again = bpf_prog_info()
            again.nr_map_ids = UInt32(ids.count)
            let result = ids.withUnsafeMutableBufferPointer { buffer in
                again.map_ids = UInt64(UInt(bitPattern: buffer.baseAddress))
                length = UInt32(MemoryLayout<bpf_prog_info>.size)
                return bpf_obj_get_info_by_fd(fd, &again, &length)
            }
            guard result == 0 else { throw FastPathError(.inspect, "program map ids", errno: errno) }
        }
        var maps: [String: UInt32] = [:]
        for mapID in ids {
            let mapFD = bpf_map_get_fd_by_id(mapID)
            guard mapFD >= 0 else { continue }
            if let name = try? mapName(fd: mapFD) { maps[name] = mapID }
            close(mapFD)
        }
        let tag = withUnsafeBytes(of: info.tag) { $0.map { String($0, radix: 16).leftPadded(2) }.joined() }
        let name = withUnsafeBytes(of: info.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return FastPathProgramInfo(id: info.id == 0 ? id : info.id, tag: tag, name: name, maps: maps)
    }

    /// The kernel's description of map `fd`: its name, key and value sizes, entries.
    static func mapInfo(fd: Int32) throws -> bpf_map_info {
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else {
            throw FastPathError(.inspect, "map info", errno: errno)
        }
        return info
    }

    static func mapName(fd: Int32) throws -> String {
        let info = try mapInfo(fd: fd)
        return withUnsafeBytes(of: info.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Descriptors of the maps of program `id`, by name; the caller closes them.
    public static func openMaps(ofProgram id: UInt32) throws -> [String: Int32] {
        var maps: [String: Int32] = [:]
        for (name, mapID) in try programInfo(id: id).maps {
            let fd = bpf_map_get_fd_by_id(mapID)
            guard fd >= 0 else {
                maps.values.forEach { close($0) }
                throw FastPathError(.inspect, "map \(name) (id \(mapID))", errno: errno)
            }
            maps[name] = fd
        }
        return maps
    }

    /// The layout written into a configuration map (0: none yet), or nil when it cannot be read as one.
    public static func configuredLayout(configMap fd: Int32) -> UInt32? {
        guard let info = try? mapInfo(fd: fd),
            info.value_size == UInt32(MemoryLayout<fp_config>.size), info.key_size == 4, info.max_entries == 1
        else { return nil }
        var key: UInt32 = 0
        var value = fp_config()
        guard bpf_map_lookup_elem(fd, &key, &value) == 0 else { return nil }
        return value.layout
    }

    /// Runs program `fd` once on `frame` (an Ethernet frame) as if it had arrived on interface
    /// `interfaceIndex` (BPF_PROG_TEST_RUN): the action it returned and the bytes it left. Nothing
    /// is sent; the program's helpers see this namespace's sockets, routes and neighbours.
    public static func testRun(programFD fd: Int32, frame: [UInt8], interfaceIndex: UInt32) throws -> (
        action: UInt32, output: [UInt8]
    ) {
        var output = [UInt8](repeating: 0, count: frame.count + 256)
        var size = UInt32(output.count)
        var action: UInt32 = 0
        let result = frame.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                proxyside_tc_test_run(
                    fd, input.baseAddress, UInt32(input.count), out.baseAddress, &size, interfaceIndex, &action)
            }
        }
        guard result == 0 else { throw FastPathError(.testRun, "BPF_PROG_TEST_RUN", errno: -result) }
        return (action, Array(output.prefix(Int(size))))
    }

    /// Pins `fd` at `path` (on a bpffs), replacing what was pinned there.
    /// The id of the program pinned at `path`; nil when none is.
    public static func pinnedProgram(at path: String) -> UInt32? {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return try? programInfo(fd: fd, id: 0).id
    }

    public static func pin(_ fd: Int32, at path: String) throws {
        unlink(path)
        guard bpf_obj_pin(fd, path) == 0 else { throw FastPathError(.pin, "pinning \(path)", errno: errno) }
    }

    /// Whether a BPF filesystem is mounted at `path` (in this mount namespace), where objects can be pinned.
    public static func isBPFFilesystem(_ path: String) -> Bool {
        (ProcFile.read("/proc/self/mounts") ?? "").split(separator: "\n").contains { line in
            let fields = line.split(separator: " ")
            return fields.count > 2 && fields[1] == path && fields[2] == "bpf"
        }
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
