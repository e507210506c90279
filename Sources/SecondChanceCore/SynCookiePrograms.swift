// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
// (the BPF programs below run in the kernel beside its GPL-only SYN-cookie helpers)

/// One eBPF instruction, encoded as struct bpf_insn.
public struct BPFInstruction: Equatable, Sendable {
    public var code: UInt8
    public var destination: UInt8
    public var source: UInt8
    public var offset: Int16
    public var immediate: Int32

    public init(code: UInt8, destination: UInt8, source: UInt8, offset: Int16, immediate: Int32) {
        self.code = code
        self.destination = destination
        self.source = source
        self.offset = offset
        self.immediate = immediate
    }

    /// dst_reg in the low nibble, src_reg in the high one (little-endian bitfields).
    public var registers: UInt8 { destination & 0x0f | source << 4 }

    static func loadWord(_ dst: UInt8, _ src: UInt8, _ off: Int16) -> Self {
        .init(code: 0x61, destination: dst, source: src, offset: off, immediate: 0)
    }
    static func move(_ dst: UInt8, _ src: UInt8) -> Self {
        .init(code: 0xbf, destination: dst, source: src, offset: 0, immediate: 0)
    }
    static func moveImmediate(_ dst: UInt8, _ imm: Int32) -> Self {
        .init(code: 0xb7, destination: dst, source: 0, offset: 0, immediate: imm)
    }
    static func addImmediate(_ dst: UInt8, _ imm: Int32) -> Self {
        .init(code: 0x07, destination: dst, source: 0, offset: 0, immediate: imm)
    }
    static func jumpIfGreater(_ dst: UInt8, _ src: UInt8, _ off: Int16) -> Self {
        .init(code: 0x2d, destination: dst, source: src, offset: off, immediate: 0)
    }
    static func call(_ helper: Int32) -> Self {
        .init(code: 0x85, destination: 0, source: 0, offset: 0, immediate: helper)
    }
    static func storeDoubleWord(_ dst: UInt8, _ src: UInt8, _ off: Int16) -> Self {
        .init(code: 0x7b, destination: dst, source: src, offset: off, immediate: 0)
    }
    static let exit = Self(code: 0x95, destination: 0, source: 0, offset: 0, immediate: 0)
}

/// XDP programs that call the kernel's raw SYN-cookie helpers on a buffer holding an IP header
/// followed by a TCP header, and store the helper's 64-bit result in the buffer's first 8 bytes.
/// Run through BPF_PROG_TEST_RUN they give userspace the kernel's own cookie secret to work with.
public enum SynCookieProgram {
    public enum Kind: Sendable { case generate, check }

    public static let xdpPass: UInt32 = 2

    public static func ipHeaderLength(ipv6: Bool) -> Int { ipv6 ? 40 : 20 }

    /// The helper numbers: bpf_tcp_raw_{gen,check}_syncookie_ipv{4,6}.
    public static func helper(_ kind: Kind, ipv6: Bool) -> Int32 {
        switch (kind, ipv6) {
        case (.generate, false): 204
        case (.generate, true): 205
        case (.check, false): 206
        case (.check, true): 207
        }
    }

    /// `tcpLength` is the TCP header length the program expects (generate: doff * 4, which the helper
    /// checks; check: 20, only the fixed header is read).
    public static func instructions(_ kind: Kind, ipv6: Bool, tcpLength: Int = 20) -> [BPFInstruction] {
        let ipLength = ipHeaderLength(ipv6: ipv6)
        var body: [BPFInstruction] = [
            .move(1, 6),
            .move(2, 6), .addImmediate(2, Int32(ipLength)),
        ]
        if kind == .generate { body.append(.moveImmediate(3, Int32(tcpLength))) }
        body += [.call(helper(kind, ipv6: ipv6)), .storeDoubleWord(6, 0, 0), .moveImmediate(0, Int32(xdpPass)), .exit]
        return [
            .loadWord(6, 1, 0),  // r6 = ctx->data
            .loadWord(7, 1, 4),  // r7 = ctx->data_end
            .move(8, 6), .addImmediate(8, Int32(ipLength + tcpLength)),
            .jumpIfGreater(8, 7, Int16(body.count)),  // too short: XDP_DROP
        ] + body + [.moveImmediate(0, 1), .exit]
    }
}

extension SynCookieProgram {
    /// Batch generation: the input holds up to `batchSlots` slots of `batchStride` bytes, each an IP
    /// header and the 24-byte TCP header of `SynCookieReply.generatorInput`; the helper's result
    /// replaces each slot's first 8 bytes. One test run answers a whole NFQUEUE batch's SYNs (a
    /// system call each would cost more than the cookies). The program is unrolled (no loop for the
    /// verifier to bound) and stops at the first slot that does not fit in the data.
    public static let batchStride = 64
    public static let batchSlots = 32

    public static func batchGenerate(ipv6: Bool, slots: Int = batchSlots) -> [BPFInstruction] {
        let ipLength = Int32(ipHeaderLength(ipv6: ipv6))
        let tcpLength = Int32(SynCookieReply.generatorTCPLength)
        let perSlot = 10
        var program: [BPFInstruction] = [.loadWord(6, 1, 0), .loadWord(7, 1, 4)]  // data, data_end
        for slot in 0..<slots {
            let base = Int32(slot * batchStride)
            program += [
                .move(8, 6), .addImmediate(8, base + ipLength + tcpLength),
                .jumpIfGreater(8, 7, Int16(perSlot - 3 + (slots - slot - 1) * perSlot)),  // to the exit
                .move(1, 6), .addImmediate(1, base),
                .move(2, 1), .addImmediate(2, ipLength),
                .moveImmediate(3, tcpLength),
                .call(helper(.generate, ipv6: ipv6)),
                .storeDoubleWord(6, 0, Int16(base)),
            ]
        }
        return program + [.moveImmediate(0, Int32(xdpPass)), .exit]
    }
}
