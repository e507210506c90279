import BindkeeperCore
import Foundation
import Glibc
import LinuxSys
import ReuseportProgram

/// A socket group's steering: the reuseport program, loaded for the group's size and the
/// generation it serves, its socket array holding the members, attached to the group. The kernel
/// keeps the program with the group's sockets (and the array with the program), so steering
/// outlives re-execs and restarts as the sockets do, and goes with the last of them; the broker
/// holds the array (across re-execs, and in the fd store) to steer again. A member that closes
/// leaves its slot empty, and the program then leaves the choice to the kernel.
public enum SocketGroupSteering {
    /// Steers a group's new connections to generation `served` and `percent` of them to the other:
    /// `generations[G]` lists generation G's members in order (none when it has none), each as
    /// many as the served one's. The group keeps one socket array for its life (a socket is in
    /// one array at most), `array`, which the broker holds; without it, when `searching` (a group
    /// an older release made) the kernel's arrays are searched for the one holding each
    /// generation's first member (CAP_SYS_ADMIN), else a new one is made. The members are put in
    /// their slots and a new program for the new steering loaded on the array. Returns the array
    /// to hold from now on (`array`, or a new descriptor the caller owns), and whether the program
    /// migrates a closing listener's queue (Linux 5.14).
    static func steer(generations: [[Int32]], served: UInt8, percent: UInt8, array: Int32?, searching: Bool) throws
        -> (array: Int32, migrates: Bool)
    {
        let count = generations[Int(served)].count
        guard let first = generations[Int(served)].first,
            generations.allSatisfy({ $0.isEmpty || $0.count == count }), count * 2 <= ReuseportProgram.maximumMembers
        else { throw SystemError("steering a group", errno: EINVAL, hint: "generations of different sizes") }
        let slots = generations.enumerated().flatMap { generation, fds in
            fds.enumerated().map { (slot: UInt32(generation * count + $0), fd: $1) }
        }
        let found =
            array != nil || !searching
            ? nil
            : slots.lazy.filter { $0.slot % UInt32(count) == 0 }.compactMap { slot in
                OwnedSocket.cookie(slot.fd).flatMap { cookie in
                    BPF.findMap(type: BPF.reuseportSocketArray, name: "members", key: slot.slot, holding: cookie)
                }
            }.first
        defer { found.map { _ = close($0) } }
        let (object, name) = try load(
            count: UInt32(count), served: UInt32(served), percent: UInt32(generations.count > 1 ? percent : 0),
            reusing: array ?? found)
        for slot in slots where try object.lookup(map: "members", key: slot.slot) != OwnedSocket.cookie(slot.fd) {
            try object.update(map: "members", key: slot.slot, value: UInt64(slot.fd))
        }
        var program = try object.program(name)
        let attachReuseportEBPF: Int32 = 52  // SO_ATTACH_REUSEPORT_EBPF (asm-generic/socket.h)
        guard setsockopt(first, SOL_SOCKET, attachReuseportEBPF, &program, socklen_t(MemoryLayout<Int32>.size)) == 0
        else {
            throw SystemError("attaching the group's reuseport program")
        }
        let migrates = name == "select_or_migrate"
        if let array { return (array, migrates) }
        let held = fcntl(try object.map("members"), F_DUPFD_CLOEXEC, 3)
        guard held >= 0 else { throw SystemError("holding the group's socket array") }
        return (held, migrates)
    }

    /// The program for a steering, on the group's socket array when it has one. The migrate entry
    /// point moves a closing listener's queue to the served generation; a kernel before 5.14
    /// refuses it, and there a closing member's queued connections are reset.
    private static func load(count: UInt32, served: UInt32, percent: UInt32, reusing map: Int32?) throws
        -> (object: BPFObject, name: String)
    {
        let constants = [
            "member_count": withUnsafeBytes(of: count) { Array($0) },
            "served_generation": withUnsafeBytes(of: served) { Array($0) },
            "candidate_percent": withUnsafeBytes(of: percent) { Array($0) },
        ]
        let reusing = map.map { ["members": $0] } ?? [:]
        do {
            let object = try BPFObject(
                elf: ReuseportProgram.object, name: "reuseport_cpu", constants: constants,
                skipping: ["select_by_cpu"], reusing: reusing)
            return (object, "select_or_migrate")
        } catch {
            let object = try BPFObject(
                elf: ReuseportProgram.object, name: "reuseport_cpu", constants: constants,
                skipping: ["select_or_migrate"], reusing: reusing)
            return (object, "select_by_cpu")
        }
    }

    /// A uid for a new group's members to be owned by, drawn from the upper half of the uid space
    /// (which systemd and the distributions leave to no account) and drawn again while it is
    /// someone's: an account's, inside a range /etc/subuid or /etc/subgid delegate (containers'
    /// user namespaces), or another group's (`taken`). It must be mapped in the broker's user
    /// namespace, or fchown refuses it.
    public static func freshOwner(
        taken: Set<uid_t>, delegations: [String] = ["/etc/subuid", "/etc/subgid"]
    ) throws -> uid_t {
        let delegated = delegations.flatMap { delegatedRanges($0) }
        let mapped = delegatedRanges("/proc/self/uid_map", mapping: true)
        for _ in 0..<64 {
            let uid = uid_t.random(in: 0x8000_0000...0xFFFF_FFFD)
            guard mapped.contains(where: { $0.contains(uid) }) else { continue }
            guard !taken.contains(uid), !delegated.contains(where: { $0.contains(uid) }) else { continue }
            guard case .notFound = Accounts.user(id: uid) else { continue }
            return uid
        }
        throw SystemError(
            "a group's owner", errno: EOVERFLOW,
            hint: "no free uid above 2^31 is mapped in the broker's user namespace (/proc/self/uid_map)")
    }

    /// The uid ranges a file lists: `name:start:count` lines (/etc/subuid), or with `mapping`,
    /// `inside outside count` lines (/proc/self/uid_map), whose inside ranges are what counts.
    static func delegatedRanges(_ path: String, mapping: Bool = false) -> [ClosedRange<uid_t>] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = mapping ? line.split(separator: " ") : line.split(separator: ":")
            guard fields.count == 3, let start = UInt64(fields[mapping ? 0 : 1]), let count = UInt64(fields[2]),
                count > 0, start + count - 1 <= UInt64(uid_t.max)
            else { return nil }
            return uid_t(start)...uid_t(start + count - 1)
        }
    }

    /// The number of members `shards=auto` makes: the online CPUs, within what a group may hold.
    static func onlineCPUs() -> UInt16 {
        let online = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return UInt16(clamping: min(max(online, 1), Int(BindRequest.maximumShards)))
    }
}
