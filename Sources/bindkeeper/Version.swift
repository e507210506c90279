import ArgumentParser
import Glibc
import LinuxSys

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the release and the build (a hash of this executable).")
    func run() { print(ProgramImage.versionLine("bindkeeper")) }
}
