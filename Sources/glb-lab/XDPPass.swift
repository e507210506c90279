import ArgumentParser
import LabPrograms
import LinuxSys

/// An XDP program that passes every frame, attached in the driver of an interface: a veth's XDP_TX
/// (second-chance's forwards and SYN-cookie answers with --xdp-forward on) reaches its peer only
/// while the peer runs one. It stays attached after this command exits, until the interface goes.
struct XDPPass: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xdp-pass", abstract: "Attach an XDP program that passes everything (a veth peer's ring).")

    @Option(help: "The interface (in this namespace).") var interface: String

    func run() throws {
        let (object, _, pass) = try EmptyPrograms.load()
        try withExtendedLifetime(object) {
            try NativeXDP.attach(programFD: pass, interface: interface, replacing: nil)
        }
    }
}

/// The lab's wire into a proxy (LabWire): on a switch port, frames to the proxy's link address go
/// straight into the port toward it as XDP frames, the way a NIC's ring hands them over.
struct XDPWire: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xdp-wire", abstract: "Attach the lab's wire: frames to a link address redirected into a port.")

    @Option(help: "The switch port the sender's frames arrive on (in this namespace).") var interface: String
    @Option(help: "The switch port toward the proxy.") var to: String
    @Option(help: "The proxy's link address (aa:bb:cc:dd:ee:ff).") var mac: String

    var bytes: [UInt8]? {
        let parts = mac.split(separator: ":", omittingEmptySubsequences: false)
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return parts.count == 6 && bytes.count == 6 ? bytes : nil
    }

    func validate() throws {
        guard bytes != nil else { throw ValidationError("--mac: six hexadecimal bytes separated by colons") }
    }

    func run() throws { try LabWire.attach(on: interface, to: to, mac: bytes ?? []) }
}
