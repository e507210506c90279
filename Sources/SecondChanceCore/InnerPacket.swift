import NetTypes

/// A TCP segment inside GUE, with the offsets the SYN-cookie check needs.
public struct TCPSegment: Equatable, Sendable {
    public var flow: FlowKey
    public var flags: TCPFlags
    public var ipHeaderOffset: Int
    public var tcpOffset: Int

    public static func == (a: TCPSegment, b: TCPSegment) -> Bool {
        a.flow == b.flow && a.flags == b.flags && a.ipHeaderOffset == b.ipHeaderOffset && a.tcpOffset == b.tcpOffset
    }
}

/// What the inner packet is, as far as ownership goes.
public enum InnerPacket: Equatable, Sendable {
    /// UDP has no connection state here: the first host takes it.
    case udp
    /// ICMP other than path-MTU messages: the first host takes it.
    case icmp
    /// A fragment without a transport header to look up: the first host takes it.
    case fragment
    case tcp(TCPSegment)
    /// ICMP frag-needed or ICMPv6 Packet Too Big about a TCP flow: the embedded packet travelled
    /// VIP -> client, so its addresses and ports are swapped to name the client's flow.
    case pathMTU(FlowKey)

    public static func classify(_ bytes: UnsafeRawBufferPointer, _ gue: GUEPacket) -> Result<InnerPacket, DropReason> {
        switch gue.innerFamily {
        case .ipv4: classifyIPv4(bytes, start: gue.innerOffset, end: gue.innerEnd)
        case .ipv6: classifyIPv6(bytes, start: gue.innerOffset, end: gue.innerEnd)
        }
    }

    static let tcpProtocol: UInt8 = 6, udpProtocol: UInt8 = 17, icmpV4: UInt8 = 1, icmpV6: UInt8 = 58

    static func classifyIPv4(_ bytes: UnsafeRawBufferPointer, start: Int, end: Int) -> Result<InnerPacket, DropReason> {
        guard end - start >= 20 else { return .failure(.innerTruncated) }
        guard bytes[start] >> 4 == 4 else { return .failure(.innerVersion) }
        let ihl = Int(bytes[start] & 0x0f) * 4
        let totalLength = Int(bytes.be16(start + 2))
        guard ihl >= 20, totalLength >= ihl, start + totalLength <= end else { return .failure(.innerTruncated) }
        let packetEnd = start + totalLength
        let proto = bytes[start + 9]
        let fragment = bytes.be16(start + 6) & 0x3fff
        if fragment & 0x1fff != 0 {
            // A later fragment carries no ports; only known protocols are let through.
            return [tcpProtocol, udpProtocol, icmpV4].contains(proto) ? .success(.fragment) : .failure(.innerTransport)
        }
        let transport = start + ihl
        switch proto {
        case udpProtocol:
            return .success(.udp)
        case tcpProtocol:
            guard packetEnd - transport >= 20 else { return .failure(.innerTruncated) }
            let flow = FlowKey(
                source: IPv4Address(bytes.be32(start + 12)), sourcePort: bytes.be16(transport),
                destination: IPv4Address(bytes.be32(start + 16)), destinationPort: bytes.be16(transport + 2))
            return .success(
                .tcp(
                    TCPSegment(
                        flow: flow, flags: TCPFlags(rawValue: bytes[transport + 13]), ipHeaderOffset: start,
                        tcpOffset: transport)))
        case icmpV4:
            guard packetEnd - transport >= 8 else { return .failure(.innerTruncated) }
            // Type 3 code 4: fragmentation needed. Everything else belongs to the first host.
            guard bytes[transport] == 3, bytes[transport + 1] == 4 else { return .success(.icmp) }
            let embedded = transport + 8
            guard packetEnd - embedded >= 20, bytes[embedded] >> 4 == 4 else { return .failure(.innerTruncated) }
            let embeddedIHL = Int(bytes[embedded] & 0x0f) * 4
            guard embeddedIHL >= 20, packetEnd - embedded >= embeddedIHL + 4 else { return .failure(.innerTruncated) }
            guard bytes[embedded + 9] == tcpProtocol else { return .success(.icmp) }
            let ports = embedded + embeddedIHL
            return .success(
                .pathMTU(
                    FlowKey(
                        source: IPv4Address(bytes.be32(embedded + 16)), sourcePort: bytes.be16(ports + 2),
                        destination: IPv4Address(bytes.be32(embedded + 12)), destinationPort: bytes.be16(ports))))
        default:
            return .failure(.innerTransport)
        }
    }

    static func ipv6(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> IPv6Address {
        IPv6Address(high: bytes.be64(offset), low: bytes.be64(offset + 8))
    }

    /// Extension headers that may precede the transport header (hop-by-hop, routing, destination options).
    static let skippableExtensions: Set<UInt8> = [0, 43, 60]
    static let fragmentHeader: UInt8 = 44
    static let maximumExtensionHeaders = 8

    static func classifyIPv6(_ bytes: UnsafeRawBufferPointer, start: Int, end: Int) -> Result<InnerPacket, DropReason> {
        guard end - start >= 40 else { return .failure(.innerTruncated) }
        guard bytes[start] >> 4 == 6 else { return .failure(.innerVersion) }
        let packetEnd = start + 40 + Int(bytes.be16(start + 4))
        guard packetEnd <= end else { return .failure(.innerTruncated) }
        var next = bytes[start + 6]
        var transport = start + 40
        var walked = 0
        while skippableExtensions.contains(next) || next == fragmentHeader {
            guard walked < maximumExtensionHeaders, packetEnd - transport >= 8 else { return .failure(.innerTruncated) }
            if next == fragmentHeader {
                let offset = bytes.be16(transport + 2) & 0xfff8
                if offset != 0 { return .success(.fragment) }
                next = bytes[transport]
                transport += 8
            } else {
                let length = (Int(bytes[transport + 1]) + 1) * 8
                next = bytes[transport]
                transport += length
            }
            walked += 1
            guard transport <= packetEnd else { return .failure(.innerTruncated) }
        }
        switch next {
        case udpProtocol:
            return .success(.udp)
        case tcpProtocol:
            guard packetEnd - transport >= 20 else { return .failure(.innerTruncated) }
            let flow = FlowKey(
                source: ipv6(bytes, start + 8), sourcePort: bytes.be16(transport),
                destination: ipv6(bytes, start + 24), destinationPort: bytes.be16(transport + 2))
            return .success(
                .tcp(
                    TCPSegment(
                        flow: flow, flags: TCPFlags(rawValue: bytes[transport + 13]), ipHeaderOffset: start,
                        tcpOffset: transport)))
        case icmpV6:
            guard packetEnd - transport >= 8 else { return .failure(.innerTruncated) }
            // Type 2: Packet Too Big.
            guard bytes[transport] == 2 else { return .success(.icmp) }
            let embedded = transport + 8
            guard packetEnd - embedded >= 44, bytes[embedded] >> 4 == 6 else { return .failure(.innerTruncated) }
            guard bytes[embedded + 6] == tcpProtocol else { return .success(.icmp) }
            let ports = embedded + 40
            return .success(
                .pathMTU(
                    FlowKey(
                        source: ipv6(bytes, embedded + 24), sourcePort: bytes.be16(ports + 2),
                        destination: ipv6(bytes, embedded + 8), destinationPort: bytes.be16(ports))))
        default:
            return .failure(.innerTransport)
        }
    }
}
