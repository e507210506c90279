import BindkeeperCore
import CLinuxShims
import Foundation
import Glibc
import LinuxSys
import Logging
import NetTypes
import Synchronization

// The broker: requests.
extension Broker {
    func handle(_ request: Wire.Request, from client: Client) {
        let wire = request.wire
        switch request.method {
        case .bind(let binds):
            statistics.binds += binds.count
            // multibinder's clients take one socket a bind; a group's other members would queue
            // connections nobody accepts.
            if wire == .multibinder, binds.contains(where: { $0.shards != nil || $0.member != nil }) {
                statistics.badRequests += 1
                enqueue(
                    wire.error(id: request.id, .invalidParams("shards: the framed protocol's")), fds: [], to: client)
                return
            }
            switch bind(binds, peer: client.peer) {
            case .success(let entries):
                for key in entries { sockets[key]!.handedOut += 1 }
                let result = Reply.Bind(
                    sockets: entries.map { key in
                        let entry = sockets[key]!
                        return .init(
                            key: key, url: entry.request.url, backlog: entry.backlog, warning: entry.backlog?.warning)
                    })
                enqueue(
                    wire.result(id: request.id, result), fds: entries.map { sockets[$0]!.fd }, to: client,
                    orError: { wire.error(id: request.id, .bindFailed("the broker has no descriptor left")) })
            case .failure(let error):
                statistics.bindErrors += 1
                logClientEvent("client pid \(client.peer.pid) uid \(client.peer.uid): \(error.message)")
                enqueue(wire.error(id: request.id, error), fds: [], to: client)
            }
        case .release(let releases):
            answer(request, release(releases, peer: client.peer).map { Reply.Release(released: $0) }, to: client)
        case .steer(let steering):
            answer(request, steer(steering, peer: client.peer).map { Reply.Steer(steered: $0) }, to: client)
        case .list:
            enqueue(wire.result(id: request.id, listing(for: client.peer)), fds: [], to: client)
        case .reexec:
            guard client.peer.uid == 0 || client.peer.uid == options.policy.brokerUID else {
                statistics.denied += 1
                enqueue(
                    wire.error(
                        id: request.id, .permissionDenied("uid \(client.peer.uid) may not re-execute the broker")),
                    fds: [], to: client)
                return
            }
            // The installed file is run against the configuration it will read before the answer,
            // so the client learns of a bad upgrade or a bad policy while this process still serves.
            switch checkReplacement() {
            case .success(let line):
                enqueue(wire.result(id: request.id, Reply.Reexec(pid: getpid(), image: line)), fds: [], to: client)
                reexecRequested = true
            case .failure(let error):
                logger.info("re-exec refused: \(error); still serving")
                enqueue(wire.error(id: request.id, .reexecRefused("\(executable): \(error)")), fds: [], to: client)
            }
        }
    }

    /// A reply without descriptors: the result, or the error, which is logged.
    func answer(_ request: Wire.Request, _ outcome: Result<some Codable, Wire.RPCError>, to client: Client) {
        switch outcome {
        case .success(let result):
            enqueue(request.wire.result(id: request.id, result), fds: [], to: client)
        case .failure(let error):
            logClientEvent("client pid \(client.peer.pid) uid \(client.peer.uid): \(error.message)")
            enqueue(request.wire.error(id: request.id, error), fds: [], to: client)
        }
    }

    /// Why the policy does not let `peer` bind `request` as it stands (its owner and group
    /// resolved), counted; nil when it may.
    func refusal(of request: BindRequest, to peer: Peer) -> Wire.RPCError? {
        let owner: UInt32?, group: UInt32?
        do {
            owner = try request.owner.map { try Accounts.uid($0) }
            group = try request.group.map { try Accounts.gid($0) }
        } catch {
            return .bindFailed("\(error)")
        }
        guard
            let denial = options.policy.denial(
                uid: peer.uid, gid: peer.gid, request: request, owner: owner, group: group)
        else { return nil }
        statistics.denied += 1
        return .permissionDenied(denial)
    }

    /// All or none: every request is checked (policy, conflicts with the broker's sockets and
    /// within the batch, the user's socket limit) before any socket is made, and the new sockets
    /// are kept only once every one of them is made.
    func bind(_ asked: [BindRequest], peer: Peer) -> Result<[String], Wire.RPCError> {
        // The grant first: whoever may not bind an address learns nothing of its groups, and
        // costs the broker no expansion.
        for request in asked {
            if let refusal = refusal(of: request, to: peer) { return .failure(refusal) }
        }
        let requests: [BindRequest]
        switch expandGroups(asked) {
        case .success(let members): requests = members
        case .failure(let error):
            statistics.conflicts += 1
            return .failure(error)
        }
        for request in asked where request.shards != nil {
            // One generation of an address a batch: two new ones would be sized by nothing but each other.
            if asked.contains(where: { $0.addressKey == request.addressKey && $0.generation != request.generation }) {
                statistics.conflicts += 1
                return .failure(.conflict("\(request.addressKey): one generation of a group a request"))
            }
            let count = UInt16(Set(requests.filter { $0.baseKey == request.baseKey }.map(\.key)).count)
            if let problem = generationProblem(request, count: count, peer: peer) { return .failure(problem) }
        }
        var creating: Set<String> = []
        var inBatch: [String: BindRequest] = [:]
        for request in requests {
            if let refusal = refusal(of: request, to: peer) { return .failure(refusal) }
            if let existing = sockets[request.key], let conflict = existing.request.conflict(with: request) {
                statistics.conflicts += 1
                return .failure(.conflict(conflict))
            }
            // Two binds of one key must ask for the same socket: the first would make it, and the
            // second would get it with options it did not ask for.
            if let earlier = inBatch[request.key], let conflict = earlier.conflict(with: request) {
                statistics.conflicts += 1
                return .failure(.conflict("in one batch: \(conflict)"))
            }
            inBatch[request.key] = inBatch[request.key] ?? request
            if sockets[request.key] == nil { creating.insert(request.key) }
        }
        if peer.uid != 0, peer.uid != options.policy.brokerUID, !creating.isEmpty {
            let owned = sockets.values.filter { $0.creator == peer.uid }.count
            guard owned + creating.count <= options.maximumSocketsPerUser else {
                statistics.socketLimitRefusals += 1
                logClientEvent(
                    """
                    uid \(peer.uid) has \(owned) sockets (--max-sockets-per-user \(options.maximumSocketsPerUser)); \
                    refused \(creating.count) more
                    """
                )
                return .failure(
                    .limit(
                        """
                        uid \(peer.uid) may have the broker create at most \(options.maximumSocketsPerUser) sockets; \
                        it has \(owned)
                        """
                    ))
            }
        }
        let made: [Entry]
        switch make(requests, creator: peer.uid) {
        case .success(let entries): made = entries
        case .failure(let error): return .failure(error)
        }
        for entry in made {
            add(entry, stored: false)
            statistics.bindsCreated += 1
            if let warning = entry.backlog?.warning { logger.info("\(entry.request.key): \(warning)") }
            logger.info("bound \(entry.request.url)\(entry.backlog.map { " (backlog \($0.effective))" } ?? "")")
        }
        return .success(requests.map(\.key))
    }

    /// Each request as the sockets it asks for: a group's members (`shards` resolved), checked
    /// against what the broker holds at that address and port. A member is not asked for alone:
    /// a group is made, handed out and released whole.
    func expandGroups(_ requests: [BindRequest]) -> Result<[BindRequest], Wire.RPCError> {
        var expanded: [BindRequest] = []
        for request in requests {
            if request.member != nil {
                return .failure(.conflict("\(request.key): ask for the whole group (shards=N), not one member"))
            }
            // A plain request needs only to know whether a group is there (its first member).
            let members = request.shards == nil ? groupMembers(request.baseKey, upTo: 1) : groupMembers(request.baseKey)
            guard request.shards != nil else {
                if !members.isEmpty {
                    return .failure(.conflict("\(request.baseKey) is a group of \(members.count) sockets (shards)"))
                }
                expanded.append(request)
                continue
            }
            if sockets[request.addressKey] != nil {
                return .failure(.conflict("\(request.addressKey) exists as one socket, not a group"))
            }
            let count = memberCount(request, existing: members)
            if !members.isEmpty,
                members.count != Int(count) || members.last != BindRequest.memberKey(request.baseKey, count - 1)
            {
                return .failure(
                    .conflict(
                        """
                        \(request.baseKey) exists as a group of \(members.count) sockets, requested \(count) \
                        (a group is resized, or made again whole, only after its release)
                        """))
            }
            guard expanded.count + Int(count) <= Wire.maximumBatch else {
                return .failure(.limit("one reply hands out at most \(Wire.maximumBatch) sockets"))
            }
            expanded += request.members(count: count)
        }
        return .success(expanded)
    }

    /// How many members a group request stands for: its number, or for `auto` the group that
    /// exists (whatever the CPUs online now) or one member per online CPU.
    func memberCount(_ request: BindRequest, existing members: [String]) -> UInt16 {
        switch request.shards {
        case .count(let number): number
        case .auto where !members.isEmpty:
            sockets[members[0]].flatMap { entry in
                if case .count(let number) = entry.request.shards { number } else { nil }
            } ?? UInt16(members.count)
        // A new generation is as large as the one beside it.
        case .auto where otherGeneration(of: request) != nil:
            otherGeneration(of: request).map { groupMembers($0.request.baseKey).count }.map(UInt16.init) ?? 1
        case .auto, nil: SocketGroupSteering.onlineCPUs()
        }
    }

    /// The owners of the groups the broker holds (their first members' files' owners).
    func groupOwnersHeld() -> Set<uid_t> {
        var owners: Set<uid_t> = []
        for entry in sockets.values where entry.request.member == 0 {
            var status = stat()
            if fstat(entry.fd, &status) == 0 { owners.insert(status.st_uid) }
        }
        return owners
    }

    /// The keys of the group's members at `baseKey` that the broker holds, in member order: a
    /// probe of each possible member, whatever the number of sockets the broker holds.
    func groupMembers(_ baseKey: String, upTo count: UInt16 = BindRequest.maximumShards) -> [String] {
        (0..<count).lazy.map { BindRequest.memberKey(baseKey, $0) }.filter { self.sockets[$0] != nil }
    }

    /// Makes the sockets `requests` name that the broker does not hold yet, all or none; a new
    /// group's members are steered once all of them listen.
    func make(_ requests: [BindRequest], creator: UInt32) -> Result<[Entry], Wire.RPCError> {
        var made: [Entry] = []
        func fail(_ error: Error) -> Result<[Entry], Wire.RPCError> {
            // A Unix socket made here leaves its path behind as a dead socket, inside the grant,
            // which the next bind of that path replaces (no unlink by name here: the client may
            // have swapped the path meanwhile).
            for entry in made { close(entry.fd) }
            forgetUnusedArrays()
            return .failure(.bindFailed("\(error)"))
        }
        var groupOwners: [String: uid_t] = [:]
        for request in requests
        where sockets[request.key] == nil && !made.contains(where: { $0.request.key == request.key }) {
            let report = backlogReport(for: request)
            // A new group's own owner (see OwnedSocket.open), the same for all its members and
            // generations: one SO_REUSEPORT group takes only sockets of one owner.
            do {
                let owner = try request.member.map { _ in
                    try groupOwners[request.addressKey] ?? otherGeneration(of: request).map(owner(of:))
                        ?? SocketGroupSteering.freshOwner(taken: groupOwnersHeld().union(groupOwners.values))
                }
                if let owner { groupOwners[request.addressKey] = owner }
                let fd = try OwnedSocket.open(request, backlog: report?.requested ?? 0, groupOwner: owner)
                made.append(Entry(request: request, fd: fd, handedOut: 0, backlog: report, creator: creator))
            } catch {
                return fail(error)
            }
        }
        // A generation made beside another takes no connection until it is steered to.
        let groups = Dictionary(
            grouping: made.filter { $0.request.member != nil && otherGeneration(of: $0.request) == nil },
            by: \.request.baseKey)
        for members in groups.values {
            let generation = members[0].request.generation ?? 0
            var generations = Array(repeating: [Int32](), count: Int(BindRequest.maximumGeneration) + 1)
            generations[Int(generation)] = members.sorted { $0.request.member! < $1.request.member! }.map(\.fd)
            do {
                try steerGroup(
                    members[0].request.addressKey, generations: generations, served: generation, percent: 0,
                    searching: false)
            } catch {
                return fail(error)
            }
        }
        return .success(made)
    }

    /// All or none: every socket named must be the broker's, the client must be allowed to bind it
    /// as it is (its owner, group and mode included) and, unless root or the broker's own user,
    /// must be the one whose request made it; then the broker closes its copy and
    /// takes it out of the service manager's store. Processes that hold the socket keep it; once
    /// the last one closes it the kernel refuses new connections (a Unix socket's path stays, a
    /// dead socket that the next bind of that path replaces). The socket no longer counts
    /// against its creator's --max-sockets-per-user.
    func release(_ requests: [BindRequest], peer: Peer) -> Result<[String], Wire.RPCError> {
        var keys: [String] = []
        for request in requests where request.member != nil {
            return .failure(.conflict("\(request.key): release the whole group, not one member"))
        }
        // The grant first, as for a bind: a client learns nothing of groups outside it.
        for request in requests {
            if let refusal = refusal(of: request, to: peer) { return .failure(refusal) }
        }
        let named = requests.flatMap { request in
            let members = sockets[request.key] == nil ? groupMembers(request.baseKey) : []
            return members.isEmpty ? [request] : members.map { sockets[$0]!.request }
        }
        for request in named where !keys.contains(request.key) {
            guard let entry = sockets[request.key] else {
                return .failure(.bindFailed("\(request.key): the broker holds no such socket"))
            }
            if let refusal = refusal(of: entry.request, to: peer) { return .failure(refusal) }
            // Another process may hold a socket its grant shares with this client (root's
            // supervisor on a port in a user's range): only its creator, root and the broker's
            // own user end it. A socket recovered from an older release's fd store has no known
            // creator.
            if let refusal = notCreator(peer, of: entry, "release") { return .failure(refusal) }
            keys.append(request.key)
        }
        for key in keys {
            let entry = sockets.removeValue(forKey: key)!
            order.removeAll { $0 == key }
            close(entry.fd)
            // Under the name it was stored with, and the one an older release stored it with.
            let names = Set([entry.creator, nil].compactMap { FDStoreName.encode(entry.request, creator: $0) })
            for name in names.sorted() {
                do { try notifier?.removeStored(name: name) } catch { logger.info("fd store \(key): \(error)") }
            }
            statistics.released += 1
            logger.info("released \(entry.request.url) (uid \(peer.uid))")
        }
        forgetUnusedArrays()
        return .success(keys)
    }

    /// What listen(2) gets for a stream socket, against this namespace's somaxconn; nil for UDP.
    func backlogReport(for request: BindRequest) -> BacklogReport? {
        request.isStream
            ? BacklogReport(
                requested: request.backlog, default: options.defaultBacklog, somaxconn: OwnedSocket.somaxconn()) : nil
    }

    func add(_ entry: Entry, stored: Bool) {
        sockets[entry.request.key] = entry
        order.append(entry.request.key)
        guard let notifier, !stored else { return }
        if let name = FDStoreName.encode(entry.request, creator: entry.creator) {
            do { try notifier.store(entry.fd, name: name) } catch {
                logger.info("fd store \(entry.request.key): \(error)")
            }
        } else {
            logger.info("\(entry.request.key): name too long for the fd store; it will not survive a crash")
        }
    }

    /// The kernel's view of the broker's listeners, for the ports of its own TCP sockets only.
    /// Their SYN queues cost a walk of every established socket of the namespace (some 20 ms with
    /// 100 000, on the broker's only thread), so they are counted at most once a second and the
    /// count reused meanwhile; backlogs and accept queues are read fresh, once a turn.
    func dumpListenerQueues() -> [ListenerKey: ListenerObservation] {
        let ports = Set(sockets.values.lazy.filter { $0.request.kind == .tcp }.map(\.request.port))
        let now = MonotonicClock.nanoseconds()
        let countRequests = synQueuesCounted.map { now &- $0.at >= 1_000_000_000 } ?? true
        var listeners: [ListenerKey: ListenerObservation]
        do {
            listeners = Dictionary(
                try SockDiag().dumpListeners(ports: ports, requestSockets: countRequests).map { ($0.key, $0) },
                uniquingKeysWith: { first, _ in first })
        } catch {
            logClientEvent("list: listener queues unknown: \(error)")
            return [:]
        }
        if countRequests {
            synQueuesCounted = (now, listeners.mapValues(\.requestSockets))
        } else if let counted = synQueuesCounted?.queues {
            for key in listeners.keys { listeners[key]!.requestSockets = counted[key] ?? 0 }
        }
        return listeners
    }

    /// Where sock_diag reports a TCP socket's listener: its address (without a zone) and port.
    func listenerKey(_ request: BindRequest) -> ListenerKey? {
        IPAddress(request.address.split(separator: "%").first.map(String.init) ?? "").map {
            ListenerKey(address: $0, port: request.port)
        }
    }

    /// The most holders one `list` names (some 140 bytes each; a reply holds 1 MiB).
    static let listedHolders = 1000

    /// The sockets and their queues; who holds them (pids, commands, connections of any user)
    /// for root and the broker's user only.
    func listing(for peer: Peer) -> Reply.Listing {
        let queues = listenerQueuesThisTurn ?? dumpListenerQueues()
        listenerQueuesThisTurn = queues
        let items: [Reply.Listing.Socket] = order.compactMap { key in
            guard let entry = sockets[key] else { return nil }
            var item = Reply.Listing.Socket(
                key: key, url: entry.request.url, fd: entry.fd, handedOut: entry.handedOut,
                cookie: OwnedSocket.cookie(entry.fd) ?? 0, backlog: entry.backlog)
            if entry.request.kind == .tcp, let observed = listenerKey(entry.request).flatMap({ queues[$0] }) {
                item.acceptQueue = observed.acceptQueue
                item.synQueue = observed.requestSockets
                item.kernelBacklog = observed.backlog
            }
            // A group's members share the address and port sock_diag reports by: each its own queue.
            if entry.request.member != nil, let queue = SocketCounters.acceptQueue(entry.fd) {
                (item.acceptQueue, item.kernelBacklog) = (queue.waiting, queue.limit)
            }
            if entry.request.kind == .tcp { item.listenDrops = SocketCounters.drops(entry.fd) }
            return item
        }
        var listing = Reply.Listing(
            pid: getpid(), control: options.controlPath, sockets: items, clientsConnected: clients.count,
            clientsServed: statistics.clientsAccepted)
        guard peer.uid == 0 || peer.uid == options.policy.brokerUID else {
            listing.holdersUnknown = "listed to root and the broker's user only"
            return listing
        }
        let (report, unknown, age, took) = holdings(countingAgain: true)
        // Bounded: a grantee can fork thousands of processes holding its sockets, and a reply past
        // the frame limit would be no listing at all. The metrics count them all.
        listing.holders = report.map { Array($0.holders.prefix(Self.listedHolders)) }
        listing.holdersLeftOut = report.map { max(0, $0.holders.count - Self.listedHolders) }
        (listing.unattributedConnections, listing.unreadableProcesses) = (report?.unattributed, report?.unreadable)
        (listing.holdersUnknown, listing.holdersAgeSeconds, listing.holdersCountMilliseconds) = (unknown, age, took)
        return listing
    }
}
