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
