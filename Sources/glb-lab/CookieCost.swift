import ArgumentParser
import LabKit
import LinuxSys
import NetTypes
import ProxysideArguments
import SecondChance
import SecondChanceCore

/// Times the kernel's SYN-cookie helper the way the responder calls it: one BPF_PROG_TEST_RUN per
/// batch of SYNs. A run's cost at each batch size shows what a run costs whatever it carries and
/// what each SYN adds, which is how much the responder's cost per SYN depends on batch size.
struct CookieCost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cookie-cost", abstract: "Time the responder's BPF cookie runs at batch sizes 1 to 32 (root).")

    @Option(help: "Test runs per batch size (at most 1000000).") var runs: Int = 20000

    func validate() throws {
        guard (1...1_000_000).contains(runs) else { throw ValidationError("--runs must be 1 to 1000000") }
    }

    func run() throws {
        let oracle = try SynCookieOracle()
        let director = IPv4Address("198.18.0.2")!, proxy = IPv4Address("198.18.0.11")!
        let vip = IPv4Address("198.19.0.10")!
        var buffers: [UnsafeMutableRawBufferPointer] = []
        defer { buffers.forEach { $0.deallocate() } }
        var requests: [SynCookieOracle.SynRequest] = []
        for index in 0..<SynCookieProgram.batchSlots {
            let inner = PacketBuilder.tcp(
                source: .v4(IPv4Address(0xC612_C800 + UInt32(index))), sourcePort: 40000 + UInt16(index),
                destination: .v4(vip), destinationPort: 80, flags: .syn,
                options: PacketBuilder.linuxSYNOptions)
            let packet = PacketBuilder.gue(from: director, to: proxy, sourcePort: 0x8123, inner: inner, hops: [])
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: packet.count, alignment: 8)
            buffer.copyBytes(from: packet)
            buffers.append(buffer)
            let bytes = UnsafeRawBufferPointer(buffer)
            guard case .success(let gue) = GUEPacket.parse(bytes),
                case .success(.tcp(let segment)) = InnerPacket.classify(bytes, gue),
                let options = SynOptions.parse(bytes, tcpOffset: segment.tcpOffset, end: gue.innerEnd)
            else { throw CommandFailure("the lab's SYN did not parse") }
            requests.append(.init(packet: bytes, segment: segment, options: options))
        }
        print("syns/run\tns/run\tns/syn\t(\(runs) runs each)")
        var results: [(cookie: UInt32, mss: UInt16)?] = []
        for size in [1, 2, 4, 8, 16, 32] {
            let start = MonotonicClock.nanoseconds()
            for _ in 0..<runs {
                results.removeAll(keepingCapacity: true)
                oracle.cookies(forSYNs: requests[0..<size], ipv6: false, into: &results)
            }
            let perRun = Double(MonotonicClock.nanoseconds() - start) / Double(runs)
            guard results.allSatisfy({ $0 != nil }) else { throw CommandFailure("a cookie run failed") }
            print("\(size)\t\(Int(perRun))\t\(Int(perRun / Double(size)))")
        }
    }
}
