import BindkeeperCore
import Glibc
import LinuxSys
import ReuseportProgram

/// A socket group's steering: the reuseport program, loaded for the group's size, its socket
/// array holding the members, attached to the group. The kernel keeps the program with the
/// group's sockets (and the array with the program), so the broker holds nothing of it: it
/// outlives re-execs and restarts as the sockets do, and goes with the last of them. A member
/// that closes leaves its slot empty, and the program then leaves the choice to the kernel.
enum SocketGroupSteering {
    /// Steers the group whose members listen on `fds`, member K at index K.
    static func attach(members fds: [Int32]) throws {
        guard let first = fds.first else { return }
        let count = UInt32(fds.count)
        let object = try BPFObject(
            elf: ReuseportProgram.object, name: "reuseport_cpu",
            constants: ["member_count": withUnsafeBytes(of: count) { Array($0) }])
        for (index, fd) in fds.enumerated() {
            try object.update(map: "members", key: UInt32(index), value: UInt64(fd))
        }
        var program = try object.program("select_by_cpu")
        let attachReuseportEBPF: Int32 = 52  // SO_ATTACH_REUSEPORT_EBPF (asm-generic/socket.h)
        guard setsockopt(first, SOL_SOCKET, attachReuseportEBPF, &program, socklen_t(MemoryLayout<Int32>.size)) == 0
        else {
            throw SystemError("attaching the group's reuseport program")
        }
    }

    /// A uid for a new group's members to be owned by: in the upper half of the uid space, which
    /// systemd and the distributions leave to no account (uids read as negative numbers there).
    static func freshOwner() -> uid_t {
        uid_t.random(in: 0x8000_0000...0xFFFF_FFFD)
    }

    /// The number of members `shards=auto` makes: the online CPUs, within what a group may hold.
    static func onlineCPUs() -> UInt16 {
        let online = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return UInt16(clamping: min(max(online, 1), Int(BindRequest.maximumShards)))
    }
}
