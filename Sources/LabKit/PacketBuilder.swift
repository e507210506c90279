import NetTypes
import SecondChanceCore

/// Builders for the packets the lab, the tests and the benchmarks put on the wire.
public enum PacketBuilder {
    /// A Linux client's SYN options: MSS 1460, SACK permitted, timestamps (TSval 1), window scale 7.
    public static let linuxSYNOptions: [UInt8] = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]

    /// A TCP segment in an IPv4 or IPv6 packet, with correct checksums. `dataOffset` (in words)
    /// replaces the header length the options make, for a damaged segment.
    public static func tcp(
        source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16,
        flags: TCPFlags, sequence: UInt32 = 0, acknowledgement: UInt32 = 0, window: UInt16 = 65535,
        options: [UInt8] = [], payload: [UInt8] = [], ttl: UInt8 = 64, dataOffset: UInt8? = nil
    ) -> [UInt8] {
        precondition(options.count % 4 == 0 && options.count <= 40)
        var segment: [UInt8] = []
        segment.appendBE16(sourcePort)
        segment.appendBE16(destinationPort)
        segment.appendBE32(sequence)
        segment.appendBE32(acknowledgement)
        segment.append((dataOffset ?? UInt8((20 + options.count) / 4)) << 4)
        segment.append(flags.rawValue)
        segment.appendBE16(window)
        segment.appendBE16(0)  // checksum
        segment.appendBE16(0)  // urgent pointer
        segment += options
        segment += payload
        return ip(
            source: source, destination: destination, protocol: 6, transport: segment, checksumOffset: 16, ttl: ttl)
    }

    /// An IPv4 or IPv6 packet around `transport`, filling the transport checksum at `checksumOffset`.
    public static func ip(
        source: IPAddress, destination: IPAddress, protocol proto: UInt8, transport: [UInt8],
        checksumOffset: Int?, ttl: UInt8 = 64
    ) -> [UInt8] {
        var transport = transport
        switch (source, destination) {
        case (.v4(let s), .v4(let d)):
            if let checksumOffset {
                let pseudo =
                    proto == 1
                    ? 0
                    : InternetChecksum.pseudoHeaderSum(
                        source: s, destination: d, protocol: proto, length: transport.count)
                transport.setBE16(checksumOffset, InternetChecksum.checksum(transport, initial: pseudo))
            }
            return ipv4Header(source: s, destination: d, protocol: proto, payloadLength: transport.count, ttl: ttl)
                + transport
        case (.v6(let s), .v6(let d)):
            if let checksumOffset {
                let pseudo = InternetChecksum.pseudoHeaderSum(
                    source: s, destination: d, nextHeader: proto, length: transport.count)
                transport.setBE16(checksumOffset, InternetChecksum.checksum(transport, initial: pseudo))
            }
            var header: [UInt8] = [0x60, 0, 0, 0]
            header.appendBE16(UInt16(transport.count))
            header.append(proto)
            header.append(ttl)
            return header + s.bytes + d.bytes + transport
        default:
            preconditionFailure("source and destination must be of one family")
        }
    }

    public static func ipv4Header(
        source: IPv4Address, destination: IPv4Address, protocol proto: UInt8, payloadLength: Int,
        ttl: UInt8 = 64, identification: UInt16 = 0, dontFragment: Bool = true
    ) -> [UInt8] {
        var header: [UInt8] = [0x45, 0]
        header.appendBE16(UInt16(20 + payloadLength))
        header.appendBE16(identification)
        header.appendBE16(dontFragment ? 0x4000 : 0)
        header.append(ttl)
        header.append(proto)
        header.appendBE16(0)
        header.appendBE32(source.value)
        header.appendBE32(destination.value)
        header.setBE16(10, InternetChecksum.checksum(header))
        return header
    }

    /// An ICMP echo request (type 8) carrying `payload`, with DF set, as glb-healthcheck's GUE
    /// check sends it inside GUE (identifier and sequence 0, TTL 255, its check's id as payload).
    public static func icmpEchoRequest(
        from source: IPv4Address, to destination: IPv4Address, payload: [UInt8], ttl: UInt8 = 255
    ) -> [UInt8] {
        ip(
            source: .v4(source), destination: .v4(destination), protocol: 1,
            transport: [8, 0, 0, 0, 0, 0, 0, 0] + payload, checksumOffset: 2, ttl: ttl)
    }

    /// ICMP "fragmentation needed" (type 3 code 4) quoting `original` (its first header bytes).
    public static func icmpFragmentationNeeded(
        from source: IPv4Address, to destination: IPv4Address, mtu: UInt16, original: [UInt8]
    ) -> [UInt8] {
        var message: [UInt8] = [3, 4, 0, 0, 0, 0]
        message.appendBE16(mtu)
        message += original.prefix(28 + 20)
        return ip(
            source: .v4(source), destination: .v4(destination), protocol: 1, transport: message, checksumOffset: 2)
    }

    /// ICMPv6 Packet Too Big quoting `original`.
    public static func icmpv6PacketTooBig(
        from source: IPv6Address, to destination: IPv6Address, mtu: UInt32, original: [UInt8]
    ) -> [UInt8] {
        var message: [UInt8] = [2, 0, 0, 0]
        message.appendBE32(mtu)
        message += original.prefix(1232)
        return ip(
            source: .v6(source), destination: .v6(destination), protocol: 58, transport: message, checksumOffset: 2)
    }

    /// The GUE header and GLB private data (everything a UDP socket sends as payload) before `inner`.
    public static func guePayload(inner: [UInt8], hops: [IPv4Address], nextHop: UInt8 = 0) -> [UInt8] {
        precondition(hops.count < 31, "hlen is 5 bits: at most 30 hops")
        let family: InnerFamily = inner.first.map { $0 >> 4 == 6 } == true ? .ipv6 : .ipv4
        var payload: [UInt8] = [UInt8(1 + hops.count), family.rawValue, 0, 0]
        payload.appendBE16(0)  // private data type
        payload.append(nextHop)
        payload.append(UInt8(hops.count))
        for hop in hops { payload.appendBE32(hop.value) }
        return payload + inner
    }

    /// A complete outer IPv4/UDP/GUE packet, as a director sends it. `udpChecksum: false` sends zero.
    public static func gue(
        from source: IPv4Address, to destination: IPv4Address, sourcePort: UInt16, inner: [UInt8],
        hops: [IPv4Address], nextHop: UInt8 = 0, udpChecksum: Bool = true, ttl: UInt8 = 64
    ) -> [UInt8] {
        udp(
            from: source, to: destination, sourcePort: sourcePort, destinationPort: GUEPacket.port,
            payload: guePayload(inner: inner, hops: hops, nextHop: nextHop), checksum: udpChecksum, ttl: ttl)
    }

    /// An IPv4 UDP datagram around `payload`. `checksum: false` sends zero.
    public static func udp(
        from source: IPv4Address, to destination: IPv4Address, sourcePort: UInt16, destinationPort: UInt16,
        payload: [UInt8], checksum: Bool = true, ttl: UInt8 = 64
    ) -> [UInt8] {
        var udp: [UInt8] = []
        udp.appendBE16(sourcePort)
        udp.appendBE16(destinationPort)
        udp.appendBE16(UInt16(8 + payload.count))
        udp.appendBE16(0)
        udp += payload
        if checksum {
            let pseudo = InternetChecksum.pseudoHeaderSum(
                source: source, destination: destination, protocol: 17, length: udp.count)
            let check = InternetChecksum.checksum(udp, initial: pseudo)
            udp.setBE16(6, check == 0 ? 0xffff : check)
        }
        return ipv4Header(source: source, destination: destination, protocol: 17, payloadLength: udp.count, ttl: ttl)
            + udp
    }
}
