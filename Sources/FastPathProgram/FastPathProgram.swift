/// The BPF objects this build compiled from `bpf/` (see BPFObjectPlugin), as hexadecimal text.
enum EmbeddedBPFObjects {}

/// second-chance's tc program (`bpf/second_chance.bpf.c`), as the ELF object libbpf opens.
public enum FastPathProgram {
    public static let object: [UInt8] = decode(EmbeddedBPFObjects.secondChance)

    static func decode(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count / 2)
        var high: UInt8?
        for character in text.utf8 {
            let value: UInt8
            switch character {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = character - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = character - UInt8(ascii: "a") + 10
            default: continue  // line breaks
            }
            if let first = high {
                bytes.append(first << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        return bytes
    }
}
