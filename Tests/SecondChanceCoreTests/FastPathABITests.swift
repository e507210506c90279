import CFastPathABI
import FastPathProgram
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

    /// The object has no data section (.rodata from an initializer, .data, .bss): Linux 5.10
    /// refuses the BTF of one without variables, libbpf then loads the program without BTF, and
    /// its global function is verified as a static one, past the verifier's limit.
    func testTheObjectHasNoDataSectionAnOldKernelsBTFWouldRefuse() throws {
        let names = try Self.sectionNames(FastPathProgram.object)
        XCTAssertTrue(names.contains("tc") && names.contains(".BTF"), "\(names)")
        XCTAssertEqual(names.filter { [".rodata", ".data", ".bss"].contains($0) || $0.hasPrefix(".rodata.") }, [])
    }

    /// The section names of an ELF64 little-endian object.
    static func sectionNames(_ bytes: [UInt8]) throws -> [String] {
        func word(_ at: Int, _ size: Int) throws -> Int {
            guard at >= 0, at + size <= bytes.count else { throw ELFError("ELF read past its end at \(at)") }
            return (0..<size).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) }
        }
        guard bytes.starts(with: [0x7f, 0x45, 0x4c, 0x46, 2, 1]) else { throw ELFError("not ELF64 LE") }
        let (table, entrySize, count, namesIndex) = (
            try word(0x28, 8), try word(0x3a, 2), try word(0x3c, 2), try word(0x3e, 2)
        )
        let namesOffset = try word(table + namesIndex * entrySize + 0x18, 8)
        return try (0..<count).map { index in
            let start = namesOffset + (try word(table + index * entrySize, 4))
            guard start < bytes.count, let end = bytes[start...].firstIndex(of: 0) else { throw ELFError("name") }
            return String(decoding: bytes[start..<end], as: UTF8.self)
        }
    }

    struct ELFError: Error { let text: String; init(_ text: String) { self.text = text } }
}
