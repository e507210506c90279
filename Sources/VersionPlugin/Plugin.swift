import Foundation
import PackagePlugin

/// The release number both daemons report, from git (`scripts/version.sh`): written before every
/// build into the target as Swift source, and rewritten only when it changes, so that a build
/// with nothing new compiles nothing.
@main
struct VersionPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appending(path: "version")
        let script = context.package.directoryURL.appending(path: "scripts/version.sh")
        return [
            .prebuildCommand(
                displayName: "proxyside's version from git", executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: [
                    script.path(percentEncoded: false), "--swift",
                    output.appending(path: "GeneratedVersion.swift").path(percentEncoded: false),
                ],
                // The command sees only what is passed here: an override (a rebuild of a given
                // version, the package test's newer build) must be passed on.
                environment: ProcessInfo.processInfo.environment.filter { $0.key == "PROXYSIDE_VERSION" },
                outputFilesDirectory: output)
        ]
    }
}
