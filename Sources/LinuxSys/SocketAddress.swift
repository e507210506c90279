import Glibc
import NetTypes

/// An IP socket address (sockaddr_in or sockaddr_in6), the one form every socket here is bound,
/// connected or sent to with, and read back from getsockname(2).
public struct SocketAddress: Sendable {
    private var storage = sockaddr_storage()
    public private(set) var length: socklen_t

    public init(_ address: IPAddress, port: UInt16, scopeID: UInt32 = 0) {
        switch address {
        case .v4(let v4):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr.s_addr = v4.value.bigEndian
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutableBytes(of: &storage) { target in withUnsafeBytes(of: sin) { target.copyMemory(from: $0) } }
        case .v6(let v6):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_scope_id = scopeID
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { target in
                target.storeBytes(of: v6.high.bigEndian, toByteOffset: 0, as: UInt64.self)
                target.storeBytes(of: v6.low.bigEndian, toByteOffset: 8, as: UInt64.self)
            }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            withUnsafeMutableBytes(of: &storage) { target in withUnsafeBytes(of: sin6) { target.copyMemory(from: $0) } }
        }
    }

    public init(_ endpoint: Endpoint) { self.init(endpoint.address, port: endpoint.port) }

    /// The address a socket is bound to; nil when it has none of an IP family.
    public static func local(of fd: Int32) -> SocketAddress? {
        var address = SocketAddress(.v4(IPv4Address(0)), port: 0)
        address.length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &address.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &address.length) }
        }
        return result == 0 && address.endpoint != nil ? address : nil
    }

    /// The address and port; nil for a family other than IPv4 and IPv6 or a short length.
    public var endpoint: Endpoint? {
        withUnsafeBytes(of: storage) { bytes in
            switch Int32(storage.ss_family) {
            case AF_INET where Int(length) >= MemoryLayout<sockaddr_in>.size:
                let sin = bytes.load(as: sockaddr_in.self)
                return Endpoint(
                    .v4(IPv4Address(UInt32(bigEndian: sin.sin_addr.s_addr))), UInt16(bigEndian: sin.sin_port))
            case AF_INET6 where Int(length) >= MemoryLayout<sockaddr_in6>.size:
                let sin6 = bytes.load(as: sockaddr_in6.self)
                let address = withUnsafeBytes(of: sin6.sin6_addr) { IPv6Address(bytes: $0) }
                return Endpoint(.v6(address), UInt16(bigEndian: sin6.sin6_port))
            default:
                return nil
            }
        }
    }

    /// Calls `body` with the sockaddr and its length (bind, connect, sendto).
    public func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
    }
}

extension IPAddress {
    /// AF_INET or AF_INET6.
    public var family: Int32 {
        switch self {
        case .v4: AF_INET
        case .v6: AF_INET6
        }
    }
}

/// Whole writes on stream sockets.
public enum SocketIO {
    /// Writes all of `bytes` (MSG_NOSIGNAL); false on an error or a closed peer.
    public static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { buffer in
                retryingOnInterrupt {
                    send(fd, buffer.baseAddress! + offset, buffer.count - offset, Int32(MSG_NOSIGNAL))
                }
            }
            if sent <= 0 { return false }
            offset += sent
        }
        return true
    }
}
