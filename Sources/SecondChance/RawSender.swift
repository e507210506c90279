import CLinuxShims
import Glibc
import LinuxSys
import NetTypes

/// Sends complete IP packets (header included) as they are, so a forwarded GUE packet keeps its
/// ports, TTL and our chosen source address. The kernel would drop such a packet if it merely
/// routed it back out, because its source is local.
public final class RawIPSender: Sendable {
    public let fd4: Int32
    public let fd6: Int32

    public init(ipv6: Bool = false) throws {
        // IPPROTO_RAW implies IP_HDRINCL (and IPV6_HDRINCL for AF_INET6).
        fd4 = socket(AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_RAW))
        guard fd4 >= 0 else { throw SystemError("socket(AF_INET, SOCK_RAW)", hint: "needs CAP_NET_RAW") }
        fd6 = !ipv6 ? -1 : socket(AF_INET6, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_RAW))
        guard !ipv6 || fd6 >= 0 else {
            close(fd4)
            throw SystemError("socket(AF_INET6, SOCK_RAW)", hint: "needs CAP_NET_RAW")
        }
    }

    deinit {
        close(fd4)
        if fd6 >= 0 { close(fd6) }
    }

    /// Sends an IPv4 packet to the destination in its own header. Returns errno on failure.
    @discardableResult
    public func sendIPv4(_ packet: UnsafeRawBufferPointer) -> Int32 {
        guard packet.count >= 20 else { return EINVAL }
        let destination = SocketAddress(.v4(IPv4Address(packet.be32(16))), port: 0)
        let sent = destination.withSockaddr { address, length in
            retryingOnInterrupt { sendto(fd4, packet.baseAddress, packet.count, 0, address, length) }
        }
        return sent < 0 ? errno : 0
    }

    /// Sends an IPv6 packet to the destination in its own header (used to hand inner IPv6 packets to
    /// the local stack). Returns errno on failure.
    @discardableResult
    public func sendIPv6(_ packet: UnsafeRawBufferPointer) -> Int32 {
        guard fd6 >= 0 else { return EBADF }
        guard packet.count >= 40 else { return EINVAL }
        let destination = SocketAddress(.v6(IPv6Address(high: packet.be64(24), low: packet.be64(32))), port: 0)
        let sent = destination.withSockaddr { address, length in
            retryingOnInterrupt { sendto(fd6, packet.baseAddress, packet.count, 0, address, length) }
        }
        return sent < 0 ? errno : 0
    }

}

/// Forwarded packets of one NFQUEUE batch, sent with one sendmmsg before the batch's verdicts go
/// back to the kernel. It keeps pointers, not copies: NetfilterQueue leaves every packet of a batch
/// in its own receive slot until then.
public struct ForwardBatch {
    public static let capacity = NetfilterQueue.maximumBatch
    private var buffers = [UnsafeMutableRawPointer?](repeating: nil, count: capacity)
    private var lengths = [Int](repeating: 0, count: capacity)
    private var destinations = [sockaddr_in](repeating: sockaddr_in(), count: capacity)
    public private(set) var count = 0

    public init() {}

    /// Queues a packet (valid until `flush`); false when the batch is full (the caller sends it alone).
    public mutating func append(_ packet: UnsafeRawBufferPointer) -> Bool {
        guard count < Self.capacity, packet.count >= 20 else { return false }
        buffers[count] = UnsafeMutableRawPointer(mutating: packet.baseAddress!)
        lengths[count] = packet.count
        destinations[count].sin_family = sa_family_t(AF_INET)
        destinations[count].sin_addr.s_addr = packet.be32(16).bigEndian
        count += 1
        return true
    }

    /// Sends everything queued; returns the positions (in append order) of packets that could not be sent.
    @discardableResult
    public mutating func flush(_ sender: RawIPSender) -> [Int] {
        var sent = 0
        var failed: [Int] = []
        while sent < count {
            let result = buffers.withUnsafeMutableBufferPointer { buffers in
                lengths.withUnsafeBufferPointer { lengths in
                    destinations.withUnsafeBufferPointer { destinations in
                        proxyside_send_batch_ipv4(
                            sender.fd4, destinations.baseAddress! + sent, buffers.baseAddress! + sent,
                            lengths.baseAddress! + sent, UInt32(count - sent))
                    }
                }
            }
            if result == -EINTR { continue }
            // A packet the kernel refuses (no route, say) stops sendmmsg: count it and go on after it.
            if result <= 0 { failed.append(sent); sent += 1; continue }
            sent += Int(result)
        }
        count = 0
        return failed
    }
}
