import Foundation
import LabKit
import NetTypes
import XCTest

/// The shipped alerting rules and dashboard (examples/monitoring): the rules pass promtool's
/// checks and their own unit tests, and every metric a rule or a dashboard query names, with
/// every label it selects or groups by, is one the running daemons export.
final class MonitoringTests: XCTestCase {
    static let directory = Lab.packageRoot.appendingPathComponent("examples/monitoring")

    func testTheAlertingRulesPassPromtoolAndTheirTests() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") else {
            throw LabError("promtool is not installed (scripts/setup.sh installs prometheus)")
        }
        let directory = Self.directory.path
        for command in ["check rules proxyside-alerts.yml", "test rules proxyside-alerts.test.yml"] {
            let output = try Lab.shell("cd \(directory) && promtool \(command) 2>&1")
            XCTAssertTrue(output.contains("SUCCESS"), output)
        }
    }

    func testEveryMetricTheDashboardAndTheRulesNameIsExported() throws {
        let lab = try Lab(prefix: "psmo")
        defer { lab.tearDown() }
        try lab.startEcho("p1")
        try lab.startSecondChance("p1", Lab.p1, extra: ["--metrics", "127.0.0.1:9523"])
        try lab.start(
            "p2", "bindkeeper",
            [
                "serve", "--socket", lab.directory.appendingPathComponent("bk.sock").path,
                "--metrics", "127.0.0.1:9524",
            ])
        var scrapes: [String] = []
        for (host, port) in [("p1", UInt16(9523)), ("p2", UInt16(9524))] {
            try lab.waitFor("metrics on \(host)") {
                (try? lab.inside(host) { try Lab.httpGet(.v4(IPv4Address("127.0.0.1")!), port: port) })?
                    .contains("process_start_time_seconds ") == true
            }
            scrapes.append(try lab.inside(host) { try Lab.httpGet(.v4(IPv4Address("127.0.0.1")!), port: port) })
        }
        let exported = Self.families(scrapes.joined(separator: "\n"))
        XCTAssertNotNil(exported["second_chance_mode_info"])
        XCTAssertNotNil(exported["bindkeeper_build_info"])

        let dashboard = try JSONSerialization.jsonObject(
            with: Data(contentsOf: Self.directory.appendingPathComponent("proxyside-dashboard.json")))
        var queries: [String] = []
        func collect(_ value: Any) {
            if let object = value as? [String: Any] {
                if let expr = object["expr"] as? String { queries.append(expr) }
                object.values.forEach(collect)
            } else if let array = value as? [Any] {
                array.forEach(collect)
            }
        }
        collect(dashboard)
        XCTAssertGreaterThan(queries.count, 20)
        let rules = try String(
            contentsOf: Self.directory.appendingPathComponent("proxyside-alerts.yml"), encoding: .utf8)
        let ruleQueries = rules.components(separatedBy: "expr:").dropFirst().map {
            $0.components(separatedBy: "labels:")[0]
        }
        XCTAssertEqual(ruleQueries.count, 9)
        for query in queries + ruleQueries {
            let names = Self.metricNames(query)
            XCTAssertFalse(names.isEmpty, query)
            for name in names where name != "up" {
                guard let labels = exported[name] else {
                    XCTFail("\(name), in \(query), is not exported")
                    continue
                }
                // A family the daemons export without samples here (no listener served) has no labels to check.
                guard !labels.isEmpty else { continue }
                for label in Self.labelNames(query) where !labels.contains(label) && !Self.targetLabels.contains(label)
                {
                    // The label may belong to another metric of the same query.
                    let elsewhere = names.contains { exported[$0]?.contains(label) == true }
                    XCTAssertTrue(elsewhere, "\(label), in \(query), is on none of its metrics")
                }
            }
        }
    }

    /// Labels Prometheus adds to every series it scrapes.
    static let targetLabels: Set<String> = ["instance", "job"]

    /// Every family of a scrape (its TYPE line) with the label names its samples carry.
    static func families(_ text: String) -> [String: Set<String>] {
        var families: [String: Set<String>] = [:]
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                families[String(line.split(separator: " ")[2]), default: []] = []
            } else if !line.hasPrefix("#"), let brace = line.firstIndex(of: "{") {
                let name = String(line[..<brace])
                let labels = line[line.index(after: brace)...].split(separator: ",").compactMap {
                    $0.split(separator: "=").first.map { String($0.trimmingCharacters(in: .whitespaces)) }
                }
                families[name, default: []].formUnion(labels)
            }
        }
        return families
    }

    /// The metric names of a query: the identifiers that name the daemons' families (or `up`).
    static func metricNames(_ query: String) -> Set<String> {
        Set(
            identifiers(query).filter {
                $0.hasPrefix("second_chance_") || $0.hasPrefix("bindkeeper_") || $0.hasPrefix("process_") || $0 == "up"
            })
    }

    /// Label names a query selects on (`name="..."`, `=~`, `!=`) or groups by (`by (a, b)`, `on (a)`).
    static func labelNames(_ query: String) -> Set<String> {
        var labels: Set<String> = []
        let pattern = try! NSRegularExpression(pattern: #"([a-z_]+)\s*(=~|!=|!~|=)\s*""#)
        let range = NSRange(query.startIndex..., in: query)
        for match in pattern.matches(in: query, range: range) {
            labels.insert(String(query[Range(match.range(at: 1), in: query)!]))
        }
        let grouping = try! NSRegularExpression(pattern: #"\b(by|on|without)\s*\(([^)]*)\)"#)
        for match in grouping.matches(in: query, range: range) {
            for name in query[Range(match.range(at: 2), in: query)!].split(separator: ",") {
                labels.insert(name.trimmingCharacters(in: .whitespaces))
            }
        }
        return labels
    }

    static func identifiers(_ query: String) -> [String] {
        let pattern = try! NSRegularExpression(pattern: #"[a-zA-Z_:][a-zA-Z0-9_:]*"#)
        return pattern.matches(in: query, range: NSRange(query.startIndex..., in: query)).map {
            String(query[Range($0.range, in: query)!])
        }
    }
}
