import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import DiskManager
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

private let loopAvailable = getuid() == 0 && access("/sbin/losetup", X_OK) == 0 && access("/sbin/mkfs.xfs", X_OK) == 0

/// fstab edits keep every line they do not own.
@Suite struct FstabTests {
    @Test("a value that would not stay one fstab field is refused, naming it; the file is unchanged")
    func injectedLinesAreRefused() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-fstab")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/fstab"
        try "# fstab\n".write(toFile: path, atomically: true, encoding: .utf8)
        let hostile: [(Fstab.Entry, String)] = [
            (.init(source: "UUID=a", mountpoint: "/srv/bynar/x\n/dev/sda / ext4 defaults 0 0", type: "xfs", options: "defaults"), "mountpoint"),
            (.init(source: "UUID=a", mountpoint: "/srv/bynar/x y", type: "xfs", options: "defaults"), "mountpoint"),
            (.init(source: "UUID=a#", mountpoint: "/srv/bynar/x", type: "xfs", options: "defaults"), "source"),
            (.init(source: "UUID=a", mountpoint: "/srv/bynar/x", type: "xfs", options: "defaults\tnoauto"), "options"),
            (.init(source: "UUID=a", mountpoint: "srv/bynar/x", type: "xfs", options: "defaults"), "absolute"),
            (.init(source: "UUID=a", mountpoint: "/srv/bynar/../../etc", type: "xfs", options: "defaults"), ".."),
            (.init(source: "UUID=a", mountpoint: "/srv/bynar/x", type: "", options: "defaults"), "type"),
        ]
        for (entry, named) in hostile {
            do {
                try Fstab.edit(path: path) { fstab throws(BackendRefusal) in try fstab.set(entry) }
                Issue.record("accepted \(entry)")
            } catch {
                #expect(error.reason.contains(named), "\(error.reason)")
            }
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "# fstab\n")
    }

    @Test("two writers adding 50 lines each lose none (one lock for the read-modify-write)")
    func concurrentEditsLoseNothing() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-fstab")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/fstab"
        try "# fstab\n".write(toFile: path, atomically: true, encoding: .utf8)
        // Two threads, as two disk-manager jobs would be.
        let group = DispatchGroup()
        for writer in 0..<2 {
            DispatchQueue.global().async(group: group) {
                for index in 0..<50 {
                    try? Fstab.edit(path: path) { fstab throws(BackendRefusal) in
                        try fstab.set(.init(source: "UUID=w\(writer)-\(index)", mountpoint: "/srv/bynar/w\(writer)-\(index)", type: "xfs", options: "defaults"))
                    }
                }
            }
        }
        group.wait()
        let fstab = try Fstab(path: path)
        #expect(fstab.entries(under: "/srv/bynar").count == 100)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.contains("bynar-new") }
        #expect(leftovers.isEmpty, "no temporary files left: \(leftovers)")
    }

    @Test func setAndRemoveKeepOtherLinesAndWriteAtomically() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-fstab")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/fstab"
        let original = "# /etc/fstab\nUUID=aaa / ext4 defaults 0 1\n\n\t# swap\n/swapfile none swap sw 0 0\n"
        try original.write(toFile: path, atomically: true, encoding: .utf8)
        var fstab = try Fstab(path: path)
        try fstab.set(.init(source: "UUID=bbb", mountpoint: "/srv/bynar/d1", type: "xfs", options: "defaults,nofail"))
        try fstab.save()
        #expect(try String(contentsOfFile: path, encoding: .utf8) == original + "UUID=bbb /srv/bynar/d1 xfs defaults,nofail 0 2\n")
        // Replacing the disk at the same mountpoint leaves one line for it.
        var again = try Fstab(path: path)
        #expect(again.entry(mountpoint: "/srv/bynar/d1")?.source == "UUID=bbb")
        try again.set(.init(source: "UUID=ccc", mountpoint: "/srv/bynar/d1", type: "xfs", options: "defaults"))
        #expect(again.entries(under: "/srv/bynar").map(\.source) == ["UUID=ccc"])
        let removedOnce = again.remove(mountpoint: "/srv/bynar/d1")
        let removedTwice = again.remove(mountpoint: "/srv/bynar/d1")
        #expect(removedOnce && !removedTwice)
        try again.save()
        #expect(try String(contentsOfFile: path, encoding: .utf8) == original)
        #expect(!FileManager.default.fileExists(atPath: path + ".bynar-new"))
        // A missing fstab reads as empty; an unreadable directory is a clear error.
        #expect(try Fstab(path: directory + "/none").lines.isEmpty)
        #expect(throws: BackendRefusal.self) { try Fstab(path: directory + "/none/fstab").save() }
    }
}

/// The real bynar-disk-manager with the filesystem backend on real loop devices with real
/// XFS, through a real broker: Deploy, List, SafeToRemove while in use, simulate, Remove,
/// a repeated request id, Add of a new disk at the old mountpoint, refusals.
@Suite(.serialized, .enabled(if: TestBroker.available && loopAvailable, "needs root, losetup, mkfs.xfs and mosquitto"))
struct FilesystemBackendTests {
    /// The commonest death, after a reboot: the disk is gone and only its fstab line (by
    /// UUID) is left. The disk-manager still knows the disk (its last sighting) and takes
    /// its line out, so the incident completes; before, a vanished disk was nobody's and
    /// Remove was refused (the incident ended STUCK).
    @Test(.timeLimit(.minutes(3)))
    func aVanishedDisksFstabLineIsTakenOut() async throws {
        try await withFilesystemManager("bynar-dm-fs-gone", loops: [("gone", 300)]) { filesystem, loops in
            let (gone, line, manager, mountRoot, fstabPath) = (loops[0], filesystem.line, filesystem.process, filesystem.mountRoot, filesystem.fstab)
            let key = try #require(try await line.disks().first { $0.disk.devPath == gone.device }).disk.key
            let deploy = try await line.send("deploy-gone", .deploy(.with { $0.disk = .key(key) }))
            let deployed = try #require(await line.finished(deploy.jobID, timeout: .seconds(60)), "\(manager.log)")
            let mountpoint = "\(mountRoot)/\(key)"
            #expect(deployed.state == .succeeded && deployed.backendID == mountpoint && deployed.backend == "filesystem", "\(deployed)")
            // Seen in service once more (the disk-manager's last sighting has the mount), then gone:
            // not mounted any more, detached.
            #expect(try await line.disks().contains { $0.disk.key == key && $0.status == .inService })
            _ = try FaultyDisk.run("/bin/umount", [mountpoint])
            gone.teardown()
            #expect(try String(contentsOfFile: fstabPath, encoding: .utf8).contains(mountpoint), "its line is still there")

            let safe = try await line.send("safe-gone", .safeToRemove(.with { $0.disk = .key(key) }))
            #expect(safe.outcome == .success && safe.safeToRemove.safe, "\(safe)")
            let remove = try await line.send("remove-gone", .remove(.with { $0.disk = .key(key) }))
            #expect(remove.outcome == .accepted, "\(remove)\n\(manager.log)")
            let removed = try #require(await line.finished(remove.jobID, timeout: .seconds(60)))
            #expect(removed.outcome == .success && removed.backendID == mountpoint, "\(removed)")
            #expect(try String(contentsOfFile: fstabPath, encoding: .utf8) == "# test fstab\n", "the vanished disk's line is gone")
            // Asked again (a new request): already out, nothing to do.
            let again = try await line.send("remove-gone-2", .remove(.with { $0.disk = .key(key) }))
            #expect(again.outcome != .refused || again.reason.contains("out"), "\(again)")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func deployRemoveAndReplaceADataDisk() async throws {
        // "foreign" carries another program's data (an ext4 nobody mounted): List must not call it BLANK.
        let loops = [(name: "first", sizeMB: 300), (name: "second", sizeMB: 300), (name: "foreign", sizeMB: 64)]
        try await withFilesystemManager("bynar-dm-fs", loops: loops, settings: "\"max_disks_out\": 1", prepare: { disks in
            try FaultyDisk.run("/sbin/mkfs.ext4", ["-q", "-F", disks[2].device])
        }) { filesystem, disks in
            let (first, second, foreign) = (disks[0], disks[1], disks[2])
            let (line, manager, mountRoot, fstabPath, directory) = (filesystem.line, filesystem.process, filesystem.mountRoot, filesystem.fstab, filesystem.directory)

            func disk(_ loop: LoopDisk) async throws -> Bynar_V1_ManagedDisk {
                try #require(try await line.disks().first { $0.disk.devPath == loop.device }, "\(loop.device) is listed")
            }
            let blank = try await disk(first)
            #expect(blank.status == .blank && blank.backend.isEmpty)
            let notBlank = try await disk(foreign)
            #expect(notBlank.status == .unspecified && notBlank.backend.isEmpty, "a disk carrying ext4 is not BLANK: \(notBlank.status)")
            let firstKey = blank.disk.key
            let secondKey = try await disk(second).disk.key

            // Deploy: simulated first (nothing happens), then for real.
            let simulated = try await line.send("deploy-sim", simulate: true, .deploy(.with { $0.disk = .key(firstKey) }))
            #expect(simulated.outcome == .success && simulated.simulated && simulated.steps.contains { $0.hasPrefix("make xfs") }, "\(simulated)")
            #expect(try await disk(first).status == .blank, "simulate changed nothing")
            let deploy = try await line.send("deploy-1", .deploy(.with { $0.disk = .key(firstKey) }))
            #expect(deploy.outcome == .accepted && !deploy.jobID.isEmpty, "\(deploy)")
            let deployed = try #require(await line.finished(deploy.jobID, timeout: .seconds(60)), "\(manager.log)")
            let mountpoint = "\(mountRoot)/\(firstKey)"
            #expect(deployed.state == .succeeded && deployed.outcome == .success && deployed.backendID == mountpoint, "\(deployed)")
            #expect(line.progress.all.contains { $0.payload.jobID == deploy.jobID && $0.payload.state == .running && $0.payload.stepCount == 3 })
            let inService = try await disk(first)
            #expect(inService.backend == "filesystem" && inService.backendID == mountpoint && inService.status == .inService)
            let uuid = try FaultyDisk.run("/sbin/blkid", ["-p", "-o", "value", "-s", "UUID", first.device]).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(try String(contentsOfFile: fstabPath, encoding: .utf8) == "# test fstab\nUUID=\(uuid) \(mountpoint) xfs defaults,noatime,nofail 0 2\n")
            try "payload".write(toFile: mountpoint + "/data", atomically: true, encoding: .utf8)
            // JobStatus answers with the final progress.
            let status = try await line.send("status-1", .jobStatus(.with { $0.jobID = deploy.jobID }))
            #expect(status.outcome == .success && status.job.state == .succeeded && status.job.backendID == mountpoint)

            // In use: not safe, and Remove is refused with the user named; nothing changes.
            let holder = try ChildProcess("/bin/sh", ["-c", "cd '\(mountpoint)' && exec sleep 60"])
            var unsafe = Bynar_V1_DiskManagerResponse()
            for _ in 0..<50 {
                unsafe = try await line.send("safe-\(UUID().uuidString)", .safeToRemove(.with { $0.disk = .key(firstKey) }))
                if !unsafe.safeToRemove.safe { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(unsafe.outcome == .success && !unsafe.safeToRemove.safe && unsafe.safeToRemove.detail.contains("pid \(holder.pid)"), "\(unsafe)")
            let refused = try await line.send("remove-busy", .remove(.with { $0.disk = .key(firstKey) }))
            #expect(refused.outcome == .refused && refused.reason.contains("pid \(holder.pid)"), "\(refused)")
            holder.stop(SIGKILL)
            let safe = try await line.send("safe-2", .safeToRemove(.with { $0.disk = .key(firstKey) }))
            #expect(safe.safeToRemove.safe && safe.safeToRemove.clusterHealth.isEmpty, "\(safe)")

            // Remove, simulated: steps, no change.
            let removeSim = try await line.send("remove-sim", simulate: true, .remove(.with { $0.disk = .key(firstKey) }))
            #expect(removeSim.outcome == .success && removeSim.steps == ["unmount \(mountpoint)", "remove the \(fstabPath) line for \(mountpoint)"], "\(removeSim)")
            #expect(FileManager.default.fileExists(atPath: mountpoint + "/data"))
            // Remove for real; the same request id again acts once.
            let remove = try await line.send("remove-1", .remove(.with { $0.disk = .key(firstKey) }))
            #expect(remove.outcome == .accepted, "\(remove)")
            let removed = try #require(await line.finished(remove.jobID, timeout: .seconds(60)))
            #expect(removed.outcome == .success && removed.backendID == mountpoint, "\(removed)")
            #expect(!FileManager.default.fileExists(atPath: mountpoint + "/data"), "unmounted")
            #expect(try String(contentsOfFile: fstabPath, encoding: .utf8) == "# test fstab\n")
            let again = try await line.send("remove-1", .remove(.with { $0.disk = .key(firstKey) }))
            #expect(again.outcome == .alreadyDone && again.originalOutcome == .accepted && again.jobID == remove.jobID, "\(again)")

            // Add needs the id Remove answered; a disk carrying data is never formatted.
            let noID = try await line.send("add-noid", .add(.with { $0.disk = .key(secondKey) }))
            #expect(noID.outcome == .refused && noID.reason.contains("reuse_osd_id"), "\(noID)")
            let overData = try await line.send("add-old", .add(.with { $0.disk = .key(firstKey); $0.reuseOsdID = mountpoint }))
            #expect(overData.outcome == .refused && overData.reason.contains("carries data"), "\(overData)")

            // The new disk goes in at the old mountpoint, by UUID.
            let add = try await line.send("add-1", .add(.with { $0.disk = .key(secondKey); $0.reuseOsdID = mountpoint }))
            #expect(add.outcome == .accepted, "\(add)")
            let added = try #require(await line.finished(add.jobID, timeout: .seconds(60)))
            #expect(added.outcome == .success && added.backendID == mountpoint, "\(added)")
            let newUUID = try FaultyDisk.run("/sbin/blkid", ["-p", "-o", "value", "-s", "UUID", second.device]).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(newUUID != uuid)
            #expect(try String(contentsOfFile: fstabPath, encoding: .utf8) == "# test fstab\nUUID=\(newUUID) \(mountpoint) xfs defaults,noatime,nofail 0 2\n")
            let replaced = try await disk(second)
            #expect(replaced.status == .inService && replaced.backendID == mountpoint)

            // The audit table has every command and each job's end.
            manager.signal(SIGTERM)
            let audit = try String(contentsOfFile: directory + "/bynar-disk-manager.log", encoding: .utf8)
            #expect(audit.contains("job finished"))
        }
    }
}
