import ArgumentParser
import CLinuxShims
import Glibc
import LabKit
import LinuxSys
import NetTypes
import ProxysideArguments
import SecondChanceCore

/// Sends a bounded stream of GUE packets with sendmmsg, for benchmarks.
struct Blast: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send COUNT GUE packets (bounded in count and time) to a proxy.")

    @Option var to: IPv4Address
    @Option var count: Int = 1_000_000
    @Option var maxSeconds: Int = 20
    @Option(help: "syn, ack (flows from --client to the VIP) or forward (same, with --hop as next hop).") var kind:
        String = "syn"
    @Option(help: "The inner source (IPv4 or IPv6).") var client: String
    @Option(help: "The inner destination, of the client's family.") var vip: String
    @Option var vipPort: UInt16 = 80
    @Option(help: "Client source ports start here; --flows ports are used in turn.") var firstPort: UInt16 = 20000
    @Option var flows: Int = 64
    @Option var hop: IPv4Address?
    @Option(help: "Spoof the client address: flow N comes from --client + (N % this), for SYN floods.")
    var spoofAddresses: Int = 1
    @Option(help: "Packets per second at most (0: as fast as possible).") var rate: Int = 0
    @Option(
        help: ArgumentHelp(
            """
            Send whole frames out of this interface from a packet socket, past this host's IP stack and qdisc \
            (faster: with --next-mac and --source).
            """, valueName: "NAME"))
    var interface: String?
    @Option(help: "The frames' destination MAC (the proxy's, or the router's), aa:bb:cc:dd:ee:ff.") var nextMac: String?
    @Option(help: "The frames' outer IPv4 source (an address of --interface).") var source: IPv4Address?

    func validate() throws {
        guard (1...40000).contains(flows), count > 0, (1...65536).contains(spoofAddresses), rate >= 0,
            (1...3600).contains(maxSeconds)
        else {
            throw ValidationError(
                """
                --flows is 1...40000, --spoof-addresses 1...65536, --count positive, --rate not negative, \
                --max-seconds 1...3600
                """)
        }
    }

    func run() throws {
        guard let clientAddress = IPAddress(client), let vipAddress = IPAddress(vip) else {
            throw CommandFailure("--client and --vip are IPv4 or IPv6 addresses")
        }
        let flags: TCPFlags = kind == "syn" ? .syn : .ack
        var hops: [IPv4Address] = []
        if kind == "forward" {
            guard case .v4(let vip4) = vipAddress else { throw CommandFailure("forward needs --hop or an IPv4 --vip") }
            hops = [hop ?? vip4]
        }
        let payloads: [[UInt8]] = (0..<flows).map { index in
            let offset = UInt32(index % spoofAddresses)
            let source: IPAddress =
                switch clientAddress {
                case .v4(let v4): .v4(IPv4Address(v4.value &+ offset))
                case .v6(let v6): .v6(IPv6Address(high: v6.high, low: v6.low &+ UInt64(offset)))
                }
            let inner = PacketBuilder.tcp(
                source: source, sourcePort: firstPort &+ UInt16(index), destination: vipAddress,
                destinationPort: vipPort,
                flags: flags, sequence: 1000 &+ UInt32(index) &* 7919, acknowledgement: kind == "syn" ? 0 : 1,
                // A real SYN's options, so that the responder's option handling is what gets measured.
                options: kind == "syn" ? PacketBuilder.linuxSYNOptions : [])
            return PacketBuilder.guePayload(inner: inner, hops: hops)
        }
        let frames = try interface.map { try self.frames(around: payloads, interface: $0) }
        let fd =
            try frames == nil
            ? LabSockets.bindUDP(.v4(IPv4Address(0)), port: 0)
            : { () throws -> Int32 in
                try Syscall.negated("packet socket on \(interface!)") {
                    proxyside_frame_sender(Int32(if_nametoindex(interface!)))
                }
            }()
        defer { close(fd) }
        var destination = sockaddr_in()
        destination.sin_family = sa_family_t(AF_INET)
        destination.sin_port = GUEPacket.port.bigEndian
        destination.sin_addr.s_addr = to.value.bigEndian
        let batch = 64
        let storage = (frames ?? payloads).map { payload -> UnsafeMutableRawBufferPointer in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: payload.count, alignment: 8)
            buffer.copyBytes(from: payload)
            return buffer
        }
        defer { storage.forEach { $0.deallocate() } }
        let destinations = [sockaddr_in](repeating: destination, count: batch)
        var buffers = [UnsafeMutableRawPointer?](repeating: nil, count: batch)
        var lengths = [Int](repeating: 0, count: batch)
        var sent = 0
        let start = MonotonicClock.nanoseconds()
        let deadline = start + UInt64(maxSeconds) * 1_000_000_000
        while sent < count && MonotonicClock.nanoseconds() < deadline {
            if rate > 0 {
                let due = start + UInt64(sent) * 1_000_000_000 / UInt64(rate)
                let now = MonotonicClock.nanoseconds()
                if due > now { usleep(UInt32(min(due - now, 100_000_000) / 1000)); continue }
            }
            let now = min(batch, rate > 0 ? max(1, rate / 100) : batch, count - sent)
            for index in 0..<now {
                let payload = storage[(sent + index) % storage.count]
                buffers[index] = payload.baseAddress
                lengths[index] = payload.count
            }
            let result =
                frames == nil
                ? proxyside_send_batch_ipv4(fd, destinations, &buffers, &lengths, UInt32(now))
                : proxyside_send_batch_ipv4(fd, nil, &buffers, &lengths, UInt32(now))
            if result > 0 { sent += Int(result) }
        }
        let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        print("blast: sent=\(sent) milliseconds=\(Int(seconds * 1000)) rate=\(Int(Double(sent) / seconds))")
    }

    /// Each payload as the whole frame a UDP socket would have sent: Ethernet, IPv4 and UDP (with
    /// its checksum) around it.
    func frames(around payloads: [[UInt8]], interface: String) throws -> [[UInt8]] {
        guard let source, let nextMac else { throw CommandFailure("--interface needs --next-mac and --source") }
        let destinationMAC = nextMac.split(separator: ":").compactMap { UInt8($0, radix: 16) }
        guard destinationMAC.count == 6 else { throw CommandFailure("--next-mac is six hexadecimal bytes: \(nextMac)") }
        let sourceMAC = try Self.mac(of: interface)
        return payloads.map { payload in
            let packet = PacketBuilder.udp(
                from: source, to: to, sourcePort: 40000, destinationPort: GUEPacket.port, payload: payload)
            return destinationMAC + sourceMAC + [0x08, 0x00] + packet
        }
    }

    static func mac(of interface: String) throws -> [UInt8] {
        guard let text = ProcFile.read("/sys/class/net/\(interface)/address", limit: 64) else {
            throw CommandFailure("no interface \(interface)")
        }
        let bytes =
            text.trimmingPrefix(while: \.isWhitespace).split(separator: "\n").first?.split(separator: ":")
            .compactMap { UInt8($0, radix: 16) } ?? []
        guard bytes.count == 6 else { throw CommandFailure("cannot read \(interface)'s MAC") }
        return bytes
    }
}
