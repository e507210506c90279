import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import LinuxSys
import NetTypes
import Telemetry

/// Creates the sockets bindkeeper owns, and reads what the kernel says about them.
public enum OwnedSocket {
    /// Opens, binds and (for stream sockets) listens, close-on-exec. `backlog` is what listen(2) is
    /// given; the kernel caps it at somaxconn.
    ///
    /// A group's member is owned by `groupOwner`, a uid of the group's own that no account has:
    /// the kernel lets SO_REUSEPORT sockets of one owner share, or overlap on, an address and port,
    /// so with root as the owner any other group of root's (a grantee's on the specific address
    /// under a wildcard group, one made after a release while holders keep the old members) and
    /// any SO_REUSEPORT socket of a root process would join or shadow it and take its SYNs.
    public static func open(_ request: BindRequest, backlog: Int32, groupOwner: uid_t? = nil) throws -> Int32 {
        let type =
            (request.kind == .udp ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue))
            | Int32(SOCK_CLOEXEC.rawValue)
        let family = request.kind == .unix ? AF_UNIX : request.isIPv6 ? AF_INET6 : AF_INET
        let fd = socket(family, type, 0)
        guard fd >= 0 else { throw SystemError("socket") }
        do {
            // The socket's owner (sk_uid) follows its inode's (sockfs), before bind and listen.
            if let groupOwner, fchown(fd, groupOwner, gid_t.max) != 0 { throw SystemError("chown \(request.key)") }
            switch request.kind {
            case .unix: try placeUnix(fd, request)
            case .tcp, .udp: try bindIP(fd, request)
            }
            if request.isStream, listen(fd, backlog) != 0 { throw SystemError("listen \(request.key)") }
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    private static func bindIP(_ fd: Int32, _ request: BindRequest) throws {
        if request.kind == .tcp { try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR") }
        // A group's members share the address and port; only sockets of the group's owner can
        // join them (the kernel's rule for SO_REUSEPORT).
        if request.shards != nil { try setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT") }
        if let ipv6Only = request.ipv6Only {
            try setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, ipv6Only ? 1 : 0, "IPV6_V6ONLY")
        }
        if request.freebind == true { try setOption(fd, Int32(IPPROTO_IP), IP_FREEBIND, 1, "IP_FREEBIND") }
        let bound = try socketAddress(request).withSockaddr { bind(fd, $0, $1) }
        guard bound == 0 else {
            throw SystemError(
                "bind \(request.key)",
                hint: errno == EADDRNOTAVAIL ? "the address is not configured here; freebind=1 binds it anyway" : nil)
        }
    }

    static func socketAddress(_ request: BindRequest) throws -> SocketAddress {
        let (host, scope) = splitScope(request.address)
        guard let address = IPAddress(host) else { throw SystemError("address \(request.address)", errno: EINVAL) }
        var scopeID: UInt32 = 0
        if let scope {
            scopeID = UInt32(scope) ?? if_nametoindex(scope)
            guard scopeID != 0 else { throw SystemError("scope \(scope)", errno: ENODEV, hint: "no such interface") }
        }
        return SocketAddress(address, port: request.port, scopeID: scopeID)
    }

    private static func splitScope(_ address: String) -> (String, String?) {
        guard let percent = address.firstIndex(of: "%") else { return (address, nil) }
        return (String(address[..<percent]), String(address[address.index(after: percent)...]))
    }

    /// Places a Unix socket at its path so that no client can steer the broker anywhere else:
    ///
    /// - the directory is opened without following a symlink in any component (`..` and `.` never
    ///   reach here: paths are canonical);
    /// - the socket is bound in a private directory the broker makes inside it (mode 0700, its
    ///   own), with the requested mode from the start (umask) and the requested owner set there,
    ///   where no one else can swap a name;
    /// - it is then renamed into place, never replacing what is there (RENAME_NOREPLACE).
    ///
    /// A socket left behind by a dead process is removed first: only a socket, only when nothing
    /// answers on it, checked through a handle of that very inode.
    public static func placeUnix(_ fd: Int32, _ request: BindRequest) throws {
        let (directoryPath, name) = request.unixLocation
        let directory = try openDirectory(directoryPath)
        defer { close(directory) }
        try removeDeadSocket(directory, name, request)
        let uid = try request.owner.map { try Accounts.uid($0) } ?? uid_t.max
        let gid = try request.group.map { try Accounts.gid($0) } ?? gid_t.max

        let privateName = ".bindkeeper-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdirat(directory, privateName, 0o700) == 0 else {
            throw SystemError("mkdir \(directoryPath)/\(privateName)")
        }
        defer { unlinkat(directory, privateName, AT_REMOVEDIR) }
        let privateDirectory = openat(directory, privateName, proxyside_o_path | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard privateDirectory >= 0 else { throw SystemError("open \(directoryPath)/\(privateName)") }
        defer { close(privateDirectory) }
        var status = stat()
        guard fstat(privateDirectory, &status) == 0, status.st_uid == geteuid(), status.st_mode & 0o7777 == 0o700 else {
            throw SystemError("bind \(request.key)", errno: EPERM, hint: "the broker's private directory was replaced")
        }
        let staged = "s"
        do {
            try bindUnix(fd, path: "/proc/self/fd/\(privateDirectory)/\(staged)", mode: request.mode)
            if uid != uid_t.max || gid != gid_t.max,
                fchownat(privateDirectory, staged, uid, gid, AT_SYMLINK_NOFOLLOW) != 0
            {
                throw SystemError("chown \(request.address)")
            }
            let renamed = proxyside_rename_no_replace(privateDirectory, staged, directory, name)
            guard renamed == 0 else {
                throw SystemError(
                    "bind \(request.key)", errno: -renamed,
                    hint: -renamed == EEXIST ? "something else appeared at the path" : nil)
            }
        } catch {
            unlinkat(privateDirectory, staged, 0)
            throw error
        }
    }

    /// A directory opened without following a symlink in any component of its path.
    static func openDirectory(_ path: String) throws -> Int32 {
        let directory = proxyside_open_directory_no_symlinks(path)
        guard directory >= 0 else {
            throw SystemError(
                "open \(path)", errno: -directory,
                hint: -directory == ELOOP ? "a component of the path is a symlink" : nil)
        }
        return directory
    }

    /// Binds at `path` with exactly `mode` (the process umask otherwise): the file is created with
    /// 0777 & ~umask, so no chmod by name is needed afterwards. The broker binds from one thread.
    private static func bindUnix(_ fd: Int32, path: String, mode: UInt32?) throws {
        guard let mode else { return try UnixAddress.bind(fd, path) }
        let previous = umask(mode_t(~mode & 0o777))
        defer { umask(previous) }
        try UnixAddress.bind(fd, path)
    }

    private static func removeDeadSocket(_ directory: Int32, _ name: String, _ request: BindRequest) throws {
        var status = stat()
        guard fstatat(directory, name, &status, AT_SYMLINK_NOFOLLOW) == 0 else {
            if errno == ENOENT { return }
            throw SystemError("stat \(request.address)")
        }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw SystemError("bind \(request.key)", errno: EEXIST, hint: "the path exists and is not a socket")
        }
        let handle = openat(directory, name, proxyside_o_path | O_NOFOLLOW | O_CLOEXEC)
        guard handle >= 0 else { throw SystemError("open \(request.address)") }
        defer { close(handle) }
        var opened = stat()
        guard fstat(handle, &opened) == 0, opened.st_mode & S_IFMT == S_IFSOCK else {
            throw SystemError("bind \(request.key)", errno: EEXIST, hint: "the path exists and is not a socket")
        }
        if let live = try? UnixAddress.connect("/proc/self/fd/\(handle)") {
            close(live)
            throw SystemError("bind \(request.key)", errno: EADDRINUSE, hint: "another process listens on this path")
        }
        guard unlinkat(directory, name, 0) == 0 || errno == ENOENT else {
            throw SystemError("unlink \(request.address)")
        }
    }

    /// Gives the socket file at `path` this mode and group, through an O_PATH handle of the file
    /// itself (a symlink is followed in no component of the path, and a file that is not a socket
    /// is left alone).
    public static func setModeAndGroup(_ path: String, mode: UInt32, group: String?) throws {
        guard let slash = path.lastIndex(of: "/") else { throw SystemError("open \(path)", errno: EINVAL) }
        let directory = try openDirectory(slash == path.startIndex ? "/" : String(path[..<slash]))
        defer { close(directory) }
        let handle = openat(
            directory, String(path[path.index(after: slash)...]), proxyside_o_path | O_NOFOLLOW | O_CLOEXEC)
        guard handle >= 0 else { throw SystemError("open \(path)") }
        defer { close(handle) }
        var status = stat()
        guard fstat(handle, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK else {
            throw SystemError("control socket \(path)", errno: EEXIST, hint: "the path is not a socket")
        }
        // No group named: the broker's own, as for a socket it makes.
        let gid = try group.map { try Accounts.gid($0) } ?? getegid()
        if status.st_mode & 0o7777 != mode, chmod("/proc/self/fd/\(handle)", mode_t(mode)) != 0 {
            throw SystemError("chmod \(path)")
        }
        if status.st_gid != gid, fchownat(handle, "", uid_t.max, gid, proxyside_at_empty_path) != 0 {
            throw SystemError("chown \(path)")
        }
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ label: String) throws {
        guard SocketOptions.set(fd, level, name, value) else { throw SystemError("setsockopt \(label)") }
    }

    /// SO_COOKIE: the kernel's identity of a socket, the same through every fd that refers to it.
    public static func cookie(_ fd: Int32) -> UInt64? {
        var cookie: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        return getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &length) == 0 ? cookie : nil
    }

    /// net.core.somaxconn of the caller's network namespace (the kernel's default when unreadable).
    public static func somaxconn() -> Int32 {
        let value = ProcFile.read("/proc/sys/net/core/somaxconn").flatMap { ProcFile.sysctlNumbers($0).first }
        return value.map { Int32(clamping: $0) } ?? 4096
    }
}

/// Users and groups by name or number.
public enum Accounts {
    /// What the system's user and group databases answer for a name.
    public enum Lookup: Equatable {
        case found(UInt32)
        case notFound
        /// The databases could not answer (a directory service down, a file unreadable): errno.
        case failed(Int32)
    }

    public static func user(_ name: String) -> Lookup {
        if let number = uid_t(name) { return .found(number) }
        return lookUp { buffer, size in
            var entry = passwd()
            var result: UnsafeMutablePointer<passwd>?
            let status = getpwnam_r(name, &entry, buffer, size, &result)
            return (status, result.map { $0.pointee.pw_uid })
        }
    }

    /// Whether uid `id` has an account (getpwuid_r).
    public static func user(id: uid_t) -> Lookup {
        lookUp { buffer, size in
            var entry = passwd()
            var result: UnsafeMutablePointer<passwd>?
            let status = getpwuid_r(id, &entry, buffer, size, &result)
            return (status, result.map { $0.pointee.pw_uid })
        }
    }

    public static func group(_ name: String) -> Lookup {
        if let number = gid_t(name) { return .found(number) }
        return lookUp { buffer, size in
            var entry = Glibc.group()
            var result: UnsafeMutablePointer<Glibc.group>?
            let status = getgrnam_r(name, &entry, buffer, size, &result)
            return (status, result.map { $0.pointee.gr_gid })
        }
    }

    /// Runs a reentrant lookup with a buffer that grows while it is too small (ERANGE), up to 1 MiB.
    private static func lookUp(
        _ body: (UnsafeMutablePointer<CChar>, Int) -> (status: Int32, id: UInt32?)
    ) -> Lookup {
        var size = 16384
        while true {
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: size)
            defer { buffer.deallocate() }
            let (status, id) = body(buffer, size)
            if status == ERANGE && size < 1 << 20 {
                size *= 4
                continue
            }
            if status != 0 { return .failed(status) }
            return id.map(Lookup.found) ?? .notFound
        }
    }

    public static func uid(_ name: String) throws -> uid_t {
        try resolved(user(name), "user", name)
    }

    public static func gid(_ name: String) throws -> gid_t {
        try resolved(group(name), "group", name)
    }

    private static func resolved(_ lookup: Lookup, _ kind: String, _ name: String) throws -> UInt32 {
        switch lookup {
        case .found(let id): return id
        case .notFound: throw SystemError("\(kind) \(name)", errno: ENOENT, hint: "no such \(kind)")
        case .failed(let code):
            throw SystemError("\(kind) \(name)", errno: code, hint: "the \(kind) database did not answer")
        }
    }
}
