import Bindkeeper
import BindkeeperCore
import Foundation
import Glibc
import LabKit
import Synchronization
import Telemetry
import XCTest

/// The shipped units under a real systemd (PID 1 of a container booted in P1's namespace): the fd
/// store keeps second-chance's queue and bindkeeper's sockets across kill -9, `systemctl reload`
/// re-executes second-chance without a loss, and haproxy-multi@ reloads drop no connection.
final class RealSystemdTests: XCTestCase {
    var lab: Lab!
    var container: SystemdContainer!
    var traffic: DatagramTraffic!

    override func setUpWithError() throws {
        lab = try Lab(prefix: "pssd")
        traffic = DatagramTraffic(lab: lab)
        // The units as `make install` writes them for the container's /usr/local.
        let units = lab.directory.appendingPathComponent("units").path
        try Lab.shell(
            Lab.packageRoot.appendingPathComponent("scripts/render-units.sh").path
                + " \(units) /usr/local/sbin /usr/local/bin /usr/local/share/doc/proxyside")
        let answer = lab.directory.appendingPathComponent("answer.cfg.tmpl")
        let template = try String(
            contentsOf: Lab.packageRoot.appendingPathComponent("examples/lab/haproxy-answer.cfg.in"), encoding: .utf8)
        try template.replacingOccurrences(of: "@BIND@", with: "{{bind tcp://\(Lab.vip):8080?backlog=1024}}").write(
            to: answer, atomically: true, encoding: .utf8)
        let defaults = lab.directory.appendingPathComponent("second-chance.default")
        try "SECOND_CHANCE_SELF=\(Lab.p1)\nSECOND_CHANCE_ALLOW_SOURCE=198.18.0.0/24\nSECOND_CHANCE_ARGS=\n".write(
            to: defaults, atomically: true, encoding: .utf8)
        container = try SystemdContainer(
            lab: lab, host: "p1",
            files: [
                ("\(units)/second-chance@.service", "/etc/systemd/system/second-chance@.service"),
                ("\(units)/bindkeeper.service", "/etc/systemd/system/bindkeeper.service"),
                ("\(units)/haproxy-multi@.service", "/etc/systemd/system/haproxy-multi@.service"),
                (defaults.path, "/etc/default/second-chance"),
                (answer.path, "/etc/haproxy/answer.cfg.tmpl"),
            ])
    }

    override func tearDown() {
        if let container, testRun?.hasSucceeded == false { print(container.journal()) }
        container?.stop()
        lab?.tearDown()
    }

    func mainPID(_ unit: String) throws -> Int32 { Int32(try container.property(unit, "MainPID")) ?? 0 }

    /// kill -9 under systemd: datagrams sent while the daemon is down wait in the queue that the
    /// fd store keeps bound, and the daemon systemd restarts decides them all. Then `systemctl
    /// reload`, three times while datagrams keep coming: none is lost.
    func testSecondChanceQueueSurvivesKillDashNineAndReloads() throws {
        let unit = "second-chance@0.service"
        // Restart a second later than shipped (100 ms), so that the datagrams surely arrive while it is down.
        try container.write("[Service]\nRestartSec=1s\n", to: "/etc/systemd/system/\(unit).d/slower-restart.conf")
        try container.systemctl("daemon-reload")
        try container.systemctl("start", unit)
        let control = container.path("/run/second-chance/queue-0.sock")
        try lab.waitFor("the daemon's control socket") { (try? readControlSocket(control)) != nil }
        let first = try mainPID(unit)
        let service = try traffic.openService()
        defer { close(service) }

        try container.systemctl("kill", "--signal=KILL", "--kill-whom=main", unit)
        try traffic.send(0..<300)
        try lab.waitFor("the datagrams to wait in the queue the fd store holds") {
            try self.traffic.waiting("p1") == 300
        }
        try lab.waitFor("systemd to restart the daemon", seconds: 10) {
            let pid = try self.mainPID(unit)
            return pid != 0 && pid != first && (try? readControlSocket(control)) != nil
        }
        traffic.assertAllReceived(traffic.received(service), 0..<300, "datagrams sent while the daemon was down")
        let journal = container.journal(unit)
        XCTAssertTrue(journal.contains("took over 1 bound queue socket(s)"), journal)
        XCTAssertEqual(try lab.stats(fromControl: control)["accepted_udp"], 300)
        // Whether the container lets it load BPF or not, the daemon says where packets are decided.
        let fastPath = journal.contains("tc on eth0 (program")
        XCTAssertTrue(
            fastPath || journal.contains("warning: fast path off, every packet is decided from NFQUEUE: "), journal)
        // The unit grants no CAP_SYS_ADMIN: the restarted daemon knows its predecessor's program and
        // adopts its maps only through the descriptors systemd's fd store kept for it.
        if fastPath {
            XCTAssertTrue(journal.contains("maps adopted from program") && journal.contains("after a restart"), journal)
        }

        let client = lab.namespace("c")
        let failure = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            do { try DatagramTraffic.send(1000..<3000, pace: 400, from: client) } catch {
                failure.withLock { $0 = "\(error)" }
            }
            done.signal()
        }
        for _ in 1...3 {
            usleep(150_000)
            try container.systemctl("reload", unit)
        }
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        XCTAssertNil(failure.withLock { $0 })
        traffic.assertAllReceived(traffic.received(service), 1000..<3000, "datagrams sent across three reloads")
        XCTAssertEqual(try lab.stats(fromControl: control)["reexecs"], 3)
        if fastPath {
            let reloads = container.journal(unit).components(separatedBy: "after the re-exec").count - 1
            XCTAssertEqual(reloads, 3, "each re-exec adopted the maps: \(container.journal(unit))")
        }
        XCTAssertEqual(try mainPID(unit), try mainPID(unit), "one process throughout")
    }

    /// WatchdogSec: a queue thread stuck in a lookup (sock_diag made to block by a preloaded
    /// library, Fixtures/sock_diag_fault.c) while the process lives on gets the daemon killed by
    /// the watchdog and restarted, with the stored queue, by systemd.
    func testTheWatchdogRestartsADaemonWhoseQueueThreadIsStuck() throws {
        let unit = "second-chance@0.service", watchdogSeconds = 3
        let library = lab.directory.appendingPathComponent("sock_diag_fault.so").path
        try Lab.shell(
            """
            gcc -shared -fPIC -o \(library) \
            \(Lab.packageRoot.appendingPathComponent("Tests/IntegrationTests/Fixtures/sock_diag_fault.c").path) -ldl
            """
        )
        try FileManager.default.copyItem(atPath: library, toPath: container.path("/etc/sock_diag_fault.so"))
        // Every packet from the queue (no tc program), no responder (its monitor asks sock_diag too).
        try container.write(
            "SECOND_CHANCE_ARGS=--fast-path off --syn-cookies off\n", to: "/etc/second-chance-wedge.env")
        try container.write(
            """
            [Service]
            EnvironmentFile=/etc/second-chance-wedge.env
            Environment=LD_PRELOAD=/etc/sock_diag_fault.so SOCK_DIAG_FAULT=wedge:/run/wedge-sock-diag
            WatchdogSec=\(watchdogSeconds)s

            """, to: "/etc/systemd/system/\(unit).d/wedge.conf")
        try container.systemctl("daemon-reload")
        try container.systemctl("start", unit)
        let control = container.path("/run/second-chance/queue-0.sock")
        try lab.waitFor("the daemon's control socket") { (try? readControlSocket(control)) != nil }
        let first = try mainPID(unit)
        // Idle, the threads come round every 100 ms: the watchdog is told, the daemon stays. Shown
        // by systemd's own record of the last keep-alive, once it is a whole WatchdogSec after
        // the daemon started (a daemon that never told it would have been killed by then).
        func monotonic(_ property: String) throws -> UInt64 { UInt64(try container.property(unit, property)) ?? 0 }
        let started = try monotonic("ExecMainStartTimestampMonotonic")
        let period = UInt64(watchdogSeconds) * 1_000_000
        try lab.waitFor("a keep-alive a whole WatchdogSec after the start", seconds: 15) {
            try monotonic("WatchdogTimestampMonotonic") > started + period
        }
        XCTAssertEqual(try mainPID(unit), first, container.journal(unit))

        try container.write("", to: "/run/wedge-sock-diag")
        let ack = PacketBuilder.tcp(
            source: .v4(Lab.client), sourcePort: 40090, destination: .v4(Lab.vip), destinationPort: 80, flags: .ack)
        try sendGUE(lab, from: "d", source: Lab.director, sourcePort: 30090, to: Lab.p1, inner: ack, hops: [Lab.p2])
        // The stuck thread stays stuck; with the file gone, the restarted daemon, which takes the
        // same packet again from the queue, does not wedge on it too.
        try lab.waitFor("the queue thread to be stuck", seconds: 15) {
            container.journal(unit).contains("queue thread(s) 0 stopped coming round")
        }
        try FileManager.default.removeItem(atPath: container.path("/run/wedge-sock-diag"))
        try lab.waitFor("the watchdog to have the stuck daemon restarted", seconds: 15) {
            let pid = try self.mainPID(unit)
            return pid != 0 && pid != first
        }
        XCTAssertTrue(container.journal(unit).contains("Watchdog timeout"), container.journal(unit))
        try lab.waitFor("the restarted daemon to serve") { (try? readControlSocket(control)) != nil }
        XCTAssertTrue(container.journal(unit).contains("took over 1 bound queue socket(s)"), container.journal(unit))
    }

    /// kill -9 of bindkeeper under systemd: its sockets wait in the fd store, a connection made
    /// meanwhile is queued on them, and the restarted broker hands out the same kernel socket.
    func testBindkeeperSocketsSurviveKillDashNine() throws {
        try container.systemctl("start", "bindkeeper.service")
        let control = container.path("/run/bindkeeper/bindkeeper.sock")
        try lab.waitFor("the broker") { (try? BindkeeperClient(path: control)) != nil }
        let request = try BindRequest.parse(url: "tcp://\(Lab.vip):8090?backlog=64").get()
        let before = try BindkeeperClient(path: control).bind([request])
        let cookie = OwnedSocket.cookie(before[0].fd)
        before.forEach { close($0.fd) }
        let first = try mainPID("bindkeeper.service")

        try container.systemctl("kill", "--signal=KILL", "--kill-whom=main", "bindkeeper.service")
        let queued = try lab.inside("p1") { try LabSockets.connectTCP(to: .v4(Lab.vip), port: 8090) }
        defer { close(queued) }
        try lab.waitFor("systemd to restart the broker", seconds: 10) {
            let pid = try self.mainPID("bindkeeper.service")
            return pid != 0 && pid != first && (try? BindkeeperClient(path: control)) != nil
        }
        let after = try BindkeeperClient(path: control).bind([request])
        defer { after.forEach { close($0.fd) } }
        XCTAssertEqual(OwnedSocket.cookie(after[0].fd), cookie, "the same kernel socket")
        let accepted = try acceptConnection(after[0].fd)
        XCTAssertGreaterThanOrEqual(accepted, 0, "the connection made while the broker was down is served")
        close(accepted)
        XCTAssertTrue(
            container.journal("bindkeeper.service").contains("recovered 1 sockets from the service manager"),
            container.journal("bindkeeper.service"))
    }

    /// haproxy-multi@ on bindkeeper's socket, reloaded five times by systemctl while new HTTP
    /// connections keep coming: none fails.
    func testHAProxyMultiReloadsDropNothing() throws {
        try container.systemctl("start", "bindkeeper.service")
        try container.systemctl("start", "haproxy-multi@answer.service")
        try lab.waitFor("HAProxy to answer") {
            (try? lab.inside("p1") { try Lab.httpGet(.v4(Lab.vip), port: 8080, path: "/") })?.contains("200") == true
        }
        let load = try lab.start(
            "p1", "glb-lab", ["http-load", "--target", "\(Lab.vip):8080", "--seconds", "6", "--concurrency", "4"])
        for _ in 1...5 {
            usleep(800_000)
            try container.systemctl("reload", "haproxy-multi@answer.service")
        }
        load.waitUntilExit()
        let line = try XCTUnwrap(
            lab.log(of: load).split(separator: "\n").last { $0.hasPrefix("http-load:") }, lab.log(of: load))
        XCTAssertTrue(line.contains(" failed=0 "), String(line))
        let ok = line.split(separator: " ").first { $0.hasPrefix("ok=") }.flatMap { Int($0.dropFirst(3)) } ?? 0
        XCTAssertGreaterThan(ok, 100, String(line))
        let journal = container.journal("haproxy-multi@answer.service")
        XCTAssertEqual(journal.components(separatedBy: "Reloaded haproxy-multi@answer.service").count - 1, 5, journal)
    }
}
