import BynarTestSupport
import Crypto
@testable import DiskManager
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A Gluster brick's whole repair through every real service (``RepairRig``: real broker,
/// detector, disk-manager with `disk_manager.gluster`, ticketing against the STAND-IN JIRA,
/// orchestrator) on a real glusterd 10.3: a replica-3 volume whose bricks are XFS on three
/// loop devices behind faultfs. Every sector of the first brick's disk fails: the kernel
/// logs real I/O errors, XFS shuts down, gluster's posix health check (every 2 s here) ends
/// the brick. The detector makes the disk FAILED; the orchestrator has the disk-manager take
/// the brick out (`reset-brick ... start`, unmount) and ticketing file one ticket; the test,
/// as the technician, puts a blank disk in the same slot and resolves the ticket; the
/// disk-manager makes and mounts the new filesystem at the brick's path, commits the
/// reset-brick and heals. Files written before read back identical from the new brick and
/// through the volume; one incident, one ticket, one Remove, one Add. Again with the
/// disk-manager killed (SIGKILL) and started again between reset-brick start and the
/// unmount, between the new filesystem's mount and reset-brick commit, and between the
/// commit and the heal: the same one incident, one ticket, each job once.
@Suite(.serialized, .enabled(if: getuid() == 0 && access("/usr/sbin/glusterd", X_OK) == 0 && access("/sbin/mkfs.xfs", X_OK) == 0
    && FaultyDisk.available && TestBroker.available, "needs root, glusterd, mkfs.xfs, faultfs (FUSE), loop devices and mosquitto"))
struct GlusterEndToEndTests {
    @Test(.timeLimit(.minutes(8)), arguments: [nil, "Remove:2", "Add:2", "Add:3"] as [String?])
    func aBricksFailedDiskIsTakenOutTicketedReplacedAndHealed(killingTheDiskManagerAt pausePoint: String?) async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-gluster-e2e")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var disks: [FaultyDisk] = []
        var replacement: FaultyDisk?
        defer {
            replacement?.teardown()
            for disk in disks { disk.teardown() }
        }
        for _ in 1...3 { disks.append(try FaultyDisk(sizeMB: 300, filesystem: nil)) }
        let node = GlusterNode(directory: directory)
        defer { node.stop() }
        try node.createVolume(on: disks.map(\.device), options: [("storage.health-check-interval", "2")])
        let mountpoint = "\(node.mountRoot)/b1"
        let brick = "\(node.backend.host):\(mountpoint)/brick"
        var written: [String: SHA256.Digest] = [:]
        for index in 0..<8 {
            let data = Data((0..<65_536).map { _ in UInt8.random(in: 0...255) })
            try data.write(to: URL(fileURLWithPath: "\(node.clientMount)/file\(index)"))
            written["file\(index)"] = SHA256.hash(data: data)
        }

        try await RepairRig.with(prefix: "bynar-gluster-e2e-services") { rig in
            try await rig.start(detector: """
                "watch_only": [\(disks.map { "\"\($0.device)\"" }.joined(separator: ", "))]
                """, diskManager: """
                "gluster": {"mount_root": "\(node.mountRoot)", "fstab": "\(node.fstab)", "heal_poll_seconds": 1, "heal_timeout_seconds": 120}
                """, killingTheDiskManagerAt: pausePoint)
            let failing = disks[0]
            #expect(await rig.window.diskEvents.wait(timeout: .seconds(30)) { $0.contains { $0.payload.disk.devPath == failing.device && $0.payload.toState == .healthy } }, "\(rig.logs())")
            let oldKey = try #require(rig.window.diskEvents.all.first { $0.payload.disk.devPath == failing.device }?.payload.disk.key)

            // The disk dies under the brick; clients go on writing to the volume.
            try failing.control("fail 0 614400")
            for index in 0..<4 { try? Data("after \(index)".utf8).write(to: URL(fileURLWithPath: "\(node.clientMount)/late\(index)")) }
            _ = try? FaultyDisk.run("/bin/sync", ["-f", mountpoint])
            #expect(await rig.window.diskEvents.wait(timeout: .seconds(60)) { $0.contains { $0.payload.disk.key == oldKey && $0.payload.toState == .failed } }, "\(rig.logs())")

            let ticket = try await rig.technicianSwaps(oldKey: oldKey) {
                // Out before the ticket: the brick reset, its filesystem unmounted.
                #expect(FilesystemBackend.mount(at: mountpoint) == nil, "\(rig.incidentPath)")
                #expect(try node.online()[brick] != true)
                try failing.control("vanish ENODEV")
                try failing.detach()
                replacement = try FaultyDisk(sizeMB: 300, filesystem: nil, loopDevice: failing.device)
            }
            let issue = try #require(try rig.jira.issues().first { $0.key == ticket.ticketKey })
            #expect(issue.summary.contains("h1"), "\(issue.summary)")

            #expect(try node.online()[brick] == true, "the new brick serves")
            #expect(FilesystemBackend.mount(at: mountpoint) != nil)
            try node.awaitHealed([brick])
            for (name, digest) in written {
                #expect(SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: "\(mountpoint)/brick/\(name)"))) == digest, "\(name) on the new brick")
                #expect(SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: "\(node.clientMount)/\(name)"))) == digest, "\(name) through the volume")
            }
            #expect(FileManager.default.fileExists(atPath: "\(mountpoint)/brick/late0"), "what was written while the brick was dead was healed onto the new one")
            try rig.expectOneOfEach(ticket)
            #expect(rig.diskManagerRestarts == (pausePoint == nil ? 0 : 1), "killed once at \(pausePoint ?? "-")")
        }
    }
}
