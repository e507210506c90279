import CBPF
import Glibc

/// Waits until every tc and XDP program that was running when `wait` is called has finished. An
/// update of a map-in-map makes the kernel wait out an RCU grace period before the syscall returns
/// (`maybe_wait_bpf_programs`, Linux 4.19), and non-sleepable programs run inside RCU read-side
/// sections: after it, no program still holds a pointer it looked up before.
public final class BPFGracePeriod: @unchecked Sendable {
    private let outer: Int32, inner: Int32

    public init() throws {
        inner = bpf_map_create(BPF_MAP_TYPE_ARRAY, "grace_inner", 4, 4, 1, nil)
        guard inner >= 0 else { throw SystemError("creating a map for grace periods") }
        var options = bpf_map_create_opts()
        options.sz = MemoryLayout<bpf_map_create_opts>.size
        options.inner_map_fd = UInt32(inner)
        outer = bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "grace", 4, 4, 1, &options)
        guard outer >= 0 else {
            let saved = errno
            close(inner)
            throw SystemError("creating a map-in-map for grace periods", errno: saved)
        }
    }

    deinit {
        close(outer)
        close(inner)
    }

    /// Returns once the programs running at the call have finished.
    public func wait() throws {
        var key: UInt32 = 0
        var value = UInt32(inner)
        guard bpf_map_update_elem(outer, &key, &value, UInt64(BPF_ANY)) == 0 else {
            throw SystemError("waiting for running BPF programs")
        }
    }
}
