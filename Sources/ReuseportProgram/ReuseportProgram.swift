import NetTypes

/// The BPF objects this build compiled from `bpf/` (see BPFObjectPlugin), as hexadecimal text.
enum EmbeddedBPFObjects {}

/// bindkeeper's reuseport program (`bpf/reuseport_cpu.bpf.c`): a socket group's member by the CPU
/// that received the SYN.
public enum ReuseportProgram {
    public static let object: [UInt8] = HexText.bytes(EmbeddedBPFObjects.reuseportCpu)
    /// The program's socket array's size: two generations of the largest group.
    public static let maximumMembers = 512
}
