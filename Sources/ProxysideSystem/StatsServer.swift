import CLinuxShims
import Glibc
import ProxysideCore

/// Serves counters: Prometheus text over HTTP on an optional TCP address, and plain text to
/// anyone who connects to the control socket (`second-chance stats`).
public final class StatsServer: @unchecked Sendable {
    public enum Format { case prometheus, text }

    private var listeners: [(fd: Int32, isHTTP: Bool)] = []
    private let render: @Sendable (Format) -> String
    private let controlPath: String?

    public init(metrics: (address: IPv4Address, port: UInt16)?, controlPath: String?, render: @escaping @Sendable (Format) -> String) throws {
        self.render = render
        self.controlPath = controlPath
        if let metrics { listeners.append((try Self.listenTCP(metrics.address, metrics.port), true)) }
        if let controlPath { listeners.append((try Self.listenUnix(controlPath), false)) }
    }

    deinit {
        for listener in listeners { close(listener.fd) }
        if let controlPath { unlink(controlPath) }
    }

    static func listenTCP(_ address: IPv4Address, _ port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(metrics)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = address.value.bigEndian
        let bound = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 64) == 0 else {
            let error = SystemError("bind metrics \(address):\(port)")
            close(fd)
            throw error
        }
        return fd
    }

    static func listenUnix(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(AF_UNIX)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { close(fd); throw SystemError("control socket path too long", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { target in for (index, byte) in bytes.enumerated() { target[index] = byte } }
        unlink(path)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else {
            let error = SystemError("bind control socket \(path)")
            close(fd)
            throw error
        }
        chmod(path, 0o660)
        return fd
    }

    /// Serves until `stop` is signalled. Each request is answered and closed; a slow client is cut
    /// off after a short receive timeout so it cannot hold the loop.
    public func serve(stop: EventFD) {
        var fds = listeners.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        fds.append(pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0))
        while true {
            guard poll(&fds, nfds_t(fds.count), -1) >= 0 || errno == EINTR else { return }
            if fds.last!.revents != 0 { return }
            for (index, listener) in listeners.enumerated() where fds[index].revents != 0 {
                let client = accept(listener.fd, nil, nil)
                guard client >= 0 else { continue }
                answer(client, http: listener.isHTTP)
                close(client)
            }
        }
    }

    private func answer(_ client: Int32, http: Bool) {
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var body: String
        if http {
            var request = [UInt8](repeating: 0, count: 4096)
            let count = read(client, &request, request.count)
            let line = count > 0 ? String(decoding: request[0..<count], as: UTF8.self).prefix { $0 != "\r" && $0 != "\n" } : ""
            let parts = line.split(separator: " ")
            if parts.count >= 2, parts[0] == "GET", parts[1] == "/metrics" || parts[1] == "/" {
                let text = render(.prometheus)
                body = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(text.utf8.count)\r\nConnection: close\r\n\r\n" + text
            } else {
                body = "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
            }
        } else {
            body = render(.text)
        }
        var bytes = Array(body.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { write(client, $0.baseAddress! + offset, $0.count - offset) }
            if written <= 0 { return }
            offset += written
        }
    }
}

/// Reads everything a control socket says (the client side of `second-chance stats`).
public func readControlSocket(_ path: String) throws -> String {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemError("socket(AF_UNIX)") }
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw SystemError("control socket path too long", errno: ENAMETOOLONG) }
    withUnsafeMutableBytes(of: &address.sun_path) { target in for (index, byte) in bytes.enumerated() { target[index] = byte } }
    let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    guard connected == 0 else { throw SystemError("connect \(path)", hint: "is second-chance running with this --control path?") }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count <= 0 { break }
        out += chunk[0..<count]
    }
    return String(decoding: out, as: UTF8.self)
}
