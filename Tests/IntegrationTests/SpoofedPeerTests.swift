import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import XCTest

/// A peer's address from where its route does not lead. P1 has a second link, to an outside host
/// X that carries P1's default route, and the fast path attached there too; X sends GUE with the
/// director's address as its source. No shipped rule is loaded: the daemon and its program hold
/// the line themselves (the queue's check in `Decider.parse`, the program's before it), on
/// whichever path decides (the suite runs again with --fast-path off).
final class SpoofedPeerTests: XCTestCase {
    var lab: Lab!
    var outside: String { lab.namespace("x") }
    static let outsideX = Lab.outsideX

    override func setUpWithError() throws {
        lab = try Lab(prefix: "psrp")
        try lab.addOutsideHost()
        try lab.startEcho("p1")
        try lab.startSecondChance(
            "p1", Lab.p1,
            extra: Lab.fastPathOn ? ["--fast-path-interface", "eth0", "--fast-path-interface", "xb"] : [])
    }

    override func tearDown() {
        lab?.tearDown()
        _ = try? Lab.shell("ip netns del \(outside) 2>/dev/null")
    }

    func syn(_ port: UInt16) -> [UInt8] {
        PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: port, destination: .v4(Lab.vip), destinationPort: 80, flags: .syn)
    }

    func counter(_ name: String) throws -> UInt64 { try lab.stats("p1")[name] ?? 0 }

    /// Sends the director's SYNs from X, one every 50 ms (the daemon reads route changes as they
    /// come), until `done` holds; bounded by the lab's wait.
    func sendFromOutside(until what: String, from port: UInt16, _ done: @escaping () throws -> Bool) throws {
        var port = port
        try lab.waitFor(what) {
            port += 1
            try sendGUE(lab, from: "x", source: Lab.director, sourcePort: port, to: Lab.p1, inner: syn(port), hops: [])
            usleep(50_000)
            return try done()
        }
    }

    func synReceived() throws -> Int {
        try Lab.shell("ip netns exec \(lab.namespace("p1")) ss -Htn state syn-recv").split(separator: "\n").count
    }

    func testAPeersAddressFromAnInterfaceItsRouteDoesNotLeaveByIsNotHeard() throws {
        for port in UInt16(41001)...41003 {
            try sendGUE(lab, from: "x", source: Lab.director, sourcePort: port, to: Lab.p1, inner: syn(port), hops: [])
        }
        try lab.waitFor("the forged director's packets refused") { try counter("dropped_reverse_path") == 3 }
        if Lab.fastPathOn { XCTAssertEqual(try counter("fast_path_dropped_reverse_path"), 3, "refused in the kernel") }
        XCTAssertEqual(try counter("accepted_syn"), 0)
        XCTAssertEqual(try synReceived(), 0, "no SYN-RECV for a forged SYN")

        // The director itself, on eth0, is heard.
        try sendGUE(lab, from: "d", source: Lab.director, sourcePort: 41010, to: Lab.p1, inner: syn(41010), hops: [])
        try lab.waitFor("the director's SYN taken") { try counter("accepted_syn") == 1 }

        // The route to the director moves to X's link: the way back follows it, both ways round.
        try Lab.shell("ip -n \(lab.namespace("p1")) route add \(Lab.director)/32 via \(Self.outsideX) dev xb")
        try sendFromOutside(until: "the director's address heard on X's link once its route leads there", from: 41020) {
            try self.counter("accepted_syn") >= 2
        }
        let refused = try counter("dropped_reverse_path")
        try sendGUE(lab, from: "d", source: Lab.director, sourcePort: 41090, to: Lab.p1, inner: syn(41090), hops: [])
        try lab.waitFor("the director's packet on eth0 refused now") {
            try counter("dropped_reverse_path") == refused + 1
        }
    }

    /// A routing rule makes the main table less than the whole answer: the program leaves the
    /// judgement to netfilter (sent up, counted) and the queue, which has no rule here, hears it.
    func testPolicyRoutingLeavesTheReversePathToNetfilter() throws {
        try Lab.shell("ip -n \(lab.namespace("p1")) rule add from \(Lab.director) lookup main pref 100")
        // The queue path alone (--fast-path off): the same rule makes its check stand aside too.
        let passed = Lab.fastPathOn ? "fast_path_up_reverse_path_unchecked" : "accepted_syn"
        try sendFromOutside(until: "the director's address passed on for netfilter to judge", from: 41100) {
            try self.counter(passed) >= 1
        }
        // Packets sent before the daemon read the rule met the old judgement; from then on none does.
        let (dropped, before) = (try counter("fast_path_dropped_reverse_path"), try counter(passed))
        for port in UInt16(41190)..<41193 {
            try sendGUE(lab, from: "x", source: Lab.director, sourcePort: port, to: Lab.p1, inner: syn(port), hops: [])
        }
        try lab.waitFor("each of them passed on") { try self.counter(passed) == before + 3 }
        XCTAssertEqual(try counter("fast_path_dropped_reverse_path"), dropped, "none refused once the rule is read")
    }
}
