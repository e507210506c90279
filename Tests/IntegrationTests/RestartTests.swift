import Foundation
import Glibc
import LabKit
import LinuxSys
import NetTypes
import SecondChance
import Synchronization
import Telemetry
import XCTest

/// second-chance re-executing, upgrading and crashing while GUE keeps coming: what the kernel
/// queued meanwhile is decided, not lost.
final class RestartTests: XCTestCase {
    var lab: Lab!
    var traffic: DatagramTraffic!

    override func setUpWithError() throws {
        lab = try Lab(prefix: "psrs")
        traffic = DatagramTraffic(lab: lab)
    }

    override func tearDown() { lab?.tearDown() }

    func daemon(_ host: String = "p1") throws -> Process {
        try XCTUnwrap(lab.processes.last { $0.name == "\(host) second-chance" && $0.process.isRunning }?.process)
    }

    // MARK: Re-exec

    /// SIGUSR1 re-executes the daemon three times while datagrams arrive at up to 2500 a second:
    /// the queue socket stays bound, so every datagram is decided and reaches the service.
    func testReexecUnderTrafficDecidesEveryPacket() throws {
        try lab.startSecondChance("p1", Lab.p1)
        let process = try daemon()
        let service = try traffic.openService()
        defer { close(service) }
        // The sender goes on until the third new image has decided some of its datagrams (a
        // re-exec is slower on a loaded machine; a fixed count could end before the third), bounded
        // at 40 000 (16 s and more).
        let done = DispatchSemaphore(value: 0)
        let failure = Mutex<String?>(nil)
        let sending = Atomic<Bool>(true)
        let sent = Mutex<Range<UInt32>>(0..<0)
        let client = lab.namespace("c")
        DispatchQueue.global().async {
            do {
                let numbers = try DatagramTraffic.send(0..<40_000, pace: 400, from: client) {
                    sending.load(ordering: .relaxed)
                }
                sent.withLock { $0 = numbers }
            } catch {
                failure.withLock { $0 = "\(error)" }
            }
            done.signal()
        }
        // A stats client asking all the while is answered every time: one the old image accepted is
        // answered before the exec, one that arrives during it waits for the new image.
        let controlPath = lab.controlPath("p1")
        let asking = Atomic<Bool>(true)
        let unanswered = Mutex<[String]>([])
        let answered = Atomic<Int>(0)
        let asked = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            while asking.load(ordering: .relaxed) {
                do {
                    if try readControlSocket(controlPath).contains("total_packets: ") {
                        answered.add(1, ordering: .relaxed)
                    } else {
                        unanswered.withLock { $0.append("an empty answer") }
                    }
                } catch {
                    unanswered.withLock { $0.append("\(error)") }
                }
            }
            asked.signal()
        }
        for round in 1...3 {
            try lab.waitFor("traffic before re-exec \(round)") { try lab.stats("p1").value("total_packets") >= 200 }
            kill(process.processIdentifier, SIGUSR1)
            try lab.waitFor("re-exec \(round)", seconds: 10) { try lab.stats("p1").value("reexecs") == UInt64(round) }
        }
        try lab.waitFor("traffic after re-exec 3") { try lab.stats("p1").value("total_packets") >= 200 }
        sending.store(false, ordering: .relaxed)
        asking.store(false, ordering: .relaxed)
        XCTAssertEqual(asked.wait(timeout: .now() + 20), .success, "the stats client finished")
        XCTAssertEqual(unanswered.withLock { $0 }, [], "stats asked during re-execs")
        XCTAssertGreaterThan(answered.load(ordering: .relaxed), 10)
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success, "the sender finished")
        XCTAssertNil(failure.withLock { $0 })
        let numbers = sent.withLock { $0 }
        XCTAssertGreaterThan(numbers.count, 600, "datagrams before, between and after the re-execs")
        traffic.assertAllReceived(traffic.received(service), numbers, "datagrams sent across three re-execs")
        XCTAssertTrue(process.isRunning)
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["adopted_queues"], 1)
        XCTAssertEqual(stats["queue_0_receive_errors"], 0)
        XCTAssertEqual(lab.log(of: process).components(separatedBy: "re-executing").count - 1, 3, lab.log(of: process))
        XCTAssertEqual(
            lab.log(of: process).components(separatedBy: "forwarding: raw (as chosen before the re-exec)").count - 1, 3,
            "each new image keeps the forwarding choice instead of reading the firewall again")
    }

    /// `second-chance reexec` runs the file now installed where the daemon was started from (a new
    /// file renamed over the old one, as packages install), and reports the new build; a file that
    /// does not run is refused, by the command and by SIGUSR1, and the running image keeps serving.
    func testReexecRunsTheUpgradedFileAndRefusesABrokenOne() throws {
        let installed = lab.directory.appendingPathComponent("sbin/second-chance").path
        let binary = Lab.binaries.appendingPathComponent("second-chance").path
        try Lab.shell("mkdir -p \(lab.directory.path)/sbin && cp \(binary) \(installed)")
        let control = lab.controlPath("p1")
        let process = try lab.start(
            "p1", program: installed,
            ["run", "--queue", "0", "--self", Lab.p1.description, "--control", control] + Lab.labPeers)
        try lab.waitFor("the control socket") { FileManager.default.fileExists(atPath: control) }
        func field(_ name: String) throws -> String? {
            try readControlSocket(control).split(separator: "\n").first { $0.hasPrefix(name + ": ") }.map {
                String($0.dropFirst(name.count + 2))
            }
        }
        let before = try XCTUnwrap(field("build"))
        func upgrade(_ command: String) throws {
            try Lab.shell(
                "\(command) > \(installed).new && chmod 0755 \(installed).new && mv \(installed).new \(installed)")
        }
        func exe() -> String {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(process.processIdentifier)/exe")) ?? ""
        }
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
        for (broken, reason) in [
            ("echo 'not a program'", "Exec format error"), ("printf '#!/bin/sh\\nexit 3\\n'", "exited with 3"),
        ] {
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
        let service = try traffic.openService()
        defer { close(service) }
        try traffic.send(0..<20)
        traffic.assertAllReceived(traffic.received(service), 0..<20, "datagrams after the refused re-execs")
    }

    // MARK: Crash and the fd store

    /// systemd's fd store, played by the test: the daemon stores its queue socket (FDSTORE=1,
    /// FDNAME=nfqueue-0) and control socket; after kill -9 the datagrams that arrive wait in the
    /// kernel's queue, and the daemon restarted with them (LISTEN_FDS) decides every one.
    func testKillDashNineThenRestartWithTheStoredQueueLosesNothing() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let control = lab.controlPath("p1")
        let arguments = ["run", "--queue", "0", "--self", Lab.p1.description, "--control", control] + Lab.labPeers
        let first = try lab.start("p1", "second-chance", arguments, environment: ["NOTIFY_SOCKET": manager.path])
        try manager.collect { $0.isReady && $0.sockets.count == 3 }
        XCTAssertEqual(Set(manager.sockets.map(\.name)), ["nfqueue-0", "nfqueue-0-restarts", "control"])

        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        let service = try traffic.openService()
        defer { close(service) }
        try traffic.send(0..<500)
        try lab.waitFor("the datagrams to wait in the kernel's queue") { try self.traffic.waiting("p1") == 500 }

        let restartLog = lab.directory.appendingPathComponent("restarted.log").path
        let pid = try manager.restartService(
            "second-chance", arguments, inside: lab.namespace("p1"), log: restartLog)
        defer { kill(pid, SIGTERM); _ = Spawn.wait(pid) }
        // The service is read until it has been quiet for a second: not before the restarted
        // daemon (which loads the tc program first) has answered what waited.
        try lab.waitFor("the restarted daemon to answer the queue") { try self.traffic.waiting("p1") == 0 }
        traffic.assertAllReceived(traffic.received(service), 0..<500, "datagrams that arrived while no daemon ran")
        let stats = try lab.stats("p1")
        XCTAssertEqual(stats["adopted_queues"], 1)
        XCTAssertEqual(stats["accepted_udp"], 500)
        let restarted = (try? String(contentsOfFile: restartLog, encoding: .utf8)) ?? ""
        XCTAssertTrue(restarted.contains("took over 1 bound queue socket(s)"), restarted)
    }

    /// A restart with a configuration that no longer reads queue 7 (nor serves metrics) takes
    /// those sockets out of the store: kept there, queue 7 stayed bound with no reader, so its
    /// --queue-bypass never applied.
    func testAStoredSocketTheNewConfigurationDoesNotUseLeavesTheStore() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let control = lab.controlPath("p1")
        let arguments = ["run", "--queue", "0", "--self", Lab.p1.description, "--control", control] + Lab.labPeers
        let first = try lab.start(
            "p1", "second-chance", arguments + ["--queue", "7", "--metrics", "\(Lab.p1):9525"],
            environment: ["NOTIFY_SOCKET": manager.path])
        try manager.collect { $0.isReady && $0.sockets.count == 6 }
        XCTAssertEqual(
            Set(manager.sockets.map(\.name)),
            ["nfqueue-0", "nfqueue-0-restarts", "nfqueue-7", "nfqueue-7-restarts", "control", "metrics"])
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()

        let pid = try Spawn.run(
            "/usr/bin/env",
            [
                "ip", "netns", "exec", lab.namespace("p1"), "/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"",
                Lab.binaries.appendingPathComponent("second-chance").path,
            ] + arguments,
            environment: ProcessInfo.processInfo.environment.merging(manager.listenEnvironment) { $1 },
            placing: manager.placements)
        defer { kill(pid, SIGTERM); _ = Spawn.wait(pid) }
        try manager.collect { $0.notices.filter { $0.hasPrefix("READY=1") }.count == 2 }
        XCTAssertEqual(
            Set(manager.sockets.map(\.name)), ["nfqueue-0", "nfqueue-0-restarts", "control"], "\(manager.notices)")
        try lab.waitFor("queue 7 to be unbound") { try lab.inside("p1") { ProcFile.kernelQueueStatistics()[7] == nil } }
        XCTAssertNotNil(try lab.inside("p1") { ProcFile.kernelQueueStatistics()[0] }, "queue 0 is read on")
    }

    /// A clean stop under a service manager that keeps the control and metrics sockets, and a
    /// start whose --metrics names another address: `stats` answers on the control path (the
    /// stop leaves it to the stored socket), the metrics move to the new address and nothing
    /// answers on the old one; the store holds the new socket, once. A control path removed
    /// meanwhile is made anew.
    func testARestartKeepsTheControlSocketAnsweringAndServesMetricsWhereTheNewConfigurationSays() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let control = lab.controlPath("p1")
        let arguments = ["run", "--queue", "0", "--self", Lab.p1.description, "--control", control] + Lab.labPeers
        let first = try lab.start(
            "p1", "second-chance", arguments + ["--metrics", "0.0.0.0:9526"],
            environment: ["NOTIFY_SOCKET": manager.path])
        try manager.collect { $0.isReady && $0.sockets.count == 4 }
        kill(first.processIdentifier, SIGTERM)
        first.waitUntilExit()
        let loopback = IPAddress.v4(IPv4Address("127.0.0.1")!)

        func restart(_ extra: [String]) throws -> pid_t {
            try Spawn.run(
                "/usr/bin/env",
                [
                    "ip", "netns", "exec", lab.namespace("p1"), "/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"",
                    Lab.binaries.appendingPathComponent("second-chance").path,
                ] + arguments + extra,
                environment: ProcessInfo.processInfo.environment.merging(manager.listenEnvironment) { $1 },
                placing: manager.placements)
        }
        let second = try restart(["--metrics", "127.0.0.1:9526"])
        try manager.collect { $0.notices.filter { $0.hasPrefix("READY=1") }.count == 2 }
        XCTAssertNoThrow(try lab.stats(fromControl: control), "stats after a restart")
        XCTAssertTrue(try lab.inside("p1") { try Lab.httpGet(loopback, port: 9526) }.contains("second_chance_"))
        XCTAssertThrowsError(
            try lab.inside("p1") { try Lab.httpGet(.v4(Lab.p1), port: 9526) }, "the old address answers no more")
        XCTAssertEqual(manager.store.filter { $0.name == "metrics" }.count, 1, "\(manager.store.map(\.name))")
        kill(second, SIGKILL)
        _ = Spawn.wait(second)

        unlink(control)
        let third = try restart(["--metrics", "127.0.0.1:9526"])
        try manager.collect { $0.notices.filter { $0.hasPrefix("READY=1") }.count == 3 }
        XCTAssertNoThrow(try lab.stats(fromControl: control), "stats once the path was made anew")
        XCTAssertEqual(manager.store.filter { $0.name == "control" }.count, 1, "\(manager.store.map(\.name))")
        kill(third, SIGKILL)
        _ = Spawn.wait(third)

        // A dead socket file at the path, under the control socket's name: not its file.
        let dead = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try UnixAddress.bind(dead, control + ".dead")
        close(dead)
        XCTAssertEqual(rename(control + ".dead", control), 0)
        let fourth = try restart(["--metrics", "127.0.0.1:9526"])
        defer { kill(fourth, SIGTERM); _ = Spawn.wait(fourth) }
        try manager.collect { $0.notices.filter { $0.hasPrefix("READY=1") }.count == 4 }
        XCTAssertNoThrow(try lab.stats(fromControl: control), "stats once the dead file was replaced")
        XCTAssertEqual(manager.store.filter { $0.name == "control" }.count, 1, "\(manager.store.map(\.name))")
    }

    /// A start that fails after being handed the stored queue (here `--self` names an address the
    /// host no longer has) takes the queue out of the store before it exits: the queue unbinds, so
    /// the rules' --queue-bypass applies until a start succeeds, instead of a queue bound with no
    /// reader through every restart. The log says why.
    func testAStartThatFailsWithTheStoredQueueLetsItGo() throws {
        let manager = try ServiceManagerSocket(path: lab.directory.appendingPathComponent("notify.sock").path)
        let arguments = ["run", "--queue", "0", "--control", lab.controlPath("p1")] + Lab.labPeers
        let first = try lab.start(
            "p1", "second-chance", arguments + ["--self", Lab.p1.description],
            environment: ["NOTIFY_SOCKET": manager.path])
        try manager.collect { $0.isReady && $0.store.contains { $0.name == "nfqueue-0" } }
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()

        let log = lab.directory.appendingPathComponent("failed-start.log").path
        let pid = try manager.restartService(
            "second-chance", arguments + ["--self", "198.18.0.99"], inside: lab.namespace("p1"), log: log)
        var status: Int32 = 0
        try lab.waitFor("the failing start to exit") { waitpid(pid, &status, WNOHANG) == pid }
        XCTAssertNotEqual(Spawn.exitCode(status), 0)
        try manager.collect { !$0.store.contains { $0.name.hasPrefix("nfqueue-0") } }
        try lab.waitFor("queue 0 to be unbound") { try lab.inside("p1") { ProcFile.kernelQueueStatistics()[0] == nil } }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        XCTAssertTrue(output.contains("letting the stored queue socket(s) go"), output)
        XCTAssertTrue(output.contains("--self 198.18.0.99 is not an address of this host"), output)
    }

    /// A reader that dies between reading packets and answering them (the test plays it: it reads
    /// five queued packets and never answers): the daemon that takes its socket over requeues them
    /// with the first packet it reads, and they reach the service.
    func testPacketsAReaderDiedWithAreRequeuedByTheNextDaemon() throws {
        let queue = try lab.inside("p1") { try NetfilterQueue(number: 0) }
        let service = try traffic.openService()
        defer { close(service) }
        try traffic.send(0..<5)
        var buffer = [UInt8](repeating: 0, count: 70_000)
        var timeout = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(queue.fileDescriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        for _ in 0..<5 {
            XCTAssertGreaterThan(recv(queue.fileDescriptor, &buffer, buffer.count, 0), 0, "a queued packet read")
        }
        XCTAssertEqual(try traffic.waiting("p1"), 5, "read, not answered")

        let control = lab.controlPath("p1")
        let log = lab.directory.appendingPathComponent("adopting.log").path
        let pid = try startPassing(queue.fileDescriptor, control: control, log: log)
        defer { kill(pid, SIGTERM); _ = Spawn.wait(pid) }
        try lab.waitFor("the control socket") { FileManager.default.fileExists(atPath: control) }
        try traffic.send(5..<6)
        traffic.assertAllReceived(traffic.received(service), 0..<6, "datagrams read by the dead reader, and one after")
        XCTAssertEqual(try traffic.waiting("p1"), 0)
        withExtendedLifetime(queue) {}
    }

    /// Readers that die with the same packets in hand, restart after restart (as a packet that
    /// crashes the daemon would make them): the packets are replayed into the next reader three
    /// times, then dropped and counted, and the count starts again.
    func testPacketsEveryRestartDiesWithAreDroppedAfterThreeReplays() throws {
        let first = try lab.inside("p1") { try NetfilterQueue(number: 0) }
        let fd = first.fileDescriptor
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 70_000)
        /// A reader reading what is queued and dying with it: nothing is answered. Counts packet
        /// messages (not the kernel's answers to a reader's requests), until `count` or a quiet second.
        func readAndDie(_ count: Int) -> Int {
            var packets = 0
            while packets < count, recv(fd, &buffer, buffer.count, 0) >= 16 {
                if UInt16(buffer[4]) | UInt16(buffer[5]) << 8 == 0x0300 { packets += 1 }  // NFQNL_MSG_PACKET
            }
            return packets
        }
        func waiting() throws -> UInt64 { try lab.inside("p1") { ProcFile.kernelQueueStatistics()[0]?.waiting ?? 0 } }
        try traffic.send(0..<5)
        XCTAssertEqual(readAndDie(5), 5)
        let counter = try EventFD()
        for restart in 1...4 {
            // The next reader takes the socket over, reads one new packet (which shows where the
            // dead one stopped), answers it, and requeues or drops what the dead one held.
            let queue = try lab.inside("p1") {
                try NetfilterQueue(adopting: OwnedDescriptor(adopting: dup(fd)), number: 0)
            }
            queue.replayGuard = ReplayGuard(counter: counter)
            try traffic.send(UInt32(4 + restart)..<UInt32(5 + restart))
            try lab.waitFor("the new packet") { try waiting() == 6 }
            let stop = try EventFD()
            stop.signal()
            try queue.run(stop: stop, drainOnStop: { false }) { packets, actions in
                for _ in packets { actions.append(.accept) }
            }
            if restart <= 3 {
                XCTAssertEqual(readAndDie(5), 5, "restart \(restart): the five are replayed, and read again")
                XCTAssertEqual(counter.value, UInt64(restart), "restart \(restart)")
                XCTAssertEqual(queue.crashReplaysDropped.load(ordering: .relaxed), 0)
            } else {
                XCTAssertEqual(readAndDie(1), 0, "restart \(restart): nothing is replayed")
                XCTAssertEqual(try waiting(), 0, "the five were dropped")
                XCTAssertEqual(queue.crashReplaysDropped.load(ordering: .relaxed), 1)
                XCTAssertEqual(counter.value, 0, "the count starts again")
            }
        }
        withExtendedLifetime(first) {}
    }

    /// The fd names come from the environment, which only systemd or the daemon itself should set;
    /// a socket passed as `nfqueue-0` that is no netfilter socket, or is bound to another queue,
    /// is refused with the reason instead of being read or written as queue 0.
    func testAnInheritedSocketThatIsNotTheQueuesIsRefused() throws {
        let udp = try lab.inside("p1") { try LabSockets.bindUDP(.v4(Lab.p1), port: 40999) }
        defer { close(udp) }
        let otherQueue = try lab.inside("p1") { try NetfilterQueue(number: 5) }
        for (fd, reason) in [
            (udp, "is not a netfilter netlink socket"),
            (otherQueue.fileDescriptor, "is not the socket bound to queue 0"),
        ] {
            let log = lab.directory.appendingPathComponent("refused-\(fd).log").path
            let pid = try startPassing(fd, control: lab.controlPath("refused"), log: log)
            // A daemon that took the socket would serve on: the wait is bounded, and the test then fails.
            var status: Int32 = 0
            defer { if waitpid(pid, &status, WNOHANG) == 0 { kill(pid, SIGKILL); _ = Spawn.wait(pid) } }
            try lab.waitFor("second-chance to refuse the socket", seconds: 10) { waitpid(pid, &status, WNOHANG) == pid }
            XCTAssertNotEqual(Spawn.exitCode(status), 0)
            let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            XCTAssertTrue(output.contains(reason), output)
        }
        withExtendedLifetime(otherQueue) {}
    }

    /// second-chance for queue 0 in P1, handed `fd` as systemd hands a stored socket: fd 3, named
    /// `nfqueue-0`; its stderr goes to `log`.
    func startPassing(_ fd: Int32, control: String, log: String) throws -> pid_t {
        try Spawn.run(
            "/usr/bin/env",
            [
                "ip", "netns", "exec", lab.namespace("p1"), "/bin/sh", "-c",
                "LISTEN_PID=$$ exec \"$0\" \"$@\" 2>\(log)",
                Lab.binaries.appendingPathComponent("second-chance").path, "run", "--queue", "0",
                "--self", Lab.p1.description, "--control", control,
            ] + Lab.labPeers,
            environment: ProcessInfo.processInfo.environment.merging(["LISTEN_FDS": "1", "LISTEN_FDNAMES": "nfqueue-0"])
            {
                $1
            },
            placing: [(fd, 3)])
    }
}
