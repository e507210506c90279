import ArgumentParser
import Glibc
import LabKit
import LinuxSys
import NetTypes
import ProxysideArguments
import SecondChance

/// Reads client packets for the VIPs from NFQUEUE and sends them GUE-encapsulated to the proxies the
/// rendezvous table picks (primary as destination, the rest as hops). SIGHUP re-reads the table.
struct Director: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "GLB director simulator (NFQUEUE in, GUE out).")

    @Option var queue: UInt16 = 1
    @Option(name: .customLong("self"), help: "The director's address: outer source of GUE packets.") var selfAddress:
        IPv4Address
    @Option(help: "Table file: lines 'PROXY-ADDRESS [active|draining]'.") var table: String
    @Option(help: "Proxies per flow (primary + hops).") var hops: Int = 2

    func validate() throws {
        // GUE's header length (5 bits of 4-byte words) holds the private data's word and 30 hops.
        guard (1...31).contains(hops) else { throw ValidationError("--hops (proxies per flow) is 1...31") }
    }

    func run() throws {
        let stop = try EventFD()
        let reload = try EventFD()
        try Signals.install(shutdown: stop, reload: reload)
        var current = try loadTable()
        logger.info("director: \(current.proxies.map { "\($0.address) \($0.state.rawValue)" }.joined(separator: ", "))")
        let queue = try NetfilterQueue(number: queue)
        let sender = try RawIPSender()
        logger.info("director: serving queue \(queue.number)")
        var encapsulated = 0, dropped = 0
        var scratch: [UInt8] = []
        // SIGHUP is seen between packets or when the queue is idle, whichever comes first; either
        // way the reload is logged (tests wait for that line).
        func reloadIfAsked() {
            guard reload.consume() else { return }
            do {
                current = try loadTable()
                logger.info(
                    """
                    director: table reloaded: \
                    \(current.proxies.map { "\($0.address) \($0.state.rawValue)" }.joined(separator: ", "))
                    """
                )
            } catch { logger.info("director: keeping the old table: \(error)") }
        }
        try queue.run(stop: stop, idle: reloadIfAsked) { packet in
            reloadIfAsked()
            guard let flow = Self.flow(UnsafeRawBufferPointer(packet)) else { dropped += 1; return .drop }
            let hash = RendezvousTable.flowHash(flow)
            let route = current.route(flowHash: hash)
            scratch = PacketBuilder.gue(
                from: selfAddress, to: route[0], sourcePort: UInt16(truncatingIfNeeded: hash) | 0x8000,
                inner: Array(packet), hops: Array(route.dropFirst()))
            scratch.withUnsafeBytes { _ = sender.sendIPv4($0) }
            encapsulated += 1
            return .drop
        }
        logger.info("director: stopped after \(encapsulated) packets (\(dropped) unparsable)")
    }

    func loadTable() throws -> RendezvousTable {
        guard let text = ProcFile.read(table) else { throw CommandFailure("cannot read \(table)") }
        return try RendezvousTable.parse(text, maximumHops: hops)
    }

    /// The client flow of a plain IPv4/IPv6 TCP or UDP packet.
    static func flow(_ bytes: UnsafeRawBufferPointer) -> FlowKey? {
        guard bytes.count >= 1 else { return nil }
        if bytes[0] >> 4 == 4, bytes.count >= 24 {
            let ihl = Int(bytes[0] & 0x0f) * 4
            let ports = bytes.count >= ihl + 4 ? (bytes.be16(ihl), bytes.be16(ihl + 2)) : (0, 0)
            return FlowKey(
                source: IPv4Address(bytes.be32(12)), sourcePort: ports.0, destination: IPv4Address(bytes.be32(16)),
                destinationPort: ports.1)
        }
        if bytes[0] >> 4 == 6, bytes.count >= 44 {
            return FlowKey(
                source: IPv6Address(high: bytes.be64(8), low: bytes.be64(16)), sourcePort: bytes.be16(40),
                destination: IPv6Address(high: bytes.be64(24), low: bytes.be64(32)), destinationPort: bytes.be16(42))
        }
        return nil
    }
}
