import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChanceCore
import XCTest

/// Numbered UDP datagrams from the client to a service on the VIP in P1, GUE-encapsulated as a
/// director would send them: what reached the service tells which packets were lost.
struct DatagramTraffic {
    let lab: Lab
    static let servicePort: UInt16 = 7777

    /// A UDP service on the VIP in P1 with room for every datagram a test sends.
    func openService() throws -> Int32 {
        try lab.inside("p1") {
            let fd = try LabSockets.bindUDP(.v4(Lab.vip), port: DatagramTraffic.servicePort, receiveTimeoutSeconds: 1)
            var bytes: Int32 = 16 << 20
            setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, socklen_t(MemoryLayout<Int32>.size))
            return fd
        }
    }

    /// Datagrams numbered `numbers` to the service, GUE-encapsulated from the client as a
    /// director would, one every `pace` microseconds.
    func send(_ numbers: Range<UInt32>, pace: UInt32 = 0) throws {
        try DatagramTraffic.send(numbers, pace: pace, from: lab.namespace("c"))
    }

    /// `source`: the outer source (the client's own by default; the director's to pass rules that
    /// hear only the GLB peers, sent from the director's namespace).
    /// `proceed`: asked before each datagram; the first `false` ends the sending. Returns the
    /// numbers sent.
    @discardableResult
    static func send(
        _ numbers: Range<UInt32>, pace: UInt32, from namespace: String, source: IPv4Address = Lab.client,
        while proceed: () -> Bool = { true }
    ) throws -> Range<UInt32> {
        try NetworkNamespace(nameOrPath: namespace).run {
            let fd = try LabSockets.bindUDP(.v4(source), port: 30100)
            defer { close(fd) }
            for number in numbers {
                guard proceed() else { return numbers.lowerBound..<number }
                var datagram: [UInt8] = [
                    0x9c, 0x41, UInt8(DatagramTraffic.servicePort >> 8), UInt8(DatagramTraffic.servicePort & 0xff), 0,
                    12, 0, 0,
                ]
                datagram += [
                    UInt8(number >> 24), UInt8((number >> 16) & 0xff), UInt8((number >> 8) & 0xff),
                    UInt8(number & 0xff),
                ]
                let inner = PacketBuilder.ip(
                    source: .v4(Lab.client), destination: .v4(Lab.vip), protocol: 17, transport: datagram,
                    checksumOffset: 6)
                let payload = PacketBuilder.guePayload(inner: inner, hops: [Lab.p2])
                let sent = SocketAddress(.v4(Lab.p1), port: GUEPacket.port).withSockaddr { address, length in
                    payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, address, length) }
                }
                guard sent == payload.count else { throw SystemError("sendto GUE") }
                if pace > 0 { usleep(pace) }
            }
            return numbers
        }
    }

    /// The numbers the service received, until it has been quiet for a second.
    func received(_ service: Int32) -> Set<UInt32> {
        var numbers: Set<UInt32> = []
        var buffer = [UInt8](repeating: 0, count: 64)
        while recv(service, &buffer, buffer.count, 0) == 4 {
            numbers.insert(
                UInt32(buffer[0]) << 24 | UInt32(buffer[1]) << 16 | UInt32(buffer[2]) << 8 | UInt32(buffer[3]))
        }
        return numbers
    }

    func assertAllReceived(
        _ numbers: Set<UInt32>, _ expected: Range<UInt32>, _ what: String, file: StaticString = #filePath,
        line: UInt = #line
    ) {
        let missing = Set(expected).subtracting(numbers).sorted()
        XCTAssertTrue(
            missing.isEmpty, "\(what): \(missing.count) of \(expected.count) lost, first \(missing.prefix(10))",
            file: file, line: line)
    }

    /// Packets the kernel holds in queue 0 of a host, waiting for a verdict.
    func waiting(_ host: String) throws -> UInt64 {
        try lab.inside(host) { ProcFile.kernelQueueStatistics()[0]?.waiting ?? 0 }
    }
}
