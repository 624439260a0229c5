import BynarAuth
import BynarBus
import BynarCeph
import BynarProto
import BynarStore
import BynarTestSupport
import DiskManager
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// kill -9 of the real disk-manager at every step boundary of Remove, Add and Deploy on a
/// real Ceph cluster (bluestore OSDs on loop devices, real mosquitto), then a restart: each
/// job ends SUCCEEDED with the OSD in its true state (destroyed with its id kept; re-created
/// up and in; one new OSD, not two), the retried request answered with its job, the host's
/// count of disks out right, and every object still readable. The boundaries are test-only
/// pause points (`TEST_DISK_MANAGER_PAUSE_AT`); the kill is a real SIGKILL.
@Suite(.serialized, .enabled(if: cephAvailable && TestBroker.available, "needs root, Ceph (ceph-mon, ceph-osd) and mosquitto"))
struct CephJobResumeTests {
    @Test(.timeLimit(.minutes(20)))
    func killedCephJobsFinishOnceAfterTheRestart() async throws {
        let temp = try makeTemporaryDirectory(prefix: "bynar-ceph-resume")
        var finished = false
        defer { if finished { try? FileManager.default.removeItem(atPath: temp) } }
        let cluster = try DevCluster(parent: temp, osds: 4, store: "bluestore")
        defer { cluster.stop() }
        let ceph = CephBackend(cluster: try RadosCluster(configPath: cluster.conf))
        let objects = try TestObjects(cluster: cluster, rados: ceph.cluster, directory: "\(temp)/objects", log: "\(temp)/commands.log", healthySeconds: 180)
        let broker = try TestBroker()
        let files = try KeyFiles.generate(keyID: "orchestrator")
        try files.trustedKeysLine.write(toFile: temp + "/trusted-keys", atomically: true, encoding: .utf8)
        let bus = try await connectedBus(broker, service: "tester")
        defer { Task { await bus.shutdown() } }
        let line = try await DiskManagerLine(bus: bus, host: "h1", keyID: "orchestrator", privateKeyText: files.privateKeyFileText)
        var manager: ServiceProcess?
        defer { manager?.signal(SIGKILL) }
        var disks: [LoopDisk] = []
        defer { for disk in disks { disk.teardown() } }

        func start(pause: String? = nil) async throws {
            manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: temp,
                                         extraConfig: cluster.diskManagerConfig(trustedKeys: "\(temp)/trusted-keys", pollMs: 300),
                                         environment: pause.map { ["TEST_DISK_MANAGER_PAUSE_AT": $0] } ?? [:])
            for _ in 0..<100 {
                if (try? await line.send("ready-\(UUID().uuidString)", .list(.init()), timeout: .seconds(2))) != nil { return }
            }
            throw TestFailure("the disk-manager never answered: \(manager?.log.suffix(3000) ?? "")")
        }
        func restart(pause: String? = nil) async throws {
            manager?.signal(SIGKILL)
            try await start(pause: pause)
        }
        func outKeys() throws -> Set<String> {
            try JobStore(store: try LocalStore(path: temp + "/db/disk-manager.sqlite")).outKeys()
        }
        func fresh(_ name: String) async throws -> String {
            let disk = try LoopDisk(directory: temp, name: name, sizeMB: 4096)
            disks.append(disk)
            let listed = try #require(try await line.disks().first { $0.disk.devPath == disk.device })
            #expect(listed.status == .blank)
            return listed.disk.key
        }
        /// Runs the operation with the service dying at `point` (nil: no pause), then
        /// restarts it and returns the job's end.
        func run(_ id: String, _ operation: Bynar_V1_DiskManagerRequest.OneOf_Operation, killedAt point: String?) async throws -> Bynar_V1_JobProgress {
            try await restart(pause: point)
            let first = try? await line.send(id, operation, timeout: point == "accepted" ? .seconds(5) : .seconds(60))
            if point != "accepted" { try #require(first?.outcome == .accepted, "\(String(describing: first))") }
            if let point {
                let marker = "bynar-pause-point \(point) reached"
                var paused = false
                for _ in 0..<1200 where !paused {
                    paused = manager?.log.contains(marker) ?? false
                    if !paused { try await Task.sleep(for: .milliseconds(100)) }
                }
                try #require(paused, "never reached \(point): \(manager?.log.suffix(3000) ?? "")")
                try await restart()
                let retry = try await line.send(id, operation)
                #expect(retry.outcome == .alreadyDone && retry.originalOutcome == .accepted && retry.jobID == "job-\(id)", "\(point): \(retry)")
            }
            let end = try #require(await line.finished("job-\(id)", timeout: .seconds(300)), "\(manager?.log.suffix(3000) ?? "")")
            #expect(end.state == .succeeded, "\(id) killed at \(point ?? "-"): \(end)")
            print("ceph-resume: \(id) killed at \(point ?? "-"): \(end.outcome) \(end.steps)")
            return end
        }

        try await start()
        var osd0Disk = try #require(try await line.disks().first { $0.backend == "ceph" && $0.backendID == "0" }).disk.key

        // Remove, killed before each of its steps and after the last.
        for (round, point) in ["accepted", "Remove:1", "Remove:2", "Remove:3", "Remove:4", "Remove:5", "Remove:done"].enumerated() {
            let removed = try await run("remove-r\(round)", .remove(.with { $0.disk = .key(osd0Disk) }), killedAt: point)
            #expect(removed.backendID == "0")
            #expect(try ceph.osdState(0) == OSDState(exists: true, up: false, in: false, destroyed: true), "\(point): id 0 kept as destroyed")
            #expect(try outKeys() == ["ceph:0"], "\(point)")
            osd0Disk = try await fresh("r\(round)")
            _ = try await run("add-r\(round)", .add(.with { $0.disk = .key(osd0Disk); $0.reuseOsdID = "0" }), killedAt: nil)
            try cluster.waitHealthy(seconds: 180)
        }
        // Add, killed before each of its steps and after the last.
        for (round, point) in ["accepted", "Add:1", "Add:2", "Add:3", "Add:done"].enumerated() {
            _ = try await run("remove-a\(round)", .remove(.with { $0.disk = .key(osd0Disk) }), killedAt: nil)
            osd0Disk = try await fresh("a\(round)")
            let added = try await run("add-a\(round)", .add(.with { $0.disk = .key(osd0Disk); $0.reuseOsdID = "0" }), killedAt: point)
            #expect(added.backendID == "0")
            #expect(try ceph.osdState(0) == OSDState(exists: true, up: true, in: true, destroyed: false), "\(point)")
            #expect(try outKeys().isEmpty, "\(point): put back, nothing counts as out")
            try cluster.waitHealthy(seconds: 180)
        }
        // Deploy, killed before each of its steps and after the last: one new OSD each time.
        for (round, point) in ["accepted", "Deploy:1", "Deploy:2", "Deploy:3", "Deploy:done"].enumerated() {
            let before = try ceph.osdDump()
            let key = try await fresh("d\(round)")
            let deployed = try await run("deploy-d\(round)", .deploy(.with { $0.disk = .key(key) }), killedAt: point)
            let after = try ceph.osdDump()
            #expect(after.count == before.count + 1, "\(point): one new OSD, not \(after.count - before.count)")
            let id = try #require(Int(deployed.backendID), "\(deployed)")
            #expect(before[id] == nil && after[id] == OSDState(exists: true, up: true, in: true, destroyed: false), "\(point): osd.\(id)")
        }
        try cluster.waitHealthy(seconds: 180)
        let same = try objects.identical()
        #expect(same == objects.originals.count, "read back \(same) of \(objects.originals.count) identical")
        manager?.signal(SIGTERM)
        cluster.stop()
        finished = true
    }
}
