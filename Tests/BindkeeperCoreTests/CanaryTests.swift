import TestSupport
import XCTest

@testable import BindkeeperCore

/// A group's generations, the `steer` request, and the judgement of a canary from HAProxy's stats.
final class CanaryTests: XCTestCase {
    func read(_ bytes: [UInt8]) -> Result<Wire.Request, Wire.Failure>? {
        var reader = FrameReader()
        reader.append(bytes)
        guard let body = try? reader.next() else { return nil }
        return Wire.framed.parse(body)
    }

    func testAGenerationIsPartOfTheGroupsKeyAndRoundTrips() throws {
        let candidate = try BindRequest.parse(url: "tcp://198.19.2.10:80?shards=2&generation=1").get()
        XCTAssertEqual(candidate.baseKey, "tcp://198.19.2.10:80~g1")
        XCTAssertEqual(candidate.addressKey, "tcp://198.19.2.10:80")
        XCTAssertEqual(
            candidate.members(count: 2).map(\.key), ["tcp://198.19.2.10:80~g1#0", "tcp://198.19.2.10:80~g1#1"])
        XCTAssertEqual(try BindRequest.parse(url: candidate.url).get(), candidate)
        for member in candidate.members(count: 2) {
            XCTAssertEqual(try BindRequest.parse(url: member.url).get(), member)
        }
        // Generation 0 is the group itself, spelt without it.
        let served = candidate.inGeneration(0)
        XCTAssertEqual(served, try BindRequest.parse(url: "tcp://198.19.2.10:80?shards=2&generation=0").get())
        XCTAssertEqual(served.url, "tcp://198.19.2.10:80?shards=2")
        for bad in [
            "tcp://198.19.2.10:80?generation=1", "tcp://198.19.2.10:80?shards=2&generation=2",
            "udp://198.19.2.10:53?generation=1", "tcp://198.19.2.10:80?shards=2&generation=-1",
        ] {
            XCTAssertThrowsError(try BindRequest.parse(url: bad).get(), bad)
        }
        // JSON sets it as the URL does.
        guard
            case .success(let json) = Wire.bindRequest(
                json: [
                    "address": .string("198.19.2.10"), "port": .integer(80), "shards": .integer(2),
                    "generation": .integer(1),
                ])
        else { return XCTFail() }
        XCTAssertEqual(json, candidate)
        XCTAssertEqual(Wire.jsonParams(candidate)["generation"], .integer(1))
    }

    /// A group's socket array is carried across a re-exec and named in the fd store by its address.
    func testAGroupsSocketArrayIsNamedByItsAddressAndCarried() throws {
        for address in ["tcp://198.19.2.10:80", "tcp://[2001:db8::1%eth0]:443"] {
            let name = try XCTUnwrap(FDStoreName.array(address))
            XCTAssertFalse(name.contains(":"), "systemd's names take no colon: \(name)")
            XCTAssertEqual(FDStoreName.decodeArray(name), address)
            XCTAssertNil(FDStoreName.decodeEntry(name), "not a socket's name")
        }
        XCTAssertNil(FDStoreName.decodeArray("0@tcp%3A//198.19.2.10%3A80"))
        XCTAssertNil(FDStoreName.array(String(repeating: "x", count: 300)))
        var state = BrokerState(control: 3, sockets: [], clients: [])
        state.arrays = ["tcp://198.19.2.10:80": 9]
        XCTAssertEqual(try BrokerState.decode(state.encoded()).get(), state)
        // An older release's state, without arrays, still reads.
        let older = Array(#"{"control":3,"sockets":[],"clients":[]}"#.utf8)
        XCTAssertEqual(try BrokerState.decode(older).get().arrays, [:])
    }

    func testSteerNamesAServedGenerationAndAtMostOneCandidateOfTheSameAddress() throws {
        let served = try BindRequest.parse(url: "tcp://198.19.2.10:80?shards=2").get()
        let candidate = served.inGeneration(1)
        let bytes = Wire.framed.request(id: .number(3), method: "steer", binds: [served, candidate], percent: 5)
        guard case .success(let request)? = read(bytes) else { return XCTFail() }
        XCTAssertEqual(request.method, .steer(Wire.Steering(groups: [served, candidate], candidatePercent: 5)))
        guard case .success(let alone)? = read(Wire.framed.request(id: .number(4), method: "steer", binds: [served]))
        else { return XCTFail() }
        XCTAssertEqual(alone.method, .steer(Wire.Steering(groups: [served], candidatePercent: 0)))
        let other = try BindRequest.parse(url: "tcp://198.19.2.10:81?shards=2&generation=1").get()
        let plain = try BindRequest.parse(url: "tcp://198.19.2.10:80").get()
        let refused: [([BindRequest], Int?)] = [
            ([served, candidate], nil), ([served, candidate], 0), ([served, candidate], 101), ([served], 5),
            ([served, served], 5), ([served, other], 5), ([plain], nil), ([served, candidate, candidate], 5), ([], nil),
            ([served.members(count: 2)[0]], nil),
        ]
        for (binds, percent) in refused {
            guard
                case .failure(let failure)? = read(
                    Wire.framed.request(id: .number(5), method: "steer", binds: binds, percent: percent))
            else { return XCTFail("\(binds.map(\.url)) \(String(describing: percent))") }
            XCTAssertEqual(failure.id, .number(5))
            XCTAssertEqual(failure.error.code, -32602, "\(binds.map(\.url))")
        }
    }

    static let header =
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,"
        + "hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,"

    func row(
        _ proxy: String, _ server: String, stot: Int = 0, econ: Int = 0, status: String, ok: Int = 0, errors: Int = 0
    )
        -> String
    {
        "\(proxy),\(server),0,0,0,0,0,\(stot),0,0,0,0,0,\(econ),0,0,0,\(status),0,\(ok),0,0,\(errors),0,"
    }

    func testACandidateIsJudgedByItsResponsesItsServerConnectionsAndItsBackends() {
        let healthy = [
            Self.header, row("www", "FRONTEND", status: "OPEN", ok: 990, errors: 10),
            row("app", "s1", stot: 1000, status: "UP"), row("app", "BACKEND", stot: 1000, econ: 5, status: "UP"),
        ].joined(separator: "\n")
        let judged = CanaryJudgement.parse("Name: HAProxy\nPid: 4242\nUptime_sec: 5\n\n" + healthy)
        XCTAssertEqual(judged.pid, 4242, "show info's Pid, before the CSV")
        XCTAssertNil(CanaryJudgement.parse(healthy).pid)
        XCTAssertEqual(judged.responses, 1000)
        XCTAssertEqual(judged.serverErrors, 10)
        XCTAssertEqual(judged.connectionErrors, 5)
        XCTAssertNil(judged.failure(maximumPercent: 1), "1 % of 5xx is allowed at 1 %")
        XCTAssertNotNil(judged.failure(maximumPercent: 0))
        let refused = [
            Self.header, row("www", "FRONTEND", status: "OPEN", ok: 100),
            row("app", "BACKEND", stot: 10, econ: 90, status: "UP"),
        ].joined(separator: "\r\n")
        XCTAssertEqual(
            CanaryJudgement.parse(refused).failure(maximumPercent: 5)?.hasPrefix("90 of its connections"), true)
        let down = [Self.header, row("app", "BACKEND", status: "DOWN"), row("api", "BACKEND", status: "DOWN")]
        XCTAssertEqual(
            CanaryJudgement.parse(down.joined(separator: "\n")).failure(maximumPercent: 100),
            "backend app is down (and 1 more)")
        // No traffic is no failure; nonsense, short rows and huge counters neither trap nor pass as errors.
        XCTAssertNil(CanaryJudgement.parse(Self.header).failure(maximumPercent: 0))
        for text in ["", "garbage", "# \n,,,\nFRONTEND", Self.header + "\nwww,FRONTEND,x,y"] {
            XCTAssertNil(CanaryJudgement.parse(text).failure(maximumPercent: 0), text)
        }
        let huge = [
            Self.header,
            row("a", "FRONTEND", status: "OPEN", ok: 0, errors: 0).replacingOccurrences(
                of: ",OPEN,0,0,", with: ",OPEN,0,18446744073709551615,"),
            row("b", "FRONTEND", status: "OPEN", ok: 5, errors: 5),
        ].joined(separator: "\n")
        let saturated = CanaryJudgement.parse(huge)
        XCTAssertEqual(saturated.responses, .max)
        XCTAssertNil(saturated.failure(maximumPercent: 1), "5 of 2^64 is under 1 %, computed without overflow")
    }

    /// Random text never traps the reader, and whatever it reads is judged without overflow.
    func testRandomStatsTextNeverTraps() {
        var random = SeededGenerator.fromEnvironment(name: "canary stats fuzz")
        let pieces = [
            Self.header, "FRONTEND", "BACKEND", "DOWN", "UP", ",", "\n", "\r\n", "18446744073709551615", "0", "7", "#",
        ]
        for _ in 0..<2000 {
            let text = (0..<Int.random(in: 0...40, using: &random)).map { _ in pieces.randomElement(using: &random)! }
                .joined()
            _ = CanaryJudgement.parse(text).failure(maximumPercent: UInt64.random(in: 0...100, using: &random))
        }
    }
}
