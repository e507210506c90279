import CFastPathABI
import NetTypes
import SecondChanceCore
import XCTest

@testable import SecondChance

/// The keys and values the daemon writes into the program's maps are the C structs' bytes, in
/// network order where the program compares them with packet bytes.
final class FastPathABITests: XCTestCase {
    func testEveryEncodingHasTheCStructsSizeAndByteOrder() throws {
        XCTAssertEqual(MemoryLayout<fp_listener_key>.size, 20)
        XCTAssertEqual(MemoryLayout<fp_ip6_prefix>.size, 20)
        XCTAssertEqual(MemoryLayout<fp_ip4_prefix>.size, 8)
        XCTAssertEqual(MemoryLayout<fp_config>.size, 32)

        let v4 = ListenerKey(address: try XCTUnwrap(IPAddress("198.18.0.10")), port: 443)
        XCTAssertEqual(FastPathABI.key(v4), [4, 0, 0x01, 0xbb, 198, 18, 0, 10] + [UInt8](repeating: 0, count: 12))
        let v6 = ListenerKey(address: try XCTUnwrap(IPAddress("2001:db8::1")), port: 8080)
        XCTAssertEqual(
            FastPathABI.key(v6),
            [6, 0, 0x1f, 0x90, 0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1])

        let prefix6 = IPv6Prefix(network: try XCTUnwrap(IPv6Address("2001:db8:1::")), length: 48)
        XCTAssertEqual(
            FastPathABI.key(prefix6),
            [48, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 1] + [UInt8](repeating: 0, count: 10))
        let prefix4 = try XCTUnwrap(IPv4Prefix("198.18.0.0/15"))
        XCTAssertEqual(FastPathABI.key(prefix4), [15, 0, 0, 0, 198, 18, 0, 0])

        XCTAssertEqual(
            FastPathABI.value(.interfaces([7, 3])), [3, 0, 0, 0, 7, 0, 0, 0] + [UInt8](repeating: 0, count: 8))
        XCTAssertEqual(FastPathABI.value(.unchecked).prefix(4), [0xff, 0xff, 0xff, 0xff])
        XCTAssertEqual(
            FastPathABI.value(ReplyRoutes.Route(mss: 1460, interfaceIndex: 2)), [0xb4, 0x05, 0, 0, 2, 0, 0, 0])
    }

    /// Each map the Swift side names is one the object has, by that name.
    func testTheObjectHasEveryMapByItsOneName() throws {
        let object = try FastPathObject()
        XCTAssertEqual(Set(object.maps.keys), Set(FastPathMap.names))
        for map in FastPathMap.allCases { XCTAssertGreaterThanOrEqual(object.map(map), 0, map.rawValue) }
    }
}
