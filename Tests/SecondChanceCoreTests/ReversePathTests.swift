import LabKit
import NetTypes
import SecondChanceCore
import TestSupport
import XCTest

/// The ways back to the peers, as strict rpfilter judges them, against a brute-force reading of the
/// same routing table: for a source, the longest route that covers it.
final class ReversePathTests: XCTestCase {
    func prefix(_ text: String) -> IPv4Prefix { IPv4Prefix(text)! }
    func address(_ text: String) -> IPv4Address { IPv4Address(text)! }

    func testAPeerIsHeardOnlyWhereItsRouteLeads() {
        // The director's subnet on interface 2, the default route (the outside) on 3, one director
        // moved behind interface 4, a peer range partly blackholed.
        let routes: [IPv4Prefix: ReversePaths.Way] = [
            prefix("0.0.0.0/0"): .interfaces([3]), prefix("198.18.0.0/24"): .interfaces([2]),
            prefix("198.18.0.7/32"): .interfaces([4]), prefix("198.18.9.0/25"): .interfaces([]),
            prefix("203.0.113.0/24"): .interfaces([9]),
        ]
        let paths = ReversePaths(peers: [prefix("198.18.0.0/24"), prefix("198.18.9.0/24")], routes: routes)
        XCTAssertEqual(paths.check(address("198.18.0.2"), arrival: 2), .heard)
        XCTAssertEqual(
            paths.check(address("198.18.0.2"), arrival: 3), .refused, "the outside carries the default route")
        XCTAssertEqual(paths.check(address("198.18.0.7"), arrival: 4), .heard)
        XCTAssertEqual(paths.check(address("198.18.0.7"), arrival: 2), .refused)
        XCTAssertEqual(paths.check(address("198.18.9.200"), arrival: 3), .heard, "the default route covers it")
        XCTAssertEqual(paths.check(address("198.18.9.1"), arrival: 3), .refused, "a blackhole: no way back")
        XCTAssertFalse(paths.entries.contains { $0.prefix == prefix("203.0.113.0/24") }, "not a peer's")
        XCTAssertEqual(
            ReversePaths(peers: [prefix("198.18.0.0/24")], routes: [:]).check(address("198.18.0.2"), arrival: 2),
            .refused, "no route at all")
    }

    func testWhatTheProgramCannotHoldIsLeftToNetfilter() {
        let peers = [prefix("198.18.0.0/24")]
        let wide = ReversePaths(peers: peers, routes: [prefix("198.18.0.0/24"): .interfaces([1, 2, 3, 4, 5])])
        XCTAssertEqual(wide.check(address("198.18.0.2"), arrival: 9), .unchecked, "more nexthops than slots")
        let ruled = ReversePaths(
            peers: peers + peers, routes: [prefix("198.18.0.0/24"): .interfaces([2])], policyRouting: true)
        XCTAssertEqual(ruled.check(address("198.18.0.2"), arrival: 9), .unchecked, "policy routing, a peer given twice")
        let multipath = ReversePaths(peers: peers, routes: [prefix("198.18.0.0/24"): .interfaces([2, 5])])
        XCTAssertEqual(multipath.check(address("198.18.0.2"), arrival: 5), .heard, "any nexthop's interface")
        XCTAssertEqual(ReversePaths.none.check(address("198.18.0.2"), arrival: 5), .unchecked)
    }

    /// Random peers and routes: the table's answer for every source in a peer prefix is the way of
    /// the longest route covering the source, which is what the kernel's lookup in the main table
    /// picks.
    func testRandomTablesAgreeWithTheLongestCoveringRoute() {
        var random = SeededGenerator.fromEnvironment(name: "ReversePathTests")
        for _ in 0..<300 {
            func randomPrefix(_ lengths: ClosedRange<UInt8>) -> IPv4Prefix {
                let length = UInt8.random(in: lengths, using: &random)
                let bits = UInt32(0xC612_0000) | UInt32.random(in: 0...0xffff, using: &random)
                let mask: UInt32 = length == 0 ? 0 : ~0 << (32 - UInt32(length))
                return IPv4Prefix(network: IPv4Address(bits & mask), length: length)
            }
            let peers = (0..<Int.random(in: 1...3, using: &random)).map { _ in randomPrefix(16...32) }
            var routes: [IPv4Prefix: ReversePaths.Way] = [:]
            for _ in 0..<Int.random(in: 0...8, using: &random) {
                routes[randomPrefix(0...32)] = .interfaces([UInt32.random(in: 1...4, using: &random)])
            }
            let paths = ReversePaths(peers: peers, routes: routes)
            for _ in 0..<40 {
                let peer = peers.randomElement(using: &random)!
                let span = peer.length == 32 ? 0 : UInt32.random(in: 0...(~0 >> UInt32(peer.length)), using: &random)
                let source = IPv4Address(peer.network.value | span)
                let kernel = routes.filter { $0.key.contains(source) }.max { $0.key.length < $1.key.length }?.value
                let arrival = UInt32.random(in: 1...4, using: &random)
                let expected: ReversePaths.Verdict =
                    kernel.map { way in
                        if case .interfaces(let set) = way, set.contains(arrival) { return .heard }
                        return .refused
                    } ?? .refused
                XCTAssertEqual(
                    paths.check(source, arrival: arrival), expected,
                    "\(source) on \(arrival); peers \(peers), routes \(routes) \(random.report)")
            }
        }
    }
}
