import BynarBus
import BynarDisks
import BynarProto
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A ZFS vdev's whole repair through every real service (``RepairRig``: real broker,
/// detector, disk-manager, ticketing against the STAND-IN JIRA, orchestrator) on a real
/// zfs-fuse: a raidz1 of three loop devices behind faultfs; one member's sectors fail with
/// real I/O errors; the detector makes its disk FAILED naming the pool; the orchestrator
/// has the disk-manager offline it (`zpool offline`) and ticketing file one ticket; the
/// test, as the technician, puts a blank disk in the same slot (the same /dev/loopN) and
/// resolves the ticket; the disk-manager replaces the vdev there (`zpool replace POOL
/// VDEV`), the resilver ends, the pool is ONLINE, the data written before reads back the
/// same, a scrub finds nothing; one incident, one ticket, one Remove, one Add. On a raidz1
/// and on a three-way mirror; and on the raidz1 again with the disk-manager killed (SIGKILL)
/// at each place a ZFS job can be cut (its job row written and not yet answered, after
/// `zpool offline`, before `zpool replace`, after the resilver) and started again: the same
/// one incident, one ticket, each job once.
@Suite(.serialized, .enabled(if: ZFSFusePool.available && TestBroker.available, "\(ZFSFusePool.unavailableReason ?? "mosquitto is not installed")"))
struct ZFSEndToEndTests {
    @Test(.timeLimit(.minutes(6)), arguments: [("raidz", nil), ("mirror", nil), ("raidz", "accepted"), ("raidz", "Remove:done"), ("raidz", "Add:1"), ("raidz", "Add:done")] as [(String, String?)])
    func aFailedVdevIsOfflinedTicketedReplacedInItsSlotAndResilvered(layout: String, killingTheDiskManagerAt pausePoint: String?) async throws {
        let pool = try ZFSFusePool(name: "bynare2e\(getpid())", layout: layout)
        var replacement: FaultyDisk?
        defer {
            pool.teardown()
            replacement?.teardown()
        }
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/data", "bs=1M", "count=30"])
        let before = try FaultyDisk.run("/usr/bin/sha256sum", ["\(pool.mountpoint)/data"])
        let member = pool.members[1]
        try await RepairRig.with(prefix: "bynar-zfs-e2e") { rig in
            try await rig.start(detector: """
                "probe": false, "read_probe": false, "fsck_interval_seconds": 0,
                "watch_only": [\(pool.members.map { "\"\($0.device)\"" }.joined(separator: ", "))],
                "zfs": {"zpool_path": "/usr/sbin/zpool", "poll_seconds": 2}
                """, diskManager: """
                "zfs": {"zpool_path": "/usr/sbin/zpool", "progress_interval_seconds": 1}
                """, killingTheDiskManagerAt: pausePoint)
            #expect(await rig.window.diskEvents.wait(timeout: .seconds(30)) { $0.contains { $0.payload.disk.devPath == member.device && $0.payload.toState == .healthy } }, "\(rig.logs())")
            let oldKey = try #require(rig.window.diskEvents.all.first { $0.payload.disk.devPath == member.device }?.payload.disk.key)

            // The member fails: every sector errors; writes and a scrub meet it.
            try member.control("fail 0 262144")
            try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/more", "bs=1M", "count=20", "conv=fsync"])
            try pool.zpool(["scrub", pool.name])
            #expect(await rig.window.diskEvents.wait(timeout: .seconds(60)) { $0.contains { $0.payload.disk.key == oldKey && $0.payload.toState == .failed } },
                    "\((try? pool.zpool(["status", pool.name])) ?? "")\n\(rig.logs())")
            let failed = try #require(rig.window.diskEvents.all.first { $0.payload.disk.key == oldKey && $0.payload.toState == .failed }?.payload)
            #expect(failed.reasons.contains { $0.rule == "zfs.vdev_failed" && $0.detail.contains("ZFS pool \(pool.name)") }, "\(failed.reasons)")

            let ticket = try await rig.technicianSwaps(oldKey: oldKey) {
                // Taken out before the ticket: OFFLINE in the pool.
                let out = ZpoolStatus(parsing: try pool.zpool(["status", pool.name])).pool(pool.name)?.leaf(member.name)?.vdev.state
                #expect(out == "OFFLINE", "\(rig.incidentPath)")
                try member.control("vanish ENODEV")
                try member.detach()
                replacement = try FaultyDisk(sizeMB: 128, filesystem: nil, loopDevice: member.device)
                // What tells the new disk from the vdev whose name it has: no ZFS label.
                #expect(ZFSLabel.present(atPath: member.device) == false && ZFSLabel.present(atPath: pool.members[0].device) == true)
            }
            let issue = try #require(try rig.jira.issues().first { $0.key == ticket.ticketKey })
            #expect(issue.summary.contains("h1"), "\(issue.summary)")
            #expect(issue.description.contains(pool.name), "the ticket names the pool: \(issue.description)")

            let after = try #require(ZpoolStatus(parsing: try pool.zpool(["status", pool.name])).pool(pool.name))
            #expect(after.state == "ONLINE" && !after.resilvering && after.leaf(member.name)?.vdev.state == "ONLINE", "\(after)")
            let steps = rig.window.progress.all.filter { $0.payload.operation == "Add" }.map(\.payload.step)
            if pausePoint == nil { #expect(steps.contains("zpool replace \(pool.name) \(member.device)"), "replaced in the same slot: \(steps)") }
            #expect(try FaultyDisk.run("/usr/bin/sha256sum", ["\(pool.mountpoint)/data"]) == before)
            try pool.zpool(["scrub", pool.name])
            let scrubbed = pool.status { ZpoolStatus(parsing: $0).pool(pool.name)?.scan.running == false }
            if case .scrubFinished(let errors, _) = ZpoolStatus(parsing: scrubbed).pool(pool.name)?.scan {
                #expect(errors == 0, "\(scrubbed)")
            } else {
                Issue.record("no finished scrub: \(scrubbed)")
            }
            try rig.expectOneOfEach(ticket)
            #expect(rig.diskManagerRestarts == (pausePoint == nil ? 0 : 1), "killed once at \(pausePoint ?? "-")")
        }
    }
}
