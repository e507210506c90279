import CLinuxShims
import Glibc

/// A joinable POSIX thread running one closure (queue workers and servers are long-lived loops).
/// `@unchecked Sendable`: `thread` is written once, by pthread_create in `init`, before the object
/// is shared; `join` only reads it.
public final class WorkerThread: @unchecked Sendable {
    private var thread = pthread_t()
    private final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }

    public init(_ body: @escaping @Sendable () -> Void) throws {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let result = pthread_create(
            &thread, nil,
            { argument in
                let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
                box.body()
                return nil
            }, box)
        guard result == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemError("pthread_create", errno: result)
        }
    }

    public func join() { pthread_join(thread, nil) }
}

/// The calling thread's CPUs.
public enum CPUAffinity {
    /// Runs `body` with the calling thread on `cpu` only (one of the first 1024), then restores its CPUs.
    public static func onCPU<T>(_ cpu: Int, _ body: () throws -> T) throws -> T {
        guard (0..<1024).contains(cpu) else { throw SystemError("sched_setaffinity \(cpu)", errno: EINVAL) }
        var original = [UInt64](repeating: 0, count: 16)
        _ = try Syscall.negated("sched_getaffinity") { proxyside_thread_cpus(&original) }
        var only = [UInt64](repeating: 0, count: 16)
        only[cpu / 64] = 1 << UInt64(cpu % 64)
        _ = try Syscall.negated("sched_setaffinity \(cpu)") { proxyside_set_thread_cpus(only) }
        defer { _ = proxyside_set_thread_cpus(original) }
        return try body()
    }
}
