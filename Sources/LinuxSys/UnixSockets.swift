import CLinuxShims
import Glibc

/// Unix stream socket addresses: bind, connect.
public enum UnixAddress {
    public static let datagram = Int32(SOCK_DGRAM.rawValue)

    static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) throws -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        // "@name" is an abstract address (as in NOTIFY_SOCKET): a leading NUL, and only its own length counts.
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw SystemError("socket path \(path)", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { target in
            for (index, byte) in bytes.enumerated() { target[index] = byte }
        }
        let length =
            abstract
            ? socklen_t(MemoryLayout<sa_family_t>.size + bytes.count) : socklen_t(MemoryLayout<sockaddr_un>.size)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    /// Makes the directory a socket path is in (0755; nothing if it exists), for a daemon run by
    /// hand where no RuntimeDirectory= made it.
    public static func makeDirectory(for path: String) {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return }
        mkdir(String(path[..<slash]), 0o755)
    }

    public static func bind(_ fd: Int32, _ path: String) throws {
        guard try withAddress(path, { Glibc.bind(fd, $0, $1) }) == 0 else { throw SystemError("bind \(path)") }
    }

    /// A connected, close-on-exec stream socket.
    public static func connect(_ path: String, type: Int32 = Int32(SOCK_STREAM.rawValue)) throws -> Int32 {
        let fd = socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(AF_UNIX)") }
        guard
            try withAddress(path, { address, length in retryingOnInterrupt { Glibc.connect(fd, address, length) } })
                == 0
        else {
            let error = SystemError("connect \(path)")
            close(fd)
            throw error
        }
        return fd
    }
}

/// Passing fds over Unix sockets (SCM_RIGHTS).
public enum FDPassing {
    /// Sends bytes with fds attached; returns the bytes sent (fewer on a short write, the fds then
    /// travel with the first byte), or throws; EAGAIN is returned as 0 for non-blocking callers.
    public static func send(_ socket: Int32, _ bytes: ArraySlice<UInt8>, fds: [Int32], flags: Int32 = 0) throws -> Int {
        let sent = bytes.withUnsafeBytes { buffer in
            fds.withUnsafeBufferPointer {
                proxyside_send_with_fds(
                    socket, buffer.baseAddress, buffer.count, $0.baseAddress, UInt32($0.count), flags)
            }
        }
        if sent >= 0 { return sent }
        if -Int32(sent) == EAGAIN || -Int32(sent) == EINTR { return 0 }
        throw SystemError("sendmsg", errno: -Int32(sent))
    }

    /// Receives up to `capacity` bytes and the fds that came with them (close-on-exec).
    public static func receive(_ socket: Int32, capacity: Int = 65536, flags: Int32 = 0) throws -> (
        bytes: [UInt8], fds: [Int32]
    ) {
        var bytes = [UInt8](repeating: 0, count: capacity)
        var fds = [Int32](repeating: -1, count: 253)
        var count: UInt32 = 0
        let received = try Syscall.negated("recvmsg") {
            bytes.withUnsafeMutableBytes { buffer in
                proxyside_receive_with_fds(
                    socket, buffer.baseAddress, buffer.count, &fds, UInt32(fds.count), &count, flags)
            }
        }
        return (Array(bytes[0..<received]), Array(fds[0..<Int(count)]))
    }
}
