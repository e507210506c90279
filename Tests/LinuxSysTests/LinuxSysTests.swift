import Glibc
import LinuxSys
import NetTypes
import TestSupport
import XCTest

/// The system layer's pure parts and its thin wrappers, against the C library and the kernel of
/// the machine the tests run on (no root, no namespace).
final class AddressTextTests: XCTestCase {
    /// What inet_pton accepts and inet_ntop writes, for the family the text names.
    func libc(_ text: String) -> String? {
        let family = text.contains(":") ? AF_INET6 : AF_INET
        var storage = in6_addr()
        guard inet_pton(family, text, &storage) == 1 else { return nil }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(family, &storage, &buffer, socklen_t(buffer.count)) != nil else { return nil }
        return String(cString: buffer)
    }

    /// NetTypes reads and writes addresses as the C library does: the same texts accepted, the
    /// same canonical text written (bindkeeper's socket keys depend on it).
    func testAddressesParseAndPrintAsTheCLibraryDoes() {
        var texts = [
            "0.0.0.0", "255.255.255.255", "198.18.0.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1..2.3",
            " 1.2.3.4",
            "::", "::1", "1::", "::ffff:198.18.0.1", "::198.18.0.1", "::ffff:1.2.3", "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4", "1::2::3", ":::", "1:0:0:2:0:0:0:3", "0:0:1:0:0:0:0:0", "2001:db8::1",
            "2001:DB8::A",
            "12345::", "::ffff:0:1.2.3.4", "::0:1.2.3.4", "fe80::1", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", ":1::", "1:",
            ":",
            "::ffff:01.2.3.4", "::1.2.3.4:5", "0::0:0", "ffff::ffff:1.2.3.4", "::0.0.0.1", "::0.1.0.0",
        ]
        var random = SeededGenerator.fromEnvironment(name: "address-text")
        let alphabet = Array("0123456789abcdef:.")
        for _ in 0..<20000 {
            let length = Int.random(in: 1...24, using: &random)
            texts.append(String((0..<length).map { _ in alphabet.randomElement(using: &random)! }))
        }
        for _ in 0..<5000 {
            // Zero runs of every length, and IPv4-mapped and -compatible forms.
            let high = random.next() & (random.below(2) == 0 ? 0 : 0xffff_0000_ffff_0000)
            let low: UInt64 =
                switch random.below(4) {
                case 0: 0xffff_0000_0000 | random.next() >> 32
                case 1: random.next() >> 32
                case 2: random.next() & 0xffff_0000_0000_ffff
                default: random.next()
                }
            let value = IPv6Address(high: high, low: low)
            texts.append(value.description)
        }
        for text in texts {
            XCTAssertEqual(IPAddress(text)?.description, libc(text), "\(text.debugDescription) \(random.report)")
        }
    }

    func testEndpointsAsOperatorsWriteThem() {
        XCTAssertEqual(Endpoint("198.18.0.1:80"), Endpoint(.v4(IPv4Address("198.18.0.1")!), 80))
        XCTAssertEqual(Endpoint("[2001:db8::1]:443")?.description, "[2001:db8::1]:443")
        XCTAssertEqual(Endpoint("2001:db8::1:443")?.port, 443, "a bare IPv6 address: the port follows the last colon")
        for bad in ["198.18.0.1", "198.18.0.1:", "198.18.0.1:65536", ":80", "[::1:80", "host:80", "198.18.0.1:-1"] {
            XCTAssertNil(Endpoint(bad), bad)
        }
        XCTAssertNil(Endpoint("[::1]:9")?.ipv4)
    }
}

final class SocketTests: XCTestCase {
    func testSocketAddressesRoundTrip() {
        for endpoint in [Endpoint("198.18.0.1:80")!, Endpoint("[2001:db8::ffff:1]:65535")!, Endpoint("0.0.0.0:0")!] {
            XCTAssertEqual(SocketAddress(endpoint).endpoint, endpoint)
        }
        XCTAssertEqual(SocketAddress(.v4(IPv4Address(0)), port: 0).length, socklen_t(MemoryLayout<sockaddr_in>.size))
        XCTAssertEqual(
            SocketAddress(.v6(IPv6Address(high: 0, low: 1)), port: 0).length, socklen_t(MemoryLayout<sockaddr_in6>.size)
        )
    }

    /// bind(2) through a SocketAddress, then getsockname(2) back through one.
    func testBoundAddressReadsBack() throws {
        for address in [IPAddress("127.0.0.1")!, IPAddress("::1")!] {
            let fd = socket(address.family, Int32(SOCK_DGRAM.rawValue), 0)
            XCTAssertGreaterThanOrEqual(fd, 0)
            defer { close(fd) }
            XCTAssertEqual(SocketAddress(address, port: 0).withSockaddr { bind(fd, $0, $1) }, 0, "\(address)")
            let local = try XCTUnwrap(SocketAddress.local(of: fd)?.endpoint)
            XCTAssertEqual(local.address, address)
            XCTAssertNotEqual(local.port, 0)
        }
        XCTAssertNil(SocketAddress.local(of: -1))
    }

    /// Bytes and fds over a socketpair: the fds arrive close-on-exec and are the same open files.
    /// A socket's path proves nothing once another file is there: the one its bind made is known
    /// by inode (unix_diag), whatever name it has now.
    func testAUnixSocketKnowsWhetherItsPathIsStillItsFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("unixfile-\(getpid())").path
        mkdir(directory, 0o700)
        defer { _ = try? FileManager.default.removeItem(atPath: directory) }
        func listener(_ path: String) throws -> Int32 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            try UnixAddress.bind(fd, path)
            XCTAssertEqual(listen(fd, 1), 0)
            return fd
        }
        let path = directory + "/control.sock"
        let ours = try listener(directory + "/staged")
        defer { close(ours) }
        XCTAssertEqual(rename(directory + "/staged", path), 0)
        XCTAssertEqual(UnixSocketFile.isBound(ours, at: path), true, "renamed into place, still its file")
        let other = try listener(directory + "/other")
        close(other)  // a dead socket file, such as a crashed process leaves
        XCTAssertEqual(rename(directory + "/other", path), 0)
        XCTAssertEqual(UnixSocketFile.isBound(ours, at: path), false, "another socket's file at the path")
        unlink(path)
        XCTAssertEqual(UnixSocketFile.isBound(ours, at: path), false, "the path gone")
    }

    func testDescriptorsPassOverASocketpair() throws {
        var pair: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair), 0)
        defer { pair.forEach { close($0) } }
        var pipeEnds: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&pipeEnds), 0)
        defer { pipeEnds.forEach { close($0) } }
        let sent = try FDPassing.send(pair[0], ArraySlice("hello".utf8), fds: pipeEnds)
        XCTAssertEqual(sent, 5)
        let (bytes, fds) = try FDPassing.receive(pair[1])
        defer { fds.forEach { close($0) } }
        XCTAssertEqual(bytes, Array("hello".utf8))
        XCTAssertEqual(fds.count, 2)
        for fd in fds { XCTAssertNotEqual(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0, "received fds are close-on-exec") }
        var byte: UInt8 = 42
        XCTAssertEqual(write(fds[1], &byte, 1), 1)
        var read: UInt8 = 0
        XCTAssertEqual(Glibc.read(pipeEnds[0], &read, 1), 1)
        XCTAssertEqual(read, 42, "the passed write end is the pipe's")
        // A closed peer: the receiver sees the end, not an error.
        close(pair[0])
        pair[0] = -1
        XCTAssertEqual(try FDPassing.receive(pair[1]).bytes, [])
    }
}

final class ProcFileTests: XCTestCase {
    static let netstat = """
        TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed ListenOverflows
        TcpExt: 12 7 0 3
        IpExt: InNoRoutes SyncookiesSent
        IpExt: 1 99
        """

    func testNetstatCountersAreReadFromTheirSection() {
        XCTAssertEqual(ProcFile.counter("SyncookiesSent", section: "TcpExt", in: Self.netstat), 12)
        XCTAssertEqual(ProcFile.counter("ListenOverflows", section: "TcpExt", in: Self.netstat), 3)
        XCTAssertEqual(ProcFile.counter("SyncookiesSent", section: "IpExt", in: Self.netstat), 99)
        XCTAssertNil(ProcFile.counter("Missing", section: "TcpExt", in: Self.netstat))
        XCTAssertNil(
            ProcFile.counter("SyncookiesSent", section: "TcpExt", in: "TcpExt: SyncookiesSent\n"), "no value line")
        XCTAssertNil(ProcFile.counter("A", section: "TcpExt", in: "TcpExt: A B\nTcpExt: x 1\n"), "not a number")
        XCTAssertNil(ProcFile.counter("B", section: "TcpExt", in: "TcpExt: A B\nTcpExt: 1\n"), "a short value line")
    }

    func testSeveralCountersOfASectionAtOnce() {
        XCTAssertEqual(
            ProcFile.counters(["ListenOverflows", "Missing", "SyncookiesSent"], section: "TcpExt", in: Self.netstat),
            [3, nil, 12])
        XCTAssertEqual(ProcFile.counters(["SyncookiesSent"], section: "IpExt", in: Self.netstat), [99])
        XCTAssertEqual(ProcFile.counters(["A", "B"], section: "Nope", in: Self.netstat), [nil, nil])
        XCTAssertEqual(
            ProcFile.counters(["A"], section: "TcpExt", in: "TcpExt: A\nTcpExt: 99999999999999999999\n"), [nil],
            "a value past UInt64 is no value")
    }

    func testSysctlNumbers() {
        XCTAssertEqual(ProcFile.sysctlNumbers("4096\t131072\t6291456\n"), [4096, 131_072, 6_291_456])
        XCTAssertEqual(ProcFile.sysctlNumbers("1\n"), [1])
        XCTAssertEqual(ProcFile.sysctlNumbers("\n"), [])
        XCTAssertEqual(ProcFile.sysctlNumbers("-1 x 99999999999"), [])
    }

    /// A held file is read again from its start each time, whatever was read before.
    func testHeldFilesAreReadFromTheirStart() throws {
        let fd = open("/proc/thread-self/net/netstat", O_RDONLY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        let first = try XCTUnwrap(ProcFile.text(fd: fd))
        let second = try XCTUnwrap(ProcFile.text(fd: fd))
        XCTAssertNotNil(ProcFile.counter("SyncookiesSent", section: "TcpExt", in: first))
        XCTAssertEqual(first.split(separator: "\n").first, second.split(separator: "\n").first)
        XCTAssertEqual(ProcFile.bytes(fd: fd, limit: 10)?.count, 10, "bounded by the limit")
        XCTAssertNil(ProcFile.read("/proc/no-such-file"))
        XCTAssertNotNil(ProcFile.read("/proc/sys/net/ipv4/tcp_syncookies").map(ProcFile.sysctlNumbers)?.first)
    }

    /// A process names itself: its command may hold blanks, parentheses and a newline; the start
    /// time is read after the last parenthesis.
    func testAProcessStatLinesCommandAndStartTime() {
        let fields = " S 1 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 424242 1 1"
        XCTAssertEqual(ProcFile.commandAndStart(stat: "7 (haproxy)" + fields)?.command, "haproxy")
        XCTAssertEqual(ProcFile.commandAndStart(stat: "7 (haproxy)" + fields)?.started, 424_242)
        let hostile = ProcFile.commandAndStart(stat: "7 (a) (b\n 9 9)" + fields)
        XCTAssertEqual(hostile?.command, "a) (b\n 9 9")
        XCTAssertEqual(hostile?.started, 424_242)
        // U+0600 (a prepended concatenation mark) joins the ")" after it into one grapheme.
        let joined = ProcFile.commandAndStart(stat: "7 (a) 1 2 3\u{600})" + fields)
        XCTAssertEqual(joined?.started, 424_242, "the last parenthesis, by bytes")
        XCTAssertEqual(joined?.command, "a) 1 2 3\u{600}")
        XCTAssertNil(ProcFile.commandAndStart(stat: "7 (x) S 1 2"), "too few fields")
        XCTAssertNil(ProcFile.commandAndStart(stat: ") 7 ("), "no command")
        let mine = ProcessSockets.identity(of: getpid())
        XCTAssertNotNil(mine)
        XCTAssertEqual(mine?.started, ProcessSockets.identity(of: getpid())?.started)
    }

    /// Any bytes a process could leave in its stat line (its name is its own): the parser never
    /// traps, and what it reads is the 20th field after the last parenthesis, the name what is
    /// between the first and the last.
    func testRandomAndMutatedStatLines() {
        var random = SeededGenerator.fromEnvironment(name: #function)
        let seed = Array("4242 (haproxy) S 1 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 1".utf8)
        let alphabet = Array("() 0123456789\n\u{1b}x".utf8) + [0xd8, 0x80, 0xff, 0]
        for round in 0..<20_000 {
            var bytes =
                round % 4 == 0 ? (0..<random.below(120)).map { _ in alphabet[random.below(alphabet.count)] } : seed
            for _ in 0..<random.below(6) where !bytes.isEmpty {
                let at = random.below(bytes.count)
                switch random.below(3) {
                case 0: bytes[at] = alphabet[random.below(alphabet.count)]
                case 1: bytes.insert(alphabet[random.below(alphabet.count)], at: at)
                default: bytes.remove(at: at)
                }
            }
            let text = String(decoding: bytes, as: UTF8.self)
            guard let parsed = ProcFile.commandAndStart(stat: text) else { continue }
            let utf8 = Array(text.utf8)
            let close = utf8.lastIndex(of: UInt8(ascii: ")"))!
            let fields = utf8[(close + 1)...].split(separator: UInt8(ascii: " "))
            XCTAssertEqual(UInt64(String(decoding: fields[19], as: UTF8.self)), parsed.started, random.report)
        }
    }

    /// This process's own sockets are found by their inodes (a process's own table is readable).
    func testAProcessSocketsAreFoundByInode() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var status = stat()
        XCTAssertEqual(fstat(fd, &status), 0)
        var mine: [UInt64] = []
        let parent = getppid()
        _ = try ProcessSockets.scan(excluding: parent, limit: 10_000_000) { process in
            if process.pid == getpid() { mine = process.sockets }
        }
        XCTAssertTrue(mine.contains(UInt64(status.st_ino)), "\(mine)")
    }

    func testKernelQueueTableLines() {
        let table = ProcFile.kernelQueueStatistics()
        // No queue is bound in this process's namespace unless a daemon runs; the read must not fail either way.
        XCTAssertTrue(table.values.allSatisfy { $0.waiting >= 0 })
    }
}

/// Exact sock_diag look-ups, as second-chance asks for every packet it does not cache, against
/// real loopback sockets.
final class SockDiagTests: XCTestCase {
    func testLookupsFindConnectionsListenersAndNothing() throws {
        let loopback = IPAddress("127.0.0.1")!
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        XCTAssertEqual(SocketAddress(loopback, port: 0).withSockaddr { bind(listener, $0, $1) }, 0)
        XCTAssertEqual(listen(listener, 4), 0)
        let port = try XCTUnwrap(SocketAddress.local(of: listener)?.endpoint?.port)
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        XCTAssertEqual(SocketAddress(loopback, port: port).withSockaddr { connect(client, $0, $1) }, 0)
        let clientPort = try XCTUnwrap(SocketAddress.local(of: client)?.endpoint?.port)
        let v4 = IPv4Address("127.0.0.1")!
        let connected = FlowKey(source: v4, sourcePort: clientPort, destination: v4, destinationPort: port)
        let otherClient = FlowKey(source: v4, sourcePort: clientPort &+ 1, destination: v4, destinationPort: port)
        let nobody = FlowKey(source: v4, sourcePort: clientPort, destination: v4, destinationPort: 1)
        let diag = try SockDiag()
        XCTAssertEqual(diag.lookup(connected), .connected)
        XCTAssertEqual(diag.lookup(otherClient), .listener)
        XCTAssertEqual(diag.lookup(nobody), .none)
        XCTAssertEqual(diag.lookup(batch: [nobody, connected, otherClient]), [.none, .connected, .listener])
        let many = (0..<150).map { index in index % 3 == 0 ? connected : index % 3 == 1 ? otherClient : nobody }
        XCTAssertEqual(
            diag.lookup(batch: many), many.map { $0 == connected ? .connected : $0 == otherClient ? .listener : .none },
            "more flows than one round")
    }
}

/// A descriptor handed over by an earlier process belongs to whatever claims it: refused, it is
/// closed on the path that refuses it; taken, it is its new owner's and stays open.
final class OwnedDescriptorTests: XCTestCase {
    func isOpen(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) >= 0 }

    func testARefusedHandOverIsClosedAndATakenOneStaysOpen() throws {
        let pipeEnds = UnsafeMutablePointer<Int32>.allocate(capacity: 2)
        defer { pipeEnds.deallocate() }
        XCTAssertEqual(pipe(pipeEnds), 0)
        let (notAnEventFD, other) = (pipeEnds[0], pipeEnds[1])
        defer { close(other) }
        XCTAssertThrowsError(try EventFD(adopting: OwnedDescriptor(adopting: notAnEventFD)))
        XCTAssertFalse(isOpen(notAnEventFD), "a pipe refused as an eventfd is closed, not leaked")

        let stored = try EventFD()
        let handedOver = try XCTUnwrap(Descriptors.duplicate(stored.fd))
        let adopted = try EventFD(adopting: OwnedDescriptor(adopting: handedOver))
        XCTAssertEqual(adopted.fd, handedOver)
        XCTAssertTrue(isOpen(handedOver))

        let unused = try XCTUnwrap(Descriptors.duplicate(stored.fd))
        do { _ = NamedDescriptors(adopting: ["unused": unused]) }
        XCTAssertFalse(isOpen(unused), "a set of descriptors closes them with itself")
    }
}
