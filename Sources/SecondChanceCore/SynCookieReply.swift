import NetTypes

/// The host's TCP sysctls that decide what a SYN-cookie handshake can carry (read per network
/// namespace; defaults are the kernel's).
public struct TCPHostSettings: Equatable, Sendable {
    /// net.ipv4.tcp_syncookies: 0 never, 1 on overflow, 2 always.
    public var syncookies = 1
    /// net.ipv4.tcp_timestamps: 1 with a secret per-address offset, 2 without one.
    public var timestamps = 1
    public var sack = true
    public var windowScaling = true
    /// net.ipv4.tcp_rmem[2] and net.core.rmem_max: the window scale is chosen for the larger.
    public var tcpReceiveMemoryMaximum: UInt32 = 6_291_456
    public var receiveMemoryMaximum: UInt32 = 212_992
    /// net.ipv4.tcp_rmem[1]: a listener's receive buffer unless the application set SO_RCVBUF.
    public var tcpReceiveMemoryDefault: UInt32 = 131_072
    /// net.ipv4.ip_default_ttl: an IPv4 reply's TTL.
    public var defaultTTL: UInt8 = 64
    /// net.ipv6.conf.default.hop_limit: an IPv6 reply's hop limit (what interfaces start with;
    /// the kernel's own reply takes its interface's).
    public var defaultHopLimit: UInt8 = 64

    public init() {}

    /// The TTL or hop limit of a reply of this family, as the kernel's own.
    public func replyTTL(ipv6: Bool) -> UInt8 { ipv6 ? defaultHopLimit : defaultTTL }

    /// Whether a cookie SYN-ACK can carry a timestamp the kernel will decode: the echoed TSval is
    /// taken minus a per-address offset, which is zero only with tcp_timestamps=2.
    public var timestampsEncodable: Bool { timestamps == 2 }
}

/// The options of a client's SYN that the reply depends on, as the kernel's tcp_parse_options reads them.
public struct SynOptions: Equatable, Sendable {
    public var mss: UInt16?
    public var windowScale: UInt8?
    public var sackPermitted = false
    public var timestamp: UInt32?

    public init(mss: UInt16? = nil, windowScale: UInt8? = nil, sackPermitted: Bool = false, timestamp: UInt32? = nil) {
        self.mss = mss
        self.windowScale = windowScale
        self.sackPermitted = sackPermitted
        self.timestamp = timestamp
    }

    /// Parses the options of the TCP header at `tcpOffset`; nil when the header does not fit before `end`.
    /// Malformed options end the walk, as in the kernel, keeping what was read before them.
    public static func parse(_ bytes: UnsafeRawBufferPointer, tcpOffset: Int, end: Int) -> SynOptions? {
        guard tcpOffset >= 0, end <= bytes.count, end - tcpOffset >= 20 else { return nil }
        let headerLength = Int(bytes[tcpOffset + 12] >> 4) * 4
        guard headerLength >= 20, end - tcpOffset >= headerLength else { return nil }
        var options = SynOptions()
        var index = tcpOffset + 20
        let optionsEnd = tcpOffset + headerLength
        while index < optionsEnd {
            let kind = bytes[index]
            if kind == 0 { break }
            if kind == 1 { index += 1; continue }
            guard index + 1 < optionsEnd else { break }
            let length = Int(bytes[index + 1])
            guard length >= 2, index + length <= optionsEnd else { break }
            switch (kind, length) {
            case (2, 4):
                let value = bytes.be16(index + 2)
                if value != 0 { options.mss = value }
            case (3, 3): options.windowScale = min(bytes[index + 2], TCPWindow.maximumScale)
            case (4, 2): options.sackPermitted = true
            case (8, 10): options.timestamp = bytes.be32(index + 2)
            default: break
            }
            index += length
        }
        return options
    }
}

public enum TCPWindow {
    public static let maximumScale: UInt8 = 14

    /// The kernel's tcp_full_space for a socket that has not measured its skb ratio yet (50%).
    public static func fullSpace(receiveBuffer: UInt32) -> UInt32 { receiveBuffer / 2 }

    /// The window scale the kernel gives a child made from a cookie (cookie_v4_check, then
    /// tcp_select_initial_window on the listener): from the largest buffer the socket may grow to,
    /// unless the application fixed SO_RCVBUF, which caps the window at the buffer's full space.
    public static func receiveScale(listenerReceiveBuffer: UInt32, receiveBufferLocked: Bool, settings: TCPHostSettings)
        -> UInt8
    {
        let full = fullSpace(receiveBuffer: listenerReceiveBuffer)
        let clamp: UInt32 = receiveBufferLocked ? full : UInt32(UInt16.max) << UInt32(maximumScale)
        var space = min(full, clamp)
        space = max(space, settings.tcpReceiveMemoryMaximum, settings.receiveMemoryMaximum)
        space = min(space, clamp)
        guard space > 0 else { return 0 }
        let log2 = 31 - space.leadingZeroBitCount
        return UInt8(min(max(log2 - 15, 0), Int(maximumScale)))
    }

    /// The unscaled window of the SYN-ACK: the full space, rounded down to whole segments (payload per
    /// segment: the MSS less a timestamp option, when there is one), at most 65535.
    public static func synAckWindow(listenerReceiveBuffer: UInt32, mss: UInt16) -> UInt16 {
        var space = fullSpace(receiveBuffer: listenerReceiveBuffer)
        if mss > 0, space > UInt32(mss) { space -= space % UInt32(mss) }
        return UInt16(min(space, UInt32(UInt16.max)))
    }
}

/// The TSval of a cookie SYN-ACK (the kernel's cookie_init_timestamp): the clock in milliseconds with
/// the low 6 bits replaced by the negotiated options, never ahead of the clock. The client echoes it
/// in its ACK, which is how the kernel recovers window scale, SACK and ECN for the child.
public enum CookieTimestamp {
    public static let optionBits: UInt64 = 6
    public static let noWindowScale: UInt32 = 0x0f
    public static let sackBit: UInt32 = 1 << 4
    public static let ecnBit: UInt32 = 1 << 5

    public static func options(windowScale: UInt8?, sack: Bool, ecn: Bool) -> UInt32 {
        var options = windowScale.map { UInt32($0) } ?? noWindowScale
        if sack { options |= sackBit }
        if ecn { options |= ecnBit }
        return options
    }

    public static func value(nowMilliseconds: UInt64, options: UInt32) -> UInt32 {
        var stamp = (nowMilliseconds >> optionBits) << optionBits | UInt64(options)
        // Wrapping, as the kernel's u64: in the first 64 ms of the clock the step back goes below zero.
        if stamp > nowMilliseconds { stamp &-= 1 << optionBits }
        return UInt32(truncatingIfNeeded: stamp)
    }

    /// What the kernel's cookie_timestamp_decode recovers from an echoed TSval (offset already removed).
    public static func decode(_ echoed: UInt32) -> (windowScale: UInt8?, sack: Bool, ecn: Bool) {
        let scale = echoed & noWindowScale
        return (scale == noWindowScale ? nil : UInt8(scale), echoed & sackBit != 0, echoed & ecnBit != 0)
    }
}

/// A SYN-ACK carrying a kernel SYN cookie, sent for the kernel from the VIP to the client.
public enum SynCookieReply {
    /// Bytes of the TCP header handed to the generate helper: the SYN's fixed header and one MSS
    /// option. The cookie depends only on addresses, ports, ISN and the MSS, so other options are left
    /// out and every SYN fits one program (the helper requires th_len == doff * 4).
    public static let generatorTCPLength = 24
    /// TCP_MSS_DEFAULT: what the kernel assumes when a SYN has no MSS option.
    public static let defaultMSS: UInt16 = 536

    /// Writes the generate helper's input (IP header, then the normalized TCP header) to `into`,
    /// which must hold ip header length + 24 bytes. Returns the bytes written, or nil when the SYN
    /// is too short.
    public static func generatorInput(
        _ packet: UnsafeRawBufferPointer, _ segment: TCPSegment, options: SynOptions,
        into: UnsafeMutableRawBufferPointer
    ) -> Int? {
        let ipLength = segment.flow.isIPv6 ? 40 : 20
        guard segment.ipHeaderOffset + ipLength <= packet.count, segment.tcpOffset + 20 <= packet.count,
            into.count >= ipLength + generatorTCPLength
        else { return nil }
        into.baseAddress!.copyMemory(from: packet.baseAddress! + segment.ipHeaderOffset, byteCount: ipLength)
        if !segment.flow.isIPv6 { into[0] = 0x45 }  // the helper reads addresses only; options are not copied
        (into.baseAddress! + ipLength).copyMemory(from: packet.baseAddress! + segment.tcpOffset, byteCount: 20)
        into[ipLength + 12] = UInt8(generatorTCPLength / 4) << 4 | (into[ipLength + 12] & 0x0f)
        into[ipLength + 20] = 2
        into[ipLength + 21] = 4
        into.setBE16(ipLength + 22, options.mss ?? defaultMSS)
        return ipLength + generatorTCPLength
    }

    /// What the reply offers, as the kernel would negotiate it for a cookie: without an encodable
    /// timestamp the kernel clears every option but the MSS (tcp_conn_request), so the reply must too.
    public struct Offer: Equatable, Sendable {
        public var timestamp: (value: UInt32, echo: UInt32)?
        public var sack: Bool
        /// (client's scale, ours) when window scaling is negotiated.
        public var windowScales: (client: UInt8, ours: UInt8)?

        public static func == (a: Offer, b: Offer) -> Bool {
            a.timestamp?.value == b.timestamp?.value && a.timestamp?.echo == b.timestamp?.echo && a.sack == b.sack
                && a.windowScales?.client == b.windowScales?.client && a.windowScales?.ours == b.windowScales?.ours
        }
    }

    public static func offer(
        _ options: SynOptions, settings: TCPHostSettings, ourWindowScale: UInt8, nowMilliseconds: UInt64
    ) -> Offer {
        guard settings.timestampsEncodable, let echo = options.timestamp else {
            return Offer(timestamp: nil, sack: false, windowScales: nil)
        }
        let sack = options.sackPermitted && settings.sack
        let scales = settings.windowScaling ? options.windowScale.map { (client: $0, ours: ourWindowScale) } : nil
        // ECN is not offered: a cookie child gets ECN only if both ends agree, and not offering it is
        // always consistent with what the kernel decodes.
        let bits = CookieTimestamp.options(windowScale: scales?.client, sack: sack, ecn: false)
        return Offer(
            timestamp: (CookieTimestamp.value(nowMilliseconds: nowMilliseconds, options: bits), echo),
            sack: sack, windowScales: scales)
    }

    /// The longest reply: an IPv6 header, a TCP header, MSS, timestamp with SACK, window scale.
    public static let maximumLength = 40 + 20 + 20

    /// Length of the TCP options an offer puts in the reply (a multiple of 4).
    public static func optionsLength(_ offer: Offer) -> Int {
        4 + (offer.timestamp == nil ? 0 : 12) + (offer.windowScales == nil ? 0 : 4)
    }

    /// Length of the reply to a SYN of this family carrying `offer`.
    public static func length(_ offer: Offer, ipv6: Bool) -> Int { (ipv6 ? 40 : 20) + 20 + optionsLength(offer) }

    /// Writes TCP options in the kernel's SYN-ACK layout (tcp_options_write) at `offset`: MSS,
    /// SACK-permitted folded into the timestamp's padding, window scale. An offer without a
    /// timestamp has neither SACK nor scaling. Returns the offset after them.
    @discardableResult
    public static func writeOptions(mss: UInt16, offer: Offer, into out: UnsafeMutableRawBufferPointer, at offset: Int)
        -> Int
    {
        var index = offset
        out[index] = 2
        out[index + 1] = 4
        out.setBE16(index + 2, mss)
        index += 4
        if let timestamp = offer.timestamp {
            out.setBE32(index, offer.sack ? 0x0402_080a : 0x0101_080a)
            out.setBE32(index + 4, timestamp.value)
            out.setBE32(index + 8, timestamp.echo)
            index += 12
        }
        if let scales = offer.windowScales {
            out.setBE32(index, 0x0103_0300 | UInt32(scales.ours))
            index += 4
        }
        return index
    }

    /// Writes the SYN-ACK for `segment` (a client SYN) into `out`, from the SYN's destination back
    /// to its source, with both checksums; returns its length. `out` holds at least `maximumLength`
    /// bytes. Nothing is allocated: under a SYN flood this runs for every SYN answered.
    public static func write(
        into out: UnsafeMutableRawBufferPointer, answering packet: UnsafeRawBufferPointer,
        _ segment: TCPSegment, cookie: UInt32, mss: UInt16, offer: Offer, window: UInt16,
        ttl: UInt8
    ) -> Int {
        let flow = segment.flow
        let ipLength = flow.isIPv6 ? 40 : 20
        let total = length(offer, ipv6: flow.isIPv6)
        let tcpLength = total - ipLength
        precondition(out.count >= total && segment.tcpOffset + 8 <= packet.count)
        let tcp = ipLength
        out.setBE16(tcp, flow.destinationPort)
        out.setBE16(tcp + 2, flow.sourcePort)
        out.setBE32(tcp + 4, cookie)
        out.setBE32(tcp + 8, packet.be32(segment.tcpOffset + 4) &+ 1)
        out[tcp + 12] = UInt8(tcpLength / 4) << 4
        out[tcp + 13] = TCPFlags([.syn, .ack]).rawValue
        out.setBE16(tcp + 14, window)
        out.setBE32(tcp + 16, 0)  // checksum, urgent pointer
        writeOptions(mss: mss, offer: offer, into: out, at: tcp + 20)

        let pseudo: UInt64
        if flow.isIPv6 {
            out.setBE32(0, 0x6000_0000)
            out.setBE16(4, UInt16(tcpLength))
            out[6] = 6
            out[7] = ttl
            for (offset, half) in [
                (8, flow.destination.high), (16, flow.destination.low),
                (24, flow.source.high), (32, flow.source.low),
            ] {
                out.setBE32(offset, UInt32(truncatingIfNeeded: half >> 32))
                out.setBE32(offset + 4, UInt32(truncatingIfNeeded: half))
            }
            pseudo = InternetChecksum.pseudoHeaderSum(
                source: flow.destination, destination: flow.source, nextHeader: 6,
                length: tcpLength)
        } else {
            let source = IPv4Address(UInt32(truncatingIfNeeded: flow.destination.low))
            let destination = IPv4Address(UInt32(truncatingIfNeeded: flow.source.low))
            out.setBE32(0, 0x4500_0000 | UInt32(total))
            out.setBE32(4, 0x0000_4000)  // identification 0, don't fragment
            out[8] = ttl
            out[9] = 6
            out.setBE16(10, 0)
            out.setBE32(12, source.value)
            out.setBE32(16, destination.value)
            let header = InternetChecksum.partialSum(
                UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(out)[0..<20]))
            out.setBE16(10, InternetChecksum.finish(header))
            pseudo = InternetChecksum.pseudoHeaderSum(
                source: source, destination: destination, protocol: 6, length: tcpLength)
        }
        let segmentBytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(out)[tcp..<total])
        out.setBE16(tcp + 16, InternetChecksum.finish(InternetChecksum.partialSum(segmentBytes, initial: pseudo)))
        return total
    }
}

/// What the kernel's receive path checks of a SYN before a listener sees it (ip_rcv, tcp_v4_rcv,
/// tcp_v6_rcv). A responder answers only a SYN with no data whose TCP header ends where its IP
/// packet does and whose checksums (IPv4 header, TCP) are right; any other SYN goes on to the
/// kernel, which drops a damaged one and answers the rest itself. The tc program's
/// `answerable_syn` is the same check.
public enum SynIntegrity {
    public static func isAnswerable(_ bytes: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool {
        let ip = segment.ipHeaderOffset, tcp = segment.tcpOffset
        guard ip >= 0, tcp >= ip + 20, tcp + 20 <= bytes.count else { return false }
        let ipv6 = bytes[ip] >> 4 == 6
        guard !ipv6 || tcp >= ip + 40 else { return false }
        let packetEnd = ipv6 ? ip + 40 + Int(bytes.be16(ip + 4)) : ip + Int(bytes.be16(ip + 2))
        let tcpLength = Int(bytes[tcp + 12] >> 4) * 4
        guard tcpLength >= 20, packetEnd == tcp + tcpLength, packetEnd <= bytes.count else { return false }
        let segmentBytes = UnsafeRawBufferPointer(rebasing: bytes[tcp..<packetEnd])
        let pseudo: UInt64
        if ipv6 {
            pseudo = InternetChecksum.pseudoHeaderSum(
                source: IPv6Address(high: bytes.be64(ip + 8), low: bytes.be64(ip + 16)),
                destination: IPv6Address(high: bytes.be64(ip + 24), low: bytes.be64(ip + 32)),
                nextHeader: 6, length: tcpLength)
        } else {
            let headerLength = Int(bytes[ip] & 0x0f) * 4
            guard headerLength >= 20, ip + headerLength <= tcp else { return false }
            let header = UnsafeRawBufferPointer(rebasing: bytes[ip..<(ip + headerLength)])
            guard InternetChecksum.fold(InternetChecksum.partialSum(header)) == 0xffff else { return false }
            pseudo = InternetChecksum.pseudoHeaderSum(
                source: IPv4Address(bytes.be32(ip + 12)), destination: IPv4Address(bytes.be32(ip + 16)),
                protocol: 6, length: tcpLength)
        }
        return InternetChecksum.fold(InternetChecksum.partialSum(segmentBytes, initial: pseudo)) == 0xffff
    }
}
