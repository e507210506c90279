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

    /// The exact listener before the wildcard, each generation a process holds, and the
    /// connections of nobody seen holding anything left unattributed.
    func testAConnectionCountsForTheMostSpecificUnitItsProcessHolds() {
        let units = [
            unit("exact", vip, 80, [1]), unit("any", wildcard, 80, [2]), unit("g0", vip, 443, [3, 4]),
            unit("g1", vip, 443, [5, 6]), unit("v6", dualStack, 8080, [7]),
        ]
        let established: [UInt64: ListenerKey] = [
            100: ListenerKey(address: vip, port: 80), 101: ListenerKey(address: other, port: 80),
            102: ListenerKey(address: vip, port: 443),
            103: ListenerKey(address: IPAddress("::ffff:198.18.4.10")!, port: 8080),
            104: ListenerKey(address: vip, port: 8080), 105: ListenerKey(address: vip, port: 443),
            106: ListenerKey(address: vip, port: 9999),
        ]
        var holdings = Holdings(units: units, established: established)
        XCTAssertEqual(holdings.held(in: [1, 2, 50, 4]), ["exact", "any", "g0"])
        holdings.add(
            pid: 10, command: "a", sockets: [1, 2, 100, 101, 103, 104, 7], keys: ["exact", "any", "v6"], draining: false
        )
        holdings.add(pid: 11, command: "b", sockets: [102], keys: ["g0", "g1"], draining: true)
        let counts = Dictionary(uniqueKeysWithValues: holdings.holders.map { ("\($0.key) \($0.pid)", $0.established) })
        XCTAssertEqual(counts["exact 10"], 1, "the exact listener's connection")
        XCTAssertEqual(counts["any 10"], 1, "another address reaches the wildcard")
        XCTAssertEqual(counts["v6 10"], 2, "a mapped IPv4 client and an IPv4 one reach the dual-stack wildcard")
        XCTAssertEqual(counts["g0 11"], 1, "a process holding both generations counts for each")
        XCTAssertEqual(counts["g1 11"], 1)
        XCTAssertEqual(holdings.holders.filter(\.draining).map(\.pid), [11, 11])
        XCTAssertEqual(holdings.unattributed, 1, "105 on a unit's listener, in no table; 106 reaches no unit")
        holdings.add(pid: 12, command: "c", sockets: [105], keys: [], draining: false)
        XCTAssertEqual(holdings.holders.count, 5, "a process holding nothing has no line")
    }
}
