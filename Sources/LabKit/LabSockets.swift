import Glibc
import LinuxSys
import NetTypes

/// Socket helpers for the lab, the tests and the benchmarks (IPv4 and IPv6 TCP/UDP by address).
public enum LabSockets {
    static func makeSocket(_ address: IPAddress, _ type: __socket_type) throws -> Int32 {
        let fd = socket(address.family, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        return fd
    }

    /// Runs a setup call on `fd`; on failure closes it and throws, naming `what`.
    static func orClose(_ fd: Int32, _ what: @autoclosure () -> String, _ call: () -> Int32) throws {
        guard call() == 0 else {
            let error = SystemError(what())
            close(fd)
            throw error
        }
    }

    /// A connected TCP socket (blocking, with timeouts), optionally from a given local address and port.
    public static func connectTCP(
        to address: IPAddress, port: UInt16, from source: IPAddress? = nil, localPort: UInt16 = 0,
        timeoutSeconds: Int = 3
    ) throws -> Int32 {
        let fd = try makeSocket(address, SOCK_STREAM)
        SocketOptions.setTimeouts(fd, seconds: timeoutSeconds)
        if let source {
            SocketOptions.enable(fd, SOL_SOCKET, SO_REUSEADDR)
            try orClose(fd, "bind \(source):\(localPort)") {
                SocketAddress(source, port: localPort).withSockaddr { bind(fd, $0, $1) }
            }
        }
        try orClose(fd, "connect \(address):\(port)") {
            SocketAddress(address, port: port).withSockaddr { connect(fd, $0, $1) }
        }
        return fd
    }

    /// A listener; `reusePort` makes it one of an SO_REUSEPORT group, `device` binds it to that
    /// device (SO_BINDTODEVICE).
    public static func listenTCP(
        on address: IPAddress, port: UInt16, backlog: Int32 = 1024, reusePort: Bool = false, device: String? = nil
    ) throws -> Int32 {
        let fd = try makeSocket(address, SOCK_STREAM)
        SocketOptions.enable(fd, SOL_SOCKET, SO_REUSEADDR)
        // The VIP may not be configured yet when the service starts, as on a real proxy.
        SocketOptions.enable(fd, Int32(IPPROTO_IP), IP_FREEBIND)
        if reusePort { SocketOptions.enable(fd, SOL_SOCKET, SO_REUSEPORT) }
        if let device {
            try orClose(fd, "SO_BINDTODEVICE \(device)") {
                setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, device, socklen_t(device.utf8.count))
            }
        }
        try orClose(fd, "bind \(address):\(port)") {
            SocketAddress(address, port: port).withSockaddr { bind(fd, $0, $1) }
        }
        try orClose(fd, "listen \(address):\(port)") { listen(fd, backlog) }
        return fd
    }

    /// A UDP socket bound to address:port (port 0: any).
    public static func bindUDP(_ address: IPAddress, port: UInt16, receiveTimeoutSeconds: Int = 2) throws -> Int32 {
        let fd = try makeSocket(address, SOCK_DGRAM)
        SocketOptions.setTimeouts(fd, seconds: receiveTimeoutSeconds)
        SocketOptions.enable(fd, SOL_SOCKET, SO_REUSEADDR)
        try orClose(fd, "bind udp \(address):\(port)") {
            SocketAddress(address, port: port).withSockaddr { bind(fd, $0, $1) }
        }
        return fd
    }

    /// Reads exactly `count` bytes, or nil on EOF, error or timeout.
    public static func receiveExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let received = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, count - offset, 0) }
            if received <= 0 { return nil }
            offset += received
        }
        return out
    }
}
