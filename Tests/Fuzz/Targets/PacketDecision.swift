// libFuzzer target: one queued packet through the whole decision, as second-chance reads it.
// The input's first byte picks the socket table's answers; the rest is the packet. Built with
// SecondChanceCore and NetTypes by scripts/fuzz.sh.

import NetTypes
import SecondChanceCore

struct FuzzOwnership: FlowOwnership {
    var answers: UInt8
    mutating func lookup(_ flow: FlowKey) -> SocketLookup { [.connected, .listener, .none, .failed][Int(answers & 3)] }
    mutating func listenerAcceptsCookies(_ flow: FlowKey) -> Bool { answers & 4 != 0 }
    mutating func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool {
        // The real check copies these bytes: they must lie inside the packet.
        precondition(segment.ipHeaderOffset >= 0 && segment.tcpOffset + 20 <= packet.count)
        return answers & 8 != 0
    }
}

let fuzzLocal = LocalAddresses(
    ipv4: [IPv4Address(0xc612_000b), IPv4Address(0xc613_000a)],
    ipv6: [IPv6Address(high: 0x2001_0002_0000_00ff, low: 0x10)],
    broadcast: [IPv4Address(0xc612_00ff)])
let fuzzDecider = Decider(
    selfAddress: IPv4Address(0xc612_000b), peers: PeerPolicy(sources: [IPv4Prefix("198.18.0.0/16")!]), local: fuzzLocal)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPacketDecision(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    var packet = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    var ownership = FuzzOwnership(answers: data[0])
    let decision = packet.withUnsafeBytes { fuzzDecider.decide($0, ownership: &ownership) }
    if let gue = decision.gue {
        precondition(gue.innerOffset <= gue.innerEnd && gue.innerEnd <= packet.count)
        if case .forward(let hop) = decision.verdict {
            // As the worker does: a TTL of 255 cannot be raised for the kernel's forwarding, and goes the raw way.
            let kernel = data[0] & 16 != 0 && packet[8] < 255
            packet.withUnsafeMutableBytes {
                GUEForwarding.rewrite(
                    $0, gue, source: fuzzDecider.selfAddress, destination: hop, forKernelForwarding: kernel)
            }
        }
        if case .local = decision.verdict, case .tcp(let segment)? = decision.inner {
            // What the SYN-cookie responders read of a SYN they may answer.
            _ = packet.withUnsafeBytes { SynOptions.parse($0, tcpOffset: segment.tcpOffset, end: gue.innerEnd) }
            _ = packet.withUnsafeBytes { SynIntegrity.isAnswerable($0, segment) }
        }
    }
    return 0
}
