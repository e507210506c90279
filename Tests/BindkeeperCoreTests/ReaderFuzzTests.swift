import Telemetry
import TestSupport
import XCTest

@testable import BindkeeperCore

/// The request reader takes bytes from any local client: random streams and mutated requests, cut
/// at random points, must give answers or errors, never a crash, and never grow its buffer past the
/// form's limit.
final class ReaderFuzzTests: XCTestCase {
    func testRandomAndMutatedStreams() {
        var random = SeededGenerator.fromEnvironment(name: #function)
        let seeds: [[UInt8]] = [
            Wire.multibinder.request(
                id: .number(1), method: "bind",
                binds: [BindRequest(kind: .tcp, address: "198.18.0.1", port: 80, backlog: 10)]),
            Wire.framed.request(
                id: .string("x"), method: "bind",
                binds: [BindRequest(kind: .unix, address: "/run/a.sock", port: 0, mode: 0o600)]),
            Wire.framed.request(id: .null, method: "list"),
            Array(
                #"{"jsonrpc":"2.0","method":"bind","params":[{"address":"::1","port":1,"v6only":true,"type":"udp"}]}"#
                    .utf8),
        ]
        let alphabet = Array(#"{}[]":,\ 0123456789abcdef-.%/?&="#.utf8)
        var requests = 0, failures = 0
        for iteration in 0..<20_000 {
            var stream: [UInt8]
            if iteration % 4 == 0 {
                stream = (0..<random.below(300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            } else {
                stream = seeds[random.below(seeds.count)]
                random.mutate(&stream, alphabet: alphabet, times: 6)
                stream += seeds[random.below(seeds.count)]
            }
            var reader = RequestReader()
            var offset = 0
            var ended = false
            while offset < stream.count && !ended {
                let end = min(stream.count, offset + 1 + random.below(64))
                reader.append(stream[offset..<end])
                offset = end
                while let next = reader.next() {
                    switch next {
                    case .request: requests += 1
                    case .failure(_, let fatal):
                        failures += 1
                        if fatal { ended = true }
                    }
                    if ended { break }
                }
                XCTAssertLessThanOrEqual(reader.bufferedBytes, Wire.maximumFrame + 4 + 64)
            }
        }
        XCTAssertGreaterThan(requests, 1000, "mutations leave many requests whole")
        XCTAssertGreaterThan(failures, 1000)
    }

    /// Mutated URLs: whatever parses, by any door, comes back the same through every other (the
    /// URL, the JSON form, the fd store's name, the re-exec state), and its metrics label stays one
    /// label; patterns, fd-store names and templates built from the same bytes never crash.
    func testRandomURLsAndPolicyPatternsNeverCrash() {
        var random = SeededGenerator.fromEnvironment(name: #function)
        let alphabet = Array("tcpudnix:/[]%.0123456789abcdef?&=*-vonlyfrebiskmdgwXYZ_+,@~\"\\ \n\t#".utf8)
        let seeds = [
            "tcp://198.18.0.1:80?backlog=10", "udp://[::]:53?v6only=1", "tcp://[fe80::1%lo]:443?freebind=1",
            "unix:/run/a.sock?mode=0600&owner=www&group=www", "unix:/run/web/app.sock?mode=0660&owner=www&group=33",
            "unix:/a", "tcp://*:8000-8999",
        ].map { Array($0.utf8) }
        var parsed = 0
        for _ in 0..<50_000 {
            var bytes = seeds[random.below(seeds.count)]
            random.mutate(&bytes, alphabet: alphabet, times: 4)
            let text = String(decoding: bytes, as: UTF8.self)
            let context = "\(random.report) \(text.debugDescription)"
            if case .success(let request) = BindRequest.parse(url: text) {
                parsed += 1
                XCTAssertEqual(try? BindRequest.parse(url: request.url).get(), request, "URL: \(context)")
                XCTAssertEqual(try? Wire.bindRequest(json: Wire.jsonParams(request)).get(), request, "JSON: \(context)")
                XCTAssertEqual(FDStoreName.encode(request).flatMap(FDStoreName.decode), request, "fd store: \(context)")
                let state = BrokerState(
                    control: 3, sockets: [.init(fd: 4, request: request, handedOut: 1, creator: 33)], clients: [])
                XCTAssertEqual(try? BrokerState.decode(state.encoded()).get(), state, "state: \(context)")
                let label = PrometheusText.escapeLabel(request.key)
                XCTAssertFalse(label.contains("\n"), context)
                XCTAssertFalse(
                    label.replacingOccurrences(of: "\\\\", with: "").replacingOccurrences(of: "\\\"", with: "")
                        .contains("\""), context)
            }
            _ = BindPattern.parse(text)
            _ = FDStoreName.decode(text)
            _ = ConfigTemplate.parse("a {{bind " + text + "}} b")
        }
        XCTAssertGreaterThan(parsed, 1000)
    }
}
