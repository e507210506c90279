import CNetfilterQueue
import Glibc
import NetTypes
import SecondChanceCore
import XCTest

@testable import SecondChance

/// How a packet message from the kernel is read: every message whose id can be read gets a verdict.
final class QueueMessageTests: XCTestCase {
    /// An NFQNL_MSG_PACKET message: nlmsghdr, nfgenmsg, then (type, payload) attributes.
    func message(_ attributes: [(UInt16, [UInt8])]) -> [UInt8] {
        var body: [UInt8] = [UInt8(AF_INET), 0, 0, 0]  // nfgenmsg
        for (type, payload) in attributes {
            let length = 4 + payload.count
            body += [UInt8(length & 0xff), UInt8(length >> 8), UInt8(type & 0xff), UInt8(type >> 8)] + payload
            body += [UInt8](repeating: 0, count: (4 - length % 4) % 4)
        }
        let total = 16 + body.count
        let type = UInt16(NFNL_SUBSYS_QUEUE << 8) | UInt16(NFQNL_MSG_PACKET.rawValue)
        var header = [UInt8](repeating: 0, count: 16)
        withUnsafeBytes(of: UInt32(total)) { header.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: type) { header.replaceSubrange(4..<6, with: $0) }
        return header + body
    }

    func read(_ bytes: [UInt8]) -> (id: UInt32?, payload: [UInt8], intact: Bool) {
        let attributes = UnsafeMutablePointer<UnsafeMutablePointer<nlattr>?>.allocate(
            capacity: Int(__NFQA_MAX.rawValue))
        defer { attributes.deallocate() }
        var copy = bytes
        return copy.withUnsafeMutableBytes { buffer in
            let (packet, intact) = NetfilterQueue.queuedPacket(
                buffer.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), attributes: attributes)
            return (packet?.id, packet.map { Array(UnsafeRawBufferPointer($0.payload)) } ?? [], intact)
        }
    }

    let packetHeader: [UInt8] = [0, 0, 0x30, 0x39, 0x08, 0x00, 0]  // id 12345, ETH_P_IP, hook 0

    func testADamagedPacketMessageStillGetsAVerdictByItsID() {
        let payload: [UInt8] = [0x45, 0, 0, 20]
        let intact = read(
            message([(UInt16(NFQA_PACKET_HDR.rawValue), packetHeader), (UInt16(NFQA_PAYLOAD.rawValue), payload)]))
        XCTAssertEqual(intact.id, 12345)
        XCTAssertEqual(intact.payload, payload)
        XCTAssertTrue(intact.intact)

        // A mark of two bytes fails nfq_nlmsg_parse's validation; no payload attribute at all.
        for damaged in [
            message([
                (UInt16(NFQA_PACKET_HDR.rawValue), packetHeader), (UInt16(NFQA_MARK.rawValue), [1, 2]),
                (UInt16(NFQA_PAYLOAD.rawValue), payload),
            ]),
            message([(UInt16(NFQA_PACKET_HDR.rawValue), packetHeader)]),
        ] {
            let read = read(damaged)
            XCTAssertEqual(read.id, 12345, "the verdict goes to the packet's id")
            XCTAssertEqual(read.payload, [], "decided on no bytes")
            XCTAssertFalse(read.intact, "counted as a receive error")
        }
        // Without a header there is no id to answer.
        let headless = read(message([(UInt16(NFQA_PAYLOAD.rawValue), payload)]))
        XCTAssertNil(headless.id)
        XCTAssertFalse(headless.intact)

        // No bytes is a malformed packet: dropped and counted, like any other.
        var ownership = TableOwnership(sockets: [:])
        let verdict = [UInt8]().withUnsafeBytes { p1Decider.decide($0, ownership: &ownership).verdict }
        XCTAssertEqual(verdict, .drop(.outerTruncated))
    }
}
