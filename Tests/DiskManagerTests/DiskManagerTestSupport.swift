import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A plain loop device on a sparse image (a blank disk), detached by name on teardown.
final class LoopDisk: @unchecked Sendable {
    let image: String
    let device: String
    private var done = false

    init(directory: String, name: String, sizeMB: Int) throws {
        image = "\(directory)/\(name).img"
        try FaultyDisk.run("/usr/bin/truncate", ["-s", "\(sizeMB)M", image])
        device = try FaultyDisk.run("/sbin/losetup", ["--find", "--show", image]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Unmounts whatever is mounted from it, then detaches it.
    func teardown() {
        guard !done else { return }
        done = true
        for mountpoint in FaultyDisk.mountpoints(of: device) { _ = try? FaultyDisk.run("/bin/umount", ["-l", mountpoint]) }
        for _ in 0..<20 {
            if (try? FaultyDisk.run("/sbin/losetup", ["-d", device])) != nil { break }
            usleep(100_000)
        }
    }

    deinit { teardown() }
}

/// A test's signed line to one disk-manager: sends commands, follows jobs to their end.
struct DiskManagerLine {
    let bus: Bus
    let host: String
    let keyID: String
    let privateKeyText: String
    let progress: Collector<Received<Bynar_V1_JobProgress>>

    init(bus: Bus, host: String, keyID: String, privateKeyText: String) async throws {
        self.bus = bus
        self.host = host
        self.keyID = keyID
        self.privateKeyText = privateKeyText
        progress = Collector(try await bus.subscribe(Topics.diskManagerProgress(host: host), as: Bynar_V1_JobProgress.self))
    }

    func request(_ id: String, simulate: Bool = false, _ operation: Bynar_V1_DiskManagerRequest.OneOf_Operation) throws -> Bynar_V1_DiskManagerRequest {
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = id
        request.host = host
        request.simulate = simulate
        request.deadlineUnixMs = Bus.nowUnixMs() + 60_000
        request.operation = operation
        let (_, key) = try KeyFiles.loadPrivateKey(text: privateKeyText)
        return try CommandSigning.sign(request, keyID: keyID, key: key, lifetime: .seconds(120), nowMs: Bus.nowUnixMs())
    }

    func send(_ id: String, simulate: Bool = false, _ operation: Bynar_V1_DiskManagerRequest.OneOf_Operation, timeout: Duration = .seconds(60)) async throws -> Bynar_V1_DiskManagerResponse {
        try await bus.request(try request(id, simulate: simulate, operation), to: Topics.diskManagerCommands(host: host), expecting: Bynar_V1_DiskManagerResponse.self, timeout: timeout).payload
    }

    /// The job's final progress event (SUCCEEDED or FAILED).
    func finished(_ jobID: String, timeout: Duration) async -> Bynar_V1_JobProgress? {
        _ = await progress.wait(timeout: timeout) { events in events.contains { $0.payload.jobID == jobID && $0.payload.state != .running } }
        return progress.all.last { $0.payload.jobID == jobID && $0.payload.state != .running }?.payload
    }

    func disks() async throws -> [Bynar_V1_ManagedDisk] {
        try await send("list-\(UUID().uuidString)", .list(.init())).diskList.disks
    }
}

/// A running bynar-disk-manager with the filesystem backend (XFS under `<directory>/srv`,
/// its own fstab `<directory>/fstab`), trusting one fresh key, and a signed line to it.
struct FilesystemManager {
    let directory: String
    let process: ServiceProcess
    let bus: Bus
    let line: DiskManagerLine
    let mountRoot: String
    let fstab: String

    /// Starts it on `broker` as host h1 (`settings`: more fields of `disk_manager`;
    /// `backend`: the backend section instead of the filesystem one) and waits for its
    /// birth message.
    static func start(broker: TestBroker, directory: String, settings: String = "", backend: String? = nil) async throws -> FilesystemManager {
        let mountRoot = directory + "/srv"
        let fstab = directory + "/fstab"
        try "# test fstab\n".write(toFile: fstab, atomically: true, encoding: .utf8)
        let files = try KeyFiles.generate(keyID: "ops")
        try files.trustedKeysLine.write(toFile: directory + "/trusted-keys", atomically: true, encoding: .utf8)
        let bus = try await connectedBus(broker, service: "tester")
        let line = try await DiskManagerLine(bus: bus, host: "h1", keyID: "ops", privateKeyText: files.privateKeyFileText)
        let statuses = Collector(try await bus.subscribe(Topics.serviceStatus(host: "h1", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        let process = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: directory, extraConfig: """
            "disk_manager": {"trusted_keys_file": "\(directory)/trusted-keys"\(settings.isEmpty ? "" : ", " + settings),
                             \(backend ?? "\"filesystem\": {\"mount_root\": \"\(mountRoot)\", \"fstab\": \"\(fstab)\", \"filesystem\": \"xfs\"}")}
            """)
        guard await statuses.wait(timeout: .seconds(15), until: { $0.contains { $0.payload.state == .birth } }) else {
            process.signal(SIGTERM)
            throw TestSupportError("the disk-manager did not start: \(process.log)")
        }
        return FilesystemManager(directory: directory, process: process, bus: bus, line: line, mountRoot: mountRoot, fstab: fstab)
    }

    /// How many commands it answered from its kept inventory so far (its log says so).
    var keptAnswers: Int {
        process.log.components(separatedBy: "inventory=kept").count - 1
    }

    func stop() {
        process.signal(SIGTERM)
    }
}

/// Runs `body` against a ``FilesystemManager`` of its own (its own broker, in a scratch
/// directory named after `prefix`), with blank loop disks `loops` (name, MB) attached before
/// it starts and `prepare` run on them then (a filesystem, a mount). Everything is undone
/// afterwards, also when `body` throws: the service stopped, each loop device unmounted and
/// detached by name, the directory removed.
func withFilesystemManager(
    _ prefix: String, loops: [(name: String, sizeMB: Int)] = [], settings: String = "",
    prepare: ([LoopDisk]) throws -> Void = { _ in },
    _ body: (FilesystemManager, [LoopDisk]) async throws -> Void
) async throws {
    let directory = try makeTemporaryDirectory(prefix: prefix)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    var disks: [LoopDisk] = []
    defer { for disk in disks { disk.teardown() } }
    for loop in loops { disks.append(try LoopDisk(directory: directory, name: loop.name, sizeMB: loop.sizeMB)) }
    try prepare(disks)
    let broker = try TestBroker()
    defer { withExtendedLifetime(broker) {} } // up until the service has stopped
    let manager = try await FilesystemManager.start(broker: broker, directory: directory, settings: settings)
    defer { manager.stop() }
    try await body(manager, disks)
    await manager.bus.shutdown()
}
