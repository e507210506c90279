import NetTypes

/// Which processes hold the broker's TCP sockets and how many established connections each has
/// through them: the decision half of what `list` and the metrics show (the broker reads the
/// kernel's established sockets and the processes' descriptor tables).
///
/// A unit is a socket the broker owns, or one generation of a group (whoever holds one member
/// holds them all). A connection's socket says only its local address and port, which every
/// generation of a group shares: it counts for a unit its process holds, the one whose listener
/// the address reaches first (the exact address, then the wildcards), or for each of the
/// generations it holds there. A process that let go of its sockets (HAProxy after -sf,
/// finishing what it accepted) counts for the units it was last seen holding; any other
/// process's connections are no unit's.
public struct Holdings {
    public struct Unit: Sendable {
        public var key: String
        public var listener: ListenerKey
        /// The inode numbers of its sockets.
        public var inodes: [UInt64]

        public init(key: String, listener: ListenerKey, inodes: [UInt64]) {
            (self.key, self.listener, self.inodes) = (key, listener, inodes)
        }
    }

    /// One process and one unit it holds, or held.
    public struct Holder: Codable, Equatable, Sendable {
        public var key: String
        public var pid: Int32
        /// Its command name, escaped (the broker's log escaping: a process names itself).
        public var command: String
        public var established: UInt32
        /// It holds none of the unit's sockets any more: it finishes what it accepted.
        public var draining: Bool

        public init(key: String, pid: Int32, command: String, established: UInt32, draining: Bool) {
            (self.key, self.pid, self.command, self.established, self.draining) = (
                key, pid, command, established, draining
            )
        }
    }

    let units: [Unit]
    private let unitByInode: [UInt64: Int]
    private let established: [UInt64: ListenerKey]
    /// Every process's lines so far (`add`).
    public private(set) var holders: [Holder] = []
    /// The established sockets some line counted.
    private var counted: Set<UInt64> = []

    /// `established`: the established sockets on the units' ports, by inode.
    public init(units: [Unit], established: [UInt64: ListenerKey]) {
        self.units = units
        var byInode: [UInt64: Int] = [:]
        for (index, unit) in units.enumerated() { for inode in unit.inodes { byInode[inode] = index } }
        unitByInode = byInode
        self.established = established
    }

    /// The unit keys whose sockets are in a table of `sockets` (inodes).
    public func held(in sockets: [UInt64]) -> Set<String> {
        Set(sockets.compactMap { unitByInode[$0].map { units[$0].key } })
    }

    /// A process's lines: for each unit of `keys` (those it holds, or with `draining` those it
    /// held), its established connections through it.
    public mutating func add(pid: Int32, command: String, sockets: [UInt64], keys: Set<String>, draining: Bool) {
        let mine = units.filter { keys.contains($0.key) }
        guard !mine.isEmpty else { return }
        let byListener = Dictionary(grouping: mine.indices) { mine[$0].listener }
        var counts = [UInt32](repeating: 0, count: mine.count)
        for inode in sockets {
            guard let local = established[inode],
                let reached = local.lookupOrder.lazy.compactMap({ byListener[$0] }).first
            else { continue }
            for index in reached { counts[index] &+= 1 }
            counted.insert(inode)
        }
        holders += mine.indices.map {
            Holder(key: mine[$0].key, pid: pid, command: command, established: counts[$0], draining: draining)
        }
    }

    /// Established connections through the units (their address reaches a unit's listener) that
    /// no line counted: those of processes never seen holding a unit, or whose descriptor table
    /// could not be read.
    public var unattributed: UInt32 {
        let listeners = Set(units.map(\.listener))
        var count: UInt32 = 0
        for (inode, local) in established where !counted.contains(inode) {
            if local.lookupOrder.contains(where: listeners.contains) { count &+= 1 }
        }
        return count
    }
}
