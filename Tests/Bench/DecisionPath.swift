// The pure per-packet path of second-chance (parse, classify, the flow cache, decide, rewrite) on
// one kind of packet, COUNT times, with no system call: scripts/bench-instructions.sh runs it under
// callgrind and divides the instructions by COUNT. Built with the lab's packet builder against
// NetTypes and SecondChanceCore. `syn-reply` adds the SYN-cookie responder's own work on the
// SYN: its options read, the cookie helper's input written, the SYN-ACK written (the cookie itself
// comes from the kernel in a BPF test run, a system call, and is a constant here).
// Usage: DecisionPath syn|syn-reply|established|forward|forward-kernel COUNT

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
            print("usage: DecisionPath syn|syn-reply|established|forward|forward-kernel COUNT")
            return
        }
        let director = IPv4Address("198.18.0.2")!, proxy = IPv4Address("198.18.0.11")!,
            next = IPv4Address("198.18.0.12")!
        let vip = IPv4Address("198.19.0.10")!, client = IPv4Address("198.18.200.1")!
        let local = LocalAddresses(ipv4: [proxy, vip], ipv6: [], broadcast: [])
        let decider = Decider(
            selfAddress: proxy, peers: PeerPolicy(sources: [IPv4Prefix("198.18.0.0/24")!]), local: local)
        let kind = arguments[1]
        let isSYN = kind.hasPrefix("syn")
        let inner = PacketBuilder.tcp(
            source: .v4(client), sourcePort: 40000, destination: .v4(vip), destinationPort: 80,
            flags: isSYN ? .syn : .ack, options: isSYN ? PacketBuilder.linuxSYNOptions : [],
            payload: isSYN ? [] : Array(repeating: 0x61, count: 64))
        let template = PacketBuilder.gue(from: director, to: proxy, sourcePort: 0x8123, inner: inner, hops: [next])
        var ownership = CachedOwnership(
            cache: FlowCache(positiveLifetime: 1_000_000_000, negativeLifetime: 1_000_000_000),
            answer: kind == "established" ? .connected : .none)
        var packet = template
        var verdicts = 0
        var settings = TCPHostSettings()
        settings.timestamps = 2
        let generatorInput = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: SynCookieReply.maximumLength, alignment: 8)
        defer { generatorInput.deallocate(); reply.deallocate() }
        var replyChecksum = 0
        // Decided once: a string comparison per packet would be counted as the path's cost.
        let writesReplies = kind == "syn-reply", forKernelForwarding = kind == "forward-kernel"
        for _ in 0..<count {
            // The queue hands a fresh copy each time; a forward rewrites it in place.
            packet.withUnsafeMutableBytes { target in template.withUnsafeBytes { target.copyMemory(from: $0) } }
            let decision = packet.withUnsafeBytes { decider.decide($0, ownership: &ownership) }
            if case .forward(let hop) = decision.verdict, let gue = decision.gue {
                packet.withUnsafeMutableBytes {
                    GUEForwarding.rewrite(
                        $0, gue, source: proxy, destination: hop, forKernelForwarding: forKernelForwarding)
                }
            }
            if case .local = decision.verdict { verdicts &+= 1 }
            if writesReplies, case .tcp(let segment) = decision.inner, let gue = decision.gue {
                packet.withUnsafeBytes { bytes in
                    guard let options = SynOptions.parse(bytes, tcpOffset: segment.tcpOffset, end: gue.innerEnd),
                        SynCookieReply.generatorInput(bytes, segment, options: options, into: generatorInput) != nil
                    else { return }
                    let offer = SynCookieReply.offer(
                        options, settings: settings, ourWindowScale: 7, nowMilliseconds: 1_000_000)
                    let window = TCPWindow.synAckWindow(listenerReceiveBuffer: 131_072, mss: 1448)
                    let length = SynCookieReply.write(
                        into: reply, answering: bytes, segment, cookie: 0x1234_5678, mss: 1460, offer: offer,
                        window: window, ttl: 65)
                    replyChecksum &+= Int(reply[length - 1])
                }
            }
        }
        print("\(kind) \(count) local=\(verdicts) checksum=\(packet[10]) \(packet[11]) reply=\(replyChecksum)")
    }
}
