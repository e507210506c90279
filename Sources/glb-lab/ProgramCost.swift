import ArgumentParser
import Foundation
import LabKit
import LabPrograms
import LinuxSys
import NetTypes
import ProxysideArguments
import SecondChance
import SecondChanceCore

/// Times second-chance's tc and XDP programs, as a running daemon attached and configured them on
/// an interface, and a yardstick built elsewhere (cls_redirect), on the same GUE frames: single
/// BPF_PROG_TEST_RUNs (a repeat count would rerun a program on the packet its first pass
/// rewrote), each program's time taken above an empty program's of its hook. Run it inside the
/// proxy's namespace.
struct ProgramCost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "program-cost",
        abstract: "Time the fast path's programs and a yardstick on the same frames above empty programs (root).")

    @Option(help: "The interface second-chance's programs are attached to.") var interface = "eth0"
    @Option(help: "The yardstick's object file (cls_redirect from the kernel's BPF selftests).") var yardstick: String?
    @Option(help: "The yardstick's program.") var yardstickProgram = "cls_redirect"
    @Option(name: .customLong("self"), help: "This proxy's address: the outer destination.") var selfAddress:
        IPv4Address
    @Option(help: "The director: the outer source.") var director: IPv4Address
    @Option(help: "The VIP.") var vip: IPv4Address
    @Option(help: "The next hop of the forwarded case.") var hop: IPv4Address
    @Option(help: "The client address of an established connection to the VIP's port 80.") var established: IPv4Address
    @Option(help: "Its port.") var establishedPort: UInt16
    @Option(help: "Single test runs per program, case and round (at most 1000000).") var runs = 20000
    @Option(help: "Rounds: the figures are their medians.") var rounds = 5

    func validate() throws {
        guard (1...1_000_000).contains(runs) else { throw ValidationError("--runs must be 1 to 1000000") }
        guard (1...50).contains(rounds) else { throw ValidationError("--rounds must be 1 to 50") }
    }

    struct Program {
        var name: String
        var fd: Int32
        var hook: BPF.Hook
    }

    func run() throws {
        let index = try NetworkInterface.index(interface)
        let (programs, descriptors, objects) = try loadPrograms()
        defer { descriptors.forEach { close($0) } }
        defer { withExtendedLifetime(objects) {} }
        let cases = try frames()
        var medians: [String: [String: Double]] = [:]
        var actions: [String: [String: UInt32]] = [:]
        for (name, frame) in cases {
            var samples: [String: [Double]] = [:]
            for _ in 0..<rounds {
                for program in programs {
                    let (nanoseconds, action) = try time(program, frame, index)
                    samples[program.name, default: []].append(nanoseconds)
                    actions[name, default: [:]][program.name] = action
                }
            }
            medians[name] = samples.mapValues { $0.sorted()[$0.count / 2] }
        }
        report(cases.map(\.0), programs, medians, actions)
    }

    /// The attached programs, the empty ones and the yardstick; the descriptors to close and the
    /// objects to keep loaded while they run.
    func loadPrograms() throws -> ([Program], [Int32], [BPFObject]) {
        guard let tcID = FastPath.filter.program(on: interface) else {
            throw CommandFailure("no second-chance tc program on \(interface)")
        }
        let tc = try BPF.openProgram(id: tcID)
        var programs = [Program(name: "tc", fd: tc, hook: .tc)]
        var keep = [tc]
        if let xdpID = NativeXDP.program(on: interface) {
            let xdp = try BPF.openProgram(id: xdpID)
            programs.append(Program(name: "xdp", fd: xdp, hook: .xdp))
            keep.append(xdp)
        }
        let empty = try EmptyPrograms.load()
        var objects = [empty.object]
        programs += [
            Program(name: "empty tc", fd: empty.tc, hook: .tc), Program(name: "empty xdp", fd: empty.xdp, hook: .xdp),
        ]
        if let yardstick {
            guard let elf = FileManager.default.contents(atPath: yardstick) else {
                throw CommandFailure("cannot read \(yardstick)")
            }
            var port: [UInt8] = [], address: [UInt8] = []
            port.appendBE16(GUEPacket.port)
            address.appendBE32(selfAddress.value)
            let object = try BPFObject(
                elf: Array(elf), name: "yardstick",
                constants: ["ENCAPSULATION_PORT": port, "ENCAPSULATION_IP": address])
            objects.append(object)
            programs.append(Program(name: "yardstick", fd: try object.program(yardstickProgram), hook: .tc))
        }
        return (programs, keep, objects)
    }

    /// The cases, as Ethernet frames to this interface's address from the director, without a UDP
    /// checksum as glb-director sends them: an ACK of the established connection, a SYN, an ACK of
    /// no connection with a next hop (forwarded), one with no hops left (the last resort), and the
    /// forward again with a UDP checksum, as another encapsulator may send it.
    func frames() throws -> [(String, [UInt8])] {
        let ethernet = try Blast.mac(of: interface) + [0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]
        func gue(
            _ source: IPv4Address, _ port: UInt16, _ flags: TCPFlags, hops: [IPv4Address], options: [UInt8] = [],
            checksum: Bool = false
        ) -> [UInt8] {
            let inner = PacketBuilder.tcp(
                source: .v4(source), sourcePort: port, destination: .v4(vip), destinationPort: 80, flags: flags,
                sequence: 1000, acknowledgement: flags.contains(.ack) ? 2000 : 0, options: options)
            return ethernet
                + PacketBuilder.gue(
                    from: director, to: selfAddress, sourcePort: 0x8123, inner: inner, hops: hops,
                    udpChecksum: checksum)
        }
        return [
            ("established ACK", gue(established, establishedPort, .ack, hops: [hop])),
            (
                "SYN",
                gue(IPv4Address("198.18.200.7")!, 40000, .syn, hops: [hop], options: PacketBuilder.linuxSYNOptions)
            ),
            ("forward (no socket, next hop)", gue(IPv4Address("198.18.0.1")!, 40001, .ack, hops: [hop])),
            ("last hop (no socket, no hops)", gue(IPv4Address("198.18.0.1")!, 40002, .ack, hops: [])),
            ("forward, UDP checksum", gue(IPv4Address("198.18.0.1")!, 40001, .ack, hops: [hop], checksum: true)),
        ]
    }

    /// The mean time of `runs` single runs of `program` on `frame`, and the action it returned.
    func time(_ program: Program, _ frame: [UInt8], _ index: UInt32) throws -> (Double, UInt32) {
        var action: UInt32 = 0
        let start = MonotonicClock.nanoseconds()
        for _ in 0..<runs {
            action = try BPF.testRun(programFD: program.fd, frame: frame, interfaceIndex: index, hook: program.hook)
                .action
        }
        return (Double(MonotonicClock.nanoseconds() - start) / Double(runs), action)
    }

    func report(
        _ cases: [String], _ programs: [Program], _ medians: [String: [String: Double]],
        _ actions: [String: [String: UInt32]]
    ) {
        print("ns per run above the empty program of its hook (medians of \(rounds) rounds of \(runs) single runs)")
        let names = programs.map(\.name).filter { !$0.hasPrefix("empty") }
        print(
            ["case"].joined() + names.map { "\t\($0)" }.joined()
                + (names.contains("yardstick") ? "\ttc/yardstick\txdp/yardstick" : "")
                + "\tempty tc\tempty xdp\tactions")
        for name in cases {
            let m = medians[name]!
            func above(_ program: String) -> Double {
                let floor = program == "xdp" ? m["empty xdp"]! : m["empty tc"]!
                return m[program]! - floor
            }
            var line = name + names.map { "\t" + String(format: "%.0f", above($0)) }.joined()
            if names.contains("yardstick") {
                for ours in ["tc", "xdp"] where names.contains(ours) {
                    line += String(format: "\t%.2fx", above(ours) / above("yardstick"))
                }
            }
            line += String(format: "\t%.0f\t%.0f\t", m["empty tc"]!, m["empty xdp"]!)
            line += names.map { "\($0)=\(actions[name]![$0]!)" }.joined(separator: " ")
            print(line)
        }
    }
}
