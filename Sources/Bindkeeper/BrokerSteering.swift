import BindkeeperCore
import Glibc
import LinuxSys

// The broker: a socket group's generations and where its new connections go.
extension Broker {
    /// Points a group's new connections at its served generation, and `candidatePercent` of them
    /// at a candidate generation. Each generation named must be held, as large as the other, one
    /// the client may bind and, unless it is root or the broker's user, one its requests made: no
    /// client steers another's group, or a group towards sockets it does not serve.
    func steer(_ steering: Wire.Steering, peer: Peer) -> Result<[String], Wire.RPCError> {
        for group in steering.groups {
            if let refusal = refusal(of: group, to: peer) { return .failure(refusal) }
        }
        var named: [[Entry]] = []
        for group in steering.groups {
            let members = groupMembers(group.baseKey).compactMap { sockets[$0] }
            guard !members.isEmpty else {
                return .failure(.bindFailed("\(group.baseKey): the broker holds no such group"))
            }
            for entry in members {
                if let refusal = refusal(of: entry.request, to: peer) ?? notCreator(peer, of: entry, "steer") {
                    return .failure(refusal)
                }
            }
            named.append(members)
        }
        let served = named[0], candidate = named.count > 1 ? named[1] : []
        guard candidate.isEmpty || candidate.count == served.count else {
            statistics.conflicts += 1
            return .failure(
                .conflict("\(candidate[0].request.baseKey) has \(candidate.count) sockets, the served \(served.count)"))
        }
        let servedGeneration = served[0].request.generation ?? 0
        var generations = Array(repeating: [Int32](), count: Int(BindRequest.maximumGeneration) + 1)
        generations[Int(servedGeneration)] = served.map(\.fd)
        if let other = candidate.first { generations[Int(other.request.generation ?? 0)] = candidate.map(\.fd) }
        do {
            try steerGroup(
                served[0].request.addressKey, generations: generations, served: servedGeneration,
                percent: steering.candidatePercent)
        } catch {
            return .failure(.bindFailed("\(error)"))
        }
        statistics.steers += 1
        let (address, servedKey) = (served[0].request.addressKey, served[0].request.baseKey)
        logger.info(
            candidate.isEmpty
                ? "\(address): new connections go to \(servedKey) (uid \(peer.uid))"
                : """
                \(address): \(steering.candidatePercent) % of new connections go to \(candidate[0].request.baseKey), \
                the rest to \(servedKey) (uid \(peer.uid))
                """)
        return .success((served + candidate).map(\.request.key))
    }

    /// Steers the group at `address` on the socket array the broker holds for it (see
    /// SocketGroupSteering.steer), and holds the array a first steering made, in the fd store too.
    /// A group just made has no array yet: `searching` looks for one only for a group that might
    /// (one an older release made).
    func steerGroup(_ address: String, generations: [[Int32]], served: UInt8, percent: UInt8, searching: Bool = true)
        throws
    {
        let held = groupArrays[address]
        let (array, migrates) = try SocketGroupSteering.steer(
            generations: generations, served: served, percent: percent, array: held, searching: searching)
        if !migrates, !toldNoMigration {
            toldNoMigration = true
            logger.info(
                """
                this kernel does not migrate a closing listener's queue (Linux 5.14): the connections queued \
                on a group's generation when it is let go are reset
                """)
        }
        guard array != held else { return }
        groupArrays[address] = array
        if let name = FDStoreName.array(address) {
            notifier?.replaceStored([array], name: name, watched: false, reportingTo: logger)
        }
    }

    /// Lets go of the socket arrays of groups of which the broker holds no generation any more.
    func forgetUnusedArrays() {
        for (address, fd) in groupArrays
        where (0...BindRequest.maximumGeneration).allSatisfy({
            groupMembers(BindRequest.generationKey(address, $0), upTo: 1).isEmpty
        }) {
            close(fd)
            groupArrays[address] = nil
            if let name = FDStoreName.array(address) { notifier?.removeStored(name: name, reportingTo: logger) }
        }
    }

    /// Why `peer` may not `action` a socket another's request made (only its creator, root and the
    /// broker's own user may; a socket recovered from an older release's fd store has no known
    /// creator), counted; nil when it may.
    func notCreator(_ peer: Peer, of entry: Entry, _ action: String) -> Wire.RPCError? {
        guard peer.uid != 0, peer.uid != options.policy.brokerUID, entry.creator != peer.uid else { return nil }
        statistics.denied += 1
        return .permissionDenied(
            "uid \(peer.uid) may \(action) only sockets its own requests made; \(entry.request.key) is not one")
    }

    /// The first member of another generation of `request`'s group that the broker holds.
    func otherGeneration(of request: BindRequest) -> Entry? {
        (0...BindRequest.maximumGeneration).lazy.compactMap { number -> Entry? in
            let other = request.inGeneration(number)
            guard other.generation != request.generation else { return nil }
            return self.sockets[BindRequest.memberKey(other.baseKey, 0)]
        }.first
    }

    /// A new generation beside another: as large as it, and asked for by whoever may steer it.
    func generationProblem(_ request: BindRequest, count: UInt16, peer: Peer) -> Wire.RPCError? {
        guard groupMembers(request.baseKey, upTo: 1).isEmpty, let other = otherGeneration(of: request) else {
            return nil
        }
        if let refusal = notCreator(peer, of: other, "add a generation to") { return refusal }
        let size = groupMembers(other.request.baseKey).count
        guard size == Int(count) else {
            statistics.conflicts += 1
            return .conflict("\(other.request.baseKey) has \(size) sockets: another generation must have as many")
        }
        return nil
    }

    /// The uid that owns a socket's file.
    func owner(of entry: Entry) throws -> uid_t {
        var status = stat()
        guard fstat(entry.fd, &status) == 0 else { throw SystemError("fstat of \(entry.request.key)") }
        return status.st_uid
    }
}
