import Foundation
import Glibc
import ProxysideCore
import ProxysideSystem
import Synchronization
import XCTest

/// second-chance re-executing, upgrading and crashing while GUE keeps coming: what the kernel
/// queued meanwhile is decided, not lost.
final class RestartTests: XCTestCase {
    var lab: Lab!
    static let servicePort: UInt16 = 7777

    override func setUpWithError() throws {
        lab = try Lab(prefix: "psrs")
    }

    override func tearDown() { lab?.tearDown() }

    // MARK: Traffic that counts itself

    /// A UDP service on the VIP in P1 with room for every datagram a test sends.
    func openService() throws -> Int32 {
        try lab.inside("p1") {
            let fd = try LabSockets.bindUDP(.v4(Lab.vip), port: Self.servicePort, receiveTimeoutSeconds: 1)
            var bytes: Int32 = 16 << 20
            setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, socklen_t(MemoryLayout<Int32>.size))
            return fd
        }
    }

    /// Datagrams numbered `numbers` to the service, GUE-encapsulated from the client as a
    /// director would, one every `pace` microseconds.
    func send(_ numbers: Range<UInt32>, pace: UInt32 = 0) throws {
        try Self.send(numbers, pace: pace, from: lab.namespace("c"))
    }

    static func send(_ numbers: Range<UInt32>, pace: UInt32, from namespace: String) throws {
        try NetworkNamespace(nameOrPath: namespace).run {
            let fd = try LabSockets.bindUDP(.v4(Lab.client), port: 30100)
            defer { close(fd) }
            for number in numbers {
                var datagram: [UInt8] = [0x9c, 0x41, UInt8(Self.servicePort >> 8), UInt8(Self.servicePort & 0xff), 0, 12, 0, 0]
                datagram += [UInt8(number >> 24), UInt8((number >> 16) & 0xff), UInt8((number >> 8) & 0xff), UInt8(number & 0xff)]
                let inner = PacketBuilder.ip(source: .v4(Lab.client), destination: .v4(Lab.vip), protocol: 17, transport: datagram, checksumOffset: 6)
                let payload = PacketBuilder.guePayload(inner: inner, hops: [Lab.p2])
                let sent = SocketAddress.with(.v4(Lab.p1), GUEPacket.port) { address, length in
                    payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, address, length) }
                }
                guard sent == payload.count else { throw SystemError("sendto GUE") }
                if pace > 0 { usleep(pace) }
            }
        }
    }

    /// The numbers the service received, until it has been quiet for a second.
    func received(_ service: Int32) -> Set<UInt32> {
        var numbers: Set<UInt32> = []
        var buffer = [UInt8](repeating: 0, count: 64)
        while recv(service, &buffer, buffer.count, 0) == 4 {
            numbers.insert(UInt32(buffer[0]) << 24 | UInt32(buffer[1]) << 16 | UInt32(buffer[2]) << 8 | UInt32(buffer[3]))
        }
        return numbers
    }

    func assertAllReceived(_ numbers: Set<UInt32>, _ expected: Range<UInt32>, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let missing = Set(expected).subtracting(numbers).sorted()
        XCTAssertTrue(missing.isEmpty, "\(what): \(missing.count) of \(expected.count) lost, first \(missing.prefix(10))", file: file, line: line)
    }

    func daemon(_ host: String = "p1") throws -> Process {
        try XCTUnwrap(lab.processes.last { $0.name == "\(host) second-chance" && $0.process.isRunning }?.process)
    }

    func waiting(_ host: String) throws -> UInt64 {
        try lab.inside(host) { ProcFile.kernelQueueStatistics()[0]?.waiting ?? 0 }
    }

    // MARK: Re-exec

    /// SIGUSR1 re-executes the daemon three times while 4000 datagrams arrive at 2500 a second:
    /// the queue socket stays bound, so every datagram is decided and reaches the service.
    func testReexecUnderTrafficDecidesEveryPacket() throws {
        try lab.startSecondChance("p1", Lab.p1)
        let process = try daemon()
        let service = try openService()
        defer { close(service) }
        let done = DispatchSemaphore(value: 0)
        let failure = Mutex<String?>(nil)
        let client = lab.namespace("c")
        DispatchQueue.global().async {
            do { try Self.send(0..<4000, pace: 400, from: client) } catch { failure.withLock { $0 = "\(error)" } }
            done.signal()
        }
        for round in 1...3 {
            try lab.waitFor("traffic before re-exec \(round)") { try lab.stats("p1").value("total_packets") >= 200 }
            kill(process.processIdentifier, SIGUSR1)
            try lab.waitFor("re-exec \(round)", seconds: 10) { try lab.stats("p1").value("reexecs") == UInt64(round) }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success, "the sender finished")
        XCTAssertNil(failure.withLock { $0 })
        assertAllReceived(received(service), 0..<4000, "datagrams sent across three re-execs")
        XCTAssertTrue(process.isRunning)
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["adopted_queues"], 1)
        XCTAssertEqual(stats["queue_0_receive_errors"], 0)
        XCTAssertEqual(lab.log(of: process).components(separatedBy: "re-executing").count - 1, 3, lab.log(of: process))
    }

    /// `second-chance reexec` runs the file now installed where the daemon was started from (a new
    /// file renamed over the old one, as packages install), and reports the new build; a file that
    /// does not run is refused, by the command and by SIGUSR1, and the running image keeps serving.
    func testReexecRunsTheUpgradedFileAndRefusesABrokenOne() throws {
        let installed = lab.directory.appendingPathComponent("sbin/second-chance").path
        let binary = Lab.binaries.appendingPathComponent("second-chance").path
        try Lab.shell("mkdir -p \(lab.directory.path)/sbin && cp \(binary) \(installed)")
        let control = lab.controlPath("p1")
        let process = try lab.start("p1", program: installed, ["run", "--queue", "0", "--self", Lab.p1.description, "--control", control] + Lab.labPeers)
        try lab.waitFor("the control socket") { FileManager.default.fileExists(atPath: control) }
        func field(_ name: String) throws -> String? {
            try readControlSocket(control).split(separator: "\n").first { $0.hasPrefix(name + ": ") }.map { String($0.dropFirst(name.count + 2)) }
        }
        let before = try XCTUnwrap(field("build"))
        func upgrade(_ command: String) throws {
            try Lab.shell("\(command) > \(installed).new && chmod 0755 \(installed).new && mv \(installed).new \(installed)")
        }
        func exe() -> String { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(process.processIdentifier)/exe")) ?? "" }
        func reexec() throws -> (status: Int32, output: String) {
            try lab.runToEnd("p1", "second-chance", ["reexec", "--control", control])
        }

        // The new version: the same program with bytes appended (a different file that still runs).
        try upgrade("cat \(binary) - <<< upgrade")
        let newVersion = try Lab.shell("\(installed) version").trimmingCharacters(in: .whitespacesAndNewlines)
        let newBuild = try XCTUnwrap(newVersion.components(separatedBy: " build ").last)
        XCTAssertNotEqual(newBuild, before)
        XCTAssertTrue(exe().hasSuffix(" (deleted)"), exe())
        let upgraded = try reexec()
        XCTAssertEqual(upgraded.status, 0, upgraded.output)
        XCTAssertTrue(upgraded.output.contains("serving again: build \(newBuild)"), upgraded.output)
        XCTAssertEqual(try field("build"), newBuild)
        XCTAssertEqual(exe(), installed, "the installed file runs now")
        XCTAssertTrue(process.isRunning, "the same process")

        // Not a program, and a program that fails: refused before anything is given up.
        for (broken, reason) in [("echo 'not a program'", "Exec format error"), ("printf '#!/bin/sh\\nexit 3\\n'", "exited with 3")] {
            try upgrade(broken)
            let refused = try reexec()
            XCTAssertNotEqual(refused.status, 0, refused.output)
            XCTAssertTrue(refused.output.contains(reason), refused.output)
            XCTAssertTrue(refused.output.contains("still serving"), refused.output)
        }
        kill(process.processIdentifier, SIGUSR1)
        try lab.waitFor("the refused SIGUSR1") { lab.log(of: process).contains("re-exec asked by SIGUSR1 refused") }
        XCTAssertTrue(process.isRunning)
        XCTAssertEqual(try field("build"), newBuild, "the upgraded image still serves")
        XCTAssertEqual(try field("reexecs"), "1")
        let service = try openService()
        defer { close(service) }
        try send(0..<20)
        assertAllReceived(received(service), 0..<20, "datagrams after the refused re-execs")
    }

    // MARK: Crash and the fd store

    /// systemd's fd store, played by the test: the daemon stores its queue socket (FDSTORE=1,
    /// FDNAME=nfqueue-0) and control socket; after kill -9 the datagrams that arrive wait in the
    /// kernel's queue, and the daemon restarted with them (LISTEN_FDS) decides every one.
    func testKillDashNineThenRestartWithTheStoredQueueLosesNothing() throws {
        let notifyPath = lab.directory.appendingPathComponent("notify.sock").path
        let manager = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try UnixAddress.bind(manager, notifyPath)
        defer { close(manager) }
        var store: [(name: String, fd: Int32)] = []
        var notices: [String] = []
        func collect(until done: () -> Bool) throws {
            try lab.waitFor("notifications") {
                while let (bytes, fds) = try? FDPassing.receive(manager, flags: Int32(MSG_DONTWAIT)) {
                    let text = String(decoding: bytes, as: UTF8.self)
                    notices.append(text)
                    if text.contains("FDSTORE=1"), let name = text.split(separator: "\n").first(where: { $0.hasPrefix("FDNAME=") }), let fd = fds.first {
                        store.append((String(name.dropFirst(7)), fd))
                    }
                }
                return done()
            }
        }
        defer { store.forEach { close($0.fd) } }
        let control = lab.controlPath("p1")
        let arguments = ["run", "--queue", "0", "--self", Lab.p1.description, "--control", control] + Lab.labPeers
        let first = try lab.start("p1", "second-chance", arguments, environment: ["NOTIFY_SOCKET": notifyPath])
        try collect { notices.contains { $0.hasPrefix("READY=1") } && store.count == 2 }
        XCTAssertEqual(Set(store.map(\.name)), ["nfqueue-0", "control"])

        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        let service = try openService()
        defer { close(service) }
        try send(0..<500)
        try lab.waitFor("the datagrams to wait in the kernel's queue") { try self.waiting("p1") == 500 }

        let names = store.map(\.name).joined(separator: ":")
        let restartLog = lab.directory.appendingPathComponent("restarted.log").path
        let pid = try Spawn.run("/usr/bin/env", ["ip", "netns", "exec", lab.namespace("p1"), "/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\" 2>\(restartLog)",
                                                 Lab.binaries.appendingPathComponent("second-chance").path] + arguments,
                                environment: ProcessInfo.processInfo.environment.merging(["LISTEN_FDS": String(store.count), "LISTEN_FDNAMES": names]) { $1 },
                                placing: store.enumerated().map { ($0.element.fd, Int32(3 + $0.offset)) })
        defer { kill(pid, SIGTERM); _ = Spawn.wait(pid) }
        assertAllReceived(received(service), 0..<500, "datagrams that arrived while no daemon ran")
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["adopted_queues"], 1)
        XCTAssertEqual(stats["accepted_udp"], 500)
        let restarted = (try? String(contentsOfFile: restartLog, encoding: .utf8)) ?? ""
        XCTAssertTrue(restarted.contains("took over 1 bound queue socket(s)"), restarted)
    }

    /// A reader that dies between reading packets and answering them (the test plays it: it reads
    /// five queued packets and never answers): the daemon that takes its socket over requeues them
    /// with the first packet it reads, and they reach the service.
    func testPacketsAReaderDiedWithAreRequeuedByTheNextDaemon() throws {
        let queue = try lab.inside("p1") { try NetfilterQueue(number: 0) }
        let service = try openService()
        defer { close(service) }
        try send(0..<5)
        var buffer = [UInt8](repeating: 0, count: 70_000)
        var timeout = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(queue.fileDescriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        for _ in 0..<5 { XCTAssertGreaterThan(recv(queue.fileDescriptor, &buffer, buffer.count, 0), 0, "a queued packet read") }
        XCTAssertEqual(try waiting("p1"), 5, "read, not answered")

        let control = lab.controlPath("p1")
        let log = lab.directory.appendingPathComponent("adopting.log").path
        let pid = try Spawn.run("/usr/bin/env", ["ip", "netns", "exec", lab.namespace("p1"), "/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\" 2>\(log)",
                                                 Lab.binaries.appendingPathComponent("second-chance").path, "run", "--queue", "0",
                                                 "--self", Lab.p1.description, "--control", control] + Lab.labPeers,
                                environment: ProcessInfo.processInfo.environment.merging(["LISTEN_FDS": "1", "LISTEN_FDNAMES": "nfqueue-0"]) { $1 },
                                placing: [(queue.fileDescriptor, 3)])
        defer { kill(pid, SIGTERM); _ = Spawn.wait(pid) }
        try lab.waitFor("the control socket") { FileManager.default.fileExists(atPath: control) }
        try send(5..<6)
        assertAllReceived(received(service), 0..<6, "datagrams read by the dead reader, and one after")
        XCTAssertEqual(try waiting("p1"), 0)
        withExtendedLifetime(queue) {}
    }
}
