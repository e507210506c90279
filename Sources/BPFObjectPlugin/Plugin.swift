import Foundation
import PackagePlugin

/// Compiles a target's `bpf/*.bpf.c` with clang `-target bpf` and embeds each object in the target
/// as Swift source (`bpf-embed`): the daemon carries the object its build made, and no object is
/// ever a file in the tree. The `include` directory of each C target the target depends on is on
/// the include path: a program shares its map layouts with its loader through it.
@main
struct BPFObjectPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let target = target as? SourceModuleTarget else { return [] }
        let programs = target.directoryURL.appending(path: "bpf")
        let sources = (try? FileManager.default.contentsOfDirectory(atPath: programs.path(percentEncoded: false))) ?? []
        let includes = target.dependencies.compactMap { dependency -> URL? in
            guard case .target(let module) = dependency, let c = module as? ClangSourceModuleTarget else { return nil }
            return c.directoryURL.appending(path: "include")
        }
        let headers = includes.flatMap { directory in
            ((try? FileManager.default.contentsOfDirectory(atPath: directory.path(percentEncoded: false))) ?? [])
                .filter { $0.hasSuffix(".h") }.map { directory.appending(path: $0) }
        }
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
            var arguments = ["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]
            for directory in includes { arguments += ["-I", directory.path(percentEncoded: false)] }
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
