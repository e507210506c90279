import BindkeeperCore
import Foundation
import XCTest

final class ProtocolTests: XCTestCase {
    func parse(_ text: String) -> Result<MultibinderProtocol.Request, MultibinderProtocol.Failure> {
        MultibinderProtocol.parse(Array(text.utf8))
    }

    func testMultibinderRequestsParseAsTheRubyClientSendsThem() throws {
        let request = try parse(#"{"jsonrpc":"2.0","method":"bind","id":7,"params":[{"address":"198.19.0.10","port":443,"backlog":4096}]}"#).get()
        XCTAssertEqual(request.id, .number(7))
        XCTAssertEqual(request.bind, BindRequest(kind: .tcp, address: "198.19.0.10", port: 443, backlog: 4096))
        XCTAssertEqual(request.bind.key, "tcp://198.19.0.10:443")
        let v6 = try parse(#"{"jsonrpc":"2.0","method":"bind","id":"a","params":[{"address":"::","port":80,"type":"udp","v6only":true}]}"#).get()
        XCTAssertEqual(v6.id, .string("a"))
        XCTAssertEqual(v6.bind.key, "udp://[::]:80")
        XCTAssertEqual(v6.bind.ipv6Only, true)
    }

    func testBadRequestsGetJSONRPCErrorsWithTheirId() {
        let cases: [(String, Int)] = [
            ("not json", -32700), ("[1,2]", -32700),
            (#"{"jsonrpc":"1.0","method":"bind","id":1}"#, -32600),
            (#"{"jsonrpc":"2.0","id":1}"#, -32600),
            (#"{"jsonrpc":"2.0","method":"unbind","id":1,"params":[]}"#, -32601),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":{}}"#, -32602),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"x","port":70000}]}"#, -32602),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"x","port":1,"backlog":-5}]}"#, -32602),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"","port":1}]}"#, -32602),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"x","port":1,"type":"sctp"}]}"#, -32602),
        ]
        for (text, code) in cases {
            guard case .failure(let failure) = parse(text) else { XCTFail("accepted: \(text)"); continue }
            let (id, error) = (failure.id, failure.error)
            XCTAssertEqual(error.code, code, text)
            if code != -32700 { XCTAssertEqual(id, .number(1), text) }
            let reply = try? JSONSerialization.jsonObject(with: Data(MultibinderProtocol.error(id: id, error))) as? [String: Any]
            XCTAssertEqual(reply?["jsonrpc"] as? String, "2.0")
            XCTAssertEqual((reply?["error"] as? [String: Any])?["code"] as? Int, code)
            XCTAssertNil((reply?["error"] as? [String: Any])?["backtrace"])
        }
        XCTAssertEqual(try? parse(String(repeating: " ", count: 70000)).get(), nil)
    }

    func testResultsAndConflicts() throws {
        let reply = try JSONSerialization.jsonObject(with: Data(MultibinderProtocol.result(id: .number(3)))) as? [String: Any]
        XCTAssertEqual(reply?["result"] as? Bool, true)
        XCTAssertEqual(reply?["id"] as? Int, 3)
        let a = BindRequest(kind: .tcp, address: "::", port: 443, ipv6Only: true)
        XCTAssertNil(a.conflict(with: BindRequest(kind: .tcp, address: "::", port: 443)))
        XCTAssertNotNil(a.conflict(with: BindRequest(kind: .tcp, address: "::", port: 443, ipv6Only: false)))
        XCTAssertEqual(BindRequest(kind: .unix, address: "/run/x.sock", port: 0, mode: 0o660).key, "unix:/run/x.sock")
    }
}
