import BynarConfig
import BynarDisks
import BynarProto
import BynarTestSupport
@testable import DiskManager
import Foundation
import Synchronization
import Testing

/// The ZFS backend on a real zfs-fuse: a raidz1 of three loop devices behind faultfs, one
/// member made to fail with real I/O errors, then SafeToRemove, Remove (`zpool offline`),
/// Add (`zpool replace` onto a fourth loop device, resilver followed), each run twice and
/// simulated; the data written before read back identical. ``ZFSSafety`` on its own is
/// judged on pools built in the test.
@Suite(.serialized) struct ZFSBackendTests {
    static func device(_ path: String) -> BlockDevice {
        var identity = Bynar_V1_DiskIdentity()
        identity.devPath = path
        identity.key = "test-" + (path.split(separator: "/").last.map(String.init) ?? path)
        return BlockDevice(identity: identity, sysPath: "/sys/block/" + (path.split(separator: "/").last.map(String.init) ?? ""))
    }

    static func raidz(_ states: [String], level: Int = 1) -> ZFSPool {
        var pool = ZFSPool()
        pool.name = "tank"
        pool.state = states.allSatisfy { $0 == "ONLINE" } ? "ONLINE" : "DEGRADED"
        pool.root = ZFSVdev(name: "tank", state: pool.state, children: [
            ZFSVdev(name: "raidz\(level)-0", state: pool.state, children: states.enumerated().map { ZFSVdev(name: "d\($0.offset)", state: $0.element) }),
        ])
        return pool
    }

    @Test func safetyCountsTheOtherMembersOfTheSameTopLevelVdev() {
        #expect(ZFSSafety.judge(Self.raidz(["ONLINE", "ONLINE", "ONLINE"]), vdev: "d0").safe)
        #expect(!ZFSSafety.judge(Self.raidz(["ONLINE", "OFFLINE", "ONLINE"]), vdev: "d0").safe)
        // The member already out is safe to take out: nothing more is lost.
        #expect(ZFSSafety.judge(Self.raidz(["ONLINE", "OFFLINE", "ONLINE"]), vdev: "d1").safe)
        #expect(ZFSSafety.judge(Self.raidz(["ONLINE", "FAULTED", "ONLINE", "ONLINE"], level: 2), vdev: "d0").safe)
        #expect(!ZFSSafety.judge(Self.raidz(["UNAVAIL", "FAULTED", "ONLINE", "ONLINE"], level: 2), vdev: "d2").safe)
        #expect(!ZFSSafety.judge(Self.raidz(["ONLINE", "ONLINE", "ONLINE"]), vdev: "nope").safe)
        var resilvering = Self.raidz(["ONLINE", "ONLINE", "ONLINE"])
        resilvering.scan = .resilverRunning(percent: 10)
        #expect(!ZFSSafety.judge(resilvering, vdev: "d0").safe)
        var single = ZFSPool()
        single.name = "solo"
        single.root = ZFSVdev(name: "solo", state: "ONLINE", children: [ZFSVdev(name: "sdb", state: "ONLINE")])
        #expect(!ZFSSafety.judge(single, vdev: "sdb").safe)
    }

    @Test func ids() {
        #expect(ZFSBackend.parse("zfs:tank/ata-X-part1")! == ("tank", "ata-X-part1"))
        #expect(ZFSBackend.parse("zfs:tank//dev/loop3")! == ("tank", "/dev/loop3"))
        #expect(ZFSBackend.parse("/srv/bynar/x") == nil)
        #expect(ZFSBackend.parse("zfs:tank") == nil)
    }

    @Test(.enabled(if: ZFSFusePool.available, "\(ZFSFusePool.unavailableReason ?? "")"))
    func failRemoveReplaceResilverOnZFSFuse() throws {
        let pool = try ZFSFusePool(name: "bynartest\(getpid())")
        defer { pool.teardown() }
        let directory = try makeTemporaryDirectory(prefix: "bynar-zfs-new")
        let replacement = try LoopDisk(directory: directory, name: "new", sizeMB: 128)
        defer {
            replacement.teardown()
            try? FileManager.default.removeItem(atPath: directory)
        }
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/data", "bs=1M", "count=40"])
        let before = try FaultyDisk.run("/usr/bin/sha256sum", ["\(pool.mountpoint)/data"])

        let backend = ZFSBackend(config: ZFSBackendConfig())
        let devices = pool.members.map { Self.device($0.device) }
        let (healthy, failing, other) = (devices[0], devices[1], devices[2])
        let claims = try backend.claims(devices + [Self.device(replacement.device)])
        #expect(claims.count == 3)
        let claim = try #require(claims[failing.identity.key])
        #expect(claim.id == "zfs:\(pool.name)/\(failing.identity.devPath.dropFirst("/dev/".count))")
        #expect(claim.status == .inService)
        let healthyClaim = try #require(claims[healthy.identity.key])
        #expect(try backend.safeToRemove(healthy, claim: healthyClaim).safe)

        // Every sector of the second member fails with EIO; writes and a scrub meet it.
        try pool.members[1].control("fail 0 262144")
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/more", "bs=1M", "count=20", "conv=fsync"])
        try pool.zpool(["scrub", pool.name])
        let failed = pool.status { text in
            ZpoolStatus(parsing: text).pool(pool.name)?.leaf(failing.identity.devPath.replacingOccurrences(of: "/dev/", with: ""))?.vdev.state != "ONLINE"
        }
        let failedLeaf = try #require(ZpoolStatus(parsing: failed).pool(pool.name)?.leaf(String(failing.identity.devPath.dropFirst(5)))?.vdev)
        #expect(["UNAVAIL", "FAULTED", "DEGRADED"].contains(failedLeaf.state), "\(failed)")

        // With one member down, the raidz1 cannot lose another; the failed one it can.
        #expect(try !backend.safeToRemove(healthy, claim: healthyClaim).safe)
        #expect(try !backend.safeToRemove(other, claim: try #require(claims[other.identity.key])).safe)
        #expect(try backend.safeToRemove(failing, claim: claim).safe)
        #expect(throws: BackendRefusal.self) { try backend.remove(healthy, claim: healthyClaim, simulate: false, job: .direct) }

        // Simulated: says the step, changes nothing.
        let simulated = try backend.remove(failing, claim: claim, simulate: true, job: .direct)
        #expect(simulated.steps.last == "zpool offline \(pool.name) \(failing.identity.devPath)")
        #expect(ZpoolStatus(parsing: try pool.zpool(["status", pool.name])).pool(pool.name)?.leaf(String(failing.identity.devPath.dropFirst(5)))?.vdev.state == failedLeaf.state)

        let removed = try backend.remove(failing, claim: claim, simulate: false, job: .direct)
        #expect(!removed.skipped)
        #expect(try backend.isOut(claim.id))
        let again = try backend.remove(failing, claim: claim, simulate: false, job: .direct)
        #expect(again.skipped, "\(again.steps)")

        let new = Self.device(replacement.device)
        let simulatedAdd = try backend.add(new, reuseID: claim.id, simulate: true, job: .direct)
        #expect(simulatedAdd.steps.contains("zpool replace \(pool.name) \(failing.identity.devPath) \(replacement.device)"))
        #expect(try backend.claims([new]).isEmpty)

        let steps = Mutex<[String]>([])
        let job = JobRun(id: "zfs-job", progress: ProgressReporter { step, index, count in steps.withLock { $0.append("\(index)/\(count) \(step)") } })
        let added = try backend.add(new, reuseID: claim.id, simulate: false, job: job)
        #expect(added.backendID == "zfs:\(pool.name)/\(replacement.device.dropFirst(5))")
        let reported = steps.withLock { $0 }
        #expect(reported.first == "1/2 zpool replace \(pool.name) \(failing.identity.devPath) \(replacement.device)", "\(reported)")
        let after = try #require(ZpoolStatus(parsing: try pool.zpool(["status", pool.name])).pool(pool.name))
        #expect(after.state == "ONLINE", "\(after)")
        #expect(!after.resilvering)
        #expect(after.leaves.map(\.vdev.name).sorted() == [healthy, new, other].map { String($0.identity.devPath.dropFirst(5)) }.sorted())
        #expect(try !backend.isOut(claim.id))

        // Run twice / resumed: nothing more happens.
        #expect(try backend.add(new, reuseID: claim.id, simulate: false, job: job).skipped)
        #expect(try backend.remove(failing, claim: claim, simulate: false, job: .direct).skipped)

        #expect(try FaultyDisk.run("/usr/bin/sha256sum", ["\(pool.mountpoint)/data"]) == before)
        // And from the disks, not the cache: a scrub over the new layout finds nothing.
        try pool.zpool(["scrub", pool.name])
        let scrubbed = pool.status { ZpoolStatus(parsing: $0).pool(pool.name)?.scan.running == false }
        guard case .scrubFinished(let errors, _) = ZpoolStatus(parsing: scrubbed).pool(pool.name)?.scan else {
            Issue.record("no finished scrub: \(scrubbed)")
            return
        }
        #expect(errors == 0)
    }

    /// A disk pulled while the pool was exported (a host rebooted without it): at import
    /// zpool no longer knows a path for it and names the vdev by its GUID, noting `was
    /// /dev/loopN`. The vanished disk is still claimed by where it was, taken out with
    /// `zpool offline POOL GUID` and replaced with `zpool replace POOL GUID NEW` (zpool has
    /// no path to reopen), each step twice; the data written before read back identical.
    @Test(.enabled(if: ZFSFusePool.available, "\(ZFSFusePool.unavailableReason ?? "")"), .timeLimit(.minutes(3)))
    func aDiskPulledWhileExportedIsNamedByItsGUIDAndStillReplaced() throws {
        let pool = try ZFSFusePool(name: "bynarguid\(getpid())")
        defer { pool.teardown() }
        let directory = try makeTemporaryDirectory(prefix: "bynar-zfs-guid")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/data", "bs=1M", "count=30", "conv=fsync"])
        let before = try FaultyDisk.run("/usr/bin/sha256sum", ["\(pool.mountpoint)/data"])

        // Export, pull the second member, import from the two that are left (a directory of
        // links to them, so no other device on this machine is read).
        let pulled = pool.members[1]
        try pool.zpool(["export", pool.name])
        try pulled.detach()
        let links = "\(directory)/devices"
        try FileManager.default.createDirectory(atPath: links, withIntermediateDirectories: true)
        for member in [pool.members[0], pool.members[2]] {
            try FileManager.default.createSymbolicLink(atPath: "\(links)/\(member.name)", withDestinationPath: member.device)
        }
        try pool.zpool(["import", "-d", links, "-o", "cachefile=none", pool.name])
        let text = try pool.zpool(["status", pool.name])
        let imported = try #require(ZpoolStatus(parsing: text).pool(pool.name), "\(text)")
        let guidLeaf = try #require(imported.leaves.first { ZpoolStatus.isGUID($0.vdev.name) }?.vdev, "no vdev named by its GUID:\n\(text)")
        #expect(guidLeaf.formerPath == pulled.device, "\(text)")
        #expect(guidLeaf.state != "ONLINE" && imported.state == "DEGRADED", "\(text)")

        let backend = ZFSBackend(config: ZFSBackendConfig())
        var gone = Self.device(pulled.device)
        gone.absent = true
        let claim = try #require(try backend.claims([gone])[gone.identity.key], "the pulled disk is claimed by where it was:\n\(text)")
        #expect(claim.id == "zfs:\(pool.name)/\(guidLeaf.name)" && claim.status == .inService)
        #expect(try backend.safeToRemove(gone, claim: claim).safe)

        let removed = try backend.remove(gone, claim: claim, simulate: false, job: .direct)
        #expect(removed.steps.last == "zpool offline \(pool.name) \(guidLeaf.name)", "\(removed.steps)")
        #expect(try backend.isOut(claim.id))
        #expect(try backend.remove(gone, claim: claim, simulate: false, job: .direct).skipped)

        // The new disk may get the pulled one's /dev name: it is not the old vdev (no label).
        let replacement = try LoopDisk(directory: directory, name: "new", sizeMB: 128)
        defer { replacement.teardown() }
        let new = Self.device(replacement.device)
        #expect(try backend.claims([new]).isEmpty)
        let simulated = try backend.add(new, reuseID: claim.id, simulate: true, job: .direct)
        #expect(simulated.steps.contains("zpool replace \(pool.name) \(guidLeaf.name) \(replacement.device)"), "\(simulated.steps)")
        let added = try backend.add(new, reuseID: claim.id, simulate: false, job: .direct)
        #expect(added.steps.contains("zpool replace \(pool.name) \(guidLeaf.name) \(replacement.device)"), "\(added.steps)")
        let after = try #require(ZpoolStatus(parsing: try pool.zpool(["status", pool.name])).pool(pool.name))
        #expect(after.state == "ONLINE" && !after.resilvering, "\(after)")
        #expect(!after.leaves.contains { ZpoolStatus.isGUID($0.vdev.name) }, "\(after)")
        #expect(try backend.add(new, reuseID: claim.id, simulate: false, job: .direct).skipped)
        #expect(try FaultyDisk.run("/usr/bin/sha256sum", ["\(pool.mountpoint)/data"]) == before)
    }

    /// An Add resumed while the replace it started is still resilvering (the disk-manager
    /// restarted mid-job): the new disk is already in the pool, so nothing is replaced
    /// again; the running resilver is followed to its end with its percentage reported.
    /// faultfs delays the other members' I/O so the resilver lasts seconds, not a blink.
    @Test(.enabled(if: ZFSFusePool.available, "\(ZFSFusePool.unavailableReason ?? "")"))
    func aResumedAddFollowsTheRunningResilver() throws {
        let pool = try ZFSFusePool(name: "bynarres\(getpid())")
        defer { pool.teardown() }
        let directory = try makeTemporaryDirectory(prefix: "bynar-zfs-resume")
        let replacement = try LoopDisk(directory: directory, name: "new", sizeMB: 128)
        defer {
            replacement.teardown()
            try? FileManager.default.removeItem(atPath: directory)
        }
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/data", "bs=1M", "count=60"])
        var config = ZFSBackendConfig()
        config.progressIntervalSeconds = 1
        let backend = ZFSBackend(config: config)
        let old = Self.device(pool.members[1].device)
        let claim = try #require(try backend.claims([old])[old.identity.key])
        _ = try backend.remove(old, claim: claim, simulate: false, job: .direct)
        for member in [pool.members[0], pool.members[2]] { try member.control("delay 60") }

        // The first run of the job: its replace, in the background, as if the service died after it.
        let replaced = Thread {
            _ = try? FaultyDisk.run("/usr/sbin/zpool", ["replace", pool.name, old.identity.devPath, replacement.device], timeout: .seconds(120))
        }
        replaced.start()
        let running = pool.status(until: { ZpoolStatus(parsing: $0).pool(pool.name)?.resilvering == true }, timeout: .seconds(20))
        #expect(ZpoolStatus(parsing: running).pool(pool.name)?.resilvering == true, "\(running)")

        let steps = Mutex<[String]>([])
        let job = JobRun(id: "zfs-resume", progress: ProgressReporter { step, _, _ in steps.withLock { $0.append(step) } })
        let resumed = try backend.add(Self.device(replacement.device), reuseID: claim.id, simulate: false, job: job)
        for member in [pool.members[0], pool.members[2]] { try member.control("clear") }
        #expect(!resumed.skipped)
        #expect(resumed.steps.first?.hasSuffix("is already in \(pool.name); a resilver is running") == true, "\(resumed.steps)")
        #expect(!resumed.steps.contains { $0.hasPrefix("zpool replace") }, "not replaced twice: \(resumed.steps)")
        #expect(steps.withLock { $0 }.contains { $0.hasSuffix("% done") }, "\(steps.withLock { $0 })")
        let after = try #require(ZpoolStatus(parsing: try pool.zpool(["status", pool.name])).pool(pool.name))
        #expect(!after.resilvering && after.state == "ONLINE", "\(after)")
        _ = pool.status(until: { _ in replaced.isFinished }, timeout: .seconds(60))
    }

    /// The same repair through the running bynar-disk-manager (`disk_manager.zfs`), signed
    /// commands over a real broker: List, SafeToRemove, Remove, Add with its progress.
    @Test(.enabled(if: ZFSFusePool.available, "\(ZFSFusePool.unavailableReason ?? "")"), .timeLimit(.minutes(3)))
    func repairThroughTheRunningDiskManager() async throws {
        let pool = try ZFSFusePool(name: "bynarsvc\(getpid())")
        defer { pool.teardown() }
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/data", "bs=1M", "count=30"])
        let before = try FaultyDisk.run("/usr/bin/sha256sum", ["\(pool.mountpoint)/data"])
        try await withFilesystemManager("bynar-dm-zfs", loops: [("new", 128)], settings: "\"zfs\": {\"zpool_path\": \"/usr/sbin/zpool\"}") { manager, loops in
            let line = manager.line
            let member = pool.members[0]
            let listed = try #require(try await line.disks().first { $0.disk.devPath == member.device }, "\(manager.process.log)")
            #expect(listed.backend == "zfs" && listed.backendID == "zfs:\(pool.name)/\(member.name)" && listed.status == .inService, "\(listed)")
            let key = listed.disk.key

            try member.control("fail 0 262144")
            try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/more", "bs=1M", "count=20", "conv=fsync"])
            try pool.zpool(["scrub", pool.name])
            _ = pool.status { ZpoolStatus(parsing: $0).pool(pool.name)?.leaf(member.name)?.vdev.state != "ONLINE" }

            let safe = try await line.send("zfs-safe", .safeToRemove(.with { $0.disk = .key(key) }))
            #expect(safe.outcome == .success && safe.safeToRemove.safe, "\(safe)")
            let remove = try await line.send("zfs-remove", .remove(.with { $0.disk = .key(key) }))
            #expect(remove.outcome == .accepted, "\(remove)\n\(manager.process.log)")
            let removed = try #require(await line.finished(remove.jobID, timeout: .seconds(60)))
            #expect(removed.outcome == .success && removed.backendID == listed.backendID, "\(removed)")
            #expect(ZpoolStatus(parsing: try pool.zpool(["status", pool.name])).pool(pool.name)?.leaf(member.name)?.vdev.state == "OFFLINE")

            let new = loops[0]
            let newKey = try #require(try await line.disks().first { $0.disk.devPath == new.device }).disk.key
            let add = try await line.send("zfs-add", .add(.with { $0.disk = .key(newKey); $0.reuseOsdID = listed.backendID }))
            #expect(add.outcome == .accepted, "\(add)\n\(manager.process.log)")
            let added = try #require(await line.finished(add.jobID, timeout: .seconds(120)))
            #expect(added.outcome == .success && added.backendID == "zfs:\(pool.name)/\(new.device.dropFirst(5))", "\(added)\n\(manager.process.log)")
            let steps = line.progress.all.filter { $0.payload.jobID == add.jobID }.map(\.payload.step)
            #expect(steps.contains { $0.hasPrefix("zpool replace \(pool.name) \(member.device) \(new.device)") }, "\(steps)")
            let after = try #require(ZpoolStatus(parsing: try pool.zpool(["status", pool.name])).pool(pool.name))
            #expect(after.state == "ONLINE" && after.leaf(String(new.device.dropFirst(5)))?.vdev.state == "ONLINE", "\(after)")
            #expect(try await line.disks().contains { $0.disk.key == newKey && $0.backend == "zfs" && $0.status == .inService })
            #expect(try FaultyDisk.run("/usr/bin/sha256sum", ["\(pool.mountpoint)/data"]) == before)
        }
    }
}
