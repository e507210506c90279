import Foundation
import LinuxSys
import XCTest

@testable import BindkeeperCore

final class ProtocolTests: XCTestCase {
    /// Everything a reader yields for `bytes` fed in one piece.
    func read(_ bytes: [UInt8]) -> [RequestReader.Next] {
        var reader = RequestReader()
        reader.append(bytes)
        var out: [RequestReader.Next] = []
        while let next = reader.next() { out.append(next) }
        return out
    }

    func request(_ text: String) throws -> Wire.Request {
        guard case .request(let request)? = read(Array(text.utf8)).first else {
            throw BindError("not a request: \(text)")
        }
        return request
    }

    func testMultibinderRequestsParseAsTheRubyClientSendsThem() throws {
        let request = try request(
            #"{"jsonrpc":"2.0","method":"bind","params":[{"address":"198.19.0.10","port":443,"backlog":4096}]}"#)
        XCTAssertEqual(request.wire, .multibinder)
        XCTAssertEqual(request.id, .null)
        XCTAssertEqual(
            request.method, .bind([BindRequest(kind: .tcp, address: "198.19.0.10", port: 443, backlog: 4096)]))
        let v6 = try self.request(
            #"{"jsonrpc":"2.0","method":"bind","id":"a","#
                + #""params":[{"address":"0:0::0","port":80,"type":"udp","v6only":true}]}"#
        )
        XCTAssertEqual(v6.id, .string("a"))
        guard case .bind(let binds) = v6.method else { return XCTFail() }
        XCTAssertEqual(binds[0].key, "udp://[::]:80")
        XCTAssertEqual(binds[0].ipv6Only, true)
    }

    func testMessagesSplitAtTheEndOfEachJSONValueWhateverTheReadsLookLike() throws {
        let one = #"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"127.0.0.1","port":1,"x":"}{\"]"}]}"#
        let two = #" {"jsonrpc":"2.0","method":"bind","id":2,"params":[{"address":"::1","port":2}]}"#
        let bytes = Array((one + two).utf8)
        // One byte at a time: nothing until a value closes; a brace inside a string does not count.
        var reader = RequestReader()
        var outcomes: [RequestReader.Next] = []
        for byte in bytes {
            reader.append([byte])
            while let next = reader.next() { outcomes.append(next) }
        }
        XCTAssertEqual(outcomes.count, 2)
        guard case .failure(let failure, false) = outcomes[0] else { return XCTFail("\(outcomes[0])") }
        XCTAssertEqual(failure.id, .number(1))
        XCTAssertEqual(failure.error.code, -32602)  // unknown option x
        guard case .request(let second) = outcomes[1] else { return XCTFail() }
        XCTAssertEqual(second.id, .number(2))
        // Both at once: the same two outcomes.
        XCTAssertEqual(read(bytes), outcomes)
    }

    func testBadRequestsGetJSONRPCErrorsWithTheirId() {
        let cases: [(String, Int)] = [
            ("not json", -32700), ("[1,2]", -32700),
            (#"{"jsonrpc":"1.0","method":"bind","id":1}"#, -32600),
            (#"{"jsonrpc":"2.0","id":1}"#, -32600),
            (#"{"jsonrpc":"2.0","method":"unbind","id":1,"params":[]}"#, -32601),
            (#"{"jsonrpc":"2.0","method":"list","id":1}"#, -32601),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":{}}"#, -32602),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"127.0.0.1","port":70000}]}"#, -32602),
            (
                #"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"127.0.0.1","port":1,"backlog":-5}]}"#,
                -32602
            ),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"","port":1}]}"#, -32602),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"localhost","port":1}]}"#, -32602),
            (
                #"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"127.0.0.1","port":1,"type":"sctp"}]}"#,
                -32602
            ),
            (
                #"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"127.0.0.1","port":1,"v6only":true}]}"#,
                -32602
            ),
            (#"{"jsonrpc":"2.0","method":"bind","id":1,"params":[{"address":"relative.sock","type":"unix"}]}"#, -32602),
        ]
        for (text, code) in cases {
            let outcomes = read(Array(text.utf8))
            guard case .failure(let failure, let fatal)? = outcomes.first else {
                XCTFail("accepted: \(text)"); continue
            }
            XCTAssertFalse(fatal, text)
            XCTAssertEqual(failure.error.code, code, text)
            if code != -32700 { XCTAssertEqual(failure.id, .number(1), text) }
            let reply = JSONValue.parse(Wire.multibinder.error(id: failure.id, failure.error))?.object
            XCTAssertEqual(reply?["jsonrpc"], .string("2.0"))
            XCTAssertEqual(reply?["error"]?.object?["code"]?.integer, Int64(code))
            XCTAssertEqual(reply?["error"]?.object?.keys.sorted(), ["code", "message"], "never a backtrace")
        }
    }

    func testOversizedMessagesEndTheConnection() {
        guard
            case .failure(let failure, true)? = read(Array(("{\"a\":\"" + String(repeating: "x", count: 70000)).utf8))
                .first
        else {
            return XCTFail("an unbounded message was buffered")
        }
        XCTAssertEqual(failure.error.code, -32600)
        // A frame announcing more than the limit is refused before its body arrives.
        guard case .failure(_, true)? = read([0, 0x20, 0, 0, 1]).first else { return XCTFail() }
    }

    func testFramedRequestsRoundTripAndBatch() throws {
        let binds = [
            BindRequest.parse(url: "tcp://[::]:443?backlog=4096&v6only=1"),
            BindRequest.parse(url: "unix:/run/app.sock?mode=0660&owner=www-data"),
        ].map { try! $0.get() }
        let bytes = Wire.framed.request(id: .number(9), method: "bind", binds: binds)
        XCTAssertEqual(bytes[0], 0)
        let outcomes = read(bytes + Wire.framed.request(id: .number(10), method: "list"))
        XCTAssertEqual(
            outcomes,
            [
                .request(Wire.Request(wire: .framed, id: .number(9), method: .bind(binds))),
                .request(Wire.Request(wire: .framed, id: .number(10), method: .list)),
            ])
        // Objects work as well as URLs; an unknown method or a wrong version is an error, not a guess.
        let object = Wire.framed.encode(
            JSONValue.object([
                "v": .integer(1), "id": .integer(1), "method": .string("bind"),
                "binds": .array([
                    .object([
                        "type": .string("udp"), "address": .string("127.0.0.1"),
                        "port": .integer(53),
                    ])
                ]),
            ]))
        guard case .request(let parsed)? = read(object).first else { return XCTFail() }
        XCTAssertEqual(parsed.method, .bind([BindRequest(kind: .udp, address: "127.0.0.1", port: 53)]))
        let bodies: [JSONValue] = [
            .object(["v": .integer(2), "id": .integer(1), "method": .string("list")]),
            .object(["v": .integer(1), "id": .integer(1), "method": .string("shutdown")]),
            .object(["v": .integer(1), "id": .integer(1), "method": .string("bind"), "binds": .array([])]),
        ]
        for body in bodies {
            guard case .failure(let failure, false)? = read(Wire.framed.encode(body)).first else {
                return XCTFail("\(body)")
            }
            XCTAssertEqual(failure.id, .number(1))
        }
        let tooMany = (0..<(Wire.maximumBatch + 1)).map { _ in binds[0] }
        guard case .failure(_, false)? = read(Wire.framed.request(id: .null, method: "bind", binds: tooMany)).first
        else { return XCTFail() }
        // The client side reads the replies back.
        var replies = FrameReader()
        replies.append(
            Wire.framed.result(id: .number(9), Reply.Bind(sockets: []))
                + Wire.framed.error(id: .number(10), .methodNotFound).prefix(5))
        let reply = try JSONText.decode(Wire.Envelope<Reply.Bind>.self, from: try XCTUnwrap(replies.next()))
        XCTAssertEqual(reply.id, .number(9))
        XCTAssertEqual(reply.result, Reply.Bind(sockets: []))
        XCTAssertNil(try replies.next())
    }

    func testURLsKeysAndConflicts() throws {
        let request = try BindRequest.parse(url: "tcp://[fe80::1%eth0]:80?backlog=512&freebind=1").get()
        XCTAssertEqual(request.key, "tcp://[fe80::1%eth0]:80")
        XCTAssertEqual(try BindRequest.parse(url: request.url).get(), request)
        XCTAssertEqual(try BindRequest.parse(url: "tcp://0000::0:443").get().key, "tcp://[::]:443")
        for bad in [
            "tcp://1.2.3.4", "sctp://1.2.3.4:5", "tcp://[::1:5", "tcp://1.2.3.4:5?bogus=1", "udp://1.2.3.4:5?backlog=3",
            "tcp://1.2.3.4:5?mode=0600", "unix:/x?v6only=1", "unix:rel", "tcp://1.2.3.4:5?v6only=1",
        ] {
            XCTAssertThrowsError(try BindRequest.parse(url: bad).get(), bad)
        }
        let existing = BindRequest(kind: .tcp, address: "::", port: 443, backlog: 1024, ipv6Only: true)
        XCTAssertNil(existing.conflict(with: BindRequest(kind: .tcp, address: "::", port: 443)))
        XCTAssertNil(existing.conflict(with: existing))
        XCTAssertNotNil(existing.conflict(with: BindRequest(kind: .tcp, address: "::", port: 443, ipv6Only: false)))
        XCTAssertNotNil(existing.conflict(with: BindRequest(kind: .tcp, address: "::", port: 443, backlog: 10)))
        XCTAssertNotNil(
            BindRequest(kind: .unix, address: "/run/x.sock", port: 0, mode: 0o660).conflict(
                with: BindRequest(kind: .unix, address: "/run/x.sock", port: 0, mode: 0o600)))
    }

    func testBacklogReportAgainstSomaxconn() {
        let capped = BacklogReport(requested: 10240, default: 65535, somaxconn: 4096)
        XCTAssertEqual(capped.effective, 4096)
        XCTAssertEqual(capped.warning, "backlog 10240 capped to 4096 by net.core.somaxconn")
        XCTAssertNil(
            BacklogReport(requested: nil, default: 65535, somaxconn: 4096).warning, "the default is meant to be capped")
        XCTAssertEqual(BacklogReport(requested: 128, default: 65535, somaxconn: 4096).effective, 128)
    }
}

/// A bind's options arrive as a URL's text or as JSON members: both set them through the same
/// typed setters, so a value means the same, and is refused with the same words, either way.
final class OptionSetterTests: XCTestCase {
    func testJSONValuesAndTheirTextSetTheSameOptionsOrFailAlike() {
        let sockets: [(url: String, json: [String: JSONValue])] = [
            ("tcp://198.18.0.1:80", ["type": .string("tcp"), "address": .string("198.18.0.1"), "port": .integer(80)]),
            (
                "udp://[2001:db8::1]:53",
                ["type": .string("udp"), "address": .string("2001:db8::1"), "port": .integer(53)]
            ),
            ("unix:/run/web/api.sock", ["type": .string("unix"), "address": .string("/run/web/api.sock")]),
        ]
        let values: [(String, JSONValue, String)] = [
            ("backlog", .integer(128), "128"), ("backlog", .integer(0), "0"), ("backlog", .integer(-3), "-3"),
            ("backlog", .integer(1 << 31), "2147483648"), ("backlog", .integer(Int64(Int32.max)), "2147483647"),
            ("v6only", .bool(true), "1"), ("v6only", .bool(false), "0"), ("v6only", .integer(1), "1"),
            ("v6only", .integer(2), "2"), ("freebind", .bool(true), "true"), ("freebind", .integer(0), "0"),
            ("mode", .integer(0o660), "660"), ("mode", .integer(0o1777), "1777"), ("mode", .integer(0o777), "0777"),
            ("owner", .string("www-data"), "www-data"), ("owner", .integer(33), "33"),
            ("group", .string("a b"), "a b"),
            ("group", .string(String(repeating: "g", count: 33)), String(repeating: "g", count: 33)),
        ]
        for socket in sockets {
            for (name, json, text) in values {
                let viaURL = BindRequest.parse(url: "\(socket.url)?\(name)=\(text)").mapError {
                    // The URL's error names the URL first.
                    BindError(String($0.description.dropFirst(socket.url.count + name.count + text.count + 4)))
                }
                let viaJSON = Wire.bindRequest(json: socket.json.merging([name: json]) { $1 })
                XCTAssertEqual(viaURL, viaJSON, "\(socket.url) \(name)=\(text)")
            }
        }
    }
}

final class PolicyAndHandoverTests: XCTestCase {
    func policy(_ text: String) -> Result<Policy, BindError> {
        Policy.parse(
            Array(text.utf8), brokerUID: 500, resolveUser: { $0 == "haproxy" ? 110 : nil },
            resolveGroup: { $0 == "web" ? 33 : nil })
    }

    func testPolicyAllowsWhatItListsAndNothingElse() throws {
        let policy = try self.policy(
            #"{"control":{"mode":"0660","group":"web"},"#
                + #""allow":[{"user":"haproxy","binds":["tcp://*:80","tcp://[::]:443"]},"#
                + #"{"gid":33,"binds":["tcp://127.0.0.1:8000-8999","unix:/run/web/*"]}]}"#
        ).get()
        XCTAssertEqual(policy.controlMode, 0o660)
        let url = { (text: String) in try! BindRequest.parse(url: text).get() }
        XCTAssertNil(policy.denial(uid: 0, gid: 0, request: url("tcp://1.2.3.4:1")))
        XCTAssertNil(policy.denial(uid: 500, gid: 500, request: url("tcp://1.2.3.4:1")))
        XCTAssertNil(policy.denial(uid: 110, gid: 1, request: url("tcp://198.19.0.10:80")))
        XCTAssertNil(policy.denial(uid: 110, gid: 1, request: url("tcp://[::]:443")))
        XCTAssertNotNil(policy.denial(uid: 110, gid: 1, request: url("udp://198.19.0.10:80")))
        XCTAssertNotNil(policy.denial(uid: 110, gid: 1, request: url("tcp://198.19.0.10:443")))
        XCTAssertNil(policy.denial(uid: 7, gid: 33, request: url("tcp://127.0.0.1:8500")))
        XCTAssertNotNil(policy.denial(uid: 7, gid: 33, request: url("tcp://127.0.0.1:9000")))
        XCTAssertNil(policy.denial(uid: 7, gid: 33, request: url("unix:/run/web/b.sock")))
        XCTAssertNotNil(
            policy.denial(uid: 7, gid: 33, request: url("unix:/run/web/a/b.sock")), "* stays within one component")
        XCTAssertNotNil(policy.denial(uid: 7, gid: 33, request: url("unix:/run/other.sock")))
        XCTAssertNotNil(policy.denial(uid: 8, gid: 8, request: url("tcp://127.0.0.1:8500")))
        // Typos are errors at start-up.
        for bad in [
            #"{"allow":[{"user":"nobody-here","binds":["*"]}]}"#, #"{"allow":[{"uid":1,"gid":2,"binds":["*"]}]}"#,
            #"{"allow":[{"uid":1,"binds":["tcp://host:1"]}]}"#, #"{"alow":[]}"#, #"{"control":{"mode":"rw"}}"#,
        ] {
            XCTAssertThrowsError(try self.policy(bad).get(), bad)
        }
    }

    /// A port pattern with a wildcard kind grants sockets on that port, not every Unix path: only
    /// `*` and `unix:` patterns reach the file system.
    func testAPortPatternGrantsNoUnixPath() throws {
        let policy = try self.policy(
            #"{"allow":[{"uid":7,"binds":["*://*:8443","*://198.18.0.1:*"]},{"uid":8,"binds":["*"]}]}"#
        ).get()
        let url = { (text: String) in try! BindRequest.parse(url: text).get() }
        XCTAssertNil(policy.denial(uid: 7, gid: 7, request: url("tcp://198.19.0.10:8443")))
        XCTAssertNil(policy.denial(uid: 7, gid: 7, request: url("udp://[::]:8443")))
        XCTAssertNil(policy.denial(uid: 7, gid: 7, request: url("tcp://198.18.0.1:99")))
        for path in ["unix:/run/bindkeeper/bindkeeper.sock", "unix:/etc/x.sock", "unix:/run/web/a.sock"] {
            XCTAssertNotNil(policy.denial(uid: 7, gid: 7, request: url(path)), path)
            XCTAssertNil(policy.denial(uid: 8, gid: 8, request: url(path)), "* grants everything: \(path)")
        }
    }

    func testGlobs() {
        XCTAssertTrue(BindPattern.glob("/run/*.sock", matches: "/run/a.sock"))
        XCTAssertTrue(BindPattern.glob("/run/*", matches: "/run/"))
        XCTAssertFalse(BindPattern.glob("/run/*.sock", matches: "/run/a.sockx"))
        XCTAssertFalse(BindPattern.glob("/a*a", matches: "/a"))
        XCTAssertTrue(BindPattern.glob("/a*b*c", matches: "/abbc"))
    }

    func testListenFDsAndFDStoreNames() throws {
        let environment = ListenFDs.environment(names: ["http", "tcp-__-443"], pid: 42)
        let parsed = ListenFDs.parse(environment, pid: 42)
        XCTAssertEqual(parsed.map(\.fd), [3, 4])
        XCTAssertEqual(parsed.map(\.name), ["http", "tcp-__-443"])
        XCTAssertTrue(ListenFDs.parse(environment, pid: 43).isEmpty)
        XCTAssertEqual(
            PassedSocketName.defaultName(for: try BindRequest.parse(url: "tcp://[::]:443").get()), "tcp-__-443")
        XCTAssertFalse(PassedSocketName.isValidName("a:b"))
        for url in [
            "tcp://[::]:443?backlog=4096&v6only=1", "udp://198.18.0.1:53", "unix:/run/a+b,c=d@e~f.sock?mode=0600",
            "tcp://[fe80::1%lo]:80",
        ] {
            let request = try BindRequest.parse(url: url).get()
            let name = try XCTUnwrap(FDStoreName.encode(request))
            XCTAssertFalse(name.contains(":"), name)
            XCTAssertTrue(PassedSocketName.isValidName(name), name)
            XCTAssertEqual(FDStoreName.decode(name), request)
            XCTAssertNil(try XCTUnwrap(FDStoreName.decodeEntry(name)).creator, "an older release's name: no creator")
            let withCreator = try XCTUnwrap(FDStoreName.encode(request, creator: 4242))
            XCTAssertTrue(PassedSocketName.isValidName(withCreator), withCreator)
            let entry = try XCTUnwrap(FDStoreName.decodeEntry(withCreator))
            XCTAssertEqual(entry.request, request)
            XCTAssertEqual(entry.creator, 4242)
        }
        XCTAssertNil(FDStoreName.decode("control"))
        XCTAssertNil(FDStoreName.decode("4242@control"))
    }

    func testBrokerStateSurvivesEncoding() throws {
        let state = BrokerState(
            control: 3,
            sockets: [
                .init(fd: 7, request: try BindRequest.parse(url: "tcp://127.0.0.1:80?backlog=9").get(), handedOut: 4)
            ],
            clients: [
                .init(fd: 9, wire: .multibinder, pending: Array("{\"json".utf8)), .init(fd: 10, wire: nil, pending: []),
            ])
        XCTAssertEqual(try BrokerState.decode(state.encoded()).get(), state)
        XCTAssertThrowsError(try BrokerState.decode(Array("{}".utf8)).get())
    }

    func testTemplatesRenderBindsAsInheritedFds() throws {
        let template = try ConfigTemplate.parse(
            """
            frontend a\n  bind {{bind tcp://127.0.0.1:80}}\n  bind {{ bind tcp://[::]:80?v6only=1 }} v4v6\n  bind \
            {{bind tcp://127.0.0.1:80}}\n
            """
        ).get()
        XCTAssertEqual(template.binds.map(\.url), ["tcp://127.0.0.1:80", "tcp://[::]:80?v6only=1"])
        XCTAssertEqual(
            template.render(fds: ["tcp://127.0.0.1:80": [5], "tcp://[::]:80": [6]]),
            "frontend a\n  bind fd@5\n  bind fd@6 v4v6\n  bind fd@5\n")
        XCTAssertEqual(try ConfigTemplate.parse("no binds here {").get().binds, [])
        for (bad, line) in [("a\n{{bind tcp://x:1}}", 2), ("{{env HOME}}", 1), ("a\nb\n{{bind tcp://1.2.3.4:5", 3)] {
            XCTAssertThrowsError(try ConfigTemplate.parse(bad).get()) {
                XCTAssertTrue("\($0)".contains("line \(line)"), "\($0)")
            }
        }
    }

    /// A group's bind makes its line once per member, each for its own HAProxy thread; such a line
    /// names nothing else, and a member is spelt in its URL so that it round-trips.
    func testGroupsRenderALinePerMemberAndRoundTrip() throws {
        let text =
            "frontend a\n  bind {{bind tcp://10.0.0.1:80?shards=auto}} alpn h2\n  bind {{bind tcp://10.0.0.1:81}}\n"
        let template = try ConfigTemplate.parse(text).get()
        XCTAssertEqual(template.binds.map(\.url), ["tcp://10.0.0.1:80?shards=auto", "tcp://10.0.0.1:81"])
        XCTAssertEqual(
            template.render(fds: ["tcp://10.0.0.1:80": [7, 8], "tcp://10.0.0.1:81": [9]]),
            "frontend a\n  bind fd@7 thread 1 alpn h2\n  bind fd@8 thread 2 alpn h2\n  bind fd@9\n")
        XCTAssertEqual(
            try ConfigTemplate.parse("{{bind tcp://10.0.0.1:80?shards=2}}").get().render(fds: [
                "tcp://10.0.0.1:80": [3, 4]
            ]),
            "fd@3 thread 1\nfd@4 thread 2")
        // CRLF lines (one Character in Swift) keep their ending, and the line count stays right.
        XCTAssertEqual(
            try ConfigTemplate.parse("global\r\n  bind {{bind tcp://10.0.0.1:80?shards=2}} x\r\nend\r\n").get()
                .render(fds: ["tcp://10.0.0.1:80": [3, 4]]),
            "global\r\n  bind fd@3 thread 1 x\r\n  bind fd@4 thread 2 x\r\nend\r\n")
        XCTAssertThrowsError(try ConfigTemplate.parse("a\r\nb\r\n{{bind tcp://x:1}}").get()) {
            XCTAssertTrue("\($0)".contains("line 3"), "\($0)")
        }
        for bad in [
            "bind {{bind tcp://10.0.0.1:80?shards=2}} {{bind tcp://10.0.0.1:81}}\n",
            "bind {{bind tcp://10.0.0.1:81}} {{bind tcp://10.0.0.1:80?shards=2}}\n",
        ] {
            XCTAssertThrowsError(try ConfigTemplate.parse(bad).get(), bad)
        }
        let members = try BindRequest.parse(url: "tcp://10.0.0.1:80?backlog=9&shards=2").get().members(count: 2)
        XCTAssertEqual(members.map(\.key), ["tcp://10.0.0.1:80#0", "tcp://10.0.0.1:80#1"])
        for member in members {
            XCTAssertEqual(try BindRequest.parse(url: member.url).get(), member)
            XCTAssertEqual(FDStoreName.encode(member).flatMap(FDStoreName.decode), member)
        }
        for bad in [
            "tcp://10.0.0.1:80?shards=0", "tcp://10.0.0.1:80?shards=251", "tcp://10.0.0.1:80?member=1",
            "tcp://10.0.0.1:80?shards=auto&member=0", "tcp://10.0.0.1:80?shards=2&member=2",
            "udp://10.0.0.1:80?shards=2", "unix:/run/a.sock?shards=2",
        ] {
            XCTAssertThrowsError(try BindRequest.parse(url: bad).get(), bad)
        }
    }

    /// Every JSON form through Codable: ids of each kind echoed as sent, replies of both forms,
    /// the re-exec state including bytes that are not text, and a broker state written by the
    /// release before (hand-written JSON) still read.
    func testJSONFormsRoundTrip() throws {
        for id in [Wire.RequestID.number(-7), .number(1 << 53), .string("a\"b"), .null] {
            let text = Wire.multibinder.result(id: id, Reply.Bind(sockets: []))
            let reply = try JSONText.decode(Wire.Envelope<Bool>.self, from: text)
            XCTAssertEqual(reply.id, id)
            XCTAssertEqual(reply.result, true)
            XCTAssertEqual(reply.jsonrpc, "2.0")
        }
        XCTAssertEqual(
            String(decoding: Wire.multibinder.error(id: .null, .methodNotFound), as: UTF8.self),
            #"{"error":{"code":-32601,"message":"Method not found"},"id":null,"jsonrpc":"2.0"}"#)
        let request = try BindRequest.parse(url: "unix:/run/web/a.sock?mode=0660").get()
        let state = BrokerState(
            control: 3, sockets: [.init(fd: 4, request: request, handedOut: 2, creator: 33)],
            clients: [.init(fd: 5, wire: .framed, pending: [0, 0, 0xff, 0x7b]), .init(fd: 6, wire: nil, pending: [])])
        XCTAssertEqual(try BrokerState.decode(state.encoded()).get(), state)
        let earlier =
            #"{"clients":[{"fd":5,"pending":"AAD/ew==","wire":"framed"}],"control":3,"#
            + #""sockets":[{"creator":33,"fd":4,"handed_out":2,"url":"unix:\/run\/web\/a.sock?mode=0660"}]}"#
        XCTAssertEqual(try BrokerState.decode(Array(earlier.utf8)).get().sockets, state.sockets)
        XCTAssertEqual(try BrokerState.decode(Array(earlier.utf8)).get().clients, [state.clients[0]])
        XCTAssertThrowsError(try BrokerState.decode(Array(#"{"control":"3","sockets":[],"clients":[]}"#.utf8)).get())
        let listing = Reply.Listing(
            pid: 9, control: "/run/b.sock",
            sockets: [
                .init(
                    key: "k", url: "u", fd: 7, handedOut: 1, cookie: 5,
                    backlog: BacklogReport(requested: 8, default: 4, somaxconn: 4))
            ],
            clientsConnected: 1, clientsServed: 2)
        XCTAssertEqual(
            try JSONText.decode(Reply.Listing.self, from: JSONText.encode(listing)).sockets[0].backlog?.effective, 4)
        XCTAssertTrue(String(decoding: JSONText.encode(listing), as: UTF8.self).contains(#""handed_out":1"#))
    }
}
