import Foundation
import PackagePlugin

/// Compiles a target's `bpf/*.bpf.c` with clang `-target bpf` and embeds each object in the target
/// as Swift source (`bpf-embed`): the daemon carries the object its build made, and no object is
/// ever a file in the tree. `Sources/CFastPathABI/include` is on the include path: the programs
/// share their map layouts with the daemon through it.
@main
struct BPFObjectPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let target = target as? SourceModuleTarget else { return [] }
        let programs = target.directoryURL.appending(path: "bpf")
        let sources = (try? FileManager.default.contentsOfDirectory(atPath: programs.path(percentEncoded: false))) ?? []
        let abi = context.package.directoryURL.appending(path: "Sources/CFastPathABI/include")
        let headers = [abi.appending(path: "fast_path_abi.h")]
        let clang = try context.tool(named: "clang").url
        let embed = try context.tool(named: "bpf-embed").url
        // Debian keeps asm/types.h under the multiarch directory.
        let multiarch = ["x86_64-linux-gnu", "aarch64-linux-gnu"].map { "/usr/include/" + $0 }
            .filter { FileManager.default.fileExists(atPath: $0 + "/asm/types.h") }
        var commands: [Command] = []
        for source in sources.sorted() where source.hasSuffix(".bpf.c") {
            let stem = String(source.dropLast(".bpf.c".count))
            let input = programs.appending(path: source)
            let object = context.pluginWorkDirectoryURL.appending(path: stem + ".bpf.o")
            let swift = context.pluginWorkDirectoryURL.appending(path: stem + "_bpf.swift")
            var arguments = ["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-I", abi.path(percentEncoded: false)]
            for directory in multiarch { arguments += ["-I", directory] }
            arguments += ["-c", input.path(percentEncoded: false), "-o", object.path(percentEncoded: false)]
            commands.append(
                .buildCommand(
                    displayName: "Compiling BPF program \(source)", executable: clang, arguments: arguments,
                    inputFiles: [input] + headers, outputFiles: [object]))
            commands.append(
                .buildCommand(
                    displayName: "Embedding BPF object \(stem).bpf.o", executable: embed,
                    arguments: [object.path(percentEncoded: false), swift.path(percentEncoded: false), stem],
                    inputFiles: [object], outputFiles: [swift]))
        }
        return commands
    }
}
