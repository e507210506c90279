import Glibc

/// A descriptor this process owns: closed when its owner lets it go, unless handed on with
/// `take()` to what owns it from then on (a queue's netlink socket, an eventfd). Non-copyable, so
/// one owner holds it at a time: a socket handed over by an earlier process and refused (the wrong
/// kind, a stale name) is closed on every path that refuses it, and cannot be closed twice.
public struct OwnedDescriptor: ~Copyable, Sendable {
    public let raw: Int32

    public init(adopting raw: Int32) { self.raw = raw }

    /// The descriptor, now the caller's to close (or to give to its owner).
    public consuming func take() -> Int32 {
        let raw = raw
        discard self
        return raw
    }

    deinit { close(raw) }
}

/// Descriptors by name, all closed when the set goes (the maps of a program found attached, while
/// a new program is loaded to use them: the loader keeps its own copies).
public final class NamedDescriptors: @unchecked Sendable {
    /// `@unchecked Sendable`: the names and descriptors never change after `init`.
    public let byName: [String: Int32]

    /// Takes `descriptors` over: each is closed with the set.
    public init(adopting descriptors: [String: Int32]) { byName = descriptors }

    public subscript(name: String) -> Int32? { byName[name] }

    deinit { byName.values.forEach { close($0) } }
}
