import CLinuxShims
import Glibc
import ProxysideCore

/// Asks the kernel, with its own secret, whether an ACK carries a valid SYN cookie (and, for the
/// responder, what cookie it would send): tiny XDP programs calling the raw SYN-cookie helpers,
/// run through BPF_PROG_TEST_RUN. Needs CAP_BPF (or root) and CAP_NET_ADMIN.
public final class SynCookieOracle {
    private let checkIPv4: Int32
    private let checkIPv6: Int32
    private let generateIPv4: Int32
    private let generateIPv6: Int32
    private var scratch = [UInt8](repeating: 0, count: 128)
    private var output = [UInt8](repeating: 0, count: 128)

    public init() throws {
        var loaded: [Int32] = []
        do {
            for (kind, ipv6) in [(SynCookieProgram.Kind.check, false), (.check, true), (.generate, false), (.generate, true)] {
                loaded.append(try Self.load(SynCookieProgram.instructions(kind, ipv6: ipv6, tcpLength: kind == .generate ? SynCookieReply.generatorTCPLength : 20)))
            }
        } catch {
            loaded.forEach { close($0) }
            throw error
        }
        (checkIPv4, checkIPv6, generateIPv4, generateIPv6) = (loaded[0], loaded[1], loaded[2], loaded[3])
    }

    deinit {
        [checkIPv4, checkIPv6, generateIPv4, generateIPv6].forEach { close($0) }
    }

    static func load(_ program: [BPFInstruction]) throws -> Int32 {
        let encoded = program.map { proxyside_bpf_insn(code: $0.code, regs: $0.registers, off: $0.offset, imm: $0.immediate) }
        var log = [CChar](repeating: 0, count: 16384)
        let fd = encoded.withUnsafeBufferPointer { insns in
            proxyside_bpf_load_xdp(insns.baseAddress, UInt32(insns.count), &log, UInt32(log.count))
        }
        guard fd >= 0 else {
            let verifier = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw SystemError("bpf(BPF_PROG_LOAD) SYN-cookie program", errno: -fd,
                              hint: verifier.isEmpty ? "needs CAP_BPF and CAP_NET_ADMIN (root) and a kernel with bpf_tcp_raw_*_syncookie helpers (5.20+)" : verifier)
        }
        return fd
    }

    /// Runs `program` over ipHeader + tcpHeader; returns the helper's signed 64-bit result.
    private func run(_ program: Int32, _ length: Int) -> Int64? {
        var outputSize = UInt32(output.count)
        var returnValue: UInt32 = 0
        let result = scratch.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                proxyside_bpf_test_run(program, input.baseAddress, UInt32(length), out.baseAddress, &outputSize, &returnValue)
            }
        }
        guard result == 0, returnValue == SynCookieProgram.xdpPass, outputSize >= 8 else { return nil }
        return output.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(as: Int64.self)) }
    }

    /// True when ack-1 of `segment` is a cookie the kernel issued for its 4-tuple and ISN.
    public func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool {
        let ipLength = SynCookieProgram.ipHeaderLength(ipv6: segment.flow.isIPv6)
        guard segment.tcpOffset + 20 <= packet.count, segment.ipHeaderOffset + ipLength <= packet.count else { return false }
        for index in 0..<ipLength { scratch[index] = packet[segment.ipHeaderOffset + index] }
        for index in 0..<20 { scratch[ipLength + index] = packet[segment.tcpOffset + index] }
        return run(segment.flow.isIPv6 ? checkIPv6 : checkIPv4, ipLength + 20) == 0
    }

    /// The cookie the kernel would send in answer to the SYN `segment`, and the MSS it encodes
    /// (the largest entry of the kernel's MSS table not above the client's).
    public func cookie(forSYN packet: UnsafeRawBufferPointer, _ segment: TCPSegment, options: SynOptions) -> (cookie: UInt32, mss: UInt16)? {
        let length = scratch.withUnsafeMutableBytes { SynCookieReply.generatorInput(packet, segment, options: options, into: $0) }
        guard let length, let result = run(segment.flow.isIPv6 ? generateIPv6 : generateIPv4, length), result >= 0 else { return nil }
        return (UInt32(truncatingIfNeeded: result), UInt16(truncatingIfNeeded: result >> 32))
    }
}
