import CFastPathABI
import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import Synchronization
import XCTest

@testable import SecondChance

/// The daemon rewrites the program's configuration while packets are decided: each packet must
/// meet one configuration whole, from its first field to its last.
extension FastPathParityTests {
    /// A thread writes two configurations in turn, as the daemon's do, while this one runs an
    /// established flow's ACK through the tc program (and the XDP one where it loads), for at most
    /// 3 seconds or 100 000 runs. Under the first, every look-up goes up (the packet goes up
    /// unchanged, counted); under the second, the GUE port is another (the packet is not GUE:
    /// unchanged, uncounted). A packet that read the port under the first and the flags under the
    /// second would be delivered, which neither configuration does.
    func testAPacketNeverMeetsHalfAConfigurationUpdate() throws {
        let (harness, established, keep) = try makeHarness()
        defer { keep.forEach { close($0) } }
        var lookupsUp = FastPathSettings(
            selfAddress: Self.self4, peers: harness.decider.peers, guePort: GUEPacket.port, checkCookies: true,
            lookupsElsewhere: true)
        lookupsUp.xdpForward = true
        var otherPort = lookupsUp
        (otherPort.guePort, otherPort.lookupsElsewhere) = (GUEPacket.port &+ 1, false)
        let flow = try XCTUnwrap(established.first)
        let frame = harness.frame(
            Self.gue(
                PacketBuilder.tcp(
                    source: flow.sourceAddress, sourcePort: flow.sourcePort, destination: flow.destinationAddress,
                    destinationPort: flow.destinationPort, flags: .ack, sequence: 1000, acknowledgement: 2000)))
        let (maps, settings) = (harness.maps, [lookupsUp, otherPort])
        try maps.write(otherPort)
        let stop = Atomic<Bool>(false)
        let writes = Atomic<Int>(0)
        // The writer and the programs on CPUs of their own where there are two: on one CPU a
        // write lands only between two runs, and the test could not fail on a torn read.
        let apart = sysconf(Int32(_SC_NPROCESSORS_ONLN)) > 1
        let writer = try WorkerThread {
            let loop = {
                while !stop.load(ordering: .relaxed) {
                    for each in settings { try? maps.write(each) }
                    writes.add(2, ordering: .relaxed)
                }
            }
            if apart { _ = try? CPUAffinity.onCPU(1, loop) } else { loop() }
        }
        let before = maps.readCounters()
        var (runs, mixed) = (0, [String]())
        let deadline = MonotonicClock.nanoseconds() + 3_000_000_000
        func runAll() throws {
            while runs < 100_000 && MonotonicClock.nanoseconds() < deadline && mixed.count < 5 {
                runs += 1
                let xdp = harness.object.xdpFD >= 0 && runs % 2 == 0
                let (action, output) = try BPF.testRun(
                    programFD: xdp ? harness.object.xdpFD : harness.object.programFD, frame: frame,
                    interfaceIndex: harness.interfaceIndex, hook: xdp ? .xdp : .tc)
                let unchanged = action == (xdp ? Self.xdpPass : Self.tcOK) && output == frame
                if !unchanged { mixed.append("\(xdp ? "XDP" : "tc") run \(runs): action \(action)") }
            }
        }
        try lab.inside("p1") {
            if apart { try CPUAffinity.onCPU(0) { try runAll() } } else { try runAll() }
        }
        stop.store(true, ordering: .relaxed)
        writer.join()
        let wentUp = maps.readCounters()[FP_UP_LOOKUP_ELSEWHERE] - before[FP_UP_LOOKUP_ELSEWHERE]
        print("configuration updates: \(runs) runs, \(writes.load(ordering: .relaxed)) writes, \(wentUp) went up")
        XCTAssertEqual(mixed, [], "packets decided under half of an update")
        XCTAssertGreaterThan(wentUp, 0, "no run met the configuration that sends look-ups up")
        XCTAssertLessThan(Int(wentUp), runs, "no run met the configuration with the other port")
        // The configuration in force is the last one written, whole.
        try maps.write(lookupsUp)
        XCTAssertEqual((maps.readConfiguration()?.flags ?? 0) & UInt8(FP_F_LOOKUPS_UP), UInt8(FP_F_LOOKUPS_UP))
    }
}
