import BynarAuth
import BynarCeph
import BynarBus
import BynarProto
import BynarTestSupport
import DiskManager
import Orchestrator
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The real bynar-disk-manager against a real Ceph cluster (bluestore OSDs on loop devices,
/// so `ceph osd metadata` names each OSD's disk) through a real broker: objects written, an
/// OSD's disk removed through the bus (destroyed, id kept), a fresh disk added back as the
/// same id, HEALTH_OK, every object read back. Also: a Remove refused while unsafe, unsigned
/// and replayed commands refused, simulate changing nothing, one request id acting once.
@Suite(.serialized, .enabled(if: cephAvailable && TestBroker.available, "needs root, Ceph (ceph-mon, ceph-osd) and mosquitto"))
struct CephServiceTests {
    @Test(.timeLimit(.minutes(10)))
    func removeAndReaddThroughTheBus() async throws {
        let temp = try makeTemporaryDirectory(prefix: "bynar-ceph-dm")
        var finished = false
        defer { if finished { try? FileManager.default.removeItem(atPath: temp) } }
        var started = ContinuousClock.now
        let cluster = try DevCluster(parent: temp, osds: 4, store: "bluestore")
        defer { cluster.stop() }
        print("ceph-dm: cluster start (4 OSDs, bluestore on loop devices) until healthy: \(seconds(since: started))")
        let ceph = CephBackend(cluster: try RadosCluster(configPath: cluster.conf))
        func waitHealthy() throws { try cluster.waitHealthy(seconds: 180) }

        // A size-3 pool with 20 objects.
        let objects = try TestObjects(cluster: cluster, rados: ceph.cluster, directory: "\(temp)/objects", log: "\(temp)/commands.log", healthySeconds: 180)

        // The disk-manager, trusting one key, with the dev cluster's daemon commands.
        let broker = try TestBroker()
        let files = try KeyFiles.generate(keyID: "orchestrator")
        try files.trustedKeysLine.write(toFile: temp + "/trusted-keys", atomically: true, encoding: .utf8)
        let bus = try await connectedBus(broker, service: "tester")
        let line = try await DiskManagerLine(bus: bus, host: "h1", keyID: "orchestrator", privateKeyText: files.privateKeyFileText)
        let statuses = Collector(try await bus.subscribe(Topics.serviceStatus(host: "h1", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        let dir = cluster.directory
        let manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: temp,
                                         extraConfig: cluster.diskManagerConfig(trustedKeys: "\(temp)/trusted-keys"))
        defer { manager.signal(SIGTERM) }
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } }, "\(manager.log)")

        // List: the four OSD disks, by id.
        let disks = try await line.disks()
        let osdDisks = disks.filter { $0.backend == "ceph" }
        #expect(Set(osdDisks.map(\.backendID)) == ["0", "1", "2", "3"], "\(disks.map { "\($0.disk.devPath) \($0.backend) \($0.backendID)" })")
        #expect(osdDisks.allSatisfy { $0.status == .inService })
        let osd0 = try #require(osdDisks.first { $0.backendID == "0" })
        let osd0Disk = Bynar_V1_DiskSelector.key(osd0.disk.key)

        // Contract: DiskManagerSimulator (which `bynar deploy` rehearses and benchmarks
        // against) seeded with this real List, on a broker of its own, gets the same signed
        // requests as the real disk-manager and must give the same outcome to each.
        let simulatorBroker = try TestBroker()
        let simulatorBus = try await connectedBus(simulatorBroker, service: "dm-simulator", host: "sim")
        let simulator = try DiskManagerSimulator(bus: simulatorBus, disks: ["h1": disks], jobDuration: .milliseconds(100),
                                                 trustedKeys: try TrustedKeys(fileText: files.trustedKeysLine))
        try await simulator.start()
        let simulatorTester = try await connectedBus(simulatorBroker, service: "tester")
        let contractBlank = disks.first { $0.status == .blank && !$0.systemDisk && !$0.excluded }.map { Bynar_V1_DiskSelector.key($0.disk.key) }
        var contract: [(String, Bynar_V1_DiskManagerRequest.OneOf_Operation)] = [
            ("add without reuse_osd_id", .add(.with { $0.disk = osd0Disk })),
            ("add re-using a live id", .add(.with { $0.disk = osd0Disk; $0.reuseOsdID = "0" })),
            ("deploy on an OSD's disk", .deploy(.with { $0.disk = osd0Disk })),
            ("remove an OSD's disk (simulated)", .remove(.with { $0.disk = osd0Disk })),
            ("safe-to-remove an OSD's disk", .safeToRemove(.with { $0.disk = osd0Disk })),
            ("remove a disk that is not there", .remove(.with { $0.disk = .key("serial-NOPE") })),
        ]
        if let contractBlank {
            contract.append(("add to a blank disk re-using a live id", .add(.with { $0.disk = contractBlank; $0.reuseOsdID = "1" })))
            contract.append(("remove a blank disk", .remove(.with { $0.disk = contractBlank })))
        }
        for (index, (what, operation)) in contract.enumerated() {
            let request = try line.request("contract-\(index)", simulate: true, operation)
            let real = try await bus.request(request, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(30)).payload
            let simulated = try await simulatorTester.request(request, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(10)).payload
            #expect(real.outcome == simulated.outcome, "\(what): the real disk-manager says \(real.outcome) (\(real.reason)), the simulator \(simulated.outcome) (\(simulated.reason))")
            print("ceph-dm: contract \(what): real \(real.outcome), simulator \(simulated.outcome)")
        }
        simulator.stop()
        await simulatorTester.shutdown()
        await simulatorBus.shutdown()
        simulatorBroker.stop()

        // Unsigned and replayed commands: refused, audited, nothing done.
        var unsigned = Bynar_V1_DiskManagerRequest()
        unsigned.requestID = "unsigned"
        unsigned.host = "h1"
        unsigned.remove.disk = osd0Disk
        let unsignedAnswer = try await bus.request(unsigned, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(10)).payload
        #expect(unsignedAnswer.outcome == .refused && unsignedAnswer.reason.contains("not signed"), "\(unsignedAnswer)")
        let safeRequest = try line.request("safe-1", .safeToRemove(.with { $0.disk = osd0Disk }))
        let safe = try await bus.request(safeRequest, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(30)).payload
        #expect(safe.outcome == .success && safe.safeToRemove.safe && safe.safeToRemove.clusterHealth == "HEALTH_OK", "\(safe)")
        let replay = try await bus.request(safeRequest, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(10)).payload
        #expect(replay.outcome == .refused && replay.reason.contains("replay"), "\(replay)")

        // Unsafe: with osd.3 down, stopping osd.0 would leave PGs below min_size.
        try DevCluster.script(["osd-stop", dir, "3"], log: cluster.log)
        #expect(try ceph.waitUntil(timeout: .seconds(30)) { try !ceph.osdState(3).up }, "osd.3 never went down")
        let refused = try await line.send("remove-unsafe", .remove(.with { $0.disk = osd0Disk }))
        #expect(refused.outcome == .refused && refused.reason.contains("not safe to remove"), "\(refused)")
        #expect(try ceph.osdState(0) == OSDState(exists: true, up: true, in: true, destroyed: false), "a refused Remove changed osd.0")
        try DevCluster.script(["osd-start", dir, "3", "--wait", "60"], log: cluster.log)
        try waitHealthy()

        // Simulate: the steps, no change.
        let simulated = try await line.send("remove-sim", simulate: true, .remove(.with { $0.disk = osd0Disk }))
        #expect(simulated.outcome == .success && simulated.simulated && simulated.steps.contains("mark osd.0 out") && simulated.steps.contains("destroy osd.0 (id and CRUSH position kept)"), "\(simulated)")
        #expect(try ceph.osdState(0) == OSDState(exists: true, up: true, in: true, destroyed: false), "simulate changed osd.0")

        // Remove through the bus.
        started = ContinuousClock.now
        let remove = try await line.send("remove-1", .remove(.with { $0.disk = osd0Disk }))
        #expect(remove.outcome == .accepted && remove.backend == "ceph" && remove.backendID == "0", "\(remove)")
        let removed = try #require(await line.finished(remove.jobID, timeout: .seconds(300)), "\(manager.log.suffix(3000))")
        print("ceph-dm: remove osd.0 through the bus: \(seconds(since: started)): \(removed.steps)")
        #expect(removed.outcome == .success && removed.backendID == "0", "\(removed)")
        #expect(try ceph.osdState(0) == OSDState(exists: true, up: false, in: false, destroyed: true), "id 0 kept as destroyed")
        let progressSteps = line.progress.all.filter { $0.payload.jobID == remove.jobID && $0.payload.state == .running }.map(\.payload.step)
        #expect(progressSteps.contains("mark osd.0 out") && progressSteps.contains("stop the daemon of osd.0"), "\(progressSteps)")
        // The same request id: the first answer, no second run.
        let again = try await line.send("remove-1", .remove(.with { $0.disk = osd0Disk }))
        #expect(again.outcome == .alreadyDone && again.originalOutcome == .accepted && again.jobID == remove.jobID, "\(again)")
        // The host's limit: one disk out already.
        let second = try #require(osdDisks.first { $0.backendID == "1" })
        let overLimit = try await line.send("remove-2", .remove(.with { $0.disk = .key(second.disk.key) }))
        #expect(overLimit.outcome == .refused && overLimit.reason.contains("limit is 1"), "\(overLimit)")

        // A fresh disk in its place, added back as osd.0.
        let fresh = try LoopDisk(directory: temp, name: "replacement", sizeMB: 4096)
        defer { fresh.teardown() }
        let freshDisk = try #require(try await line.disks().first { $0.disk.devPath == fresh.device })
        #expect(freshDisk.status == .blank)
        started = ContinuousClock.now
        let add = try await line.send("add-1", .add(.with { $0.disk = .key(freshDisk.disk.key); $0.reuseOsdID = removed.backendID }))
        #expect(add.outcome == .accepted, "\(add)")
        let added = try #require(await line.finished(add.jobID, timeout: .seconds(300)), "\(manager.log.suffix(3000))")
        print("ceph-dm: add osd.0 on \(fresh.device) through the bus until up+in: \(seconds(since: started)): \(added.steps)")
        #expect(added.outcome == .success && added.backendID == "0", "\(added)")
        #expect(try ceph.osdState(0) == OSDState(exists: true, up: true, in: true, destroyed: false))
        try waitHealthy()
        print("ceph-dm: add until HEALTH_OK: \(seconds(since: started))")
        #expect(try ceph.health() == "HEALTH_OK")
        let after = try await line.disks().first { $0.disk.devPath == fresh.device }
        #expect(after?.backend == "ceph" && after?.backendID == "0" && after?.status == .inService)

        let same = try objects.identical()
        #expect(same == objects.originals.count, "read back \(same) of \(objects.originals.count) identical")

        // Deploy: a brand-new OSD on another blank disk.
        let blank = try LoopDisk(directory: temp, name: "new", sizeMB: 4096)
        defer { blank.teardown() }
        let blankDisk = try #require(try await line.disks().first { $0.disk.devPath == blank.device })
        started = ContinuousClock.now
        let deploy = try await line.send("deploy-1", .deploy(.with { $0.disk = .key(blankDisk.disk.key) }))
        #expect(deploy.outcome == .accepted && deploy.backend == "ceph", "\(deploy)")
        let deployed = try #require(await line.finished(deploy.jobID, timeout: .seconds(300)), "\(manager.log.suffix(3000))")
        print("ceph-dm: deploy a new OSD on \(blank.device) until up+in: \(seconds(since: started)): \(deployed.steps)")
        #expect(deployed.outcome == .success && deployed.backendID == "4", "\(deployed)")
        #expect(try ceph.osdState(4) == OSDState(exists: true, up: true, in: true, destroyed: false))

        manager.signal(SIGTERM)
        await bus.shutdown()
        // The cluster uses the replacement disk: stop it before the loop device is detached.
        cluster.stop()
        finished = true
    }
}
