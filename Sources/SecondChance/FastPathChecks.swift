import CFastPathABI
import Glibc
import LinuxSys

/// `doctor`'s look at the fast path (tc, and XDP beside it): what is attached where, what is pinned, and what
/// `--fast-path auto` would choose on this kernel (the program is loaded, and so verified, to say).
public enum FastPathChecks {
    public static func run(interfaces: [String]) -> [HostCheck] {
        var checks: [HostCheck] = []
        let release = ProcFile.read("/proc/sys/kernel/osrelease", limit: 256)?.split(separator: "\n").first ?? "?"
        do {
            let (object, refused) = try FastPathObject.preferringXDP()
            let xdp =
                refused.map { "alone: the XDP entry point does not load here (\($0))" }
                ?? "with the XDP entry point beside it where every interface's driver runs native XDP"
            checks.append(
                HostCheck(
                    level: .ok, subject: "fast path",
                    finding:
                        """
                        the tc program loads on this kernel (\(release)): --fast-path auto attaches it \
                        (\(object.maps.count) maps, layout \(FP_LAYOUT)), \(xdp)
                        """))
        } catch {
            checks.append(
                HostCheck(
                    level: .warn, subject: "fast path",
                    finding: "the tc program does not load here (Linux \(release)): \(error)",
                    fix: (error as? FastPathError)?.advice
                        ?? """
                        --fast-path auto decides every packet from NFQUEUE here; the README lists the kernel \
                        each helper needs (Linux 6.1 has them all)
                        """))
        }
        if interfaces.isEmpty {
            checks.append(
                HostCheck(
                    level: .info, subject: "fast path",
                    finding:
                        "no interface: give --allow-source (the routes to the peers name them) or --fast-path-interface"
                ))
        }
        for interface in interfaces { checks += attached(on: interface) }
        let pins = FastPath.namespacePinDirectory()
        // An instance's directory, or a pin a build before them left in the namespace's.
        let pinned = ProcFile.entries(ofDirectory: pins).flatMap { entry in
            let inner = ProcFile.entries(ofDirectory: pins + "/" + entry).map { entry + "/" + $0 }
            return inner.isEmpty ? [entry] : inner
        }
        if !pinned.isEmpty {
            checks.append(
                HostCheck(
                    level: .info, subject: "fast path",
                    finding: "pinned in \(pins): \(pinned.sorted().joined(separator: " "))"))
        } else if !BPF.isFilesystem(FastPath.bpffs) {
            checks.append(
                HostCheck(
                    level: .info, subject: "fast path",
                    finding:
                        "no bpffs at \(FastPath.bpffs): the program is not pinned (a new daemon finds it attached)",
                    fix: "mount -t bpf bpf \(FastPath.bpffs) (systemd mounts it at boot)"))
        }
        return checks
    }

    /// What is attached at `interface`: the tc program and the XDP entry point, and whether it forwards.
    static func attached(on interface: String) -> [HostCheck] {
        var checks = xdpAttached(on: interface)
        guard let id = FastPath.filter.program(on: interface) else {
            return checks + [
                HostCheck(level: .info, subject: "fast path", finding: "nothing attached at \(interface) ingress")
            ]
        }
        let info = try? BPF.programInfo(id: id)
        let maps = info.map {
            $0.maps.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        checks.append(
            HostCheck(
                level: info?.name == String(FastPathObject.programName.prefix(15)) ? .ok : .warn,
                subject: "fast path",
                finding:
                    """
                    \(interface) ingress: program \(id) \(info?.name ?? "?") tag \(info?.tag ?? "?"); maps \
                    \(maps ?? "?")
                    """))
        if ProcFile.sysctl("net/ipv4/conf/\(interface)/forwarding") != "1" {
            checks.append(
                HostCheck(
                    level: .info, subject: "fast path",
                    finding:
                        """
                        \(interface) does not forward (conf.\(interface).forwarding=0): packets for the next \
                        hop go up to second-chance's raw socket (bpf_fib_lookup answers only where the \
                        interface forwards)
                        """))
        }
        return checks
    }

    /// The native XDP program on `interface`, second-chance's or another's.
    static func xdpAttached(on interface: String) -> [HostCheck] {
        var checks: [HostCheck] = []
        if let xdp = NativeXDP.program(on: interface) {
            let ours = FastPath.isOurXDP(xdp)
            checks.append(
                HostCheck(
                    level: ours ? .ok : .warn, subject: "fast path",
                    finding: ours
                        ? "\(interface): XDP program \(xdp) in the driver decides first (drops, local, forwards)"
                        : "\(interface): another XDP program (\(xdp)) runs in the driver, before second-chance's"))
            if ours, XDPForwardChoice.isVeth(interface) == true {
                checks.append(
                    HostCheck(
                        level: .info, subject: "fast path",
                        finding:
                            """
                            \(interface) is a veth: its forwards stay in tc unless --xdp-forward on, as a veth's \
                            XDP_TX reaches its peer only while the peer runs an XDP program of its own
                            """))
            }
        }
        if let generic = NativeXDP.genericProgram(on: interface) {
            checks.append(
                HostCheck(
                    level: .warn, subject: "fast path",
                    finding:
                        "\(interface): a generic-mode XDP program (\(generic)) runs before second-chance's tc program"))
        }
        return checks
    }
}
