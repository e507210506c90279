import BindkeeperCore
import CLinuxShims
import Glibc
import LinuxSys

/// The client side of bindkeeper's framed protocol.
public final class BindkeeperClient {
    public struct Bound {
        public var key: String
        public var url: String
        /// Close-on-exec; the caller owns it.
        public var fd: Int32
        public var warning: String?
    }

    public struct ReplyError: Error, CustomStringConvertible {
        public var code: Int
        public var message: String
        public var description: String { "bindkeeper: \(message) (\(code))" }
    }

    private let fd: Int32
    private var nextID: Int64 = 1
    private var reader = FrameReader()
    private var received: [Int32] = []
    /// How long one request may wait for its answer: a broker that stopped answering (stuck, or a
    /// socket kept in a store with nobody serving it) fails the caller instead of hanging it.
    public let timeoutSeconds: Int

    public init(path: String, timeoutSeconds: Int = 30) throws {
        self.timeoutSeconds = timeoutSeconds
        do {
            fd = try UnixAddress.connect(path)
        } catch let error as SystemError {
            throw SystemError(
                error.call, errno: error.errno,
                hint: "is bindkeeper serving \(path)? (bindkeeper serve --socket \(path))")
        }
    }

    /// Waits until the socket is ready for `events`, at most until `deadline`.
    private func wait(for events: Int32, until deadline: UInt64) throws {
        guard Descriptors.waitReady(fd, events: events, until: deadline) else {
            throw ReplyError(code: -1, message: "the broker did not answer within \(timeoutSeconds) s")
        }
    }

    deinit { close(fd) }

    /// Binds (or finds) every socket, all or none, in batches of at most Wire.maximumBatch. On any
    /// error every fd received so far is closed: the caller gets all of them or none.
    public func bind(_ requests: [BindRequest]) throws -> [Bound] {
        var bound: [Bound] = []
        do {
            for batch in Self.batches(requests) {
                let (result, fds) = try call("bind", Reply.Bind.self, binds: batch)
                let sockets = result.sockets
                guard sockets.count == fds.count else {
                    for fd in fds { close(fd) }
                    throw ReplyError(
                        code: -1, message: "reply lists \(sockets.count) sockets but carried \(fds.count) fds")
                }
                for (socket, fd) in zip(sockets, fds) {
                    bound.append(Bound(key: socket.key, url: socket.url, fd: fd, warning: socket.warning))
                }
            }
        } catch {
            for socket in bound { close(socket.fd) }
            throw error
        }
        return bound
    }

    /// Requests in batches of at most Wire.maximumBatch, a group alone in its own: one reply carries
    /// at most that many fds, and a group may be that large.
    static func batches(_ requests: [BindRequest]) -> [[BindRequest]] {
        var batches: [[BindRequest]] = []
        var current: [BindRequest] = []
        for request in requests {
            if request.shards != nil || current.count == Wire.maximumBatch {
                if !current.isEmpty { batches.append(current) }
                current = []
            }
            if request.shards != nil {
                batches.append([request])
            } else {
                current.append(request)
            }
        }
        if !current.isEmpty { batches.append(current) }
        return batches
    }

    /// Has the broker close its sockets for `requests` (all or none); the keys it released.
    public func release(_ requests: [BindRequest]) throws -> [String] {
        try call("release", Reply.Release.self, binds: requests).result.released
    }

    /// Steers the group's new connections to `served` (a group's URL in one generation), or a
    /// `percent` share of them to `candidate` (another generation of it); the members steered.
    public func steer(served: BindRequest, candidate: BindRequest? = nil, percent: Int = 0) throws -> [String] {
        try call(
            "steer", Reply.Steer.self, binds: [served] + (candidate.map { [$0] } ?? []),
            percent: candidate == nil ? nil : percent
        ).result.steered
    }

    public func list() throws -> Reply.Listing { try call("list", Reply.Listing.self).result }

    public func reexec() throws -> Reply.Reexec { try call("reexec", Reply.Reexec.self).result }

    /// One request and its reply. Fds that arrive with anything but a successful reply are closed.
    private func call<Result: Codable>(
        _ method: String, _ type: Result.Type, binds: [BindRequest] = [], percent: Int? = nil
    ) throws -> (result: Result, fds: [Int32]) {
        defer {
            for fd in received { close(fd) }
            received = []
        }
        let id = nextID
        nextID += 1
        let message = Wire.framed.request(id: .number(id), method: method, binds: binds, percent: percent)
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeoutSeconds) * 1_000_000_000
        var offset = 0
        while offset < message.count {
            try wait(for: POLLOUT, until: deadline)
            offset += try FDPassing.send(fd, message[offset...], fds: [], flags: Int32(MSG_DONTWAIT))
        }
        while true {
            if let bytes = try reader.next() {
                let fds = received
                received = []
                let reply: Wire.Envelope<Result>
                do { reply = try JSONText.decode(Wire.Envelope<Result>.self, from: bytes) } catch {
                    for fd in fds { close(fd) }
                    throw ReplyError(code: -1, message: "unreadable reply: \(error)")
                }
                if let error = reply.error {
                    for fd in fds { close(fd) }
                    throw ReplyError(code: error.code, message: error.message)
                }
                guard let result = reply.result else {
                    for fd in fds { close(fd) }
                    throw ReplyError(code: -1, message: "a reply with neither result nor error")
                }
                return (result, fds)
            }
            try wait(for: POLLIN, until: deadline)
            let (bytes, fds) = try FDPassing.receive(fd)
            received += fds
            // A reply never carries more fds than one batch of sockets: anything beyond is not ours to keep.
            guard received.count <= Wire.maximumBatch else {
                throw ReplyError(code: -1, message: "the broker sent \(received.count) fds")
            }
            guard !bytes.isEmpty else { throw ReplyError(code: -1, message: "the broker closed the connection") }
            reader.append(bytes)
        }
    }
}
