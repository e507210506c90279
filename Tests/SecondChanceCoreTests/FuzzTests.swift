import LabKit
import LinuxSys
import NetTypes
import SecondChance
import SecondChanceCore
import Telemetry
import TestSupport
import XCTest

/// Mutation fuzzing of the parsers and the whole decision: random bit flips, truncations, length
/// fields and splices of valid packets. Debug builds check every buffer access, so an out-of-bounds
/// read traps here instead of passing silently.
final class FuzzTests: XCTestCase {
    struct AnswerEverything: FlowOwnership {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 33
        }
        mutating func lookup(_ flow: FlowKey) -> SocketLookup {
            [.connected, .listener, .none, .failed][Int(next() % 4)]
        }
        mutating func listenerAcceptsCookies(_ flow: FlowKey) -> Bool { next() % 2 == 0 }
        mutating func isValidCookie(_ packet: UnsafeRawBufferPointer, _ segment: TCPSegment) -> Bool {
            // Touch the bytes the real check copies, to prove the offsets are inside the packet.
            var sum = 0
            for offset in segment.ipHeaderOffset..<(segment.ipHeaderOffset + (segment.flow.isIPv6 ? 40 : 20)) {
                sum &+= Int(packet[offset])
            }
            for offset in segment.tcpOffset..<(segment.tcpOffset + 20) { sum &+= Int(packet[offset]) }
            return sum % 2 == 0
        }
    }

    func seeds() -> [[UInt8]] {
        let quoted = PacketBuilder.tcp(
            source: .v4(vip), sourcePort: 80, destination: .v4(client), destinationPort: 1, flags: .ack)
        let quoted6 = PacketBuilder.tcp(
            source: .v6(vip6), sourcePort: 80, destination: .v6(client6), destinationPort: 1, flags: .ack)
        return [
            gue(tcp4(.syn)), gue(tcp4(.ack, payload: [1, 2, 3])), gue(tcp4(.ack), hops: [p2, p1, client], nextHop: 1),
            gue(PacketBuilder.icmpFragmentationNeeded(from: director, to: vip, mtu: 1200, original: quoted)),
            gue(
                PacketBuilder.tcp(
                    source: .v6(client6), sourcePort: 9, destination: .v6(vip6), destinationPort: 80, flags: .ack)),
            gue(PacketBuilder.icmpv6PacketTooBig(from: client6, to: vip6, mtu: 1280, original: quoted6)),
            gue(
                PacketBuilder.ip(
                    source: .v6(client6), destination: .v6(vip6), protocol: 0,
                    transport: [60, 0, 1, 4, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0] + Array(tcp4(.ack)[20...]),
                    checksumOffset: nil)),
        ]
    }

    func testMutatedPacketsNeverCrashTheDecision() {
        var random = SeededGenerator.fromEnvironment(name: #function)
        let decider = p1Decider
        var ownership = AnswerEverything(state: 42)
        let seeds = seeds()
        var outcomes: [String: Int] = [:]
        let iterations = 200_000
        for _ in 0..<iterations {
            var packet = seeds[Int.random(in: 0..<seeds.count, using: &random)]
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                switch Int.random(in: 0..<6, using: &random) {
                case 0 where !packet.isEmpty:
                    packet[Int.random(in: 0..<packet.count, using: &random)] ^=
                        UInt8(1) << UInt8.random(in: 0..<8, using: &random)
                case 1 where !packet.isEmpty:
                    packet.removeLast(Int.random(in: 0...min(packet.count, 64), using: &random))
                case 2:
                    packet += (0..<Int.random(in: 1...16, using: &random)).map { _ in
                        UInt8.random(in: 0...255, using: &random)
                    }
                case 3 where packet.count > 40:
                    // Length-like fields: IP lengths, UDP length, hlen, hop count, inner lengths.
                    let offset = [2, 24, 28, 35, 38, 40, 44, 48, 52].randomElement(using: &random)!
                    if offset + 1 < packet.count {
                        packet.setBE16(offset, UInt16.random(in: 0...UInt16.max, using: &random))
                    }
                case 4 where !packet.isEmpty:
                    packet[Int.random(in: 0..<packet.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                default:
                    let other = seeds[Int.random(in: 0..<seeds.count, using: &random)]
                    let cut = Int.random(in: 0...min(packet.count, other.count), using: &random)
                    packet = Array(packet.prefix(cut)) + other.dropFirst(cut)
                }
            }
            let input = packet
            let decision = packet.withUnsafeBytes { decider.decide($0, ownership: &ownership) }
            if let gue = decision.gue {
                XCTAssertLessThanOrEqual(gue.innerEnd, packet.count, "\(random.report) \(input)")
                XCTAssertLessThanOrEqual(gue.innerOffset, gue.innerEnd, "\(random.report) \(input)")
                if case .forward = decision.verdict {
                    packet.withUnsafeMutableBytes { GUEForwarding.rewrite($0, gue, source: p1, destination: p2) }
                    XCTAssertEqual(
                        InternetChecksum.checksum(Array(packet[0..<gue.outerHeaderLength])), 0,
                        "\(random.report) \(input)")
                }
            }
            outcomes["\(decision.verdict)".prefix { $0 != "(" }.description, default: 0] += 1
        }
        // The mutations reach every kind of outcome, so the fuzzing is not stuck at the first check.
        for kind in ["local", "forward", "drop", "refuse"] {
            XCTAssertGreaterThan(outcomes[kind] ?? 0, iterations / 100, kind)
        }
    }
}

final class CacheAndTableTests: XCTestCase {
    let flow = FlowKey(source: client, sourcePort: 1, destination: vip, destinationPort: 80)

    func testCacheKeepsOnlyWhatIsSafeAndExpires() {
        var cache = FlowCache(positiveLifetime: 100)
        cache.remember(.connected, for: flow, now: 0)
        XCTAssertEqual(cache.answer(for: flow, now: 99), .connected)
        XCTAssertNil(cache.answer(for: flow, now: 100))
        cache.remember(.none, for: flow, now: 0)
        XCTAssertNil(cache.answer(for: flow, now: 1), "negative answers are not kept by default")
        cache.remember(.failed, for: flow, now: 0)
        XCTAssertNil(cache.answer(for: flow, now: 1))
        cache.remember(.connected, for: flow, now: 0)
        cache.forget(flow)
        XCTAssertNil(cache.answer(for: flow, now: 1))

        var negative = FlowCache(positiveLifetime: 100, negativeLifetime: 10, capacity: 2)
        negative.remember(.none, for: flow, now: 0)
        XCTAssertEqual(negative.answer(for: flow, now: 5), SocketLookup.none)
        XCTAssertNil(negative.answer(for: flow, now: 10))
        for port in UInt16(2)...10 {
            negative.remember(
                .connected, for: FlowKey(source: client, sourcePort: port, destination: vip, destinationPort: 80),
                now: 0)
        }
        XCTAssertLessThanOrEqual(negative.count, 2, "bounded")
    }

    /// An attacker sends new flows at the rate cached answers expire: each insert into the full
    /// cache finds one expired entry. Sweeps (each a pass over every entry) stay a small fraction
    /// of inserts instead of one per packet.
    func testFlowsArrivingAsFastAsAnswersExpireDoNotSweepPerPacket() {
        let capacity = 1024
        var cache = FlowCache(positiveLifetime: 1, negativeLifetime: UInt64(capacity), capacity: capacity)
        let inserts = 20 * capacity
        for tick in 0..<inserts {
            let flow = FlowKey(
                source: IPv4Address(0xC612_0000 | UInt32(tick & 0xffff)),
                sourcePort: UInt16(truncatingIfNeeded: tick >> 16),
                destination: vip, destinationPort: 80)
            cache.remember(.none, for: flow, now: UInt64(tick))
            XCTAssertLessThanOrEqual(cache.count, capacity)
        }
        XCTAssertGreaterThan(cache.sweeps, 0, "the cache did fill")
        XCTAssertLessThanOrEqual(cache.sweeps, inserts / (capacity / 8) + 1)
    }

    func testNotHereAnswersHoldOnlyWhileTheFlowsEpochStands() {
        var cache = FlowCache(positiveLifetime: 100, negativeLifetime: 100)
        cache.remember(.none, for: flow, now: 0, epoch: 7)
        XCTAssertEqual(cache.answer(for: flow, now: 1, epoch: 7), SocketLookup.none)
        XCTAssertNil(cache.answer(for: flow, now: 1, epoch: 8), "a SYN or cookie ACK taken since voids it")
        cache.remember(.listener, for: flow, now: 0, epoch: 3)
        XCTAssertNil(cache.answer(for: flow, now: 1, epoch: 4))
        // A connected answer does not depend on epochs: the socket can only go away, and then FIN/RST/SYN clear it.
        cache.remember(.connected, for: flow, now: 0, epoch: 3)
        XCTAssertEqual(cache.answer(for: flow, now: 1, epoch: 99), .connected)
    }

    func testRendezvousTablePrefersActiveProxiesAndIsStable() throws {
        let table = try RendezvousTable.parse("198.18.0.11\n198.18.0.12 # second\n")
        let drained = try RendezvousTable.parse("198.18.0.11 draining\n198.18.0.12\n")
        var primaries: [IPv4Address: Int] = [:]
        for port in UInt16(1)...2000 {
            let hash = RendezvousTable.flowHash(
                FlowKey(source: client, sourcePort: port, destination: vip, destinationPort: 80))
            let route = table.route(flowHash: hash)
            XCTAssertEqual(Set(route), [p1, p2])
            primaries[route[0], default: 0] += 1
            XCTAssertEqual(drained.route(flowHash: hash), [p2, p1], "a draining proxy becomes the second hop")
            XCTAssertEqual(table.route(flowHash: hash), route, "stable")
        }
        XCTAssertGreaterThan(primaries[p1] ?? 0, 800)
        XCTAssertGreaterThan(primaries[p2] ?? 0, 800)
        XCTAssertThrowsError(try RendezvousTable.parse("198.18.0.11 sleeping\n"))
        XCTAssertThrowsError(try RendezvousTable.parse("# nothing\n"))
    }

    func testCounterNamesAreDistinctAndIndexed() {
        XCTAssertEqual(Set(CounterName.all.map(\.index)).count, CounterName.count)
        XCTAssertEqual(CounterName.all.map(\.index), Array(0..<CounterName.count))
        var metrics = PrometheusText()
        CounterReport.write(
            [UInt64](repeating: 3, count: CounterName.count),
            queues: [
                QueueReport(
                    queue: 0, packets: 7, receiveErrors: 2,
                    kernel: KernelQueueStatistics(waiting: 1, queueDropped: 4, userDropped: 5))
            ],
            to: &metrics)
        ImageReport(version: "1.0", build: "a\"b", reexecs: 2, adoptedQueues: 1).write(to: &metrics)
        let text = metrics.text
        assertWellFormedExposition(text)
        XCTAssertTrue(text.contains("second_chance_build_info{version=\"1.0\",build=\"a\\\"b\"} 1"), text)
        XCTAssertTrue(text.contains("second_chance_packets_dropped_total{reason=\"gue_hlen\",path=\"queue\"} 3"))
        XCTAssertTrue(text.contains("second_chance_queue_packets_total{queue=\"0\"} 7"))
        XCTAssertTrue(text.contains("second_chance_queue_receive_errors_total{queue=\"0\"} 2"))
        XCTAssertTrue(text.contains("second_chance_queue_kernel_dropped_total{queue=\"0\"} 4"))
        XCTAssertTrue(text.contains("second_chance_queue_user_dropped_total{queue=\"0\"} 5"))
        XCTAssertTrue(text.contains("second_chance_queue_waiting{queue=\"0\"} 1"))
        XCTAssertTrue(
            text.contains("second_chance_packets_dropped_total{reason=\"untrusted_source\",path=\"queue\"} 3"))
        let lines = CounterReport.text([UInt64](repeating: 1, count: CounterName.count))
        XCTAssertTrue(lines.contains("dropped_untrusted_hop: 1\n"))
        XCTAssertTrue(lines.contains("dropped_not_local_destination: 1\n"))
        XCTAssertTrue(
            CounterReport.text([UInt64](repeating: 1, count: CounterName.count)).contains(
                "dropped_malformed: \(DropReason.allCases.count)"))
    }
}

final class SynCookieProgramTests: XCTestCase {
    func testProgramsHaveTheVerifiedShape() {
        let check = SynCookieProgram.instructions(.check, ipv6: false)
        XCTAssertEqual(check.first?.code, 0x61)
        XCTAssertEqual(check.filter { $0.code == 0x85 }.map(\.immediate), [206])
        XCTAssertEqual(check[3].immediate, 40, "bounds check covers IPv4 + TCP")
        let jump = check[4]
        XCTAssertEqual(jump.code, 0x2d)
        XCTAssertEqual(check[5 + Int(jump.offset)].immediate, 1, "too short: XDP_DROP")
        XCTAssertEqual(check.last?.code, 0x95)

        let generate6 = SynCookieProgram.instructions(.generate, ipv6: true, tcpLength: 24)
        XCTAssertEqual(generate6.filter { $0.code == 0x85 }.map(\.immediate), [205])
        XCTAssertEqual(generate6[3].immediate, 64)
        XCTAssertTrue(generate6.contains(where: { $0.code == 0xb7 && $0.destination == 3 && $0.immediate == 24 }))
        XCTAssertEqual(BPFInstructionRegisters.pack(destination: 6, source: 1), 0x16)
    }
}

enum BPFInstructionRegisters {
    static func pack(destination: UInt8, source: UInt8) -> UInt8 {
        BPFInstruction(code: 0, destination: destination, source: source, offset: 0, immediate: 0).registers
    }
}

/// Every family is declared once, HELP then TYPE, before its samples, and every sample belongs to
/// the family declared last.
func assertWellFormedExposition(_ text: String, file: StaticString = #filePath, line: UInt = #line) {
    var declared = Set<String>(), current = ""
    for row in text.split(separator: "\n").map(String.init) {
        if row.hasPrefix("# HELP ") {
            current = String(row.dropFirst(7).prefix { $0 != " " })
            XCTAssertTrue(declared.insert(current).inserted, "\(current) declared twice", file: file, line: line)
        } else if row.hasPrefix("# TYPE ") {
            XCTAssertTrue(row.hasPrefix("# TYPE \(current) "), "TYPE without its HELP: \(row)", file: file, line: line)
        } else {
            let name = row.prefix { $0 != "{" && $0 != " " }
            XCTAssertEqual(String(name), current, "sample outside its family: \(row)", file: file, line: line)
        }
    }
}
