import CBPF
import CLabDirectorABI
import Glibc
import LabKit
import LinuxSys
import NetTypes

/// The BPF objects this build compiled from `bpf/` (see BPFObjectPlugin), as hexadecimal text.
enum EmbeddedBPFObjects {}

/// Programs that decide nothing (`bpf/empty.bpf.c`): the floor a program's cost is taken above.
public enum EmptyPrograms {
    public static func load() throws -> (object: BPFObject, tc: Int32, xdp: Int32) {
        let object = try BPFObject(elf: HexText.bytes(EmbeddedBPFObjects.empty), name: "empty")
        return (object, try object.program("empty_tc"), try object.program("empty_xdp"))
    }
}

/// The lab's director at kernel speed (`bpf/glb_director.bpf.c`): loaded, given a rendezvous table
/// and the VIPs, attached at tc ingress of the director's interface. What `glb-lab director` does
/// in userspace, for benchmarks that push bulk TCP through GUE.
///
/// `@unchecked Sendable`: after `init` only the kernel's maps change; the descriptors stay.
public final class LabDirector: @unchecked Sendable {
    public static let programName = "glb_director"
    /// Where it sits on the director's interface: apart from second-chance's filter.
    public static let filter = TCIngressFilter(handle: 0x6c64, priority: 0x6c64)
    public static let maximumProxies = Int(LD_MAX_PROXIES)
    public static let maximumHops = Int(LD_MAX_HOPS)

    private let object: BPFObject
    public let programFD: Int32
    private let configFD: Int32
    private let vipsFD: Int32
    private let countersFD: Int32

    public init() throws {
        object = try BPFObject(elf: HexText.bytes(EmbeddedBPFObjects.glbDirector), name: "glb-director")
        programFD = try object.program(Self.programName)
        (configFD, vipsFD, countersFD) = (
            try object.map("ld_config"), try object.map("ld_vips"), try object.map("ld_counters")
        )
    }

    /// Puts `table` (at most `maximumProxies`, at most `maximumHops` per flow) and the director's
    /// address in place; the VIPs are added (a VIP is never removed: the lab's VIPs do not change).
    public func configure(table: RendezvousTable, selfAddress: IPv4Address, vips: [IPv4Address]) throws {
        guard (1...Self.maximumProxies).contains(table.proxies.count) else {
            throw SystemError("the lab director's table holds 1...\(Self.maximumProxies) proxies", errno: EINVAL)
        }
        guard (1...Self.maximumHops).contains(table.maximumHops) else {
            throw SystemError("the lab director sends 1...\(Self.maximumHops) proxies per flow", errno: EINVAL)
        }
        var config = ld_config()
        config.`self` = selfAddress.value.bigEndian
        config.proxy_count = UInt32(table.proxies.count)
        config.hops = UInt32(table.maximumHops)
        withUnsafeMutableBytes(of: &config.proxies) { words in
            for (index, proxy) in table.proxies.enumerated() {
                words.storeBytes(of: proxy.address.value.bigEndian, toByteOffset: index * 4, as: UInt32.self)
            }
        }
        withUnsafeMutableBytes(of: &config.active) { flags in
            for (index, proxy) in table.proxies.enumerated() { flags[index] = proxy.state == .active ? 1 : 0 }
        }
        var key: UInt32 = 0
        guard bpf_map_update_elem(configFD, &key, &config, UInt64(BPF_ANY)) == 0 else {
            throw SystemError("writing the lab director's table", errno: errno)
        }
        for vip in vips {
            var address = vip.value.bigEndian
            var present: UInt8 = 1
            guard bpf_map_update_elem(vipsFD, &address, &present, UInt64(BPF_ANY)) == 0 else {
                throw SystemError("adding VIP \(vip) to the lab director", errno: errno)
            }
        }
    }

    /// The counters, summed over the CPUs: encapsulated, passed, segmented, malformed.
    public func counters() -> (encapsulated: UInt64, passed: UInt64, segmented: UInt64, malformed: UInt64) {
        let cpus = Int(libbpf_num_possible_cpus())
        guard cpus > 0 else { return (0, 0, 0, 0) }
        var values = [ld_counters](repeating: ld_counters(), count: cpus)
        var key: UInt32 = 0
        guard bpf_map_lookup_elem(countersFD, &key, &values) == 0 else { return (0, 0, 0, 0) }
        return values.reduce((0, 0, 0, 0)) { sum, cpu in
            (sum.0 + cpu.encapsulated, sum.1 + cpu.passed, sum.2 + cpu.segmented, sum.3 + cpu.malformed)
        }
    }
}
