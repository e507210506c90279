// The pure per-packet path of second-chance (parse, classify, the flow cache, decide, rewrite) on
// one kind of packet, COUNT times, with no system call: scripts/bench-instructions.sh runs it under
// callgrind and divides the instructions by COUNT. Built with the lab's packet builder against
// NetTypes and SecondChanceCore. Usage: DecisionPath syn|established|forward|forward-kernel COUNT

import NetTypes
import SecondChanceCore

/// The socket table's answers, as the worker's batch prefetch would give them: from the flow cache.
struct CachedOwnership: FlowOwnership {
    var cache: FlowCache
    let answer: SocketLookup
    mutating func lookup(_ flow: FlowKey) -> SocketLookup {
        if let cached = cache.answer(for: flow, now: 1) { return cached }
        cache.remember(answer, for: flow, now: 1)
        return answer
    }
    mutating func listenerAcceptsCookies(_ flow: FlowKey) -> Bool { false }
    mutating func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool { false }
}

@main
struct DecisionPath {
    static func main() {
        let arguments = CommandLine.arguments
        guard arguments.count == 3, let count = Int(arguments[2]), count >= 0 else {
            print("usage: DecisionPath syn|established|forward|forward-kernel COUNT")
            return
        }
        let director = IPv4Address("198.18.0.2")!, proxy = IPv4Address("198.18.0.11")!,
            next = IPv4Address("198.18.0.12")!
        let vip = IPv4Address("198.19.0.10")!, client = IPv4Address("198.18.200.1")!
        let local = LocalAddresses(ipv4: [proxy, vip], ipv6: [], broadcast: [])
        let decider = Decider(
            selfAddress: proxy, peers: PeerPolicy(sources: [IPv4Prefix("198.18.0.0/24")!]), local: local)
        let kind = arguments[1]
        let flags: TCPFlags = kind == "syn" ? .syn : .ack
        let inner = PacketBuilder.tcp(
            source: .v4(client), sourcePort: 40000, destination: .v4(vip), destinationPort: 80, flags: flags,
            payload: Array(repeating: 0x61, count: 64))
        let template = PacketBuilder.gue(from: director, to: proxy, sourcePort: 0x8123, inner: inner, hops: [next])
        var ownership = CachedOwnership(
            cache: FlowCache(positiveLifetime: 1_000_000_000, negativeLifetime: 1_000_000_000),
            answer: kind == "established" ? .connected : .none)
        var packet = template
        var verdicts = 0
        for _ in 0..<count {
            // The queue hands a fresh copy each time; a forward rewrites it in place.
            packet.withUnsafeMutableBytes { target in template.withUnsafeBytes { target.copyMemory(from: $0) } }
            let decision = packet.withUnsafeBytes { decider.decide($0, ownership: &ownership) }
            if case .forward(let hop) = decision.verdict, let gue = decision.gue {
                packet.withUnsafeMutableBytes {
                    GUEForwarding.rewrite(
                        $0, gue, source: proxy, destination: hop, forKernelForwarding: kind == "forward-kernel")
                }
            }
            if case .local = decision.verdict { verdicts &+= 1 }
        }
        print("\(kind) \(count) local=\(verdicts) checksum=\(packet[10]) \(packet[11])")
    }
}
