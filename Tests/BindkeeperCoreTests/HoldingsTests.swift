import NetTypes
import XCTest

@testable import BindkeeperCore

/// Which unit a holder's established connections count for.
final class HoldingsTests: XCTestCase {
    let vip = IPAddress("198.18.4.10")!, other = IPAddress("198.18.4.11")!
    let wildcard = IPAddress("0.0.0.0")!, dualStack = IPAddress("::")!

    func unit(_ key: String, _ address: IPAddress, _ port: UInt16, _ inodes: [UInt64]) -> Holdings.Unit {
        Holdings.Unit(key: key, listener: ListenerKey(address: address, port: port), inodes: inodes)
    }

    func key(_ address: IPAddress, _ port: UInt16) -> ListenerKey { ListenerKey(address: address, port: port) }

    /// A connection came through the listener its address reaches first (the exact one, then its
    /// family's wildcard), and counts for that unit only if its process holds or drains it; each
    /// generation a process holds; the connections of nobody seen holding anything unattributed.
    func testAConnectionCountsForTheUnitItCameThroughIfItsProcessHoldsIt() {
        let units = [
            unit("exact", vip, 80, [1]), unit("any", wildcard, 80, [2]), unit("g0", vip, 443, [3, 4]),
            unit("g1", vip, 443, [5, 6]), unit("v6", dualStack, 8080, [7]),
        ]
        let established: [UInt64: ListenerKey] = [
            100: key(vip, 80), 101: key(other, 80), 102: key(vip, 443),
            103: key(IPAddress("::ffff:198.18.4.10")!, 8080), 104: key(vip, 8080), 105: key(vip, 443),
            106: key(vip, 9999),
        ]
        var holdings = Holdings(units: units, established: established)
        XCTAssertEqual(holdings.held(in: [1, 2, 50, 4]), ["exact", "any", "g0"])
        // It holds only the wildcard: the exact listener's connection is not the wildcard's.
        holdings.add(pid: 9, command: "w", sockets: [2, 100], holding: ["any"], draining: [])
        holdings.add(
            pid: 10, command: "a", sockets: [1, 2, 100, 101, 103, 104, 7], holding: ["exact", "any", "v6"],
            draining: [])
        holdings.add(pid: 11, command: "b", sockets: [102], holding: [], draining: ["g0", "g1"])
        let counts = Dictionary(uniqueKeysWithValues: holdings.holders.map { ("\($0.key) \($0.pid)", $0.established) })
        XCTAssertEqual(counts["any 9"], 0, "a connection to the exact address came through the exact listener")
        XCTAssertEqual(counts["exact 10"], 1)
        XCTAssertEqual(counts["any 10"], 1, "another address reaches the wildcard")
        XCTAssertEqual(counts["v6 10"], 1, "a mapped IPv4 client reaches the dual-stack wildcard; an IPv4 socket never")
        XCTAssertEqual(counts["g0 11"], 1, "a process draining both generations counts for each")
        XCTAssertEqual(counts["g1 11"], 1)
        XCTAssertEqual(holdings.holders.filter(\.draining).map(\.pid), [11, 11])
        XCTAssertEqual(holdings.unattributed, 1, "105; 104 (an IPv4 socket on 8080) and 106 reach no unit")
        holdings.add(pid: 12, command: "c", sockets: [105], holding: [], draining: [])
        XCTAssertEqual(holdings.holders.count, 6, "a process holding nothing has no line")
    }

    /// A connection is one however many descriptors and processes have it; a process that still
    /// holds one unit drains another it let go of.
    func testEachConnectionCountsOnceAndAPartialLetGoDrains() {
        let units = [unit("exact", vip, 80, [1]), unit("any", wildcard, 80, [2])]
        let established: [UInt64: ListenerKey] = [100: key(vip, 80), 101: key(other, 80), 102: key(other, 80)]
        var holdings = Holdings(units: units, established: established)
        // A reloaded process that kept the wildcard and let go of the exact socket.
        holdings.add(pid: 10, command: "a", sockets: [2, 100, 100, 100, 101], holding: ["any"], draining: ["exact"])
        // Its forked child, sharing its table, and a new process holding the exact socket.
        holdings.add(pid: 11, command: "a", sockets: [2, 100, 101], holding: ["any"], draining: ["exact"])
        holdings.add(pid: 12, command: "b", sockets: [1, 102], holding: ["exact"], draining: [])
        let lines = Dictionary(uniqueKeysWithValues: holdings.holders.map { ("\($0.key) \($0.pid)", $0) })
        XCTAssertEqual(lines["exact 10"]?.established, 1, "three descriptors, one connection")
        XCTAssertEqual(lines["exact 10"]?.draining, true)
        XCTAssertEqual(lines["any 10"]?.draining, false)
        XCTAssertEqual(lines["exact 12"]?.established, 0, "102 is on another address: the wildcard's")
        XCTAssertEqual(holdings.totals["exact"], Holdings.Total(established: 1, draining: 1, holding: 1))
        XCTAssertEqual(holdings.totals["any"], Holdings.Total(established: 1, draining: 0, holding: 2))
        XCTAssertEqual(holdings.unattributed, 1, "102: a wildcard connection in the table of no holder of it")
    }
}
