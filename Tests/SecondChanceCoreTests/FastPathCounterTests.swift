import CFastPathABI
import SecondChance
import SecondChanceCore
import XCTest

/// The tc program's counter slots and the daemon's names for them: one meaning per slot.
final class FastPathCounterTests: XCTestCase {
    func testEverySlotHasExactlyOneMeaning() {
        let slots =
            FastPathCounters.mirrored.map { Int($0.slot.rawValue) }
            + FastPathCounters.passedUp.map {
                Int($0.slot.rawValue)
            }
        XCTAssertEqual(slots.sorted(), Array(0..<FastPathCounters.slotCount))
        XCTAssertEqual(Set(FastPathCounters.mirrored.map(\.name.index)).count, FastPathCounters.mirrored.count)
        XCTAssertEqual(Set(FastPathCounters.passedUp.map(\.reason)).count, FastPathCounters.passedUp.count)
        XCTAssertEqual(FastPathCounters.slot(for: .local(.syn)), Int(FP_LOCAL_SYN.rawValue))
        XCTAssertNil(FastPathCounters.slot(for: .lookups), "socket look-ups through sock_diag: the queue's alone")
    }
}
