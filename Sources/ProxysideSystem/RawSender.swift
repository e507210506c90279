import Glibc
import ProxysideCore

/// Sends complete IP packets (header included) as they are, so a forwarded GUE packet keeps its
/// ports, TTL and our chosen source address. The kernel would drop such a packet if it merely
/// routed it back out, because its source is local.
public final class RawIPSender: @unchecked Sendable {
    public let fd4: Int32
    public private(set) var fd6: Int32 = -1

    public init(ipv6: Bool = false) throws {
        // IPPROTO_RAW implies IP_HDRINCL (and IPV6_HDRINCL for AF_INET6).
        fd4 = socket(AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_RAW))
        guard fd4 >= 0 else { throw SystemError("socket(AF_INET, SOCK_RAW)", hint: "needs CAP_NET_RAW") }
        if ipv6 {
            fd6 = socket(AF_INET6, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_RAW))
            guard fd6 >= 0 else { close(fd4); throw SystemError("socket(AF_INET6, SOCK_RAW)", hint: "needs CAP_NET_RAW") }
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
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = packet.be32(16).bigEndian
        let sent = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { target in
                retryingOnInterrupt { sendto(fd4, packet.baseAddress, packet.count, 0, target, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        return sent < 0 ? errno : 0
    }

    /// Sends an IPv6 packet to the destination in its own header (used to hand inner IPv6 packets to
    /// the local stack). Returns errno on failure.
    @discardableResult
    public func sendIPv6(_ packet: UnsafeRawBufferPointer) -> Int32 {
        guard fd6 >= 0 else { return EBADF }
        guard packet.count >= 40 else { return EINVAL }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        withUnsafeMutableBytes(of: &address.sin6_addr) { target in
            for index in 0..<16 { target[index] = packet[24 + index] }
        }
        let sent = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { target in
                retryingOnInterrupt { sendto(fd6, packet.baseAddress, packet.count, 0, target, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
        return sent < 0 ? errno : 0
    }
}
