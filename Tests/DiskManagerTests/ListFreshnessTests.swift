import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

private let toolsAvailable = getuid() == 0
    && ["/sbin/losetup", "/sbin/mkfs.xfs", "/sbin/mkfs.ext4", "/sbin/wipefs", "/bin/mount", "/bin/umount"].allSatisfy { (path: String) in access(path, X_OK) == 0 }

/// List answers from the inventory the disk-manager keeps between commands
/// (docs/disk-manager.md, "What List keeps"), so each test here changes a real disk and lists
/// at once, after the List before it was answered from the kept view (the log says so): the
/// change must show in the very next List. Each fails against a kept view that is not
/// invalidated: by a uevent (attach, detach), by the mount table (mount, umount), by the
/// disk's content stamp (mkfs by hand sends no uevent here: no udevd).
@Suite(.serialized, .enabled(if: TestBroker.available && toolsAvailable, "needs root, losetup, mkfs.xfs, mkfs.ext4, wipefs and mosquitto"))
struct ListFreshnessTests {
    /// The disk `loop` as List shows it now (matched by its backing file: another test's loop
    /// device may take the same /dev name once this one is detached), or nil.
    static func listed(_ loop: LoopDisk, _ manager: FilesystemManager) async throws -> Bynar_V1_ManagedDisk? {
        try await manager.line.disks().first { $0.disk.backingFile == loop.image }
    }

    /// Lists until one List is answered from the kept view (another engineer's loop device
    /// coming or going makes the next one scan again), so the change that follows is made
    /// against a kept view.
    static func listFromTheKeptView(_ manager: FilesystemManager) async throws {
        for _ in 0..<20 {
            let before = manager.keptAnswers
            _ = try await manager.line.disks()
            if manager.keptAnswers > before { return }
        }
        Issue.record("no List was answered from the kept inventory:\n\(manager.process.log.suffix(3000))")
    }

    /// The whole-disk filesystem List shows for `device`: type and UUID, or nil.
    static func filesystem(_ disk: Bynar_V1_ManagedDisk?) -> (type: String, uuid: String)? {
        guard let disk, let whole = disk.disk.partitions.first(where: { $0.devPath == disk.disk.devPath }), !whole.filesystem.isEmpty else { return nil }
        return (whole.filesystem, whole.fsUuid)
    }

    static func blkid(_ field: String, _ device: String) throws -> String {
        try FaultyDisk.run("/sbin/blkid", ["-p", "-o", "value", "-s", field, device]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("a loop device detached is gone from the next List; one attached is in it", .timeLimit(.minutes(2)))
    func detachAndAttach() async throws {
        try await withFilesystemManager("bynar-dm-fresh", loops: [("leaving", 64)]) { manager, loops in
            let leaving = loops[0]
            #expect(try await Self.listed(leaving, manager) != nil)

            try await Self.listFromTheKeptView(manager)
            leaving.teardown()
            #expect(try await Self.listed(leaving, manager) == nil, "still listed after it was detached")

            try await Self.listFromTheKeptView(manager)
            let arriving = try LoopDisk(directory: manager.directory, name: "arriving", sizeMB: 64)
            defer { arriving.teardown() }
            let attached = try await Self.listed(arriving, manager)
            #expect(attached?.disk.devPath == arriving.device && attached?.status == .blank, "\(String(describing: attached))")
        }
    }

    @Test("unmounted and mounted by hand: List shows no mountpoint, then the new one, at once", .timeLimit(.minutes(2)))
    func umountAndMount() async throws {
        // Outside the backend's mount root first: the inventory's own mountpoints.
        var elsewhere = ""
        try await withFilesystemManager("bynar-dm-fresh", loops: [("mounted", 300)], prepare: { loops in
            try FaultyDisk.run("/sbin/mkfs.xfs", ["-q", loops[0].device])
            elsewhere = loops[0].image + ".mnt"
            try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
            try FaultyDisk.run("/bin/mount", [loops[0].device, elsewhere])
        }) { manager, loops in
            let loop = loops[0]
            func mountpoints() async throws -> [String] {
                try await Self.listed(loop, manager)?.disk.partitions.flatMap(\.mountpoints) ?? []
            }
            #expect(try await mountpoints() == [elsewhere])

            try await Self.listFromTheKeptView(manager)
            try FaultyDisk.run("/bin/umount", [elsewhere])
            #expect(try await mountpoints() == [], "still mounted after umount")

            // Under the mount root: the backend's claim follows as fast.
            let managed = manager.mountRoot + "/by-hand"
            try FileManager.default.createDirectory(atPath: managed, withIntermediateDirectories: true)
            try await Self.listFromTheKeptView(manager)
            try FaultyDisk.run("/bin/mount", [loop.device, managed])
            let claimed = try await Self.listed(loop, manager)
            #expect(claimed?.status == .inService && claimed?.backendID == managed && claimed?.disk.partitions.flatMap(\.mountpoints) == [managed],
                    "\(String(describing: claimed))")
            try await Self.listFromTheKeptView(manager)
            try FaultyDisk.run("/bin/umount", [managed])
            let released = try await Self.listed(loop, manager)
            #expect(released?.status == .unspecified && released?.backend == "", "\(String(describing: released))")
        }
    }

    /// No udevd here, so mkfs and wipefs by hand send no uevent at all: only the disk's
    /// content stamp (write counters, the node's times) tells List to probe again.
    @Test("a filesystem made or wiped by hand on an unmounted disk shows in the next List", .timeLimit(.minutes(2)))
    func mkfsByHand() async throws {
        try await withFilesystemManager("bynar-dm-fresh", loops: [("reformatted", 300)]) { manager, loops in
            let loop = loops[0]
            /// Lists from the kept view once the disk has been quiet longer than the settle
            /// time, so the probe after the change below is a kept answer's to lose.
            func settle() async throws {
                try await Task.sleep(for: .milliseconds(1500))
                _ = try await manager.line.disks()
                try await Self.listFromTheKeptView(manager)
            }

            let blank = try await Self.listed(loop, manager)
            #expect(blank?.status == .blank && Self.filesystem(blank) == nil, "\(String(describing: blank))")

            try FaultyDisk.run("/sbin/mkfs.ext4", ["-q", "-F", loop.device])
            let ext4 = try await Self.listed(loop, manager)
            let ext4UUID = try Self.blkid("UUID", loop.device)
            #expect(ext4?.status == .unspecified, "a disk carrying ext4 is not BLANK")
            #expect(Self.filesystem(ext4)?.type == "ext4" && Self.filesystem(ext4)?.uuid == ext4UUID, "\(String(describing: ext4))")

            try await settle()
            try FaultyDisk.run("/sbin/mkfs.xfs", ["-q", "-f", loop.device])
            let xfs = try await Self.listed(loop, manager)
            let xfsUUID = try Self.blkid("UUID", loop.device)
            #expect(xfsUUID != ext4UUID)
            #expect(Self.filesystem(xfs)?.type == "xfs" && Self.filesystem(xfs)?.uuid == xfsUUID, "\(String(describing: xfs))")

            try await settle()
            try FaultyDisk.run("/sbin/wipefs", ["-q", "-a", loop.device])
            let wiped = try await Self.listed(loop, manager)
            #expect(wiped?.status == .blank && Self.filesystem(wiped) == nil, "\(String(describing: wiped))")
        }
    }

    /// The disk-manager's own jobs: the List after a job's end shows what the job did.
    @Test("after its own Deploy and Remove, the next List shows the disk as they left it", .timeLimit(.minutes(2)))
    func ownJobs() async throws {
        try await withFilesystemManager("bynar-dm-fresh", loops: [("deployed", 300)]) { manager, loops in
            let loop = loops[0]
            let key = try #require(try await Self.listed(loop, manager)).disk.key
            try await Self.listFromTheKeptView(manager)

            let deploy = try await manager.line.send("deploy", .deploy(.with { $0.disk = .key(key) }))
            let deployed = try #require(await manager.line.finished(deploy.jobID, timeout: .seconds(60)), "\(manager.process.log.suffix(3000))")
            #expect(deployed.state == .succeeded, "\(deployed)")
            let inService = try await Self.listed(loop, manager)
            #expect(inService?.status == .inService && inService?.backendID == deployed.backendID, "\(String(describing: inService))")
            #expect(Self.filesystem(inService)?.type == "xfs")

            try await Self.listFromTheKeptView(manager)
            let remove = try await manager.line.send("remove", .remove(.with { $0.disk = .key(key) }))
            let removed = try #require(await manager.line.finished(remove.jobID, timeout: .seconds(60)))
            #expect(removed.state == .succeeded, "\(removed)")
            let out = try await Self.listed(loop, manager)
            #expect(out?.status == .unspecified && out?.disk.partitions.flatMap(\.mountpoints) == [], "\(String(describing: out))")
            #expect(Self.filesystem(out)?.uuid == (try Self.blkid("UUID", loop.device)), "the job's filesystem, shown from a fresh probe")
        }
    }
}
