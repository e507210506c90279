import CMnl
import Glibc

/// Which file a listening Unix socket is bound at. A socket keeps its path's name after the file
/// is gone or replaced, so the name proves nothing; sock_diag (UNIX_DIAG_VFS) gives the inode of
/// the file the bind made, which `lstat` of the path must then show.
public enum UnixSocketFile {
    /// Whether the file at `path` is the one `fd` was bound at: nil when the kernel cannot say
    /// (no unix_diag), false for a path that is gone or holds another file (a dead socket left by
    /// another process, or someone else's).
    public static func isBound(_ fd: Int32, at path: String) -> Bool? {
        var file = stat()
        guard lstat(path, &file) == 0, file.st_mode & S_IFMT == S_IFSOCK else { return false }
        guard let bound = boundFile(of: fd) else { return nil }
        // The inode alone, in the 32 bits unix_diag gives: a device number from stat differs from
        // the superblock's on btrfs subvolumes, and the path is one file system's anyway.
        return bound.inode == UInt32(truncatingIfNeeded: file.st_ino)
    }

    /// UNIX_DIAG_VFS of the socket `fd`: its bound file's inode and device.
    static func boundFile(of fd: Int32) -> (inode: UInt32, device: UInt32)? {
        var socketStatus = stat()
        guard fstat(fd, &socketStatus) == 0, let socket = try? Netlink.open(NETLINK_SOCK_DIAG, name: "sock_diag")
        else { return nil }
        defer { mnl_socket_close(socket) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
        defer { buffer.deallocate() }
        let (message, request) = Netlink.putRequest(
            at: buffer, type: UInt16(SOCK_DIAG_BY_FAMILY), flags: NLM_F_REQUEST, sequence: 1, unix_diag_req.self)
        request.pointee.sdiag_family = UInt8(AF_UNIX)
        request.pointee.udiag_states = UInt32.max
        request.pointee.udiag_ino = UInt32(truncatingIfNeeded: socketStatus.st_ino)
        request.pointee.udiag_show = UInt32(UDIAG_SHOW_VFS)
        request.pointee.udiag_cookie = (UInt32.max, UInt32.max)  // no cookie: found by inode alone
        guard mnl_socket_sendto(socket, message, Int(message.pointee.nlmsg_len)) >= 0 else { return nil }
        let received = mnl_socket_recvfrom(socket, buffer, 8192)
        guard received > 0 else { return nil }
        let reply = buffer.assumingMemoryBound(to: nlmsghdr.self)
        guard mnl_nlmsg_ok(reply, Int32(received)), reply.pointee.nlmsg_type == UInt16(SOCK_DIAG_BY_FAMILY),
            Int(mnl_nlmsg_get_payload_len(reply)) >= MemoryLayout<unix_diag_msg>.size
        else { return nil }
        let attributes = Netlink.attributes(of: reply, after: MemoryLayout<unix_diag_msg>.size)
        guard let vfs = attributes[UInt16(UNIX_DIAG_VFS)], vfs.count >= MemoryLayout<unix_diag_vfs>.size else {
            return nil
        }
        let value = vfs.loadUnaligned(as: unix_diag_vfs.self)
        return (value.udiag_vfs_ino, value.udiag_vfs_dev)
    }
}
