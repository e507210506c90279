// swift-tools-version:6.1
import PackageDescription

let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")

let package = Package(
    name: "proxyside",
    products: [
        .executable(name: "second-chance", targets: ["second-chance"]),
        .executable(name: "bindkeeper", targets: ["bindkeeper"]),
        .executable(name: "glb-lab", targets: ["glb-lab"]),
        .executable(name: "nfq-baseline", targets: ["nfq-baseline"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C libraries, found through pkg-config, and the calls Swift cannot make directly
        // (variadic syscall(2), signal handlers, sendmsg with SCM_RIGHTS).
        .systemLibrary(
            name: "CNetfilterQueue", pkgConfig: "libnetfilter_queue",
            providers: [.apt(["libnetfilter-queue-dev"])]),
        .systemLibrary(name: "CMnl", pkgConfig: "libmnl", providers: [.apt(["libmnl-dev"])]),
        .target(name: "CLinuxShims"),
        .systemLibrary(name: "CBPF", pkgConfig: "libbpf", providers: [.apt(["libbpf-dev"])]),
        // The map layouts and counter slots the tc program and the daemon share.
        .target(name: "CFastPathABI"),
        // libbpf's option structs, which LIBBPF_OPTS fills as libbpf checks them.
        .target(name: "CBPFShims", dependencies: ["CBPF"]),

        // Pure: addresses, flows, listener keys, prefixes, checksums, byte access. No system calls.
        .target(name: "NetTypes"),
        // The thin system layer both daemons stand on: errors, descriptors, sockets, signals,
        // threads, namespaces, /proc, netlink and sock_diag, BPF objects and tc filters (through libbpf).
        .target(
            name: "LinuxSys", dependencies: ["NetTypes", "CLinuxShims", "CMnl", "CBPF", "CBPFShims"],
            plugins: ["VersionPlugin"]),
        .plugin(name: "VersionPlugin", capability: .buildTool(), path: "Sources/VersionPlugin"),
        // Logging (swift-log, one line per event on stderr), metrics text, the stats and control server.
        .target(name: "Telemetry", dependencies: ["NetTypes", "LinuxSys", "CLinuxShims", logging]),

        // second-chance's pure packet and decision code: GUE, inner packets, the decision, the flow
        // cache, the forwarding rewrite, the overflow tracker, the SYN-ACK writer, BPF programs.
        .target(name: "SecondChanceCore", dependencies: ["NetTypes"]),
        // second-chance's tc program, compiled from bpf/ with clang -target bpf by the build and
        // embedded (BPFObjectPlugin); the one deliberate second implementation of the decision.
        .target(
            name: "FastPathProgram", dependencies: ["CFastPathABI", "NetTypes"], exclude: ["bpf"],
            plugins: ["BPFObjectPlugin"]),
        .plugin(
            name: "BPFObjectPlugin", capability: .buildTool(), dependencies: ["bpf-embed"],
            path: "Sources/BPFObjectPlugin"),
        .executableTarget(name: "bpf-embed"),
        // second-chance on Linux: NFQUEUE, the raw sender, the cookie oracle, the worker, the responder.
        .target(
            name: "SecondChance",
            dependencies: [
                "SecondChanceCore", "NetTypes", "LinuxSys", "Telemetry", "CNetfilterQueue", "CMnl", "CLinuxShims",
                "CBPF", "CFastPathABI", "CBPFShims", "FastPathProgram", logging,
            ]),

        // bindkeeper's pure parts: requests, policy, templates, wire forms, hand-over state.
        .target(name: "BindkeeperCore", dependencies: ["NetTypes"]),
        // bindkeeper's reuseport program for socket groups, compiled from bpf/ and embedded.
        .target(name: "ReuseportProgram", dependencies: ["NetTypes"], exclude: ["bpf"], plugins: ["BPFObjectPlugin"]),
        // bindkeeper on Linux: the broker, owned sockets, the client, the HAProxy supervisor.
        .target(
            name: "Bindkeeper",
            dependencies: [
                "BindkeeperCore", "NetTypes", "LinuxSys", "Telemetry", "CLinuxShims", "ReuseportProgram", logging,
            ]),

        // Packet builders, the rendezvous table and sockets for the lab, the tests and the
        // benchmarks only: no production target depends on it.
        .target(name: "LabKit", dependencies: ["NetTypes", "LinuxSys", "SecondChanceCore"]),
        // The lab's director at kernel speed (tc, bpf/), with the layout its loader shares with it.
        .target(name: "CLabDirectorABI"),
        .target(
            name: "LabPrograms",
            dependencies: ["CLabDirectorABI", "LabKit", "LinuxSys", "CBPF", "CBPFShims", "NetTypes"],
            exclude: ["bpf"], plugins: ["BPFObjectPlugin"]),

        // The command-line forms of the shared types, for the three programs.
        .target(name: "ProxysideArguments", dependencies: ["NetTypes", argumentParser, logging]),

        .executableTarget(
            name: "second-chance",
            dependencies: [
                "SecondChance", "SecondChanceCore", "NetTypes", "LinuxSys", "Telemetry", "ProxysideArguments",
                argumentParser, logging,
            ]),
        .executableTarget(
            name: "bindkeeper",
            dependencies: [
                "Bindkeeper", "BindkeeperCore", "NetTypes", "LinuxSys", "Telemetry", "ProxysideArguments",
                argumentParser, logging,
            ]),
        // Director simulator, packet sender and receiver, load generator and fd-store player.
        .executableTarget(
            name: "glb-lab",
            dependencies: [
                "LabKit", "LabPrograms", "SecondChance", "SecondChanceCore", "NetTypes", "LinuxSys", "Telemetry",
                "CLinuxShims", "ProxysideArguments", argumentParser, logging,
            ]),
        // The yardstick: a bare C libnetfilter_queue loop.
        .executableTarget(name: "nfq-baseline", dependencies: ["CNetfilterQueue", "CMnl"]),

        // Reproducible randomness for the randomized tests.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(
            name: "SecondChanceCoreTests",
            dependencies: [
                "SecondChanceCore", "SecondChance", "NetTypes", "LinuxSys", "Telemetry", "LabKit", "TestSupport",
                "CFastPathABI", "FastPathProgram",
            ]),
        .testTarget(name: "LinuxSysTests", dependencies: ["LinuxSys", "NetTypes", "TestSupport"]),
        .testTarget(
            name: "BindkeeperCoreTests",
            dependencies: ["BindkeeperCore", "NetTypes", "LinuxSys", "Telemetry", "TestSupport"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "SecondChanceCore", "SecondChance", "BindkeeperCore", "Bindkeeper", "NetTypes", "LinuxSys", "Telemetry",
                "LabKit", "LabPrograms", "TestSupport", "CFastPathABI", "second-chance", "glb-lab", "bindkeeper",
            ],
            exclude: ["Fixtures"]),
        // Tests/Fuzz holds libFuzzer targets and their seeds, built by scripts/fuzz.sh with swiftc.
    ]
)
