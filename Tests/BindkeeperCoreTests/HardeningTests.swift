import Foundation
import Telemetry
import TestSupport
import XCTest

@testable import BindkeeperCore

/// What a grantee may send: paths, modes, owners and byte streams meant to reach past the grant or
/// to wear the broker down.
final class HardeningTests: XCTestCase {
    func url(_ text: String) -> Result<BindRequest, BindError> { BindRequest.parse(url: text) }

    func multibinder(_ params: String) -> Result<Wire.Request, Wire.Failure> {
        Wire.multibinder.parse(Array(#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[\#(params)]}"#.utf8))
    }

    func testLogLinesEscapeEveryCharacterThatCouldEndOrDisguiseThem() {
        XCTAssertEqual(LogText.escaped("plain text, ünïcode"), "plain text, ünïcode")
        XCTAssertEqual(LogText.escaped("a\nb\r\tc\u{0}\u{1b}[31m\u{7f}\u{85}"), #"a\nb\r\tc\x00\x1b[31m\x7f\x85"#)
        XCTAssertEqual(LogText.escaped("x\u{2028}y\u{202e}z\u{2066}"), #"x\u{2028}y\u{202e}z\u{2066}"#)
        XCTAssertEqual(LogText.escaped(#"already \n escaped"#), #"already \\n escaped"#, "a backslash is doubled")
        XCTAssertEqual(LogText.escaped("a b=c", quotingSpaces: true), #""a b=c""#)
        XCTAssertEqual(LogText.escaped(#"say "x""#, quotingSpaces: true), #""say \"x\"""#)
        XCTAssertEqual(LogText.escaped("one", quotingSpaces: true), "one")
        // What draws nothing, reorders what follows or passes for a space: a process's name or a
        // client's text must not read as other text than it holds.
        let invisible: [UInt32] = [
            0xad, 0xa0, 0x61c, 0x180e, 0x200b, 0x200c, 0x200d, 0x200e, 0x200f, 0x2060, 0x2064, 0x3000, 0x3164,
            0xfe0f, 0xfeff, 0xe0041, 0x1d173, 0x2800, 0x1d159,
        ]
        for value in invisible {
            let scalar = Unicode.Scalar(value)!
            let expected =
                value < 0x100 ? "a\\x" + String(value, radix: 16) + "b" : "a\\u{" + String(format: "%04x", value) + "}b"
            XCTAssertEqual(LogText.escaped("a" + String(scalar) + "b"), expected, String(value, radix: 16))
        }
        XCTAssertEqual(LogText.escaped("日本語, e\u{301}, 🙂"), "日本語, e\u{301}, 🙂", "what is seen stays")
        for text in ["e\u{302}\u{301} \u{1ec7}", "क्षि", "လျှော့", "👍🏽"] {
            XCTAssertEqual(
                Array(LogText.escaped(text).unicodeScalars), Array(text.unicodeScalars), "as written: \(text)")
        }
        // A combining mark drawn over the line's own text (a value's first character after the
        // daemon's space, quote or `=`), over an escape, or stacked past four, is escaped.
        XCTAssertEqual(LogText.escaped("peer: \u{338}ok"), #"peer: \u{0338}ok"#)
        XCTAssertEqual(LogText.escaped("x=\u{20dd}\u{301}"), #"x=\u{20dd}\u{0301}"#)
        XCTAssertEqual(LogText.escaped("\u{301}a"), #"\u{0301}a"#)
        XCTAssertEqual(LogText.escaped("a\u{200b}\u{301}"), #"a\u{200b}\u{0301}"#)
        XCTAssertEqual(
            LogText.escaped("a" + String(repeating: "\u{301}", count: 6)),
            "a" + String(repeating: "\u{301}", count: 4) + #"\u{0301}\u{0301}"#)
        XCTAssertEqual(
            LogText.escaped("ok", quotingSpaces: true) + LogText.escaped("\u{338} z", quotingSpaces: true),
            #"ok"\u{0338} z""#, "a quoted value's first mark too")
        // Right-to-left letters reorder the numbers and punctuation around them in a
        // bidirectional viewer: a value's text cannot move the daemon's.
        XCTAssertEqual(LogText.escaped("peer 1 \u{5d0} 2"), #"peer 1 \u{05d0} 2"#)
        XCTAssertEqual(LogText.escaped("\u{627}\u{64b}"), #"\u{0627}\u{064b}"#)
        XCTAssertEqual(LogText.escaped("\u{10900}"), #"\u{10900}"#)
        // A double diacritic draws over the next character too; a sound mark or a skin tone
        // joins whatever comes before it; an unassigned code point may be a later Unicode's mark.
        XCTAssertEqual(LogText.escaped("k=x\u{361} "), #"k=x\u{0361} "#)
        XCTAssertEqual(LogText.escaped("=\u{ff9e}"), #"=\u{ff9e}"#)
        XCTAssertEqual(LogText.escaped("=\u{1f3fd}"), #"=\u{1f3fd}"#)
        XCTAssertEqual(LogText.escaped("a\u{378}"), #"a\u{0378}"#)

        let handler = LineLogHandler(label: "daemon", priorityPrefix: true)
        let line = handler.format(
            level: .info, message: "bad request: \("x\n<0>FORGED")",
            metadata: ["peer": .string("p\nq r")])
        XCTAssertEqual(line, #"<6>daemon: bad request: x\n<0>FORGED peer="p\nq r""#)
        XCTAssertFalse(line.contains("\n"))
    }

    func testTheLogBudgetHoldsBackLinesBeyondItsRateAndSaysHowMany() {
        var budget = LogBudget(linesPerSecond: 3)
        let second: UInt64 = 1_000_000_000
        let start = 5 * second
        XCTAssertEqual((0..<3).map { budget.admit(now: start + UInt64($0)) }, [0, 0, 0])
        for tick in 3..<1000 { XCTAssertNil(budget.admit(now: start + UInt64(tick))) }
        XCTAssertEqual(budget.admit(now: start + second), 997, "the next second's first line says what was held back")
        XCTAssertEqual(budget.admit(now: start + second + 1), 0)
        // A clock reading below the last one neither traps nor stops the budget.
        XCTAssertNotNil(budget.admit(now: start))
    }

    func testUnixPathsAreAbsoluteAndCanonicalWhateverTheyArriveIn() throws {
        let refused = [
            "run/x.sock", "/run/../etc/x.sock", "/run/./x.sock", "//run/x.sock", "/run//x.sock", "/run/x/", "/", "",
            "/run/a b.sock", "/run/a?x", "/run/a\"x", "/run/a\nx", "/run/a%x", "/run/a&x", "/run/a\u{1}x",
            "/run/\u{e9}.sock",
            "/run/a#x", "/run/a\\x", "/run/" + String(repeating: "a", count: 110),
        ]
        for path in refused {
            XCTAssertThrowsError(try url("unix:" + path).get(), path)
            let bind = JSONValue.object(["type": .string("unix"), "address": .string(path)])
            let json = String(decoding: JSONText.encode(bind), as: UTF8.self)
            guard case .failure(let failure) = multibinder(json) else { return XCTFail("JSON accepted \(path)") }
            XCTAssertEqual(failure.error.code, -32602)
            let framed = Wire.framed.parse(
                JSONText.encode(
                    JSONValue.object([
                        "v": .integer(1), "id": .integer(1), "method": .string("bind"),
                        "binds": .array([bind]),
                    ])))
            guard case .failure = framed else { return XCTFail("framed accepted \(path)") }
        }
        for path in ["/run/web/app.sock", "/run/web/a-b_c.d+e,f=g@h~i", "/x"] {
            XCTAssertEqual(try url("unix:" + path).get().address, path)
        }
        XCTAssertEqual(try url("unix:/run/web/app.sock").get().unixLocation.directory, "/run/web")
        XCTAssertEqual(try url("unix:/x").get().unixLocation.directory, "/")
        XCTAssertEqual(try url("unix:/x").get().unixLocation.name, "x")
    }

    /// Found by the BindAddresses fuzz target: a 200-character group name made a URL too long for an
    /// fd-store name, so the socket could not survive a crash. Names are at most 32 bytes now, and
    /// the longest URL of each kind fits.
    func testTheLongestRequestsStillFitAnFDStoreName() throws {
        XCTAssertThrowsError(try url("unix:/run/a.sock?group=" + String(repeating: "3", count: 33)).get())
        XCTAssertThrowsError(try url("unix:/run/a.sock?owner=" + String(repeating: "w", count: 33)).get())
        let names = String(repeating: "n", count: 32)
        let longest = [
            "unix:/" + String(repeating: "p", count: 106) + "?mode=0777&owner=\(names)&group=\(names)",
            "tcp://[1111:2222:3333:4444:5555:6666:7777:8888%" + String(repeating: "i", count: 15)
                + "]:65535?backlog=2147483647&v6only=1&freebind=1",
        ]
        for text in longest {
            let request = try url(text).get()
            let name = try XCTUnwrap(FDStoreName.encode(request), text)
            XCTAssertLessThanOrEqual(name.utf8.count, 255)
            XCTAssertEqual(FDStoreName.decode(name), request)
        }
    }

    func testModesArePermissionBitsOnly() throws {
        XCTAssertEqual(try url("unix:/run/a.sock?mode=0777").get().mode, 0o777)
        for mode in ["04777", "01000", "2777", "7777", "0o777", "-1", "00000777", ""] {
            XCTAssertThrowsError(try url("unix:/run/a.sock?mode=" + mode).get(), mode)
        }
        for number in ["2559", "4294967807", "-1", "1.5"] {
            guard case .failure = multibinder(#"{"type":"unix","address":"/run/a.sock","mode":\#(number)}"#) else {
                return XCTFail(number)
            }
        }
        guard case .success = multibinder(#"{"type":"unix","address":"/run/a.sock","mode":432}"#) else {
            return XCTFail("0660 as a number")
        }
    }

    func testPatternsMatchWithinOneComponentUnlessTheySayOtherwise() throws {
        XCTAssertTrue(BindPattern.glob("/run/web/*", matches: "/run/web/a.sock"))
        XCTAssertFalse(BindPattern.glob("/run/web/*", matches: "/run/web/a/b.sock"))
        XCTAssertFalse(BindPattern.glob("/run/*/x.sock", matches: "/run/a/b/x.sock"))
        XCTAssertTrue(BindPattern.glob("/run/web/**", matches: "/run/web/a/b.sock"))
        XCTAssertTrue(BindPattern.glob("/run/**/x.sock", matches: "/run/a/b/x.sock"))
        XCTAssertFalse(BindPattern.glob("/run/web/**", matches: "/run/webx/a.sock"))
        XCTAssertTrue(BindPattern.glob("/run/*-*.sock", matches: "/run/a-b.sock"))
        XCTAssertFalse(BindPattern.glob("/run/*-*.sock", matches: "/run/a-b/c.sock"))
        // Long runs of stars do not make matching slow.
        XCTAssertFalse(
            BindPattern.glob(
                "/" + String(repeating: "*a", count: 50) + "b", matches: "/" + String(repeating: "a", count: 100)))
        for bad in ["unix:/run/web/../*", "unix:run/*", "unix:/run//*", "unix:/run/web/./*", "unix:/run/web/*/"] {
            XCTAssertThrowsError(try BindPattern.parse(bad).get(), bad)
        }
    }

    func testOwnersAndGroupsOtherThanTheRequestersNeedThePolicy() throws {
        let text =
            #"{"allow":[{"uid":33,"binds":["unix:/run/web/*"]},"#
            + #"{"uid":34,"binds":["unix:/run/api/*"],"owners":["haproxy"],"groups":[110]}]}"#
        let policy = try Policy.parse(
            Array(text.utf8), brokerUID: 500, resolveUser: { $0 == "haproxy" ? 110 : nil }, resolveGroup: { _ in nil }
        ).get()
        let web = try url("unix:/run/web/a.sock").get(), api = try url("unix:/run/api/a.sock").get()
        XCTAssertNil(policy.denial(uid: 33, gid: 33, request: web, owner: 33, group: 33), "its own uid and gid")
        XCTAssertNil(policy.denial(uid: 33, gid: 33, request: web))
        XCTAssertEqual(
            policy.denial(uid: 33, gid: 33, request: web, owner: 0),
            "uid 33 may not give unix:/run/web/a.sock to owner 0")
        XCTAssertEqual(
            policy.denial(uid: 33, gid: 33, request: web, group: 0),
            "uid 33 may not give unix:/run/web/a.sock to group 0")
        XCTAssertNil(policy.denial(uid: 34, gid: 34, request: api, owner: 110, group: 110))
        XCTAssertNotNil(policy.denial(uid: 34, gid: 34, request: api, owner: 0))
        XCTAssertNil(policy.denial(uid: 0, gid: 0, request: web, owner: 0, group: 0), "root may")
        XCTAssertThrowsError(
            try Policy.parse(
                Array(#"{"allow":[{"uid":1,"binds":["*"],"owners":["nobody-here"]}]}"#.utf8), brokerUID: 0,
                resolveUser: { _ in nil }, resolveGroup: { _ in nil }
            ).get())
        XCTAssertThrowsError(
            try Policy.parse(
                Array(#"{"allow":[{"uid":1,"binds":["*"],"ownerz":[]}]}"#.utf8), brokerUID: 0,
                resolveUser: { _ in nil }, resolveGroup: { _ in nil }
            ).get())
    }

    func testLabelsAreEscapedAsTheTextFormatRequires() {
        XCTAssertEqual(PrometheusText.escapeLabel(#"a"b\c"# + "\nd"), #"a\"b\\c\nd"#)
        XCTAssertEqual(PrometheusText.escapeLabel("tcp://[::]:443"), "tcp://[::]:443")
        // A quote and a combining mark are one Character, CR LF another: neither may pass whole.
        XCTAssertEqual(PrometheusText.escapeLabel("a\"\u{301}} 1\r\nforged 2"), "a\\\"\u{301}} 1\u{FFFD}\\nforged 2")
        XCTAssertEqual(PrometheusText.escapeLabel("x\u{202e}y\u{200b}z\u{1b}"), "x\u{FFFD}y\u{FFFD}z\u{FFFD}")
        XCTAssertEqual(PrometheusText.escapeLabel("日本語"), "日本語")
    }

    /// CPU time per byte of a 4 MiB stream against a 64 KiB one, read 64 KiB at a time as the
    /// broker reads: a reader that moves its buffer per message or per blank byte is quadratic and
    /// fails this by far; a linear one stays near 1.
    func testReadingIsLinearAndBoundedForAnyBytes() {
        let message = Array(
            #"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"198.18.0.1","port":80}]}"#.utf8)
        let frame = Wire.framed.request(id: .number(1), method: "list")
        func repeated(_ unit: [UInt8], _ count: Int) -> [UInt8] {
            var out: [UInt8] = []
            out.reserveCapacity(count + unit.count)
            while out.count < count { out.append(contentsOf: unit) }
            return Array(out.prefix(count))
        }
        // Junk: bytes that are neither blank, nor `{`, nor 0 (which would start the framed form).
        let excluded: Set<UInt8> = [0, 0x7b, 0x20, 0x0a, 0x0d, 0x09]
        let junk: [UInt8] = (0..<251).map { (index: Int) -> UInt8 in UInt8(index * 131 % 251) }.filter {
            !excluded.contains($0)
        }
        let streams: [(String, (Int) -> [UInt8])] = [
            ("small messages", { repeated(message, $0) }),
            ("small frames", { repeated(frame, $0) }),
            ("blanks after a message", { Array("{}".utf8) + [UInt8](repeating: 0x20, count: $0 - 2) }),
            ("junk", { repeated(junk, $0) }),
            ("one open value", { [0x7b] + [UInt8](repeating: 0x61, count: $0 - 1) }),
        ]
        for (name, make) in streams {
            func cost(_ bytes: [UInt8]) -> (seconds: Double, largest: Int) {
                var reader = RequestReader()
                var largest = 0
                let start = threadCPUSeconds()
                var offset = 0
                while offset < bytes.count {
                    let end = min(bytes.count, offset + 65536)
                    reader.append(bytes[offset..<end])
                    offset = end
                    while let next = reader.next() {
                        if case .failure(_, true) = next { reader = RequestReader() }
                    }
                    largest = max(largest, reader.bufferedBytes)
                }
                return (threadCPUSeconds() - start, largest)
            }
            let small = make(64 << 10), large = make(4 << 20)
            // The small stream 64 times over costs what a linear reader spends on the large one.
            var smallSeconds = 0.0
            for _ in 0..<64 { smallSeconds += cost(small).seconds }
            let (largeSeconds, largest) = cost(large)
            XCTAssertLessThan(
                largeSeconds, 3 * smallSeconds + 0.05,
                "\(name): \(largeSeconds) s for 4 MiB, \(smallSeconds) s for 64 x 64 KiB")
            // Reads of any size: 256 KiB in one piece against 16 KiB pieces. A reader quadratic in
            // what one read brings (moving its buffer per message or per blank) fails this by 16x.
            func wholeCost(_ bytes: [UInt8]) -> Double {
                var reader = RequestReader()
                let start = threadCPUSeconds()
                reader.append(bytes)
                while let next = reader.next() { if case .failure(_, true) = next { break } }
                return threadCPUSeconds() - start
            }
            let piece = make(16 << 10), whole = make(256 << 10)
            var pieces = 0.0
            for _ in 0..<16 { pieces += wholeCost(piece) }
            let wholeSeconds = wholeCost(whole)
            XCTAssertLessThan(
                wholeSeconds, 4 * pieces + 0.05,
                "\(name): \(wholeSeconds) s for 256 KiB in one read, \(pieces) s for 16 x 16 KiB")
            let limit = name == "small frames" ? Wire.maximumFrame + 4 : Wire.maximumMultibinderMessage
            XCTAssertLessThanOrEqual(largest, limit + 65536, "\(name): buffered \(largest) bytes")
        }
    }
}

func threadCPUSeconds() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}
