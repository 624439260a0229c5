import BynarCeph
import BynarConfig
import BynarDisks
import BynarProto
import BynarTestSupport
import DiskManager
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A disk that backs several OSDs (their BlueStore DBs) is never removed or wiped as if it
/// were one OSD's: the rules of ``CephDeviceRemoval`` and ``CephClaimID``, then the real
/// thing on a dev cluster, with the shared disk on faultfs failing under three OSDs.
@Suite(.serialized)
struct CephSharedDeviceTests {
    static let dbOf345 = [3, 4, 5].map { OSDDeviceMatch(osd: $0, role: .db, evidence: "test") }
    static func osds(destroyed: Set<Int> = [], down: Set<Int> = []) -> [CephOSD] {
        (0...5).map { CephOSD(id: $0, up: !down.contains($0), destroyed: destroyed.contains($0)) }
    }

    // MARK: The rules

    @Test func aDiskHoldingTheDBsOfSeveralOSDsIsRefusedNamingThemAll() {
        let decision = CephDeviceRemoval.decide(device: "/dev/loop7", dependents: Self.dbOf345, osds: Self.osds())
        guard case .refuse(let reason) = decision else { Issue.record("not refused: \(decision)"); return }
        #expect(reason.hasPrefix("/dev/loop7 holds the BlueStore DB of osd.3, osd.4, osd.5: remove those OSDs first"), "\(reason)")
        // Down OSDs are still live: their DBs are on the disk.
        #expect(CephDeviceRemoval.decide(device: "/dev/loop7", dependents: Self.dbOf345, osds: Self.osds(down: [3, 4, 5])) == decision)
    }

    @Test func dataOfOneAndDBOfAnotherIsRefused() {
        let dependents = [OSDDeviceMatch(osd: 2, role: .wal, evidence: ""), OSDDeviceMatch(osd: 0, role: .main, evidence: ""), OSDDeviceMatch(osd: 1, role: .db, evidence: "")]
        guard case .refuse(let reason) = CephDeviceRemoval.decide(device: "/dev/sdb", dependents: dependents, osds: Self.osds()) else {
            Issue.record("not refused"); return
        }
        #expect(reason.hasPrefix("/dev/sdb holds the data of osd.0 and the BlueStore DB of osd.1 and the BlueStore WAL of osd.2: remove those OSDs first"), "\(reason)")
    }

    @Test func theDBOfOneLiveOSDIsRefusedToo() {
        let decision = CephDeviceRemoval.decide(device: "/dev/nvme0n1", dependents: [OSDDeviceMatch(osd: 4, role: .db, evidence: "")], osds: Self.osds())
        #expect(decision == .refuse("/dev/nvme0n1 holds the BlueStore DB of osd.4: remove that OSD first, each through its own data disk (Bynar never wipes a disk that still backs a live OSD)"))
    }

    @Test func destroyedOSDsNoLongerHoldADiskBack() {
        // Two of three removed through their data disks: the third still holds it.
        guard case .refuse(let reason) = CephDeviceRemoval.decide(device: "/dev/loop7", dependents: Self.dbOf345, osds: Self.osds(destroyed: [3, 5])) else {
            Issue.record("not refused"); return
        }
        #expect(reason.contains("osd.4") && !reason.contains("osd.3") && !reason.contains("osd.5"), "\(reason)")
        // All three destroyed: nothing left to do.
        #expect(CephDeviceRemoval.decide(device: "/dev/loop7", dependents: Self.dbOf345, osds: Self.osds(destroyed: [3, 4, 5])) == .alreadyDestroyed(osd: 3))
        // The data disk of one OSD whose other partition held a now destroyed OSD's DB.
        let mixed = [OSDDeviceMatch(osd: 1, role: .main, evidence: ""), OSDDeviceMatch(osd: 2, role: .db, evidence: "")]
        #expect(CephDeviceRemoval.decide(device: "/dev/sdc", dependents: mixed, osds: Self.osds(destroyed: [2])) == .remove(osd: 1))
        // An OSD the osdmap no longer has (purged) backs nothing.
        #expect(CephDeviceRemoval.decide(device: "/dev/sdc", dependents: mixed + [OSDDeviceMatch(osd: 9, role: .db, evidence: "")], osds: Self.osds(destroyed: [2])) == .remove(osd: 1))
    }

    @Test func theDataDiskOfOneOSDIsThatOSD() {
        #expect(CephDeviceRemoval.decide(device: "/dev/sdb", dependents: [OSDDeviceMatch(osd: 4, role: .main, evidence: "")], osds: Self.osds()) == .remove(osd: 4))
        #expect(CephDeviceRemoval.decide(device: "/dev/sdb", dependents: [OSDDeviceMatch(osd: 4, role: .main, evidence: "")], osds: Self.osds(destroyed: [4])) == .alreadyDestroyed(osd: 4))
        guard case .refuse(let reason) = CephDeviceRemoval.decide(device: "/dev/sdb", dependents: [], osds: Self.osds()) else { Issue.record("not refused"); return }
        #expect(reason.contains("serves no OSD"))
    }

    @Test func claimIDsNameEveryOSDWithItsRole() {
        #expect(CephClaimID.encode([OSDDeviceMatch(osd: 4, role: .main, evidence: "")]) == "4")
        #expect(CephClaimID.encode(Self.dbOf345.reversed()) == "3:db,4:db,5:db")
        let mixed = [OSDDeviceMatch(osd: 1, role: .db, evidence: ""), OSDDeviceMatch(osd: 0, role: .main, evidence: ""), OSDDeviceMatch(osd: 2, role: .wal, evidence: "")]
        #expect(CephClaimID.encode(mixed) == "0,1:db,2:wal")
        for id in ["4", "3:db,4:db,5:db", "0,1:db,2:wal"] {
            let decoded = CephClaimID.decode(id)
            #expect(decoded.map(CephClaimID.encode) == id, "\(id) round trip")
        }
        #expect(CephClaimID.decode("0,1:db,2:wal")?.map(\.role) == [.main, .db, .wal])
        for bad in ["", "x", "-1", "3:", "3:main", "3:dbx", "3,,4", "/srv/bynar/d1", "1:db:2"] {
            #expect(CephClaimID.decode(bad) == nil, "\(bad) is no Ceph claim")
        }
    }

    // MARK: A real cluster

    /// Three OSDs (3, 4, 5) made the production way (`ceph-volume raw prepare --block.db`),
    /// their DBs on the three partitions of ONE loop device over faultfs; three memstore
    /// OSDs beside them; a size-3 pool with 20 objects. Through the real ``CephDiskBackend``:
    /// - List claims the shared disk for all three ("3:db,4:db,5:db"), each data disk for
    ///   its own OSD;
    /// - SafeToRemove says no, naming all three; Remove (simulated and real) is refused;
    /// - the disk fails (every read and write EIO): the three OSDs abort and go down; the
    ///   disk's labels cannot be read and the metadata names it as their DB device; List,
    ///   SafeToRemove and Remove say the same; nothing is changed in the cluster;
    /// - the disk heals: each partition's label is intact, the OSDs start again, the cluster
    ///   heals and every object reads back identical (a wipe would have lost all three).
    ///
    /// Before this change the shared disk was claimed as osd.3 alone ("3"), SafeToRemove
    /// answered with osd.3's ok-to-stop, and Remove would have destroyed osd.3 and zeroed
    /// the disk's first and last MiB (its partition table) under osd.4 and osd.5.
    @Test(.enabled(if: cephAvailable && FaultyDisk.available, "needs root, Ceph and faultfs: a real cluster and a failing disk"), .timeLimit(.minutes(20)))
    func aFailedSharedDBDiskIsRefusedNamingEveryOSDAndNeverWiped() async throws {
        let t0 = ContinuousClock.now
        func say(_ text: String) { print("ceph-shared: \(seconds(since: t0)) \(text)") }
        let temp = try makeTemporaryDirectory(prefix: "bynar-ceph-shared")
        let log = "\(temp)/commands.log"
        let cluster = try DevCluster(parent: temp, osds: 3)
        let shared: FaultyDisk
        do {
            shared = try FaultyDisk(sizeMB: 3072, filesystem: nil)
        } catch {
            cluster.stop()
            throw error
        }
        var passed = false
        let writing = Flag()
        var writer: Task<Int, Never>?
        defer {
            writing.lower()
            try? shared.control("clear")
            // OSDs by pid, ceph-volume's mounts, then every loop device by backing file
            // (the shared one is over the faultfs file); faultfs last.
            cluster.stop()
            shared.teardown()
            if passed { try? FileManager.default.removeItem(atPath: temp) } else { print("ceph-shared: logs kept in \(temp)") }
        }
        say("cluster of 3 memstore OSDs healthy")

        // One disk, three partitions, one DB each: the faultfs file behind a loop device
        // with partition scanning (FaultyDisk's own loop device has none).
        try shared.detach()
        let made = try FaultyDisk.run("/bin/bash", [DevCluster.script, "shared-db-device", cluster.directory, "--partitions", "3", "--file", "\(shared.directory)/fuse/disk"])
        let devices = made.split(separator: "\n").map(String.init).filter { $0.hasPrefix("/dev/") }
        try #require(devices.count == 4, "shared-db-device printed \(made)")
        let dbDisk = devices[0]
        let partitions = Array(devices.dropFirst())
        say("shared DB disk \(dbDisk) on faultfs: \(partitions.joined(separator: " "))")
        var ids: [Int] = []
        var dataDisks: [Int: String] = [:]
        for partition in partitions {
            let started = ContinuousClock.now
            let output = try FaultyDisk.run("/bin/bash", [DevCluster.script, "volume-create", cluster.directory, "--block-db", partition, "--wait", "120"], timeout: .seconds(300))
            let id = try #require(output.split(separator: "\n").last.flatMap { Int($0) }, "volume-create printed \(output)")
            ids.append(id)
            let line = output.split(separator: "\n").first { $0.contains("via ceph-volume") }.map(String.init) ?? ""
            if let on = line.firstRange(of: " on /dev/") {
                dataDisks[id] = String(line[line.index(on.lowerBound, offsetBy: 4)...].prefix { $0 != " " })
            }
            say("osd.\(id) made with ceph-volume raw, DB on \(partition), data on \(dataDisks[id] ?? "?"): \(seconds(since: started))")
        }
        #expect(ids == [3, 4, 5])
        let rados = try RadosCluster(configPath: cluster.conf)
        let ceph = CephBackend(cluster: rados, pollInterval: .milliseconds(500))
        let objects = try TestObjects(cluster: cluster, rados: rados, directory: "\(temp)/objects", log: log, healthySeconds: 240)
        say("size-3 pool with 20 objects over 6 OSDs, HEALTH_OK")
        let metadata = try rados.checkedMonCommand(#"{"prefix":"osd metadata","id":4,"format":"json"}"#).outputText
        for key in ["\"devices\"", "\"bluefs_db_dev_node\"", "\"bluefs_db_devices\""] {
            if let line = metadata.split(separator: ",").first(where: { $0.contains(key) }) { say("ceph: osd metadata 4: \(line)") }
        }

        var config = CephBackendConfig()
        config.configFile = cluster.conf
        config.pollIntervalMs = 500
        config.stopCommand = ["/bin/bash", DevCluster.script, "osd-stop", cluster.directory, "{id}"]
        config.startCommand = ["/bin/bash", DevCluster.script, "osd-start", cluster.directory, "{id}", "--wait", "60"]
        config.createCommand = ["/bin/bash", DevCluster.script, "volume-create", cluster.directory, "--device", "{device}"]
        config.createWithIdCommand = ["/bin/bash", DevCluster.script, "volume-create", cluster.directory, "--osd-id", "{id}", "--device", "{device}"]
        let backend = try CephDiskBackend(config: config, machineHostname: Self.hostname())
        func inventory() throws -> [BlockDevice] { try Inventory.scan(host: "h1", excluded: []) }
        func theDisk() throws -> BlockDevice { try #require(try inventory().first { $0.identity.devPath == dbDisk }, "\(dbDisk) in the inventory") }

        /// List, SafeToRemove, simulated and real Remove of the shared disk: each must
        /// name osd.3, osd.4 and osd.5 and change nothing. `evidence`: what the matcher must
        /// have gone by.
        func everyWaySaysNo(_ phase: String, evidence: String) throws {
            let devices = try inventory()
            let disk = try theDisk()
            #expect(disk.identity.partitions.count == 3, "\(phase): the inventory sees the partitions: \(disk.identity.partitions.map(\.devPath))")
            let matches = OSDDeviceMatcher.match(DeviceFacts.read(disk), osds: try rados.osds().osds, hostname: Self.hostname())
            for match in matches { say("bynar \(phase): \(dbDisk) serves osd.\(match.osd) as \(match.role.rawValue): \(match.evidence)") }
            #expect(matches.map(\.osd) == [3, 4, 5] && matches.allSatisfy { $0.role == .db && $0.evidence.contains(evidence) }, "\(phase): \(matches)")
            let claims = try backend.claims(devices)
            let claim = try #require(claims[disk.identity.key], "\(phase): the shared disk is claimed")
            say("bynar \(phase): List: \(dbDisk) is ceph \(claim.id) (\(claim.status))")
            #expect(claim.id == "3:db,4:db,5:db" && claim.status == .inService, "\(phase): \(claim)")
            for (id, path) in dataDisks.sorted(by: { $0.key < $1.key }) {
                let data = devices.first { $0.identity.devPath == path }
                #expect(data.flatMap { claims[$0.identity.key]?.id } == String(id), "\(phase): \(path) is osd.\(id)'s data disk: \(String(describing: data.flatMap { claims[$0.identity.key] }))")
            }
            let answer = try backend.safeToRemove(disk, claim: claim)
            say("bynar \(phase): SafeToRemove \(dbDisk): safe=\(answer.safe), \(answer.detail) [\(answer.clusterHealth)]")
            #expect(!answer.safe)
            #expect(answer.detail.contains("holds the BlueStore DB of osd.3, osd.4, osd.5: remove those OSDs first"), "\(answer.detail)")
            let before = try ceph.osdDump()
            for simulate in [true, false] {
                do {
                    let result = try backend.remove(disk, claim: claim, simulate: simulate, job: .direct)
                    Issue.record("\(phase): Remove (simulate \(simulate)) of the shared disk was not refused: \(result)")
                } catch let refusal as BackendRefusal {
                    say("bynar \(phase): Remove\(simulate ? " (simulate)" : "") \(dbDisk): REFUSED: \(refusal.reason)")
                    #expect(refusal.reason.contains("osd.3, osd.4, osd.5"))
                }
            }
            let why = try #require(backend.whyNotWipe(disk), "\(phase): the wipe guard lets the shared disk be wiped")
            say("bynar \(phase): the wipe guard: \(why)")
            #expect(why.contains("osd.3, osd.4, osd.5"))
            #expect(try ceph.osdDump() == before, "\(phase): a refused Remove changed the osdmap")
        }

        try everyWaySaysNo("healthy", evidence: "BlueStore label")

        // The shared disk dies: every read and write fails. Writes to the pool make
        // BlueFS write to the DBs; each OSD aborts on the EIO.
        try shared.control("fail 0 \(3072 * 2048)")
        let failed = ContinuousClock.now
        say("the shared DB disk fails: every read and write EIO")
        writer = Task.detached {
            var written = 0
            while writing.isRaised && written < 200 {
                let path = "\(temp)/objects/after-\(written)"
                try? Data(repeating: UInt8(written % 251), count: 65536).write(to: URL(fileURLWithPath: path))
                if (try? cluster.rados(["-p", "bynar", "put", "after-\(written)", path], log: log)) == nil { break }
                written += 1
            }
            return written
        }
        let down = try ceph.waitUntil(timeout: .seconds(180), poll: .seconds(1)) {
            let states = try ceph.osdDump()
            return [3, 4, 5].allSatisfy { states[$0]?.up == false }
        }
        let states = try ceph.osdDump()
        #expect(down, "osd.3-5 down after the DB disk failed: \(states.sorted { $0.key < $1.key })")
        say("ceph: osd.3, osd.4, osd.5 down \(seconds(since: failed)) after the disk failed; osd.0-2 up: \([0, 1, 2].allSatisfy { states[$0]?.up == true })")
        writing.lower()
        for id in [3, 4, 5] {
            let lines = ((try? String(contentsOfFile: "\(cluster.directory)/log/osd.\(id).log", encoding: .utf8)) ?? "").split(separator: "\n")
            let line = lines.first { $0.contains("Input/output error") || $0.contains("Unexpected IO error") }
                ?? lines.first { $0.contains("abort") && !$0.hasPrefix(" ") }
            say("ceph: osd.\(id).log: \(line.map { String($0.suffix(220)) } ?? "(no I/O error line)")")
        }
        let health = try rados.healthDetail()
        say("ceph: \(health.status): " + health.checks.map { "\($0.code): \($0.summary)" }.joined(separator: "; "))

        try everyWaySaysNo("after the disk failed", evidence: "disk unreadable")
        let after = try ceph.osdDump()
        for id in [3, 4, 5] {
            #expect(after[id]?.exists == true && after[id]?.destroyed == false, "osd.\(id) was not destroyed: \(String(describing: after[id]))")
        }

        // The disk comes back: every label is intact, the OSDs start again and nothing was lost.
        try shared.control("clear")
        let uuids = try Dictionary(uniqueKeysWithValues: rados.osds(metadata: false).osds.map { ($0.id, $0.uuid) })
        for (index, partition) in partitions.enumerated() {
            guard case .bluestore(let label) = DeviceLabel.read(partition) else {
                Issue.record("\(partition): no BlueStore label any more: \(DeviceLabel.read(partition))")
                continue
            }
            let id = ids[index]
            say("label of \(partition) after the refusals: \(label.description), osd uuid \(label.osdUUID) (osd.\(id): \(uuids[id] ?? "?"))")
            #expect(label.description == "bluefs db" && label.osdUUID == uuids[id], "\(partition): \(label)")
        }
        let restarted = ContinuousClock.now
        for id in ids {
            try DevCluster.script(["osd-start", cluster.directory, String(id), "--wait", "120"], log: log, timeout: 180)
        }
        try cluster.waitHealthy(seconds: 300)
        say("osd.3-5 started again on the healed disk, HEALTH_OK \(seconds(since: restarted)) later")
        // The writer stopped at its first failed write (after 30 s, the op timeout).
        say("objects written while the disk failed: \(await writer?.value ?? 0)")
        #expect(try objects.identical() == 20, "every object reads back identical")
        say("20 of 20 objects read back identical")
        passed = true
    }

    /// Raised until lowered, from any thread.
    final class Flag: Sendable {
        private let raised = Mutex(true)
        var isRaised: Bool { raised.withLock { $0 } }
        func lower() { raised.withLock { $0 = false } }
    }

    /// The machine's host name, as Ceph records it for this host's OSDs.
    static func hostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, buffer.count)
        return String(cString: buffer)
    }
}
