import CBPF
import CBPFShims
import Glibc

/// A BPF object, loaded: one a target embeds (BPFObjectPlugin) or one from a file
/// (the lab's yardsticks), with read-only globals (`volatile const`) set before the
/// load by name.
///
/// `@unchecked Sendable`: after `init` nothing here changes; the descriptors are the kernel's.
public final class BPFObject: @unchecked Sendable {
    private let object: OpaquePointer

    /// Opens and loads `elf`; `constants` sets read-only globals (their bytes, as the program
    /// reads them) before the kernel verifies it; the programs named in `skipping` are not loaded
    /// (one this kernel would refuse); the maps named in `reusing` are the kernel's maps given,
    /// not new ones.
    public init(
        elf: [UInt8], name: String, constants: [String: [UInt8]] = [:], skipping: Set<String> = [],
        reusing: [String: Int32] = [:]
    ) throws {
        BPF.silenceLibbpf()
        // libbpf keeps the log's address from the open to the load: memory of our own, not an array's.
        let logSize = 1 << 16
        let log = UnsafeMutablePointer<CChar>.allocate(capacity: logSize)
        defer { log.deallocate() }
        log[0] = 0
        let opened = elf.withUnsafeBytes { buffer in
            proxyside_bpf_open(buffer.baseAddress, buffer.count, name, log, logSize)
        }
        guard let object = opened else { throw SystemError("opening BPF object \(name)", errno: errno) }
        do {
            try Self.set(constants, in: object)
            for program in skipping {
                guard let found = bpf_object__find_program_by_name(object, program) else {
                    throw SystemError("the BPF object has no program \(program)", errno: ENOENT)
                }
                bpf_program__set_autoload(found, false)
            }
            for (map, fd) in reusing {
                guard let found = bpf_object__find_map_by_name(object, map) else {
                    throw SystemError("the BPF object has no map \(map)", errno: ENOENT)
                }
                let reused = bpf_map__reuse_fd(found, fd)
                guard reused == 0 else { throw SystemError("reusing map \(map)", errno: -reused) }
            }
        } catch {
            bpf_object__close(object)
            throw error
        }
        let loaded = bpf_object__load(object)
        guard loaded == 0 else {
            bpf_object__close(object)
            let verifier = String(cString: log)
            throw SystemError("loading BPF object \(name): \(verifier.suffix(2000))", errno: -loaded)
        }
        self.object = object
    }

    deinit { bpf_object__close(object) }

    public func program(_ name: String) throws -> Int32 {
        guard let program = bpf_object__find_program_by_name(object, name) else {
            throw SystemError("the BPF object has no program \(name)", errno: ENOENT)
        }
        return bpf_program__fd(program)
    }

    public func map(_ name: String) throws -> Int32 {
        guard let map = bpf_object__find_map_by_name(object, name) else {
            throw SystemError("the BPF object has no map \(name)", errno: ENOENT)
        }
        return bpf_map__fd(map)
    }

    /// Sets `key` of the object's map `name` to `value` (for a socket array: a socket's fd).
    public func update(map name: String, key: UInt32, value: UInt64) throws {
        let fd = try map(name)
        var key = key, value = value
        guard bpf_map_update_elem(fd, &key, &value, UInt64(BPF_ANY)) == 0 else {
            throw SystemError("setting \(name)[\(key)]", errno: errno)
        }
    }

    /// Key `key` of the object's map `name`: for a socket array, the SO_COOKIE of the socket
    /// there; nil when the key is empty.
    public func lookup(map name: String, key: UInt32) throws -> UInt64? {
        let fd = try map(name)
        var key = key, value: UInt64 = 0
        return bpf_map_lookup_elem(fd, &key, &value) == 0 ? value : nil
    }

    /// Writes each constant's bytes where BTF places it in the object's `.rodata`.
    private static func set(_ constants: [String: [UInt8]], in object: OpaquePointer) throws {
        guard !constants.isEmpty else { return }
        var rodata: OpaquePointer?
        var map = bpf_object__next_map(object, nil)
        while let current = map {
            if String(cString: bpf_map__name(current)).hasSuffix(".rodata") { rodata = current }
            map = bpf_object__next_map(object, current)
        }
        var size = 0
        guard let rodata, let btf = bpf_object__btf(object), let initial = bpf_map__initial_value(rodata, &size) else {
            throw SystemError("the BPF object has no .rodata with BTF", errno: ENOENT)
        }
        var data = Array(UnsafeRawBufferPointer(start: initial, count: size))
        let datasec: UInt32 = 15  // BTF_KIND_DATASEC: two headers declare it, which Swift cannot choose between
        let section = btf__find_by_name_kind(btf, ".rodata", datasec)
        guard section > 0, let type = btf__type_by_id(btf, UInt32(section)) else {
            throw SystemError("the BPF object's BTF has no .rodata", errno: ENOENT)
        }
        var remaining = constants
        let count = Int(type.pointee.info & 0xffff)  // vlen
        let variables = UnsafeRawPointer(type.advanced(by: 1)).assumingMemoryBound(to: btf_var_secinfo.self)
        for index in 0..<count {
            let variable = variables[index]
            guard let declaration = btf__type_by_id(btf, variable.type),
                let name = btf__name_by_offset(btf, declaration.pointee.name_off).map({ String(cString: $0) }),
                let bytes = remaining.removeValue(forKey: name)
            else { continue }
            guard bytes.count == Int(variable.size), Int(variable.offset) + bytes.count <= size else {
                throw SystemError("constant \(name) is \(variable.size) bytes", errno: EINVAL)
            }
            data.replaceSubrange(Int(variable.offset)..<Int(variable.offset) + bytes.count, with: bytes)
        }
        guard remaining.isEmpty else {
            throw SystemError("the BPF object has no constant \(remaining.keys.sorted())", errno: ENOENT)
        }
        let set = data.withUnsafeBytes { bpf_map__set_initial_value(rodata, $0.baseAddress, $0.count) }
        guard set == 0 else { throw SystemError("setting the BPF object's constants", errno: -set) }
    }
}
