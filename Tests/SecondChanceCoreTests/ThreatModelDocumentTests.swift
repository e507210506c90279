import Foundation
import XCTest

/// docs/threat-model.md against the test sources: every entry point the trust model names has a
/// section, every section names tests, and every test it names exists.
final class ThreatModelDocumentTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The entry points no section may go without (DEVELOPERS.md's list).
    static let required = [
        "GUE at tc ingress", "GUE at the queue", "GUE with fou", "control socket", "metrics ports", "fd store",
        "policy file", "defaults files", "signals", "package's scripts",
    ]

    func testEveryEntryPointNamesTestsThatExist() throws {
        let document = try String(
            contentsOf: Self.root.appendingPathComponent("docs/threat-model.md"), encoding: .utf8)
        let sections = document.components(separatedBy: "\n## Entry: ").dropFirst()
        XCTAssertGreaterThanOrEqual(sections.count, Self.required.count)
        for entry in Self.required {
            XCTAssertTrue(sections.contains { $0.prefix { $0 != "\n" }.contains(entry) }, "no section for \(entry)")
        }
        let sources = try testSources()
        for section in sections {
            let title = String(section.prefix { $0 != "\n" })
            let named = section.components(separatedBy: "\n").compactMap(Self.namedTest)
            XCTAssertFalse(named.isEmpty, "\(title) names no test")
            for (type, method) in named {
                let found = sources.contains { text in
                    (text.contains("class \(type):") || text.contains("extension \(type) "))
                        && text.contains("func \(method)()")
                }
                XCTAssertTrue(found, "\(title): \(type).\(method) is not a test in Tests/")
            }
        }
    }

    /// `Type.testName` from a line "- `Type.testName`".
    static func namedTest(_ line: String) -> (String, String)? {
        guard line.hasPrefix("- `"), line.hasSuffix("`") else { return nil }
        let name = line.dropFirst(3).dropLast()
        let parts = name.split(separator: ".")
        guard parts.count == 2, parts[1].hasPrefix("test") else { return nil }
        return (String(parts[0]), String(parts[1]))
    }

    func testSources() throws -> [String] {
        let tests = Self.root.appendingPathComponent("Tests")
        let files = FileManager.default.enumerator(atPath: tests.path)?.compactMap { $0 as? String } ?? []
        return try files.filter { $0.hasSuffix(".swift") }.map {
            try String(contentsOf: tests.appendingPathComponent($0), encoding: .utf8)
        }
    }
}
