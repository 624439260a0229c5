// swift-tools-version:6.1
import PackageDescription

/// Settings every target shares: Swift 6 language mode (strict concurrency complete) and
/// the upcoming features we hold ourselves to, turned on in one place.
let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let log = Target.Dependency.product(name: "Logging", package: "swift-log")
let lifecycle = Target.Dependency.product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let unixSignals = Target.Dependency.product(name: "UnixSignals", package: "swift-service-lifecycle")
let protobuf = Target.Dependency.product(name: "SwiftProtobuf", package: "swift-protobuf")
let grdb = Target.Dependency.product(name: "GRDB", package: "GRDB.swift")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let crypto = Target.Dependency.product(name: "Crypto", package: "swift-crypto")
let httpClient = Target.Dependency.product(name: "AsyncHTTPClient", package: "async-http-client")
let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioPosix = Target.Dependency.product(name: "NIOPosix", package: "swift-nio")
let nioSSL = Target.Dependency.product(name: "NIOSSL", package: "swift-nio-ssl")
let nioHTTP1 = Target.Dependency.product(name: "NIOHTTP1", package: "swift-nio")
let metrics = Target.Dependency.product(name: "Metrics", package: "swift-metrics")
let prometheus = Target.Dependency.product(name: "Prometheus", package: "swift-prometheus")

/// The five services: a library target with the logic and a thin executable each.
let services: [(name: String, executable: String)] = [
    ("Detector", "bynar-detector"),
    ("DiskManager", "bynar-disk-manager"),
    ("Ticketing", "bynar-ticketing"),
    ("Notifier", "bynar-notifier"),
    ("Orchestrator", "bynar-orchestrator"),
]

/// C libraries a service wraps, once each, in `Shared/C*` modules.
let serviceCLibraries: [String: [Target.Dependency]] = [
    "Detector": ["CAtaSmart", "BynarDisks", "BynarProcess", "BynarCeph", httpClient, nioCore, nioPosix, nioSSL],
    "DiskManager": [crypto, "BynarAuth", "BynarDisks", "BynarProcess", "BynarCeph"],
    "Ticketing": [httpClient, nioCore, crypto, "BynarAuth"],
    "Notifier": [httpClient, nioCore, nioPosix, nioSSL],
    "Orchestrator": [crypto, "BynarAuth", "BynarProcess", httpClient, nioCore, nioSSL],
]

let serviceTargets: [Target] = services.flatMap { service in
    [
        Target.target(
            name: service.name,
            dependencies: ["BynarRuntime", "BynarBus", "BynarProto", "BynarConfig", "BynarStore", log, lifecycle, grdb, protobuf, metrics]
                + (serviceCLibraries[service.name] ?? []),
            path: "Services/\(service.name)/\(service.name)",
            swiftSettings: strict
        ),
        Target.executableTarget(
            name: service.executable,
            dependencies: [.target(name: service.name), "BynarRuntime"],
            path: "Services/\(service.name)/\(service.executable)",
            swiftSettings: strict
        ),
    ]
}

let package = Package(
    name: "bynar",
    platforms: [.macOS(.v15)],
    products: services.map { .executable(name: $0.executable, targets: [$0.executable]) } + [
        .executable(name: "bynar", targets: ["bynar"]),
        .executable(name: "bynar-bench", targets: ["bynar-bench"]),
        .executable(name: "bynar-chaos", targets: ["bynar-chaos"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: serviceTargets + [
        // libmosquitto, wrapped once: only BynarBus imports it.
        .systemLibrary(
            name: "CMosquitto",
            path: "Shared/CMosquitto",
            pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"])]
        ),
        // libatasmart (SMART for ATA disks), wrapped once: only the detector imports it.
        .systemLibrary(
            name: "CAtaSmart",
            path: "Shared/CAtaSmart",
            pkgConfig: "libatasmart",
            providers: [.apt(["libatasmart-dev"])]
        ),
        // libudev (block device inventory), wrapped once: only BynarDisks imports it.
        .systemLibrary(
            name: "CUdev",
            path: "Shared/CUdev",
            pkgConfig: "libudev",
            providers: [.apt(["libudev-dev"])]
        ),
        // The host's block devices (libudev, sysfs, mountinfo): inventory, system disks,
        // kernel uevents. Shared by the detector (watches) and the disk-manager (acts).
        // External tools (smartctl, fsck, systemctl): spawned one way, with a deadline.
        .target(name: "BynarProcess", path: "Shared/BynarProcess", swiftSettings: strict),
        .target(name: "BynarDisks", dependencies: ["CUdev", "BynarProto", "BynarProcess"], path: "Shared/BynarDisks", swiftSettings: strict),
        .target(name: "BynarProto", dependencies: [protobuf], path: "Shared/BynarProto", swiftSettings: strict),
        // librados, wrapped once (loaded with dlopen when a Ceph backend is configured), and
        // the read-only view of a cluster the detector and the disk-manager share: OSDs,
        // health checks, BlueStore labels, and which OSD a disk serves by stable identity.
        .target(name: "BynarCeph", dependencies: ["BynarDisks"], path: "Shared/BynarCeph", swiftSettings: strict),
        // Signed disk-manager commands (Ed25519): signing, trusted keys, verification with
        // replay protection, and the client the orchestrator and the CLI send them with.
        .target(
            name: "BynarAuth",
            dependencies: ["BynarBus", "BynarProto", "BynarStore", "BynarConfig", crypto, grdb, protobuf, log],
            path: "Shared/BynarAuth",
            swiftSettings: strict
        ),
        .target(name: "BynarConfig", dependencies: [], path: "Shared/BynarConfig", swiftSettings: strict),
        // SQLite's session extension (changesets of a transaction), wrapped once: only
        // BynarStore imports it (a store replicated through etcd, ``LocalStore/Replicator``).
        .systemLibrary(name: "CSQLiteSession", path: "Shared/CSQLiteSession", providers: [.apt(["libsqlite3-dev"])]),
        .target(name: "BynarStore", dependencies: [grdb, log, "CSQLiteSession"], path: "Shared/BynarStore", swiftSettings: strict),
        .target(
            name: "BynarBus",
            dependencies: ["CMosquitto", "BynarProto", "BynarStore", "BynarConfig", protobuf, log],
            path: "Shared/BynarBus",
            swiftSettings: strict
        ),
        .target(
            name: "BynarRuntime",
            dependencies: ["BynarBus", "BynarProto", "BynarConfig", "BynarStore", "BynarProcess", log, lifecycle, unixSignals, metrics, prometheus, nioCore, nioPosix, nioHTTP1],
            path: "Shared/BynarRuntime",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "bynar",
            dependencies: ["BynarBus", "BynarProto", "BynarConfig", "BynarAuth", "BynarProcess", "Orchestrator", crypto, protobuf, argumentParser, log],
            path: "CLI/bynar",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "bynar-bench",
            dependencies: ["BynarBus", "BynarProto", "BynarConfig", "BynarStore", "BynarAuth", "BynarTestSupport", protobuf, log],
            path: "Benchmarks/bynar-bench",
            swiftSettings: strict
        ),
        // The chaos run (scripts/chaos): every real service, real broker and disks, kills.
        .executableTarget(
            name: "bynar-chaos",
            dependencies: ["BynarTestSupport", "BynarBus", "BynarProto", "BynarAuth", grdb, protobuf],
            path: "Benchmarks/bynar-chaos",
            swiftSettings: strict
        ),

        // Tests. BynarTestSupport starts real brokers and processes for the others.
        .target(
            name: "BynarTestSupport",
            dependencies: ["BynarAuth", "BynarBus", "BynarConfig", "BynarProcess", log],
            path: "Tests/BynarTestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "BynarBusTests",
            dependencies: ["BynarBus", "BynarProto", "BynarStore", "BynarConfig", "BynarRuntime", "BynarProcess", "BynarTestSupport", protobuf, log],
            path: "Tests/BynarBusTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "BynarCephTests",
            dependencies: ["BynarCeph"],
            path: "Tests/BynarCephTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "BynarConfigTests",
            dependencies: ["BynarConfig"],
            path: "Tests/BynarConfigTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "BynarStoreTests",
            dependencies: ["BynarStore"],
            path: "Tests/BynarStoreTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "DetectorTests",
            dependencies: ["Detector", "BynarDisks", "BynarCeph", "BynarProcess", "BynarBus", "BynarProto", "BynarConfig", "BynarStore", "BynarTestSupport", protobuf],
            path: "Tests/DetectorTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "DiskManagerTests",
            dependencies: ["DiskManager", "Orchestrator", "BynarCeph", "BynarAuth", "BynarBus", "BynarProto", "BynarConfig", "BynarStore", "BynarTestSupport", protobuf, crypto],
            path: "Tests/DiskManagerTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "TicketingTests",
            dependencies: ["Ticketing", "BynarAuth", "BynarBus", "BynarProto", "BynarConfig", "BynarStore", "BynarTestSupport", "bynar-ticketing", "bynar", grdb, protobuf, httpClient, nioCore],
            path: "Tests/TicketingTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "NotifierTests",
            dependencies: ["Notifier", "BynarBus", "BynarProto", "BynarConfig", "BynarStore", "BynarTestSupport", "bynar-notifier", protobuf, nioCore],
            path: "Tests/NotifierTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "OrchestratorTests",
            dependencies: ["Orchestrator", "BynarAuth", "BynarBus", "BynarProto", "BynarConfig", "BynarDisks", "BynarStore", "BynarRuntime", "BynarTestSupport", "bynar-orchestrator", "bynar", protobuf, crypto],
            path: "Tests/OrchestratorTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "SchemaTests",
            dependencies: ["BynarBus", "BynarProto", "BynarTestSupport", protobuf],
            path: "Tests/SchemaTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "ChaosTests",
            dependencies: ["BynarTestSupport", "bynar-chaos", "bynar-detector", "bynar-disk-manager", "bynar-ticketing", "bynar-notifier", "bynar-orchestrator"],
            path: "Tests/ChaosTests",
            swiftSettings: strict
        ),
        .testTarget(
            name: "ServiceTests",
            dependencies: ["BynarBus", "BynarProto", "BynarConfig", "BynarAuth", "BynarTestSupport", "bynar", "bynar-detector", "bynar-disk-manager", "bynar-ticketing", "bynar-notifier", "bynar-orchestrator"],
            path: "Tests/ServiceTests",
            swiftSettings: strict
        ),
    ]
)
