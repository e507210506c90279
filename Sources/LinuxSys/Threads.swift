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
