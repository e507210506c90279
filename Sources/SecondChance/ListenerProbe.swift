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

    /// The listener a SYN to `key` finds, read; nil when no listener answers there. A member of an
    /// SO_REUSEPORT group is one of several: the caller reads groups otherwise.
    func read(_ key: ListenerKey) -> Reading? {
        var frame = [UInt8](repeating: 0, count: 12) + (key.isIPv6 ? [0x86, 0xdd] : [0x08, 0x00])
        if key.isIPv6 {
            frame += [0x60, 0, 0, 0, 0, 20, 6, 64] + [UInt8](repeating: 0, count: 16)
            for half in [key.address.high, key.address.low] {
                frame.appendBE32(UInt32(truncatingIfNeeded: half >> 32))
                frame.appendBE32(UInt32(truncatingIfNeeded: half))
            }
        } else {
            frame += [0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0]
            frame.appendBE32(UInt32(truncatingIfNeeded: key.address.low))
        }
        // From port 1 of the unspecified address: no connection can have that tuple.
        frame += [0, 1]
        frame.appendBE16(key.port)
        frame += [0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]
        let result = try? namespace.run {
            try BPF.testRun(programFD: object.probeFD, frame: frame, interfaceIndex: 1)
        }
        // struct listener_reading: user_mss, two reserved bytes, syn_queue (host byte order).
        guard let (action, output) = result, action == Self.tcOK, output.count >= 8 else { return nil }
        return output.withUnsafeBytes {
            Reading(
                userMSS: $0.loadUnaligned(as: UInt16.self),
                synQueue: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        }
    }
}
