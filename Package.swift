// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "proxyside",
    products: [
        .executable(name: "second-chance", targets: ["second-chance"]),
        .executable(name: "glb-lab", targets: ["glb-lab"]),
        .executable(name: "nfq-baseline", targets: ["nfq-baseline"]),
        .executable(name: "bindkeeper", targets: ["bindkeeper"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C libraries, found through pkg-config.
        .systemLibrary(
            name: "CNetfilterQueue", pkgConfig: "libnetfilter_queue",
            providers: [.apt(["libnetfilter-queue-dev"])]),
        .systemLibrary(name: "CMnl", pkgConfig: "libmnl", providers: [.apt(["libmnl-dev"])]),
        // Syscalls Swift cannot call directly (variadic syscall(2), signal handlers, atomics on raw memory).
        .target(name: "CLinuxShims"),

        // Pure packet and decision code: no syscalls, unit-tested.
        .target(name: "ProxysideCore"),
        // bindkeeper's wire forms, bind keys, policy, templates, hand-over state (no system calls).
        .target(name: "BindkeeperCore"),
        // Thin system layers: NFQUEUE, sock_diag, raw sockets, BPF, namespaces, metrics.
        .target(
            name: "ProxysideSystem",
            dependencies: ["ProxysideCore", "CNetfilterQueue", "CMnl", "CLinuxShims"]),

        // bindkeeper's system layer: owned sockets, SCM_RIGHTS, the broker loop, the HAProxy supervisor.
        .target(name: "BindkeeperSystem", dependencies: ["BindkeeperCore", "ProxysideSystem", "CLinuxShims"]),

        .executableTarget(
            name: "bindkeeper",
            dependencies: ["BindkeeperSystem", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "second-chance",
            dependencies: ["ProxysideSystem", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        // Director simulator, packet sender/receiver and load generator for the lab, tests and benchmarks.
        .executableTarget(
            name: "glb-lab",
            dependencies: ["ProxysideSystem", "CLinuxShims", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        // The yardstick: a bare C libnetfilter_queue loop.
        .executableTarget(name: "nfq-baseline", dependencies: ["CNetfilterQueue", "CMnl"]),

        // Reproducible randomness for the randomized tests.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "ProxysideCoreTests", dependencies: ["ProxysideCore", "ProxysideSystem", "TestSupport"]),
        .testTarget(name: "BindkeeperCoreTests", dependencies: ["BindkeeperCore", "ProxysideCore", "TestSupport"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["ProxysideCore", "ProxysideSystem", "BindkeeperCore", "BindkeeperSystem", "second-chance", "glb-lab", "bindkeeper"],
            exclude: ["Fixtures"]),
        // Tests/Fuzz holds libFuzzer targets and their seeds, built by scripts/fuzz.sh with swiftc.
    ]
)
