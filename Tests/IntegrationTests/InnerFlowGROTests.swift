import Dispatch
import Foundation
import LabKit
import LinuxSys
import NetTypes
import XCTest

/// A bulk upload through GUE, as a NIC delivers it: what reaches IP on the proxy, per skb.
final class InnerFlowGROTests: XCTestCase {
    var lab: Lab!

    override func tearDown() {
        lab?.tearDown()
        super.tearDown()
    }

    /// The client sends MTU-sized frames with full checksums (TSO, GSO and checksum offload off),
    /// the lab's BPF director encapsulates them, and p1's interface has GRO on, as a NIC has.
    /// Decapsulated in XDP, the inner segments meet GRO and reach IP coalesced, many frames per skb;
    /// decapsulated at tc (re-injected past GRO), one frame per skb. Over the lab's wire (the
    /// switch port redirecting the director's frames into p1's port in XDP, so p1 receives XDP
    /// frames as from a NIC's ring), XDP's segments reach IP coalesced too.
    func testSegmentsDecapsulatedInXDPReachIPCoalescedAndAtTCOneByOne() throws {
        lab = try Lab(prefix: "psgr")
        try Lab.shell(
            """
            ip netns exec \(lab.namespace("c")) ethtool -K eth0 tso off gso off tx off >/dev/null && \
            ip netns exec \(lab.namespace("sw")) ethtool -K \(lab.prefix)-p1 tso off gso off >/dev/null && \
            ip netns exec \(lab.namespace("p1")) ethtool -K eth0 gro on >/dev/null
            """)
        let table = lab.directory.appendingPathComponent("table")
        try "\(Lab.p1)\n\(Lab.p2) draining\n".write(to: table, atomically: true, encoding: .utf8)
        let director = try lab.start(
            "d", "glb-lab", ["bpf-director", "--self", "\(Lab.director)", "--table", table.path, "--vip", "\(Lab.vip)"])
        try lab.waitFor("the BPF director attached") { lab.log(of: director).contains("bpf-director: attached") }
        let listener = try lab.inside("p1") { try LabSockets.listenTCP(on: .v4(Lab.vip), port: 5001) }
        defer { close(listener) }

        var framesPerSKB: [String: Double] = [:]
        let wirePort = "\(lab.prefix)-d"
        for mode in ["xdp", "tc", "xdp over the wire"] {
            if mode.hasSuffix("wire") { try attachTheWire(on: wirePort) }
            let fastPath = String(mode.prefix(while: { $0 != " " }))
            try lab.startSecondChance(
                "p1", Lab.p1, extra: ["--fast-path", fastPath, "--allow-source", "\(Lab.director)"])
            let before = try ipCounters()
            let received = try upload(megabytes: 16, listener: listener)
            let after = try ipCounters()
            XCTAssertEqual(received, 16 << 20, "\(mode): the whole upload arrived")
            framesPerSKB[mode] = Double(after.segments - before.segments) / Double(max(after.skbs - before.skbs, 1))
            let (segments, skbs) = (after.segments - before.segments, after.skbs - before.skbs)
            print("inner flow GRO: --fast-path \(mode): \(segments) segments in \(skbs) skbs")
            try lab.stopSecondChance("p1")
        }
        XCTAssertGreaterThan(framesPerSKB["xdp"]!, 4, "GRO coalesced what XDP decapsulated: \(framesPerSKB)")
        XCTAssertLessThan(framesPerSKB["tc"]!, 1.2, "what tc re-injects bypasses GRO: \(framesPerSKB)")
        XCTAssertGreaterThan(framesPerSKB["xdp over the wire"]!, 4, "XDP frames as from a NIC: \(framesPerSKB)")
        // The wire (bench-bulk.sh's rows U, X and T) sent the upload's frames as XDP frames.
        let redirected = try Lab.shell("ip netns exec \(lab.namespace("sw")) ethtool -S \(wirePort)")
            .split(separator: "\n").first { $0.contains("rx_queue_0_xdp_redirect:") }
            .flatMap { UInt64($0.split(separator: " ").last ?? "") }
        XCTAssertGreaterThan(redirected ?? 0, UInt64(16 << 20) / 1500, "the wire redirected the upload's frames")
    }

    /// The lab's wire into p1 from a switch port (`glb-lab xdp-wire`).
    func attachTheWire(on port: String) throws {
        let mac = try Lab.linkAddress(in: lab.namespace("p1"))
        let wire = try lab.runToEnd(
            "sw", "glb-lab", ["xdp-wire", "--interface", port, "--to", "\(lab.prefix)-p1", "--mac", mac])
        XCTAssertEqual(wire.status, 0, wire.output)
    }

    /// p1's segments and skbs reaching IP: the ECN classes of IpExt count segments (a GRO skb adds
    /// its segment count), Ip InReceives counts skbs.
    func ipCounters() throws -> (segments: UInt64, skbs: UInt64) {
        try lab.inside("p1") {
            let netstat = try String(contentsOfFile: "/proc/thread-self/net/netstat", encoding: .utf8)
            let snmp = try String(contentsOfFile: "/proc/thread-self/net/snmp", encoding: .utf8)
            let segments = ["InNoECTPkts", "InECT1Pkts", "InECT0Pkts", "InCEPkts"].compactMap {
                ProcFile.counter($0, section: "IpExt", in: netstat)
            }
            guard segments.count == 4, let skbs = ProcFile.counter("InReceives", section: "Ip", in: snmp) else {
                throw LabError("no IpExt or Ip counters")
            }
            return (segments.reduce(0, +), skbs)
        }
    }

    /// Sends `megabytes` from the client to the VIP and reads them on p1: the bytes received.
    func upload(megabytes: Int, listener: Int32) throws -> Int {
        let client = try lab.inside("c") { try LabSockets.connectTCP(to: .v4(Lab.vip), port: 5001, timeoutSeconds: 10) }
        let server = try acceptConnection(listener)
        defer { close(server) }
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            defer {
                shutdown(client, Int32(SHUT_WR))
                done.signal()
            }
            let chunk = [UInt8](repeating: 0x61, count: 1 << 16)
            for _ in 0..<(megabytes << 4) {
                var offset = 0
                while offset < chunk.count {
                    let sent = chunk.withUnsafeBytes { send(client, $0.baseAddress! + offset, chunk.count - offset, 0) }
                    if sent <= 0 { return }
                    offset += sent
                }
            }
        }
        defer {
            done.wait()
            close(client)
        }
        SocketOptions.setTimeouts(server, seconds: 10)
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var total = 0
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(server, $0.baseAddress!, $0.count, 0) }
            if count <= 0 { break }
            total += count
        }
        return total
    }
}
