import CLinuxShims
import Foundation
import Glibc
import LinuxSys
import Logging
import Synchronization

// The broker: clients.
extension Broker {
    func acceptClients(from listener: Int32? = nil) {
        while clients.count < options.maximumClients {
            let fd = accept(listener ?? control, nil, nil)
            guard fd >= 0 else {
                if errno == EMFILE || errno == ENFILE {
                    acceptPausedUntil = MonotonicClock.nanoseconds() + 100_000_000
                    logClientEvent("accept: no descriptor left; new clients wait")
                }
                return
            }
            Descriptors.setCloseOnExec(fd, true)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            let client = Client(fd: fd)
            guard clientsPerUser[client.peer.uid, default: 0] < options.maximumClientsPerUser else {
                statistics.clientsOverLimit += 1
                logClientEvent(
                    """
                    uid \(client.peer.uid) holds \(options.maximumClientsPerUser) connections \
                    (--max-clients-per-user); refused one
                    """
                )
                close(fd)
                continue
            }
            register(client)
            statistics.clientsAccepted += 1
        }
    }

    func register(_ client: Client) {
        clients[client.fd] = client
        clientsPerUser[client.peer.uid, default: 0] += 1
    }

    /// Logs a line a client caused (a bad request, a refusal, a cut-off) within the broker's
    /// budget for such lines; the statistics count every event whether logged or not.
    func logClientEvent(_ message: String) {
        guard let heldBack = clientLogBudget.admit(now: MonotonicClock.nanoseconds()) else { return }
        logger.info("\(message)\(heldBack > 0 ? " (\(heldBack) such lines not logged before this one)" : "")")
    }

    func readFrom(_ client: Client) {
        let count = read(client.fd, &readBuffer, readBuffer.count)
        if count < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            drop(client, "read: \(String(cString: strerror(errno)))")
            return
        }
        if count == 0 {
            if client.reader.bufferedBytes > 0 && !client.backlogged {
                statistics.incompleteAtEOF += 1
                logClientEvent(
                    """
                    client pid \(client.peer.pid) closed in the middle of a message (\(client.reader.bufferedBytes) \
                    bytes)
                    """
                )
            }
            flush(client)
            drop(client, nil)
            return
        }
        client.reader.append(readBuffer[0..<count])
        serveRequests(client)
    }

    /// Answers the client's buffered requests, `requestsPerTurn` at most; with more left it is
    /// backlogged: served again next turn, and not read from until it is not.
    func serveRequests(_ client: Client) {
        var served = 0
        while !client.closing, served < Self.requestsPerTurn, let next = client.reader.next() {
            served += 1
            switch next {
            case .request(let request):
                client.lastRequest = MonotonicClock.nanoseconds()
                handle(request, from: client)
            case .failure(let failure, let fatal):
                statistics.badRequests += 1
                logClientEvent("client pid \(client.peer.pid): \(failure.error.message)")
                enqueue(failure.wire.error(id: failure.id, failure.error), fds: [], to: client)
                if fatal { client.closing = true }
            }
        }
        client.backlogged = !client.closing && served == Self.requestsPerTurn
        // Only the rest of a message the client has not finished sending can stall.
        client.incompleteSince =
            client.reader.bufferedBytes > 0 && !client.backlogged
            ? (client.incompleteSince ?? MonotonicClock.nanoseconds()) : nil
        flush(client)  // drops a closing client once its last reply is out
    }

    func cutOffStalledClients() {
        let now = MonotonicClock.nanoseconds()
        for client in clients.values {
            if let since = client.incompleteSince, now &- since > options.stalledMessageSeconds * 1_000_000_000 {
                statistics.clientsCutOff += 1
                drop(
                    client,
                    """
                    client pid \(client.peer.pid) sent an incomplete message for \(options.stalledMessageSeconds) s; \
                    cut off
                    """
                )
            } else if client.outbox.isEmpty, now &- client.lastRequest > options.idleSeconds * 1_000_000_000 {
                statistics.clientsIdle += 1
                drop(client, nil)
                logClientEvent(
                    """
                    client pid \(client.peer.pid) uid \(client.peer.uid) sent no request for \(options.idleSeconds) \
                    s; cut off
                    """
                )
            }
        }
    }

    /// What one descriptor held in an outbox weighs against --max-unread (a client that never reads
    /// its replies may hold about 500 sockets' duplicates, not the process's every descriptor).
    static let descriptorWeight = 2048

    /// Queues a reply. The reply takes duplicates of `fds` (the broker's own stay its own); when
    /// the process has no descriptor left for them, the client gets `error` instead.
    func enqueue(_ bytes: [UInt8], fds: [Int32] = [], to client: Client, orError error: () -> [UInt8]? = { nil }) {
        var copies: [Int32] = []
        for fd in fds {
            guard let copy = Descriptors.duplicate(fd) else {
                copies.forEach { close($0) }
                statistics.bindErrors += 1
                logClientEvent("client pid \(client.peer.pid): no descriptor left to hand a socket over")
                if let error = error() { enqueue(error, to: client) }
                return
            }
            copies.append(copy)
        }
        client.outbox.append((bytes, 0, copies))
        client.unread += bytes.count + copies.count * Self.descriptorWeight
        if client.unread > options.maximumUnreadReplies {
            statistics.clientsCutOff += 1
            discardOutbox(client)
            client.closing = true
            logClientEvent("client pid \(client.peer.pid) does not read its replies; cut off")
        }
    }

    /// Sends what the client's outbox holds, as far as its socket takes it now.
    func flush(_ client: Client) {
        while let first = client.outbox.first {
            let sent: Int
            do {
                sent = try FDPassing.send(
                    client.fd, first.bytes[first.offset...], fds: first.offset == 0 ? first.fds : [],
                    flags: Int32(MSG_DONTWAIT))
            } catch {
                drop(client, nil)
                return
            }
            if sent == 0 { return }
            if first.offset == 0 {
                // The descriptors went with the first byte: the client has them now.
                first.fds.forEach { close($0) }
                client.unread -= first.fds.count * Self.descriptorWeight
                client.outbox[0].fds = []
            }
            client.unread -= sent
            if first.offset + sent == first.bytes.count {
                client.outbox.removeFirst()
            } else {
                client.outbox[0].offset += sent
            }
        }
        if client.closing { drop(client, nil) }
    }

    func discardOutbox(_ client: Client) {
        for reply in client.outbox { reply.fds.forEach { close($0) } }
        client.outbox.removeAll()
        client.unread = 0
    }

    func drop(_ client: Client, _ reason: String?) {
        if let reason { logClientEvent(reason) }
        guard clients.removeValue(forKey: client.fd) != nil else { return }
        if let count = clientsPerUser[client.peer.uid] { clientsPerUser[client.peer.uid] = count > 1 ? count - 1 : nil }
        discardOutbox(client)
        close(client.fd)
    }
}
