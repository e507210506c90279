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
    /// A test run's input and output: one slot per SYN of a batch (fixed buffers, so a run
    /// allocates nothing).
    private static let bufferSize = SynCookieProgram.batchSlots * SynCookieProgram.batchStride
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)
    private let output = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)

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
        scratch.deallocate()
        output.deallocate()
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
        let result = proxyside_bpf_test_run(
            program, scratch.baseAddress, UInt32(length), output.baseAddress, &outputSize, &returnValue)
        return result == 0 && returnValue == SynCookieProgram.xdpPass && Int(outputSize) >= length
    }

    /// Runs a single-input program (the check); returns the helper's signed 64-bit result.
    private func run(_ program: Int32, _ length: Int) -> Int64? {
        guard runProgram(program, length) else { return nil }
        return Int64(littleEndian: output.loadUnaligned(as: Int64.self))
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
    /// encodes (the largest entry of the kernel's MSS table not above the client's), appended to
    /// `results` in the order of `requests` (nil where there is none); `SynCookieProgram.batchSlots`
    /// per test run.
    public func cookies(
        forSYNs requests: ArraySlice<SynRequest>, ipv6: Bool, into results: inout [(cookie: UInt32, mss: UInt16)?]
    ) {
        let stride = SynCookieProgram.batchStride
        var start = requests.startIndex
        while start < requests.endIndex {
            let chunk = requests[start..<min(requests.endIndex, start + SynCookieProgram.batchSlots)]
            var filled: UInt64 = 0  // bit per slot; batchSlots <= 64
            for (slot, request) in chunk.enumerated() {
                let written = SynCookieReply.generatorInput(
                    request.packet, request.segment, options: request.options,
                    into: UnsafeMutableRawBufferPointer(rebasing: scratch[(slot * stride)..<((slot + 1) * stride)]))
                if written != nil { filled |= 1 << UInt64(slot) }
            }
            let passed = runProgram(ipv6 ? batchIPv6 : batchIPv4, chunk.count * stride)
            for slot in 0..<chunk.count {
                guard passed, filled & (1 << UInt64(slot)) != 0 else { results.append(nil); continue }
                let value = Int64(littleEndian: output.loadUnaligned(fromByteOffset: slot * stride, as: Int64.self))
                results.append(
                    value < 0 ? nil : (UInt32(truncatingIfNeeded: value), UInt16(truncatingIfNeeded: value >> 32)))
            }
            start = chunk.endIndex
        }
    }

    /// True when ack-1 of `segment` is a cookie the kernel issued for its 4-tuple and ISN.
    public func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool {
        let ipLength = SynCookieProgram.ipHeaderLength(ipv6: segment.flow.isIPv6)
        guard segment.tcpOffset + 20 <= packet.count, segment.ipHeaderOffset + ipLength <= packet.count else {
            return false
        }
        scratch.baseAddress!.copyMemory(from: packet.baseAddress! + segment.ipHeaderOffset, byteCount: ipLength)
        (scratch.baseAddress! + ipLength).copyMemory(from: packet.baseAddress! + segment.tcpOffset, byteCount: 20)
        return run(segment.flow.isIPv6 ? checkIPv6 : checkIPv4, ipLength + 20) == 0
    }
}
