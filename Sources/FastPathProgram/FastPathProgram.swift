import NetTypes

/// The BPF objects this build compiled from `bpf/` (see BPFObjectPlugin), as hexadecimal text.
enum EmbeddedBPFObjects {}

/// second-chance's tc program (`bpf/second_chance.bpf.c`), as the ELF object libbpf opens.
public enum FastPathProgram {
    public static let object: [UInt8] = HexText.bytes(EmbeddedBPFObjects.secondChance)
}
