import CBPF
import CBPFShims
import CFastPathABI
import FastPathProgram
import Glibc
import LinuxSys
import NetTypes

/// The tc program loaded into the kernel, with its maps: libbpf's object, kept open while it is used.
///
/// `@unchecked Sendable`: after `load` nothing here changes; the descriptors are the kernel's.
public final class FastPathObject: @unchecked Sendable {
    private let object: OpaquePointer
    public let programFD: Int32
    /// The listener probe (`listener_probe`), loaded with the program.
    public let probeFD: Int32
    /// The XDP entry point (`second_chance_xdp`), when loaded (`xdp`); -1 otherwise.
    public let xdpFD: Int32
    /// The map descriptors by name (fp_config, fp_sources, ...).
    public let maps: [String: Int32]
    /// Whether the maps are those of a program already attached (adopted), rather than new.
    public let adoptedMaps: Bool

    public static let programName = "second_chance_fast_path"
    public static let xdpName = "second_chance_xdp"
    /// Never attached: test-run by the listener monitor (`ListenerProbe`).
    public static let probeName = "listener_probe"
    /// Loads the embedded object (the kernel verifies it). `reusing`: maps by name, of the layout
    /// this build writes, that the new program is to use instead of new ones. `probeOnly`: the
    /// listener probe alone is loaded (`programFD` is then -1), which verifies in a fraction of
    /// the time the decision takes. `xdp`: the XDP entry point is loaded too (verified apart, it
    /// is left out unless asked for: a kernel that refuses it keeps the tc program).
    public init(reusing: [String: Int32] = [:], probeOnly: Bool = false, xdp: Bool = false) throws {
        BPF.silenceLibbpf()
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
        if probeOnly || !xdp, let entry = bpf_object__find_program_by_name(object, Self.xdpName) {
            _ = bpf_program__set_autoload(entry, false)
        }
        let loaded = bpf_object__load(object)
        if loaded < 0 {
            let text = String(cString: log)
            bpf_object__close(object)
            throw FastPathError(
                .load, xdp ? "loading the tc and XDP programs" : "loading the tc program", errno: -loaded, log: text)
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
        xdpFD =
            xdp && !probeOnly ? bpf_object__find_program_by_name(object, Self.xdpName).map(bpf_program__fd) ?? -1 : -1
        programFD = bpf_program__fd(program)
        probeFD = bpf_program__fd(probe)
        self.maps = maps
        adoptedMaps = reused
    }

    deinit { bpf_object__close(object) }

    /// The object with the XDP entry point where this kernel verifies it, else the tc program
    /// alone with the reason XDP was left out. A kernel without bpf_check_mtu for XDP (before 5.12)
    /// is known by a probe, not by verifying the whole entry point to see it refused: on an old
    /// kernel in a slow machine that verification alone takes seconds.
    public static func preferringXDP(reusing maps: [String: Int32] = [:]) throws -> (
        object: FastPathObject, xdpRefused: String?
    ) {
        if NativeXDP.checksMTU == false {
            let why = "the kernel lets no XDP program call bpf_check_mtu (Linux 5.12)"
            return (try FastPathObject(reusing: maps, xdp: false), why)
        }
        do {
            return (try FastPathObject(reusing: maps, xdp: true), nil)
        } catch {
            let why = (error as? FastPathError)?.explained ?? "\(error)"
            return (try FastPathObject(reusing: maps, xdp: false), why)
        }
    }

    /// A map's descriptor: the loader found every one, or threw.
    public func map(_ map: FastPathMap) -> Int32 { maps[map.rawValue]! }
}
