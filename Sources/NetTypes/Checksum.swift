/// The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
public enum InternetChecksum {
    /// The unfolded one's-complement sum of `bytes`, added to `initial`.
    @inlinable @inline(__always)
    public static func partialSum(_ bytes: UnsafeRawBufferPointer, initial: UInt64 = 0) -> UInt64 {
        // 32-bit words summed into 64 bits: 2^16 is 1 modulo 0xffff, so folding gives the sum of
        // the 16-bit words, with half the additions (and no carry lost below 2^32 words).
        var sum = initial
        var index = 0
        let count = bytes.count
        while index + 3 < count {
            sum &+= UInt64(bytes.be32(index))
            index += 4
        }
        if index + 1 < count {
            sum &+= UInt64(bytes.be16(index))
            index += 2
        }
        if index < count { sum &+= UInt64(bytes[index]) << 8 }
        return sum
    }

    @inlinable @inline(__always)
    public static func fold(_ sum: UInt64) -> UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xffff) &+ (s >> 16) }
        return UInt16(truncatingIfNeeded: s)
    }

    /// The checksum field value for data whose sum (checksum field zeroed) is `sum`.
    @inlinable @inline(__always)
    public static func finish(_ sum: UInt64) -> UInt16 { ~fold(sum) }

    @inlinable public static func checksum(_ bytes: [UInt8], initial: UInt64 = 0) -> UInt16 {
        bytes.withUnsafeBytes { finish(partialSum($0, initial: initial)) }
    }

    /// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one 16-bit word changing from `old` to `new`.
    @inlinable @inline(__always)
    public static func update(_ check: UInt16, old: UInt16, new: UInt16) -> UInt16 {
        let sum = UInt64(~check) &+ UInt64(~old) &+ UInt64(new)
        return ~fold(sum)
    }

    @inlinable @inline(__always)
    public static func update(_ check: UInt16, old: UInt32, new: UInt32) -> UInt16 {
        let once = update(check, old: UInt16(truncatingIfNeeded: old >> 16), new: UInt16(truncatingIfNeeded: new >> 16))
        return update(once, old: UInt16(truncatingIfNeeded: old), new: UInt16(truncatingIfNeeded: new))
    }

    /// Sum of the IPv4 pseudo-header for a transport segment.
    @inlinable public static func pseudoHeaderSum(
        source: IPv4Address, destination: IPv4Address, protocol proto: UInt8, length: Int
    ) -> UInt64 {
        UInt64(source.value >> 16) + UInt64(source.value & 0xffff)
            + UInt64(destination.value >> 16) + UInt64(destination.value & 0xffff)
            + UInt64(proto) + UInt64(length)
    }

    /// Sum of the IPv6 pseudo-header for a transport segment.
    @inlinable public static func pseudoHeaderSum(
        source: IPv6Address, destination: IPv6Address, nextHeader: UInt8, length: Int
    )
        -> UInt64
    {
        var sum: UInt64 = 0
        for half in [source.high, source.low, destination.high, destination.low] {
            sum &+= (half >> 48) + ((half >> 32) & 0xffff) + ((half >> 16) & 0xffff) + (half & 0xffff)
        }
        return sum &+ UInt64(length >> 16) &+ UInt64(length & 0xffff) &+ UInt64(nextHeader)
    }
}
