import BindkeeperCore
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

    public init(path: String) throws {
        do {
            fd = try UnixAddress.connect(path)
        } catch let error as SystemError {
            throw SystemError(error.call, errno: error.errno, hint: "is bindkeeper serving \(path)? (bindkeeper serve --socket \(path))")
        }
    }

    deinit { close(fd) }

    /// Binds (or finds) every socket, all or none, in batches of at most Wire.maximumBatch. On any
    /// error every fd received so far is closed: the caller gets all of them or none.
    public func bind(_ requests: [BindRequest]) throws -> [Bound] {
        var bound: [Bound] = []
        do {
            var start = 0
            while start < requests.count {
                let batch = Array(requests[start..<min(requests.count, start + Wire.maximumBatch)])
                let (result, fds) = try call("bind", binds: batch)
                let sockets = (result["sockets"] as? [[String: Any]]) ?? []
                guard sockets.count == fds.count else {
                    for fd in fds { close(fd) }
                    throw ReplyError(code: -1, message: "reply lists \(sockets.count) sockets but carried \(fds.count) fds")
                }
                for (socket, fd) in zip(sockets, fds) {
                    bound.append(Bound(key: socket["key"] as? String ?? "", url: socket["url"] as? String ?? "", fd: fd, warning: socket["warning"] as? String))
                }
                start += batch.count
            }
        } catch {
            for socket in bound { close(socket.fd) }
            throw error
        }
        return bound
    }

    public func list() throws -> [String: Any] { try call("list").result }

    public func reexec() throws -> Int { (try call("reexec").result["pid"] as? Int) ?? 0 }

    /// One request and its reply. Fds that arrive with anything but a successful reply are closed.
    private func call(_ method: String, binds: [BindRequest] = []) throws -> (result: [String: Any], fds: [Int32]) {
        defer {
            for fd in received { close(fd) }
            received = []
        }
        let id = nextID
        nextID += 1
        let message = Wire.framed.request(id: .number(id), method: method, binds: binds)
        var offset = 0
        while offset < message.count {
            offset += try FDPassing.send(fd, message[offset...], fds: [])
        }
        while true {
            if let reply = try reader.next() {
                let fds = received
                received = []
                if let error = reply["error"] as? [String: Any] {
                    for fd in fds { close(fd) }
                    throw ReplyError(code: error["code"] as? Int ?? 0, message: error["message"] as? String ?? "error")
                }
                return ((reply["result"] as? [String: Any]) ?? [:], fds)
            }
            let (bytes, fds) = try FDPassing.receive(fd)
            received += fds
            // A reply never carries more fds than one batch of sockets: anything beyond is not ours to keep.
            guard received.count <= Wire.maximumBatch else { throw ReplyError(code: -1, message: "the broker sent \(received.count) fds") }
            guard !bytes.isEmpty else { throw ReplyError(code: -1, message: "the broker closed the connection") }
            reader.append(bytes)
        }
    }
}
