import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import LinuxSys
import NetTypes
import TestSupport
import XCTest

/// bindkeeper under random interleavings of what its clients and its operator do: two grantees
/// (one of them never reading until told), root, binds inside and outside the grants, releases,
/// socket groups' generations bound, released and steered, bursts, re-execs and kill -9 with a
/// restart from the fd store. After every step: each descriptor
/// any client ever received is a listening socket bound to the key its reply named, inside that
/// client's grant, and still listening. The seed is printed; PROXYSIDE_SEED=N replays a run.
final class BindkeeperInterleavingTests: XCTestCase {
    var lab: BrokerLab!
    override func setUpWithError() throws { lab = try BrokerLab(testName) }
    override func tearDown() { lab?.tearDown() }

    /// One connection and what came over it.
    final class Connection {
        let uid: UInt32
        let ports: ClosedRange<UInt16>
        var fd: Int32 = -1
        var reader = FrameReader()
        /// Requests sent whose replies are not read yet: their methods, by id.
        var pending: [Int64: String] = [:]
        /// Descriptor batches received whose reply is not whole yet, oldest first: each came with
        /// the first byte of a successful bind's reply.
        var batches: [[Int32]] = []
        var nextID: Int64 = 1
        /// Every descriptor received, with the key its reply named.
        var received: [(fd: Int32, key: String)] = []
        init(uid: UInt32, ports: ClosedRange<UInt16>) { (self.uid, self.ports) = (uid, ports) }
    }

    static let grants: [(uid: UInt32, ports: ClosedRange<UInt16>)] = [(4242, 8000...8009), (4343, 8010...8019)]

    func testRandomInterleavingsNeverHandAClientASocketOutsideItsGrant() throws {
        var random = SeededGenerator.fromEnvironment(name: #function)
        let policy = try writeGrants()
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let arguments = ["--config", policy.path]
        let first = try lab.startBroker(arguments, environment: ["NOTIFY_SOCKET": manager.path])
        var broker = first.processIdentifier
        var restarted: [pid_t] = []
        defer {
            restarted.forEach {
                kill($0, SIGKILL); _ = Spawn.wait($0)
            }
        }
        let clients = [
            Connection(uid: 4242, ports: 8000...8009), Connection(uid: 4242, ports: 8000...8009),
            Connection(uid: 4343, ports: 8010...8019), Connection(uid: 0, ports: 0...UInt16.max),
        ]
        defer { for client in clients { client.received.forEach { close($0.fd) }; close(client.fd) } }
        for client in clients { try connect(client) }
        let slow = clients[0]
        var steps: [String] = []
        // A few ports, in both grants and outside them, so that binds and releases of one port by
        // different clients meet often.
        let ports: [UInt16] = [8000, 8001, 8002, 8010, 8011, 7999, 8020]
        // Socket groups, with a second generation and steering, on a port of each grant and one
        // outside them.
        let groupPorts: [UInt16] = [8003, 8012, 7998]
        for step in 0..<100 {
            // The broker's notifications (fd store entries) are read as a service manager would:
            // a full notify socket would block the broker.
            try manager.collect { _ in true }
            let client = clients[random.below(clients.count)]
            let port = ports[random.below(ports.count)]
            let url = try BindRequest.parse(url: "tcp://\(BrokerLab.address):\(port)").get()
            switch random.below(20) {
            case 16...19:
                steps.append(
                    try groupStep(client, port: groupPorts[random.below(groupPorts.count)], random.below(6), &random))
            case 0...4:
                steps.append("uid \(client.uid) binds \(port)")
                try request(client, "bind", [url], wait: client !== slow)
                if client === slow { waitUntilListed(url.key) }
            case 5...7:
                steps.append("uid \(client.uid) releases \(port)")
                try request(client, "release", [url], wait: client !== slow)
            case 8, 9:
                // More than the broker's socket buffer holds: its replies, and the descriptors of
                // any bind behind them, wait in the broker's outbox.
                steps.append("the slow reader sends 300 lists")
                for _ in 0..<300 { try request(slow, "list", [], wait: false) }
            case 10, 11:
                steps.append("the slow reader reads")
                try drain(slow)
            case 13, 14:
                steps.append(
                    try race(clients, mine: 8000 + UInt16(random.below(3)), roots: 7990 + UInt16(random.below(5))))
            case 12:
                // Requests made meanwhile wait for the new image: the connections are carried.
                steps.append("re-exec")
                kill(broker, SIGUSR1)
            default:
                steps.append("kill -9 and a restart from the fd store")
                kill(broker, SIGKILL)
                if broker == first.processIdentifier { first.waitUntilExit() } else { _ = Spawn.wait(broker) }
                broker = try lab.restartBroker(manager, arguments)
                restarted.append(broker)
                try lab.waitForBroker()
                for client in clients { try connect(client) }
            }
            let context = "after \(steps.suffix(6).joined(separator: "; ")) \(random.report)"
            try check(clients, context)
        }
        try drain(slow)
        try check(clients, "at the end \(random.report)")
        XCTAssertGreaterThan(clients.map(\.received.count).reduce(0, +), 0, "some binds were granted")
    }

    /// The policy: each of `grants` its ports on the lab's address; anyone may connect.
    func writeGrants() throws -> URL {
        let policy = lab.directory.appendingPathComponent("policy.json")
        let rules = Self.grants.map {
            let range = "\($0.ports.lowerBound)-\($0.ports.upperBound)"
            return #"{"uid":\#($0.uid),"binds":["tcp://\#(BrokerLab.address):\#(range)"]}"#
        }
        try #"{"control":{"mode":"0666"},"allow":[\#(rules.joined(separator: ","))]}"#.write(
            to: policy, atomically: true, encoding: .utf8)
        return policy
    }

    /// One request on a group: a generation bound or released, or the group steered to its served
    /// generation alone or with a share to the other.
    func groupStep(_ client: Connection, port: UInt16, _ action: Int, _ random: inout SeededGenerator) throws
        -> String
    {
        let group = try BindRequest.parse(url: "tcp://\(BrokerLab.address):\(port)?shards=2").get()
        let generation = UInt8(random.below(2))
        let named = group.inGeneration(generation), other = group.inGeneration(1 - generation)
        switch action {
        case 0, 1:
            try request(client, "bind", [named], wait: true)
            return "uid \(client.uid) binds group \(port) generation \(generation)"
        case 2:
            try request(client, "release", [named], wait: true)
            return "uid \(client.uid) releases group \(port) generation \(generation)"
        default:
            let percent = random.below(2) == 0 ? nil : 1 + random.below(100)
            try request(client, "steer", percent == nil ? [named] : [named, other], percent: percent, wait: true)
            return "uid \(client.uid) steers group \(port) to \(generation), \(percent ?? 0) % to the other"
        }
    }

    /// The race a grantee can run on its own: a bind answered behind a backlog of replies, its
    /// socket released from another connection, root binding a socket of its own meanwhile; then
    /// the reply is read.
    func race(_ clients: [Connection], mine port: UInt16, roots rootsPort: UInt16) throws -> String {
        let mine = try BindRequest.parse(url: "tcp://\(BrokerLab.address):\(port)").get()
        let roots = try BindRequest.parse(url: "tcp://\(BrokerLab.address):\(rootsPort)").get()
        let (slow, other, root) = (clients[0], clients[1], clients[3])
        for _ in 0..<300 { try request(slow, "list", [], wait: false) }
        try request(slow, "bind", [mine], wait: false)
        waitUntilListed(mine.key)
        try request(other, "release", [mine], wait: true)
        try request(root, "bind", [roots], wait: true)
        try drain(slow)
        return "race: \(port) released behind a backlog, root binds \(rootsPort)"
    }

    /// The slow reader's bind is answered once the broker reaches it, behind its other requests:
    /// what follows should meet the socket made (or its reply waiting). Bounded; a refused bind
    /// never shows.
    func waitUntilListed(_ key: String) {
        for _ in 0..<40 {
            if (try? lab.client().list().sockets.contains { $0.key == key }) == true { return }
            usleep(50_000)
        }
    }

    // MARK: The clients' side

    func connect(_ client: Connection) throws {
        if client.fd >= 0 { close(client.fd) }
        client.fd =
            client.uid == 0
            ? try UnixAddress.connect(lab.socketPath) : try lab.connection(uid: client.uid, gid: client.uid)
        SocketOptions.setTimeouts(client.fd, seconds: 5)
        client.reader = FrameReader()
        client.pending = [:]
        client.batches.forEach { $0.forEach { close($0) } }
        client.batches = []
    }

    func request(_ client: Connection, _ method: String, _ binds: [BindRequest], percent: Int? = nil, wait: Bool)
        throws
    {
        let id = client.nextID
        client.nextID += 1
        client.pending[id] = method
        let message = Wire.framed.request(id: .number(id), method: method, binds: binds, percent: percent)
        guard SocketIO.sendAll(client.fd, message) else {
            return try connect(client)  // closed by the broker (a restart, a cut-off): a new connection
        }
        if wait { try drain(client) }
    }

    /// Reads every pending reply. Each successful bind's reply names its keys, and its descriptors
    /// came with its first byte: the oldest batch not yet paired.
    func drain(_ client: Connection) throws {
        while !client.pending.isEmpty {
            if let body = try client.reader.next() {
                let reply = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
                let method = client.pending.removeValue(forKey: (reply["id"] as? NSNumber)?.int64Value ?? -1)
                guard method == "bind" else { continue }
                let keys = ((reply["result"] as? [String: Any])?["sockets"] as? [[String: Any]])?.compactMap {
                    $0["key"] as? String
                }
                guard let keys, !keys.isEmpty else { continue }
                let batch = client.batches.isEmpty ? [] : client.batches.removeFirst()
                XCTAssertEqual(batch.count, keys.count, "a bind's reply and its descriptors")
                for (fd, key) in zip(batch, keys) { client.received.append((fd, key)) }
                batch.dropFirst(keys.count).forEach { close($0) }
                continue
            }
            guard let (bytes, fds) = try? FDPassing.receive(client.fd), !bytes.isEmpty else {
                return try connect(client)  // the broker closed it: what was pending is gone with it
            }
            if !fds.isEmpty { client.batches.append(fds) }
            client.reader.append(bytes)
        }
    }

    func check(_ clients: [Connection], _ context: String) throws {
        for client in clients {
            for (fd, key) in client.received {
                // A group member's key is its address's, then its generation and member.
                let address = key.prefix { $0 != "~" && $0 != "#" }
                let request = try BindRequest.parse(url: String(address)).get()
                let bound = SocketAddress.local(of: fd)?.endpoint
                XCTAssertEqual(
                    bound?.port, request.port, "uid \(client.uid) holds a socket of another key than \(key) \(context)")
                XCTAssertEqual(bound.map { "\($0.address)" }, request.address, "\(key) \(context)")
                XCTAssertTrue(client.ports.contains(request.port), "uid \(client.uid) got \(key) \(context)")
                XCTAssertTrue(isListening(fd), "a socket uid \(client.uid) holds stopped listening: \(key) \(context)")
            }
        }
    }
}
