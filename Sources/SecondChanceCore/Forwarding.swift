import NetTypes

/// In-place edits of a queued GUE packet.
public enum GUEForwarding {
    /// The outer IPv4 header's TTL byte.
    @usableFromInline static let outerTTLOffset = 8

    /// Whether the kernel may forward the rewritten packet: its TTL is raised by one first, so it
    /// must be below 255 (a packet at 255 is sent from the raw socket instead).
    @inlinable
    public static func kernelCanForward(_ bytes: UnsafeMutableRawBufferPointer) -> Bool {
        bytes[outerTTLOffset] < 255
    }

    /// Turns the packet into the one the next hop receives: next_hop + 1, outer source = us,
    /// outer destination = the hop. UDP ports, TTL and the inner packet are untouched. The IP header
    /// checksum is recomputed; a non-zero UDP checksum is updated incrementally (a zero one means
    /// "none" and stays zero). `forKernelForwarding` raises the TTL by one first, since the kernel's
    /// forwarding path takes one off: the hop sees the TTL the director set (`kernelCanForward`
    /// first).
    public static func rewrite(
        _ bytes: UnsafeMutableRawBufferPointer, _ gue: GUEPacket, source: IPv4Address, destination: IPv4Address,
        forKernelForwarding: Bool = false
    ) {
        if forKernelForwarding { bytes[outerTTLOffset] += 1 }
        let nextHopWordOffset = gue.nextHopOffset  // next_hop is the high byte of this 16-bit word
        let oldWord = UnsafeRawBufferPointer(bytes).be16(nextHopWordOffset)
        let newWord = UInt16(UInt8(truncatingIfNeeded: Int(gue.nextHop) + 1)) << 8 | (oldWord & 0x00ff)
        bytes.setBE16(nextHopWordOffset, newWord)

        bytes.setBE32(12, source.value)
        bytes.setBE32(16, destination.value)
        bytes.setBE16(10, 0)
        let headerSum = InternetChecksum.partialSum(
            UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[0..<gue.outerHeaderLength]))
        bytes.setBE16(10, InternetChecksum.finish(headerSum))

        let udpChecksumOffset = gue.udpOffset + 6
        var check = UnsafeRawBufferPointer(bytes).be16(udpChecksumOffset)
        guard check != 0 else { return }
        check = InternetChecksum.update(check, old: oldWord, new: newWord)
        check = InternetChecksum.update(check, old: gue.outerSource.value, new: source.value)
        check = InternetChecksum.update(check, old: gue.outerDestination.value, new: destination.value)
        // 0 would mean "no checksum" on the wire; its one's-complement twin 0xffff is transmitted instead.
        bytes.setBE16(udpChecksumOffset, check == 0 ? 0xffff : check)
    }
}
