import CFastPathABI
import Glibc
import LinuxSys
import NetTypes

/// What sock_diag does not report of a listener, or only at the cost of walking every established
/// socket: its TCP_MAXSEG and its SYN queue. The tc object's `listener_probe`, test-run
/// (BPF_PROG_TEST_RUN) in the listeners' namespace on a frame addressed to the listener, finds it
/// as a SYN would and reads both from the socket. The queue's responder clamps the MSS it offers
/// with the first, as the kernel does (the tc program reads it itself, per SYN); the monitor
/// counts served listeners' SYN queues with the second.
final class ListenerProbe {
    private let object: FastPathObject
    private let namespace: NetworkNamespace?

    init(namespace: NetworkNamespace?) throws {
        self.namespace = namespace
        object = try namespace.run { try FastPathObject(probeOnly: true) }
    }

    static let tcOK: UInt32 = 0

    struct Reading: Equatable {
        /// The listener's user_mss (0: none set).
        var userMSS: UInt16
        /// Its request sockets (icsk_accept_queue.qlen).
        var synQueue: UInt32
    }

    /// The listener a SYN to `key` finds, read; nil when no listener answers there, or when the
    /// socket found is not that listener: another family, address or port (a wildcard listener
    /// answering for an address), or bound to a device (a test run on loopback finds a listener
    /// as a SYN arriving on loopback would). A member of an SO_REUSEPORT group is one of several:
    /// the caller reads groups otherwise.
    func read(_ key: ListenerKey) -> Reading? { read([key])[0] }

    /// `read` for each key, in one visit to the listeners' namespace.
    func read(_ keys: [ListenerKey]) -> [Reading?] {
        (try? namespace.run { keys.map(testRun) }) ?? keys.map { _ in nil }
    }

    private func testRun(_ key: ListenerKey) -> Reading? {
        let address = Self.addressBytes(key)
        var frame = [UInt8](repeating: 0, count: 12) + (key.isIPv6 ? [0x86, 0xdd] : [0x08, 0x00])
        if key.isIPv6 {
            frame += [0x60, 0, 0, 0, 0, 20, 6, 64] + [UInt8](repeating: 0, count: 16) + address
        } else {
            frame += [0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0] + address
        }
        // From port 1 of the unspecified address: no connection can have that tuple.
        frame += [0, 1]
        frame.appendBE16(key.port)
        frame += [0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]
        guard let (action, output) = try? BPF.testRun(programFD: object.probeFD, frame: frame, interfaceIndex: 1),
            action == Self.tcOK, output.count >= MemoryLayout<fp_listener_reading>.size
        else { return nil }
        var reading = fp_listener_reading()
        withUnsafeMutableBytes(of: &reading) { $0.copyBytes(from: output.prefix($0.count)) }
        let found = withUnsafeBytes(of: reading.address) { Array($0.prefix(address.count)) }
        guard reading.port == key.port, reading.bound_dev_if == 0, found == address,
            reading.family == UInt32(key.isIPv6 ? AF_INET6 : AF_INET)
        else { return nil }
        return Reading(userMSS: reading.user_mss, synQueue: reading.syn_queue)
    }

    /// The key's address as the frame and the socket carry it (network order).
    static func addressBytes(_ key: ListenerKey) -> [UInt8] {
        var bytes: [UInt8] = []
        if key.isIPv6 {
            for half in [key.address.high, key.address.low] {
                bytes.appendBE32(UInt32(truncatingIfNeeded: half >> 32))
                bytes.appendBE32(UInt32(truncatingIfNeeded: half))
            }
        } else {
            bytes.appendBE32(UInt32(truncatingIfNeeded: key.address.low))
        }
        return bytes
    }
}
