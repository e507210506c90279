import CBPF
import CLabDirectorABI
import Glibc
import LabKit
import LinuxSys
import NetTypes

/// The lab's wire into a proxy (`bpf/wire.bpf.c`): attached in the driver of a switch port a
/// sender's frames arrive on, it redirects those to the proxy's link address into the port toward
/// the proxy, which then receives XDP frames as from a NIC's ring. It stays attached after the
/// process that attached it exits, until the interface goes or `NativeXDP.detach` takes it off.
public enum LabWire {
    public static func attach(on port: String, to proxyPort: String, mac: [UInt8]) throws {
        guard mac.count == 6 else { throw SystemError("a link address is 6 bytes", errno: EINVAL) }
        let object = try BPFObject(elf: HexText.bytes(EmbeddedBPFObjects.wire), name: "wire")
        var target = ld_wire_target()
        withUnsafeMutableBytes(of: &target.mac) { $0.copyBytes(from: mac) }
        target.ifindex = try NetworkInterface.index(proxyPort)
        var key: UInt32 = 0
        guard bpf_map_update_elem(try object.map("wire_target"), &key, &target, UInt64(BPF_ANY)) == 0 else {
            throw SystemError("writing the wire's target", errno: errno)
        }
        try withExtendedLifetime(object) {
            try NativeXDP.attach(programFD: try object.program("wire"), interface: port, replacing: nil)
        }
    }
}
