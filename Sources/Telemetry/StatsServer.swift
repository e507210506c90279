import CLinuxShims
import Glibc
import LinuxSys
import NetTypes

/// Serves counters: Prometheus text over HTTP on an optional TCP address, and plain text to
/// anyone who connects to the control socket (`second-chance stats`). A control client may send
/// one request line first (`stats`, or a command such as `reexec`, answered by `command`); one
/// that sends nothing gets the counters.
///
/// `@unchecked Sendable`: `listeners` is filled in `init` and only read afterwards, by `serve` and
/// its control thread; the closures are `@Sendable`.
public final class StatsServer: @unchecked Sendable {
    public enum Format { case prometheus, text }
    /// Names of the listening sockets when they are handed over (fd store, re-exec).
    public static let metricsName = "metrics", controlName = "control"

    private var listeners: [(fd: Int32, isHTTP: Bool)] = []
    private let render: @Sendable (Format) -> String
    private let command: @Sendable (String) -> ControlReply?
    private let controlPath: String?

    /// Listens on `metrics` and `controlPath`, or takes the sockets named in `inherited` (from an
    /// earlier process) for them. `command` answers a request line other than `stats` (nil: unknown).
    public init(
        metrics: Endpoint?, controlPath: String?, inherited: [String: Int32] = [:],
        render: @escaping @Sendable (Format) -> String,
        command: @escaping @Sendable (String) -> ControlReply? = { _ in nil },
        releaseInherited: (String) -> Void = { _ in }
    ) throws {
        self.render = render
        self.command = command
        self.controlPath = controlPath
        var inherited = inherited
        // An inherited socket serves only what this configuration names: a metrics socket bound
        // elsewhere (the address changed) and a control socket whose path is gone (or holds
        // another socket's file, such as a dead one) are made anew,
        // once `releaseInherited` has had every other copy (the service manager's store) let go.
        for (name, fd) in inherited {
            let matches =
                name == Self.metricsName
                ? SocketAddress.local(of: fd)?.endpoint == metrics
                : controlPath.map { UnixSocketFile.isBound(fd, at: $0) ?? Self.isSocketFile($0) } == true
            guard !matches else { continue }
            close(fd)
            releaseInherited(name)
            inherited[name] = nil
            replaced.insert(name)
        }
        if let metrics {
            // The store's copy of a replaced socket goes when the service manager reads the removal,
            // a moment after it was sent: until then its port is taken.
            let patience = replaced.contains(Self.metricsName) ? 3 : 0
            listeners.append((try inherited[Self.metricsName] ?? Self.listenTCP(metrics, patience: patience), true))
        }
        if let controlPath {
            listeners.append((try inherited[Self.controlName] ?? Self.listenUnix(controlPath), false))
        }
        for fd in inherited.values where !listeners.contains(where: { $0.fd == fd }) { close(fd) }
        for listener in listeners { Descriptors.setCloseOnExec(listener.fd, true) }
    }

    deinit {
        for listener in listeners { close(listener.fd) }
        if let controlPath, !keepsControlPath { unlink(controlPath) }
    }

    /// Inherited sockets this server did not take as they were (they no longer matched the
    /// configuration), by name: the service manager's store must get the new ones.
    public private(set) var replaced: Set<String> = []

    /// The control socket is in the service manager's store: its path stays when this server
    /// ends, and clients connecting meanwhile wait for the next process instead of failing.
    public var keepsControlPath = false

    static func isSocketFile(_ path: String) -> Bool {
        var status = stat()
        return lstat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK
    }

    /// The listening sockets by name, for the fd store and a re-exec.
    public var descriptors: [(fd: Int32, name: String)] {
        listeners.map { ($0.fd, $0.isHTTP ? Self.metricsName : Self.controlName) }
    }

    /// A listening TCP socket on `endpoint`; while the address is in use, tried again every 50 ms
    /// for `patience` seconds.
    static func listenTCP(_ endpoint: Endpoint, patience: Int = 0) throws -> Int32 {
        let fd = socket(endpoint.address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(metrics)") }
        SocketOptions.enable(fd, SOL_SOCKET, SO_REUSEADDR)
        let deadline = MonotonicClock.nanoseconds() + UInt64(patience) * 1_000_000_000
        var bound = SocketAddress(endpoint).withSockaddr { bind(fd, $0, $1) }
        while bound != 0, errno == EADDRINUSE, MonotonicClock.nanoseconds() < deadline {
            usleep(50_000)
            bound = SocketAddress(endpoint).withSockaddr { bind(fd, $0, $1) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            let error = SystemError("bind metrics \(endpoint)")
            close(fd)
            throw error
        }
        return fd
    }

    /// A listening socket at `path`, which appears there only once it listens and has its mode
    /// (bound under a temporary name, then renamed over whatever was there): a client that finds
    /// the path is never refused.
    static func listenUnix(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(AF_UNIX)") }
        let staging = "\(path).\(getpid()).new"
        unlink(staging)
        do {
            try UnixAddress.bind(fd, staging)
            guard listen(fd, 16) == 0 else { throw SystemError("listen \(path)") }
            chmod(staging, 0o660)
            guard rename(staging, path) == 0 else { throw SystemError("rename \(staging) to \(path)") }
        } catch {
            unlink(staging)
            close(fd)
            throw error
        }
        return fd
    }

    /// Serves until `stop` is signalled. Each request is answered and closed; a slow client is cut
    /// off after a short receive timeout so it cannot hold the loop. The control socket has a
    /// thread of its own: a slow or hostile client of the metrics port (anyone who can reach it)
    /// holds up other scrapes at most, never `stats` or `reexec`.
    public func serve(stop: EventFD) {
        let metrics = listeners.filter(\.isHTTP), control = listeners.filter { !$0.isHTTP }
        guard !metrics.isEmpty, !control.isEmpty, let thread = try? WorkerThread({ self.serve(control, stop: stop) })
        else { return serve(listeners, stop: stop) }
        serve(metrics, stop: stop)
        thread.join()
    }

    private func serve(_ listeners: [(fd: Int32, isHTTP: Bool)], stop: EventFD) {
        var fds = listeners.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        fds.append(pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0))
        while true {
            guard (try? Syscall.poll(&fds, milliseconds: -1)) != nil else { return }
            if fds.last!.revents != 0 { return }
            for (index, listener) in listeners.enumerated() where fds[index].revents != 0 {
                // Close-on-exec: a connection open during a re-exec must end, not linger unanswered.
                let client = proxyside_accept_cloexec(listener.fd)
                guard client >= 0 else { continue }
                let then = answer(client, http: listener.isHTTP)
                close(client)
                then?()
            }
        }
    }

    /// Answers one client; returns what is to be done once its connection is closed.
    private func answer(_ client: Int32, http: Bool) -> (@Sendable () -> Void)? {
        var then: (@Sendable () -> Void)?
        SocketOptions.setTimeouts(client, seconds: 1)
        var body: String
        if http {
            var request = [UInt8](repeating: 0, count: 4096)
            let count = read(client, &request, request.count)
            let line =
                count > 0 ? String(decoding: request[0..<count], as: UTF8.self).prefix { $0 != "\r" && $0 != "\n" } : ""
            let parts = line.split(separator: " ")
            if parts.count >= 2, parts[0] == "GET", parts[1] == "/metrics" || parts[1] == "/" {
                let text = render(.prometheus)
                body =
                    """
                    HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \
                    \(text.utf8.count)\r\nConnection: close\r\n\r\n
                    """
                    + text
            } else {
                body = "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
            }
        } else {
            // One request line, if the client sends one before closing its side or waiting.
            var request = [UInt8](repeating: 0, count: 256)
            var descriptor = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
            let count = poll(&descriptor, 1, 1000) > 0 ? read(client, &request, request.count) : 0
            let line =
                count > 0 ? String(decoding: request[0..<count].prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self) : ""
            switch line {
            case "", "stats": body = render(.text)
            default:
                let reply = command(line)
                body = reply?.text ?? "error: unknown request '\(line.prefix(40))'\n"
                then = reply?.afterClose
            }
        }
        // What follows the reply (a re-exec) follows only a reply the client got: one that gave
        // up waiting was told nothing, and nothing is done.
        return SocketIO.sendAll(client, Array(body.utf8)) ? then : nil
    }
}

/// The answer to a control request, and what the server does once the connection is closed.
public struct ControlReply: Sendable {
    public var text: String
    public var afterClose: (@Sendable () -> Void)?

    public init(_ text: String, afterClose: (@Sendable () -> Void)? = nil) {
        self.text = text
        self.afterClose = afterClose
    }
}

/// Sends `request` to a control socket and reads everything it answers (the client side of
/// `second-chance stats` and `second-chance reexec`).
public func readControlSocket(_ path: String, request: String = "stats") throws -> String {
    let fd: Int32
    do { fd = try UnixAddress.connect(path) } catch {
        throw SystemError("connect \(path)", hint: "is second-chance running with this --control path?")
    }
    defer { close(fd) }
    // A daemon answers within its 1 s read timeout; a re-exec after its check of the new image,
    // which may take up to 300 s (second-chance's deadline without a watchdog).
    let seconds = request == "reexec" ? 310 : 15
    SocketOptions.setTimeouts(fd, seconds: seconds)
    _ = SocketIO.sendAll(fd, Array((request + "\n").utf8))
    shutdown(fd, Int32(SHUT_WR))
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = retryingOnInterrupt { read(fd, &chunk, chunk.count) }
        if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
            throw SystemError("read \(path)", hint: "no answer within \(seconds) s")
        }
        if count <= 0 { break }
        out += chunk[0..<count]
    }
    return String(decoding: out, as: UTF8.self)
}
