import BynarConfig
import BynarDisks
import BynarTestSupport
import Crypto
@testable import DiskManager
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

private let glusterAvailable = getuid() == 0 && access("/sbin/losetup", X_OK) == 0 && access("/sbin/mkfs.xfs", X_OK) == 0
    && access("/usr/sbin/glusterd", X_OK) == 0 && access("/dev/fuse", R_OK) == 0

/// The Gluster backend against a real glusterd 10.3 (one node, its own working directory):
/// a replica-3 volume on three XFS loop devices, mounted with the FUSE client. A brick's
/// disk "fails" by its brick process (glusterfsd) being killed with SIGKILL, which is what
/// glusterd and the clients see of a brick that is gone. No faultfs under the loop device:
/// gluster's posix health check (every 30 s by default) is meant to stop a brick whose disk
/// fails it, the same state, but that was not tried here.
@Suite(.serialized, .enabled(if: glusterAvailable, "needs root, losetup, mkfs.xfs, glusterd and /dev/fuse"))
struct GlusterBackendTests {
    @Test(.timeLimit(.minutes(6)))
    func aFailedBricksDiskIsRemovedReplacedAndHealed() async throws {
        try await withGlusterVolume { node, disks in
            let backend = node.backend
            let mountpoints = (1...3).map { "\(node.mountRoot)/b\($0)" }
            let bricks = mountpoints.map { "\(backend.host):\($0)/brick" }
            let ids = bricks.map { "\(node.volume):\($0)" }

            // Files written through the volume before anything fails.
            var written: [String: SHA256.Digest] = [:]
            for index in 0..<12 {
                let bytes = (0..<(16_384 * (index + 1))).map { _ in UInt8.random(in: 0...255) }
                let data = Data(bytes)
                try data.write(to: URL(fileURLWithPath: "\(node.clientMount)/file\(index)"))
                written["file\(index)"] = SHA256.hash(data: data)
            }

            // Each brick's disk is claimed, with the brick as its id.
            let claims = try backend.claims(try node.devices())
            for (index, disk) in disks.prefix(3).enumerated() {
                #expect(claims[try node.device(disk).identity.key] == BackendClaim(backend: "gluster", id: ids[index], status: .inService), "\(claims)")
            }
            let failing = try node.device(disks[0])
            let claim = BackendClaim(backend: "gluster", id: ids[0], status: .inService)
            let healthy = try backend.safeToRemove(failing, claim: claim)
            #expect(healthy.safe, "\(healthy)")

            // The disk fails: its brick is gone. Still safe (two copies online, nothing pending).
            try node.killBrick(mountpoints[0])
            let degraded = try backend.safeToRemove(failing, claim: claim)
            #expect(degraded.safe && degraded.detail.contains("2 other bricks"), "\(degraded)")
            // A second brick down: not safe, and the answer names it.
            try node.killBrick(mountpoints[1])
            let twoDown = try backend.safeToRemove(failing, claim: claim)
            #expect(!twoDown.safe && twoDown.detail.contains("\(bricks[1]) of \(bricks[0])'s replica set is offline"), "\(twoDown)")
            // The second comes back (start force restarts every offline brick), the first dies again.
            try node.restartBricks(bricks[1])
            try node.awaitClientWrites(to: mountpoints[1])
            try node.awaitHealed(bricks)
            try node.killBrick(mountpoints[0])
            // Written while the first brick is dead: the others list these entries waiting for
            // it, the same on each. Taking the dead brick out loses nothing: still safe.
            for index in 12..<16 {
                let data = Data((0..<8_192).map { _ in UInt8.random(in: 0...255) })
                try data.write(to: URL(fileURLWithPath: "\(node.clientMount)/file\(index)"))
                written["file\(index)"] = SHA256.hash(data: data)
            }
            let writtenSince = try backend.safeToRemove(failing, claim: claim)
            #expect(writtenSince.safe && writtenSince.detail.contains("the same on each, waiting for \(bricks[0]) (down)"), "\(writtenSince)")

            // Remove, simulated: the steps, and nothing changes.
            let fstabBefore = try String(contentsOfFile: node.fstab, encoding: .utf8)
            let simulated = try backend.remove(failing, claim: claim, simulate: true, job: .direct)
            #expect(simulated.steps == ["gluster volume reset-brick \(node.volume) \(bricks[0]) start", "unmount \(mountpoints[0])", "remove the \(node.fstab) line for \(mountpoints[0])"], "\(simulated)")
            let fstabAfter = try String(contentsOfFile: node.fstab, encoding: .utf8)
            #expect(FilesystemBackend.mount(at: mountpoints[0]) != nil && fstabAfter == fstabBefore)

            // Remove: the brick reset, its disk unmounted and out of fstab.
            let removed = try backend.remove(failing, claim: claim, simulate: false, job: .direct)
            #expect(removed.backendID == ids[0] && !removed.skipped && removed.steps.first == "gluster volume reset-brick \(node.volume) \(bricks[0]) start", "\(removed)")
            #expect(FilesystemBackend.mount(at: mountpoints[0]) == nil)
            #expect(!(try String(contentsOfFile: node.fstab, encoding: .utf8)).contains(mountpoints[0] + " "))
            #expect(try backend.isOut(ids[0]))
            // Again: already out, nothing done.
            let again = try backend.remove(try node.device(disks[0]), claim: claim, simulate: false, job: .direct)
            #expect(again.skipped && again.steps.first == "\(mountpoints[0]) is not mounted: the brick was reset already", "\(again)")
            // The files still read back through the volume, from the two remaining copies.
            for (name, digest) in written {
                #expect(SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: "\(node.clientMount)/\(name)"))) == digest, "\(name) during the outage")
            }

            // Add on a new disk at the same brick path, simulated first.
            let spare = try node.device(disks[3])
            let addSimulated = try backend.add(spare, reuseID: ids[0], simulate: true, job: .direct)
            #expect(addSimulated.steps.contains("gluster volume reset-brick \(node.volume) \(bricks[0]) \(bricks[0]) commit force") && addSimulated.steps.first == "\(disks[3].device) is blank", "\(addSimulated)")
            let stillOffline = try node.online()[bricks[0]] == false
            #expect(FilesystemBackend.mount(at: mountpoints[0]) == nil && stillOffline)

            let progress = StepLog()
            let added = try backend.add(spare, reuseID: ids[0], simulate: false, job: JobRun(id: "gluster-add-1", progress: ProgressReporter { step, index, count in progress.append("\(index)/\(count) \(step)") }))
            #expect(added.backendID == ids[0] && added.steps.contains("gluster volume reset-brick \(node.volume) \(bricks[0]) \(bricks[0]) commit force"), "\(added)")
            #expect(added.steps.last?.hasPrefix("heal of \(node.volume) done") == true, "\(added)")
            #expect(progress.all.first == "1/4 mkfs and mount \(mountpoints[0])" && progress.all.last == "4/4 \(added.steps.last ?? "")", "\(progress.all)")
            #expect(FilesystemBackend.mount(at: mountpoints[0])?.devNumber == DeviceNumber(deviceAt: disks[3].device))
            #expect((try node.online()[bricks[0]]) == true)
            #expect(!(try backend.isOut(ids[0])))
            // Healed: the new brick itself holds every file, identical.
            for (name, digest) in written {
                #expect(SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: "\(mountpoints[0])/brick/\(name)"))) == digest, "\(name) on the new brick")
                #expect(SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: "\(node.clientMount)/\(name)"))) == digest, "\(name) through the volume")
            }
            // Add again (another job): the brick is in already, nothing is formatted.
            let addedAgain = try backend.add(try node.device(disks[3]), reuseID: ids[0], simulate: false, job: JobRun(id: "gluster-add-2", progress: .ignore))
            #expect(addedAgain.steps.first == "\(bricks[0]) is online from \(disks[3].device) already", "\(addedAgain)")
            #expect(!addedAgain.steps.contains { $0.contains("commit force") || $0.hasPrefix("make xfs") }, "\(addedAgain)")
        }
    }

    /// The same through the real bynar-disk-manager over the bus: List names the brick,
    /// SafeToRemove, Remove and Add are jobs, the heal is reported as progress.
    @Test(.timeLimit(.minutes(6)))
    func throughTheServiceOverTheBus() async throws {
        try await withGlusterVolume { node, disks in
            let mountpoint = "\(node.mountRoot)/b1"
            let brick = "\(node.backend.host):\(mountpoint)/brick"
            let id = "\(node.volume):\(brick)"
            var written: [String: SHA256.Digest] = [:]
            for index in 0..<6 {
                let data = Data((0..<65_536).map { _ in UInt8.random(in: 0...255) })
                try data.write(to: URL(fileURLWithPath: "\(node.clientMount)/file\(index)"))
                written["file\(index)"] = SHA256.hash(data: data)
            }
            let directory = node.directory + "/manager"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let broker = try TestBroker()
            defer { withExtendedLifetime(broker) {} }
            let manager = try await FilesystemManager.start(broker: broker, directory: directory, backend: """
                "gluster": {"mount_root": "\(node.mountRoot)", "fstab": "\(node.fstab)", "heal_poll_seconds": 1, "heal_timeout_seconds": 120}
                """)
            defer { manager.stop() }
            let line = manager.line

            let listed = try #require(try await line.disks().first { $0.disk.devPath == disks[0].device })
            #expect(listed.backend == "gluster" && listed.backendID == id && listed.status == .inService, "\(listed)")
            try node.killBrick(mountpoint)
            let safe = try await line.send("safe-1", .safeToRemove(.with { $0.disk = .key(listed.disk.key) }))
            #expect(safe.outcome == .success && safe.safeToRemove.safe, "\(safe)")
            let remove = try await line.send("remove-1", .remove(.with { $0.disk = .key(listed.disk.key) }))
            #expect(remove.outcome == .accepted, "\(remove)\n\(manager.process.log)")
            let removed = try #require(await line.finished(remove.jobID, timeout: .seconds(60)), "\(manager.process.log)")
            #expect(removed.outcome == .success && removed.backendID == id, "\(removed)")
            #expect(FilesystemBackend.mount(at: mountpoint) == nil)

            let spare = try #require(try await line.disks().first { $0.disk.devPath == disks[3].device })
            #expect(spare.status == .blank)
            let add = try await line.send("add-1", .add(.with { $0.disk = .key(spare.disk.key); $0.reuseOsdID = id }))
            #expect(add.outcome == .accepted, "\(add)")
            let added = try #require(await line.finished(add.jobID, timeout: .seconds(150)), "\(manager.process.log)")
            #expect(added.outcome == .success && added.backendID == id, "\(added)")
            #expect(line.progress.all.contains { $0.payload.jobID == add.jobID && $0.payload.state == .running && $0.payload.stepIndex == 4 && $0.payload.step.hasPrefix("heal of \(node.volume) done") }, "\(line.progress.all.map(\.payload.step))")
            #expect(try node.online()[brick] == true)
            for (name, digest) in written {
                #expect(SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: "\(mountpoint)/brick/\(name)"))) == digest, "\(name) on the new brick")
            }
            await manager.bus.shutdown()
        }
    }

    @Test func idsAreVolumeHostAndABrickDirectlyUnderTheMountRoot() throws {
        var config = GlusterBackendConfig()
        config.mountRoot = "/srv/gluster"
        config.brickHost = "h1"
        let backend = GlusterBackend(config: config)
        #expect(try backend.parse("gv0:h1:/srv/gluster/d1/brick") == .init(volume: "gv0", brick: "h1:/srv/gluster/d1/brick", mountpoint: "/srv/gluster/d1"))
        for bad in ["gv0:h2:/srv/gluster/d1/brick", "gv0:h1:/srv/gluster/d1/data", "gv0:h1:/srv/other/d1/brick", "gv0:h1:/srv/gluster/a/b/brick", "gv0:h1:/srv/gluster/../brick", "h1:/srv/gluster/d1/brick", "/srv/gluster/d1"] {
            #expect(throws: BackendRefusal.self, "\(bad)") { try backend.parse(bad) }
        }
        #expect(throws: BackendRefusal.self) { try backend.deploy(BlockDevice(identity: .init(), sysPath: ""), simulate: true, job: .direct) }
    }

    /// A vanished disk's brick (a disk pulled, or dead on its controller, before Bynar took
    /// it out): whatever the filesystem backend's vanished-disk rules say of its last
    /// mountpoint is what the brick is: in service (its dead mount or fstab line still
    /// there), out (neither), or not this disk's (its replacement is there: no claim). Only
    /// mountpoints that are bricks of a volume are claimed.
    @Test func aVanishedDisksBrickIsWhatItsMountpointSays() {
        var config = GlusterBackendConfig()
        config.mountRoot = "/srv/gluster"
        config.brickHost = "h1"
        let backend = GlusterBackend(config: config)
        var volume = GlusterVolume(name: "gv0", status: "Started", type: "Replicate", replicaCount: 3, disperseCount: 0, redundancyCount: 0, bricks: [])
        volume.bricks = ["h1:/srv/gluster/d1/brick", "h2:/srv/gluster/d1/brick", "h3:/srv/gluster/d1/brick"]
        let places: [(key: String, place: BackendClaim)] = [
            ("gone-in-service", BackendClaim(backend: "filesystem", id: "/srv/gluster/d1", status: .inService)),
            ("not-a-brick", BackendClaim(backend: "filesystem", id: "/srv/gluster/d9", status: .inService)),
        ]
        #expect(backend.bricks(of: places, volumes: [volume]) == ["gone-in-service": BackendClaim(backend: "gluster", id: "gv0:h1:/srv/gluster/d1/brick", status: .inService)])
        let out: [(key: String, place: BackendClaim)] = [("gone-out", BackendClaim(backend: "filesystem", id: "/srv/gluster/d1", status: .removed))]
        #expect(backend.bricks(of: out, volumes: [volume])["gone-out"]?.status == .removed)
        #expect(backend.bricks(of: [], volumes: [volume]).isEmpty, "a replacement at the mountpoint leaves the vanished disk no place")
    }
}

/// Steps a ``ProgressReporter`` received, in order.
final class StepLog: @unchecked Sendable {
    private let lock = NSLock()
    private var steps: [String] = []
    func append(_ step: String) { lock.withLock { steps.append(step) } }
    var all: [String] { lock.withLock { steps } }
}

/// A glusterd of the test's own (its own working directory, log and pid file) with one
/// replica-3 volume of a unique name on three XFS loop devices, and that volume mounted
/// with the FUSE client.
final class GlusterNode: @unchecked Sendable {
    let directory: String
    let volume = "bynar" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    let mountRoot: String
    let fstab: String
    let clientMount: String
    let backend: GlusterBackend
    private var glusterd: ChildProcess?

    init(directory: String) {
        self.directory = directory
        mountRoot = directory + "/srv"
        fstab = directory + "/brick-fstab"
        clientMount = directory + "/client"
        var config = GlusterBackendConfig()
        config.mountRoot = mountRoot
        config.fstab = fstab
        config.healPollSeconds = 1
        config.healTimeoutSeconds = 120
        config.commandTimeoutSeconds = 60
        backend = GlusterBackend(config: config)
    }

    /// Starts glusterd in the foreground and waits until its CLI answers.
    func start() throws {
        try FileManager.default.createDirectory(atPath: directory + "/glusterd", withIntermediateDirectories: true)
        glusterd = try ChildProcess("/usr/sbin/glusterd", ["-N", "--pid-file=\(directory)/glusterd.pid", "--log-file=\(directory)/glusterd.log",
                                                           "--xlator-option", "*.working-directory=\(directory)/glusterd"])
        for _ in 0..<100 {
            if (try? gluster(["volume", "list"])) != nil { return }
            usleep(100_000)
        }
        throw TestSupportError("glusterd did not answer: \((try? String(contentsOfFile: directory + "/glusterd.log", encoding: .utf8)) ?? "")")
    }

    /// Stops everything it started, by pid: the FUSE client unmounted, then every process
    /// serving the volume (bricks, self-heal daemon, client; their command lines carry the
    /// volume's unique name), then glusterd.
    func stop() {
        _ = try? FaultyDisk.run("/bin/umount", ["-l", clientMount])
        _ = try? gluster(["volume", "stop", volume, "force"])
        for _ in 0..<50 {
            let left = processes(naming: volume)
            if left.isEmpty { break }
            for pid in left { kill(pid, SIGKILL) }
            usleep(100_000)
        }
        glusterd?.stop(SIGTERM)
    }

    /// pids whose command line contains `text`.
    func processes(naming text: String) -> [pid_t] {
        let me = getpid()
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { name in
            guard let pid = pid_t(name), pid != me, let cmdline = FileManager.default.contents(atPath: "/proc/\(name)/cmdline") else { return nil }
            return String(decoding: cmdline.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(text) ? pid : nil
        }
    }

    @discardableResult
    func gluster(_ arguments: [String]) throws -> String {
        try FaultyDisk.run("/usr/sbin/gluster", ["--mode=script"] + arguments, timeout: .seconds(60))
    }

    func online() throws -> [String: Bool] {
        try GlusterStatus.parseOnline(gluster(["--xml", "volume", "status", volume]))
    }

    func awaitOnline(_ brick: String, _ wanted: Bool, tries: Int = 100) throws {
        for _ in 0..<tries {
            if try online()[brick] == wanted { return }
            usleep(100_000)
        }
        throw TestSupportError("\(brick) is not \(wanted ? "online" : "offline"): \(try online())")
    }

    /// `volume start force` until `brick` is online: glusterd skips a brick whose old pid
    /// still exists, and a killed brick stays a zombie until init reaps it.
    func restartBricks(_ brick: String) throws {
        for _ in 0..<20 {
            try gluster(["volume", "start", volume, "force"])
            if (try? awaitOnline(brick, true, tries: 10)) != nil { return }
        }
        throw TestSupportError("\(brick) did not come back")
    }

    /// Waits until a file written through the client lands on the brick in `mountpoint`
    /// (the client reconnects to a restarted brick on its own, within seconds).
    func awaitClientWrites(to mountpoint: String) throws {
        for attempt in 0..<40 {
            let name = "probe\(attempt)"
            try? Data(name.utf8).write(to: URL(fileURLWithPath: "\(clientMount)/\(name)"))
            if FileManager.default.fileExists(atPath: "\(mountpoint)/brick/\(name)") { return }
            usleep(500_000)
        }
        throw TestSupportError("the client does not write to \(mountpoint)/brick")
    }

    /// Waits until heal info reaches the online bricks and finds nothing pending on them.
    func awaitHealed(_ bricks: [String]) throws {
        for _ in 0..<120 {
            let up = try online()
            let heal = try GlusterHealInfo.parse(gluster(["--xml", "volume", "heal", volume, "info"]))
            if bricks.filter({ up[$0] == true }).allSatisfy({ heal.brick($0)?.pending == 0 }) { return }
            _ = try? gluster(["volume", "heal", volume])
            sleep(1)
        }
        throw TestSupportError("heal of \(volume) did not finish")
    }

    /// Kills the brick process serving `<mountpoint>/brick` (SIGKILL, as a dead disk ends it).
    func killBrick(_ mountpoint: String) throws {
        let brick = "\(backend.host):\(mountpoint)/brick"
        let pids = processes(naming: "glusterfsd").filter { pid in processes(naming: "\(mountpoint)/brick").contains(pid) }
        guard !pids.isEmpty else { throw TestSupportError("no glusterfsd for \(brick)") }
        for pid in pids { kill(pid, SIGKILL) }
        try awaitOnline(brick, false)
    }

    func devices() throws -> [BlockDevice] {
        try Inventory.scan(host: "h1", excluded: [])
    }

    func device(_ disk: LoopDisk) throws -> BlockDevice {
        try #require(try devices().first { $0.identity.devPath == disk.device }, "\(disk.device) is in the inventory")
    }
}

/// Runs `body` with a ``GlusterNode`` whose volume sits on the first three of four 300 MB
/// loop devices (XFS, mounted by UUID through the test's own fstab at `<srv>/b1..b3`, brick
/// `brick` inside each; the fourth blank, the replacement). Everything is undone afterwards,
/// also when `body` throws: the client unmounted, the volume's processes and glusterd
/// stopped by pid, each loop device unmounted and detached by name, the directory removed.
func withGlusterVolume(_ body: (GlusterNode, [LoopDisk]) async throws -> Void) async throws {
    let directory = try makeTemporaryDirectory(prefix: "bynar-gluster")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    var disks: [LoopDisk] = []
    defer { for disk in disks { disk.teardown() } }
    for index in 1...4 { disks.append(try LoopDisk(directory: directory, name: "d\(index)", sizeMB: 300)) }
    let node = GlusterNode(directory: directory)
    defer { node.stop() }
    try node.createVolume(on: disks.prefix(3).map(\.device))
    try await body(node, disks)
}

extension GlusterNode {
    /// XFS on each of `devices`, mounted by UUID through the test's own fstab at
    /// `<srv>/b1...`, a `brick` directory in each; glusterd started; a replica volume of
    /// those bricks created (`force`: one host) with `options` set, started, and mounted with
    /// the FUSE client. ``stop()`` undoes it.
    func createVolume(on devices: [String], options: [(String, String)] = []) throws {
        try "# test fstab\n".write(toFile: fstab, atomically: true, encoding: .utf8)
        for (index, device) in devices.enumerated() {
            let mountpoint = "\(mountRoot)/b\(index + 1)"
            try FaultyDisk.run("/sbin/mkfs.xfs", ["-q", "-f", device])
            let uuid = try FaultyDisk.run("/sbin/blkid", ["-p", "-o", "value", "-s", "UUID", device]).trimmingCharacters(in: .whitespacesAndNewlines)
            try Fstab.edit(path: fstab) { fstab throws(BackendRefusal) in try fstab.set(.init(source: "UUID=\(uuid)", mountpoint: mountpoint, type: "xfs", options: "defaults,noatime,nofail")) }
            try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
            try FaultyDisk.run("/bin/mount", ["--fstab", fstab, mountpoint])
            try FileManager.default.createDirectory(atPath: mountpoint + "/brick", withIntermediateDirectories: true)
        }
        try start()
        try gluster(["volume", "create", volume, "replica", "\(devices.count)"] + (1...devices.count).map { "\(backend.host):\(mountRoot)/b\($0)/brick" } + ["force"])
        for (name, value) in options { try gluster(["volume", "set", volume, name, value]) }
        try gluster(["volume", "start", volume])
        try FileManager.default.createDirectory(atPath: clientMount, withIntermediateDirectories: true)
        try FaultyDisk.run("/usr/sbin/glusterfs", ["--volfile-server=\(backend.host)", "--volfile-id=\(volume)", "--log-file=\(directory)/client.log", clientMount])
        for _ in 0..<50 where FilesystemBackend.mount(at: clientMount) == nil { usleep(100_000) }
    }
}
