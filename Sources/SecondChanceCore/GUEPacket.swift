import NetTypes

/// Why a queued packet was dropped before any decision: each reason is counted separately.
public enum DropReason: String, CaseIterable, Sendable, Error {
    case outerTruncated = "outer_truncated"
    case outerNotIPv4 = "outer_not_ipv4"
    case outerFragment = "outer_fragment"
    case outerNotUDP = "outer_not_udp"
    case udpTruncated = "udp_truncated"
    case gueTruncated = "gue_truncated"
    case gueVersion = "gue_version"
    /// A GUE control message (C bit): GLB sends none; glb-healthcheck's legacy "fou" check (GRE in
    /// UDP on the GUE port, its first byte 0x20) reads as one.
    case gueControl = "gue_control"
    case gueFlags = "gue_flags"
    case gueHeaderLength = "gue_hlen"
    case guePrivateType = "gue_private_type"
    case innerProtocol = "inner_protocol"
    case innerTruncated = "inner_truncated"
    case innerVersion = "inner_version"
    case innerTransport = "inner_transport"
}

/// The family of the packet carried inside GUE (GUE proto/ctype 4 or 41).
public enum InnerFamily: UInt8, Sendable {
    case ipv4 = 4
    case ipv6 = 41
}

/// A GLB GUE packet, parsed in place: offsets into the outer IPv4 packet handed to us by NFQUEUE.
///
///     outer IPv4 | UDP (dst 19523) | GUE: ver 0, C 0, hlen, proto, flags 0
///     | private: u16 type 0, u8 next_hop, u8 hop_count, hop_count x IPv4 | inner IPv4/IPv6
public struct GUEPacket: Equatable, Sendable {
    public static let port: UInt16 = 19523

    public var outerSource: IPv4Address
    public var outerDestination: IPv4Address
    public var outerHeaderLength: Int
    public var udpSourcePort: UInt16
    public var udpChecksum: UInt16
    public var innerFamily: InnerFamily
    public var nextHop: UInt8
    public var hopCount: UInt8
    /// Offset of the private data (its u16 type field).
    public var privateOffset: Int
    /// The inner packet spans innerOffset..<innerEnd.
    public var innerOffset: Int
    public var innerEnd: Int
    /// Arrived over loopback: this host sent it (its own director or health checker).
    public var overLoopback = false

    public var udpOffset: Int { outerHeaderLength }
    public var nextHopOffset: Int { privateOffset + 2 }
    public var hopsOffset: Int { privateOffset + 4 }

    public func hop(_ index: Int, in bytes: UnsafeRawBufferPointer) -> IPv4Address {
        precondition(index < Int(hopCount))
        return IPv4Address(bytes.be32(hopsOffset + 4 * index))
    }

    public static func parse(_ bytes: UnsafeRawBufferPointer) -> Result<GUEPacket, DropReason> {
        guard bytes.count >= 20 else { return .failure(.outerTruncated) }
        guard bytes[0] >> 4 == 4 else { return .failure(.outerNotIPv4) }
        let ihl = Int(bytes[0] & 0x0f) * 4
        let totalLength = Int(bytes.be16(2))
        guard ihl >= 20, totalLength >= ihl, totalLength <= bytes.count else { return .failure(.outerTruncated) }
        // More-fragments set or a non-zero offset: the GUE header may not be here.
        guard bytes.be16(6) & 0x3fff == 0 else { return .failure(.outerFragment) }
        guard bytes[9] == 17 else { return .failure(.outerNotUDP) }

        let udp = ihl
        guard totalLength - udp >= 8 else { return .failure(.udpTruncated) }
        let udpLength = Int(bytes.be16(udp + 4))
        guard udpLength >= 8, udp + udpLength <= totalLength else { return .failure(.udpTruncated) }
        let end = udp + udpLength

        let gue = udp + 8
        guard end - gue >= 4 else { return .failure(.gueTruncated) }
        let first = bytes[gue]
        // Version 0, and a data message: C = 1 would be a control message, which GLB never sends.
        guard first & 0xc0 == 0 else { return .failure(.gueVersion) }
        guard first & 0x20 == 0 else { return .failure(.gueControl) }
        let hlen = Int(first & 0x1f)
        guard bytes.be16(gue + 2) == 0 else { return .failure(.gueFlags) }
        guard hlen >= 1 else { return .failure(.gueHeaderLength) }
        let privateOffset = gue + 4
        guard end - privateOffset >= hlen * 4 else { return .failure(.gueTruncated) }
        let hopCount = bytes[privateOffset + 3]
        guard hlen == Int(hopCount) + 1 else { return .failure(.gueHeaderLength) }
        guard bytes.be16(privateOffset) == 0 else { return .failure(.guePrivateType) }
        guard let family = InnerFamily(rawValue: bytes[gue + 1]) else { return .failure(.innerProtocol) }

        return .success(
            GUEPacket(
                outerSource: IPv4Address(bytes.be32(12)), outerDestination: IPv4Address(bytes.be32(16)),
                outerHeaderLength: ihl, udpSourcePort: bytes.be16(udp), udpChecksum: bytes.be16(udp + 6),
                innerFamily: family, nextHop: bytes[privateOffset + 2], hopCount: hopCount,
                privateOffset: privateOffset, innerOffset: privateOffset + hlen * 4, innerEnd: end))
    }
}

/// What GLB's encapsulation adds to a client's segment between the director and this proxy, and
/// the largest MSS whose full-size segments still fit the link GUE arrives on. glb-director
/// neither fragments nor sends ICMP fragmentation-needed: a segment that does not fit is lost,
/// every time, and the connection stalls (the GUE MTU black hole).
public enum GUEPathMTU {
    /// Outer IPv4 (20), UDP (8), GUE (4), GLB's private data (4) and 4 per hop it lists.
    public static func overhead(hops: UInt8) -> Int { 20 + 8 + 4 + 4 + 4 * Int(hops) }

    /// The largest MSS of a segment that, with its IP and TCP headers (40; IPv6 60) and `hops`
    /// hops of GUE, fits `linkMTU`.
    public static func largestMSS(linkMTU: UInt32, hops: UInt8, ipv6: Bool) -> Int {
        Int(linkMTU) - overhead(hops: hops) - (ipv6 ? 60 : 40)
    }
}
