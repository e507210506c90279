import ArgumentParser
import Glibc
import Logging
import Telemetry

@main
struct GLBLab: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "glb-lab",
        abstract:
            """
            Lab tools: a GLB director simulator, an echo service, long-lived clients, an HTTP connection load, a \
            GUE sender, a director in BPF and a timer of the SYN-cookie responder's BPF runs.
            """,
        subcommands: [
            Director.self, Echo.self, Clients.self, HTTPLoad.self, Blast.self, Watch.self, Supervise.self,
            CookieCost.self, SockDiagCost.self, BPFDirector.self, ProgramCost.self, XDPPass.self, XDPWire.self,
        ])
}

let logger = Logger.process("glb-lab")
