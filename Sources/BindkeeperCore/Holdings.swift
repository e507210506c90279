import NetTypes

/// Which processes hold the broker's TCP sockets and how many established connections each has
/// through them: the decision half of what `list` and the metrics show (the broker reads the
/// kernel's established sockets and the processes' descriptor tables).
///
/// A unit is a socket the broker owns, or one generation of a group (whoever holds one member
/// holds them all). A connection's socket says only its local address and port: it came through
/// the units whose listener that address reaches first, as the kernel chose (the exact address,
/// then the family's wildcard: an IPv4 client of a dual-stack listener is an IPv6 socket with a
/// mapped address), and counts for those of them its process holds, or held: a process that let
/// go of a unit's sockets (HAProxy after -sf, finishing what it accepted) is draining it. A
/// connection in no table of such a process is unattributed. A connection is one however many
/// descriptors and processes share it.
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

    /// One process and one unit it holds, or drains.
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

    /// One unit's sums over its lines, each connection once.
    public struct Total: Equatable, Sendable {
        public var established: UInt32
        /// Of those, connections only draining processes have.
        public var draining: UInt32
        /// Processes holding the unit now.
        public var holding: UInt32
    }

    let units: [Unit]
    private let unitByInode: [UInt64: Int]
    private let unitsByListener: [ListenerKey: [Int]]
    private let established: [UInt64: ListenerKey]
    /// Every process's lines so far (`add`).
    public private(set) var holders: [Holder] = []
    /// Per unit: the connections counted by holding lines, by draining ones, and the holding lines.
    private var counted: [(holding: Set<UInt64>, draining: Set<UInt64>, holders: UInt32)]

    /// `established`: the established sockets on the units' ports, by inode.
    public init(units: [Unit], established: [UInt64: ListenerKey]) {
        self.units = units
        var byInode: [UInt64: Int] = [:]
        for (index, unit) in units.enumerated() { for inode in unit.inodes { byInode[inode] = index } }
        unitByInode = byInode
        unitsByListener = Dictionary(grouping: units.indices) { units[$0].listener }
        self.established = established
        counted = Array(repeating: ([], [], 0), count: units.count)
    }

    /// The unit keys whose sockets are in a table of `sockets` (inodes).
    public func held(in sockets: [UInt64]) -> Set<String> {
        Set(sockets.compactMap { unitByInode[$0].map { units[$0].key } })
    }

    /// The units a connection on `local` came through: those of the listener it reaches first.
    func units(reachedFrom local: ListenerKey) -> [Int]? {
        unitsByListener[local] ?? unitsByListener[local.wildcard]
    }

    /// A process's lines: one for each unit of `holding` (its sockets are in its table) and of
    /// `draining` (it held them, and holds them no more), with its established connections
    /// through it.
    public mutating func add(
        pid: Int32, command: String, sockets: [UInt64], holding: Set<String>, draining: Set<String>
    ) {
        let mine = units.indices.filter { holding.contains(units[$0].key) || draining.contains(units[$0].key) }
        guard !mine.isEmpty else { return }
        let mineSet = Set(mine)
        var counts: [Int: UInt32] = [:]
        for inode in Set(sockets) {
            guard let local = established[inode], let reached = units(reachedFrom: local) else { continue }
            for index in reached where mineSet.contains(index) {
                counts[index, default: 0] &+= 1
                if holding.contains(units[index].key) {
                    counted[index].holding.insert(inode)
                } else {
                    counted[index].draining.insert(inode)
                }
            }
        }
        for index in mine {
            let isDraining = !holding.contains(units[index].key)
            if !isDraining { counted[index].holders &+= 1 }
            holders.append(
                Holder(
                    key: units[index].key, pid: pid, command: command, established: counts[index] ?? 0,
                    draining: isDraining))
        }
    }

    /// Each unit's sums over the lines added, by key (units no process holds or drains: zeros).
    public var totals: [String: Total] {
        var totals: [String: Total] = [:]
        for (index, unit) in units.enumerated() {
            let (holding, draining, holders) = counted[index]
            totals[unit.key] = Total(
                established: UInt32(clamping: holding.union(draining).count),
                draining: UInt32(clamping: draining.subtracting(holding).count), holding: holders)
        }
        return totals
    }

    /// Established connections through the units that no line counted: those of processes never
    /// seen holding a unit, or whose descriptor table could not be read.
    public var unattributed: UInt32 {
        var countedAnywhere = Set<UInt64>()
        for entry in counted { countedAnywhere.formUnion(entry.holding.union(entry.draining)) }
        var count: UInt32 = 0
        for (inode, local) in established where !countedAnywhere.contains(inode) && units(reachedFrom: local) != nil {
            count &+= 1
        }
        return count
    }
}
