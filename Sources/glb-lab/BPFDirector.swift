import ArgumentParser
import Glibc
import LabKit
import LabPrograms
import LinuxSys
import NetTypes
import ProxysideArguments

/// `director` at kernel speed: a tc program on the director's interface encapsulates IPv4 packets
/// for the VIPs in GUE to the proxies the rendezvous table picks, with the same hash and ranking.
/// For benchmarks that push bulk TCP through GUE (the client sends MTU-sized frames: TSO and GSO
/// off). Detached when it stops; SIGHUP re-reads the table.
struct BPFDirector: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bpf-director", abstract: "GLB director at kernel speed (tc BPF; IPv4 clients).")

    @Option(help: "The director's interface: clients' packets arrive and leave in GUE there.") var interface =
        "eth0"
    @Option(name: .customLong("self"), help: "The director's address: outer source of GUE packets.") var selfAddress:
        IPv4Address
    @Option(help: "Table file: lines 'PROXY-ADDRESS [active|draining]'.") var table: String
    @Option(help: "Proxies per flow (primary + hops).") var hops: Int = 2
    @Option(name: .customLong("vip"), help: "A VIP (repeatable): its packets are encapsulated.") var vips:
        [IPv4Address] = []

    func validate() throws {
        guard (1...LabDirector.maximumHops).contains(hops) else {
            throw ValidationError("--hops (proxies per flow) is 1...\(LabDirector.maximumHops)")
        }
        guard !vips.isEmpty else { throw ValidationError("name at least one --vip") }
    }

    func run() throws {
        let stop = try EventFD()
        let reload = try EventFD()
        try Signals.install(shutdown: stop, reload: reload)
        let director = try LabDirector()
        try configure(director)
        try LabDirector.filter.attach(programFD: director.programFD, interface: interface)
        defer { try? LabDirector.filter.detach(from: interface) }
        logger.info("bpf-director: attached to \(interface) for \(vips.map(\.description).joined(separator: ", "))")
        var descriptors = [
            pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: reload.fd, events: Int16(POLLIN), revents: 0),
        ]
        while !stop.consume() {
            _ = poll(&descriptors, 2, -1)
            if reload.consume() {
                do {
                    try configure(director)
                    logger.info("bpf-director: table reloaded")
                } catch { logger.info("bpf-director: keeping the old table: \(error)") }
            }
        }
        let counts = director.counters()
        logger.info(
            """
            bpf-director: stopped after \(counts.encapsulated) packets (\(counts.passed) passed, \
            \(counts.segmented) GSO packets left to the stack, \(counts.malformed) malformed)
            """)
    }

    func configure(_ director: LabDirector) throws {
        guard let text = ProcFile.read(table) else { throw CommandFailure("cannot read \(table)") }
        let parsed = try RendezvousTable.parse(text, maximumHops: hops)
        try director.configure(table: parsed, selfAddress: selfAddress, vips: vips)
        let proxies = parsed.proxies.map { "\($0.address) \($0.state.rawValue)" }
        logger.info("bpf-director: \(proxies.joined(separator: ", "))")
    }
}
