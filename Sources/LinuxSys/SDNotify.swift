import Glibc

/// sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET, fds in SCM_RIGHTS (FDSTORE=1).
public final class SDNotify {
    private let fd: Int32

    /// nil when not started by a service manager that listens.
    public init?(environment: [String: String]) {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty,
            let fd = try? UnixAddress.connect(path, type: UnixAddress.datagram)
        else { return nil }
        self.fd = fd
    }

    deinit { close(fd) }

    public func send(_ state: String, fds: [Int32] = []) throws {
        _ = try FDPassing.send(fd, ArraySlice(state.utf8), fds: fds)
    }

    /// Puts a socket in the service's fd store under `name` (systemd keeps it across restarts of the
    /// service, and with FileDescriptorStorePreserve=yes across stops).
    public func store(_ socket: Int32, name: String) throws {
        try store([socket], name: name)
    }

    /// Puts several under one name, in one message (each is kept, and handed back, under it).
    /// `watched`: systemd drops a stored fd that reports EPOLLERR or EPOLLHUP, as a socket whose
    /// peer is gone does; a BPF map reports EPOLLERR to every poll, so its fds go unwatched
    /// (FDPOLL=0, systemd 246 and later).
    public func store(_ fds: [Int32], name: String, watched: Bool = true) throws {
        try send("FDSTORE=1\nFDNAME=\(name)" + (watched ? "" : "\nFDPOLL=0"), fds: fds)
    }

    /// Takes every socket named `name` out of the fd store. Closing this process's copy is not
    /// enough: the store's copy keeps the socket alive (a queue bound, a port listening) with no
    /// one reading it.
    public func removeStored(name: String) throws {
        try send("FDSTOREREMOVE=1\nFDNAME=\(name)")
    }
}
