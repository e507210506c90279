import CLinuxShims
import Glibc
import LinuxSys
import SecondChanceCore

/// Asks the kernel, with its own secret, whether an ACK carries a valid SYN cookie (and, for the
/// responder, what cookie it would send): tiny XDP programs calling the raw SYN-cookie helpers,
/// run through BPF_PROG_TEST_RUN. Needs CAP_BPF (or root) and CAP_NET_ADMIN.
public final class SynCookieOracle {
    private let checkIPv4: Int32
    private let checkIPv6: Int32
    private let batchIPv4: Int32
    private let batchIPv6: Int32
    private var scratch = [UInt8](repeating: 0, count: SynCookieProgram.batchSlots * SynCookieProgram.batchStride)
    private var output = [UInt8](repeating: 0, count: SynCookieProgram.batchSlots * SynCookieProgram.batchStride)

    public init() throws {
        var loaded: [Int32] = []
        do {
            loaded.append(try Self.load(SynCookieProgram.instructions(.check, ipv6: false)))
            loaded.append(try Self.load(SynCookieProgram.instructions(.check, ipv6: true)))
            loaded.append(try Self.load(SynCookieProgram.batchGenerate(ipv6: false)))
            loaded.append(try Self.load(SynCookieProgram.batchGenerate(ipv6: true)))
        } catch {
            loaded.forEach { close($0) }
            throw error
        }
        (checkIPv4, checkIPv6, batchIPv4, batchIPv6) = (loaded[0], loaded[1], loaded[2], loaded[3])
    }

    deinit {
        [checkIPv4, checkIPv6, batchIPv4, batchIPv6].forEach { close($0) }
    }

    static func load(_ program: [BPFInstruction]) throws -> Int32 {
        let encoded = program.map {
            proxyside_bpf_insn(code: $0.code, regs: $0.registers, off: $0.offset, imm: $0.immediate)
        }
        var log = [CChar](repeating: 0, count: 16384)
        let fd = encoded.withUnsafeBufferPointer { insns in
            proxyside_bpf_load_xdp(insns.baseAddress, UInt32(insns.count), &log, UInt32(log.count))
        }
        guard fd >= 0 else {
            let verifier = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw SystemError(
                "bpf(BPF_PROG_LOAD) SYN-cookie program", errno: -fd,
                hint: verifier.isEmpty
                    ? "needs CAP_BPF and CAP_NET_ADMIN (root) and a kernel with bpf_tcp_raw_*_syncookie helpers (5.20+)"
                    : verifier)
        }
        return fd
    }

    /// Runs `program` over the scratch buffer's first `length` bytes; true when it passed.
    private func runProgram(_ program: Int32, _ length: Int) -> Bool {
        var outputSize = UInt32(output.count)
        var returnValue: UInt32 = 0
        let result = scratch.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                proxyside_bpf_test_run(
                    program, input.baseAddress, UInt32(length), out.baseAddress, &outputSize, &returnValue)
            }
        }
        return result == 0 && returnValue == SynCookieProgram.xdpPass && Int(outputSize) >= length
    }

    /// Runs a single-input program (the check); returns the helper's signed 64-bit result.
    private func run(_ program: Int32, _ length: Int) -> Int64? {
        guard runProgram(program, length) else { return nil }
        return output.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(as: Int64.self)) }
    }

    public struct SynRequest {
        public var packet: UnsafeRawBufferPointer
        public var segment: TCPSegment
        public var options: SynOptions
        public init(packet: UnsafeRawBufferPointer, segment: TCPSegment, options: SynOptions) {
            self.packet = packet
            self.segment = segment
            self.options = options
        }
    }

    /// The cookies the kernel would send in answer to many SYNs of one family, with the MSS each
    /// encodes (the largest entry of the kernel's MSS table not above the client's),
    /// `SynCookieProgram.batchSlots` per test run.
    public func cookies(forSYNs requests: ArraySlice<SynRequest>, ipv6: Bool) -> [(cookie: UInt32, mss: UInt16)?] {
        var results: [(cookie: UInt32, mss: UInt16)?] = []
        results.reserveCapacity(requests.count)
        let stride = SynCookieProgram.batchStride
        var start = requests.startIndex
        while start < requests.endIndex {
            let chunk = requests[start..<min(requests.endIndex, start + SynCookieProgram.batchSlots)]
            var filled: [Bool] = []
            for (slot, request) in chunk.enumerated() {
                let written = scratch.withUnsafeMutableBytes { buffer in
                    SynCookieReply.generatorInput(
                        request.packet, request.segment, options: request.options,
                        into: UnsafeMutableRawBufferPointer(rebasing: buffer[(slot * stride)..<((slot + 1) * stride)]))
                }
                filled.append(written != nil)
            }
            let passed = runProgram(ipv6 ? batchIPv6 : batchIPv4, chunk.count * stride)
            for slot in 0..<chunk.count {
                guard passed, filled[slot] else { results.append(nil); continue }
                let value = output.withUnsafeBytes {
                    Int64(littleEndian: $0.loadUnaligned(fromByteOffset: slot * stride, as: Int64.self))
                }
                results.append(
                    value < 0 ? nil : (UInt32(truncatingIfNeeded: value), UInt16(truncatingIfNeeded: value >> 32)))
            }
            start = chunk.endIndex
        }
        return results
    }

    /// True when ack-1 of `segment` is a cookie the kernel issued for its 4-tuple and ISN.
    public func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool {
        let ipLength = SynCookieProgram.ipHeaderLength(ipv6: segment.flow.isIPv6)
        guard segment.tcpOffset + 20 <= packet.count, segment.ipHeaderOffset + ipLength <= packet.count else {
            return false
        }
        for index in 0..<ipLength { scratch[index] = packet[segment.ipHeaderOffset + index] }
        for index in 0..<20 { scratch[ipLength + index] = packet[segment.tcpOffset + index] }
        return run(segment.flow.isIPv6 ? checkIPv6 : checkIPv4, ipLength + 20) == 0
    }
}
