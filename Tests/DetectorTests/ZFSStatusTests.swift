import BynarDisks
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// `zpool status` / `zpool list` as zfs-fuse 0.7 printed them on this machine (captured,
/// Tests/Fixtures/zfs/zfs-fuse-*), as OpenZFS on Linux printed one (captured elsewhere and
/// published, openzfs-status-features.txt: its header says where from) and as OpenZFS lays
/// them out (written by hand from zpool-status(8), the other openzfs-*: no OpenZFS runs here).
@Suite struct ZFSStatusTests {
    static func fixture(_ name: String) throws -> String {
        let text = try String(contentsOfFile: "\(packageRoot)/Tests/Fixtures/zfs/\(name)", encoding: .utf8)
        // The header says where the text came from; the command's output follows it.
        return text.split(separator: "\n", omittingEmptySubsequences: false).drop { $0.hasPrefix("#") }.joined(separator: "\n")
    }

    @Test func offlinedMemberOfARaidz() throws {
        let status = ZpoolStatus(parsing: try Self.fixture("zfs-fuse-status-offline.txt"))
        let pool = try #require(status.pool("bzcap"))
        #expect(pool.state == "DEGRADED")
        #expect(pool.status.hasPrefix("One or more devices has been taken offline"))
        #expect(pool.root.children.map(\.name) == ["raidz1-0"])
        #expect(pool.leaves.map(\.vdev.name) == ["loop3", "loop4", "loop5"])
        #expect(pool.leaf("loop4")?.vdev.state == "OFFLINE")
        #expect(pool.leaf("loop4")?.topLevel.redundancy == 1)
        #expect(pool.leaf("loop4")?.topLevel.children.filter(\.working).count == 2)
        #expect(!pool.resilvering)
        guard case .scrubFinished(let errors, let finished) = pool.scan else {
            Issue.record("scan: \(pool.scan)")
            return
        }
        #expect(errors == 0)
        #expect(finished == Self.localTime(2026, 12, 5, 3, 22, 35))
        #expect(pool.errors == "No known data errors")
    }

    /// A blank disk in an OFFLINE vdev's slot (the same /dev name) is not that vdev; a disk
    /// whose labels cannot be read (a failing one) still is; an ONLINE leaf always is.
    @Test func aBlankDiskInAFailedVdevsSlotIsNotThatVdev() throws {
        let status = ZpoolStatus(parsing: try Self.fixture("zfs-fuse-status-offline.txt"))
        var identity = Bynar_V1_DiskIdentity()
        identity.devPath = "/dev/loop4"
        let slot = BlockDevice(identity: identity, sysPath: "/sys/block/loop4")
        #expect(ZpoolStatus.find(slot, in: status, labelled: { _ in false }) == nil)
        #expect(ZpoolStatus.find(slot, in: status, labelled: { _ in nil })?.leaf.name == "loop4")
        #expect(ZpoolStatus.find(slot, in: status, labelled: { _ in true })?.leaf.name == "loop4")
        identity.devPath = "/dev/loop3"
        #expect(ZpoolStatus.find(BlockDevice(identity: identity, sysPath: "/sys/block/loop3"), in: status, labelled: { _ in false })?.leaf.name == "loop3")
    }

    /// ``ZFSLabel`` on files: an uberblock's magic in label L0's or L1's ring (either byte
    /// order) is a label; zeros, or the magic outside the rings, are not; a missing file
    /// proves nothing.
    @Test func zfsLabelIsAnUberblockInLabelZeroOrOne() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-zfslabel")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func file(_ name: String, magicAt offset: Int?, bigEndian: Bool = false) throws -> String {
            var bytes = [UInt8](repeating: 0, count: 1024 * 1024)
            if let offset { bytes.replaceSubrange(offset..<(offset + 8), with: bigEndian ? [0, 0, 0, 0, 0, 0xba, 0xb1, 0x0c] : [0x0c, 0xb1, 0xba, 0, 0, 0, 0, 0]) }
            try Data(bytes).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
            return "\(directory)/\(name)"
        }
        #expect(ZFSLabel.present(atPath: try file("blank", magicAt: nil)) == false)
        #expect(ZFSLabel.present(atPath: try file("l0", magicAt: 128 * 1024)) == true)
        #expect(ZFSLabel.present(atPath: try file("l0-late", magicAt: 128 * 1024 + 37 * 1024, bigEndian: true)) == true)
        #expect(ZFSLabel.present(atPath: try file("l1", magicAt: 256 * 1024 + 200 * 1024)) == true)
        #expect(ZFSLabel.present(atPath: try file("nvlist", magicAt: 16 * 1024)) == false)
        #expect(ZFSLabel.present(atPath: try file("unaligned", magicAt: 128 * 1024 + 3)) == false)
        #expect(ZFSLabel.present(atPath: try file("beyond", magicAt: 600 * 1024)) == false)
        #expect(ZFSLabel.present(atPath: "\(directory)/missing") == nil)
    }

    @Test func checksumErrorsAreCountedWithTheirSuffix() throws {
        let pool = try #require(ZpoolStatus(parsing: try Self.fixture("zfs-fuse-status-checksum.txt")).pool("bzcap"))
        let loop3 = try #require(pool.leaf("loop3")?.vdev)
        #expect(loop3.state == "ONLINE")
        #expect(loop3.checksumErrors == 1020)
        #expect(loop3.readErrors == 0 && loop3.writeErrors == 0)
        #expect(loop3.note == "54.2M repaired")
        #expect(pool.state == "ONLINE")
    }

    @Test func realIOErrorsMakeAMemberUnavailable() throws {
        let status = ZpoolStatus(parsing: try Self.fixture("zfs-fuse-status-x-io-errors.txt"))
        let pool = try #require(status.pool("bzcap"))
        let loop3 = try #require(pool.leaf("loop3")?.vdev)
        #expect(loop3.state == "UNAVAIL")
        #expect(loop3.writeErrors == 122)
        #expect(loop3.note == "experienced I/O failures")
        #expect(pool.state == "DEGRADED")
    }

    @Test func zfsFuseResilverInProgress() throws {
        let pool = try #require(ZpoolStatus(parsing: try Self.fixture("zfs-fuse-status-resilvering.txt")).pool("bzcap"))
        #expect(pool.scan == .resilverRunning(percent: 24.92))
        #expect(pool.resilvering)
        let raidz = try #require(pool.root.children.first)
        #expect(raidz.children.map(\.name) == ["loop3", "replacing-1", "loop5"])
        #expect(raidz.children[1].children.map(\.name) == ["loop4", "loop6"])
        #expect(raidz.children[1].working)
        #expect(pool.leaf("loop6")?.topLevel.name == "raidz1-0")
        #expect(pool.leaf("loop6")?.vdev.note == "16.6M resilvered")
    }

    @Test func zfsFuseResilverFinished() throws {
        let pool = try #require(ZpoolStatus(parsing: try Self.fixture("zfs-fuse-status-replaced.txt")).pool("bzcap"))
        #expect(pool.scan == .resilverFinished(errors: 0, finished: Self.localTime(2026, 12, 5, 3, 24, 0)))
        #expect(!pool.resilvering)
        #expect(pool.leaves.map(\.vdev.name) == ["loop4", "loop6", "loop5"])
        #expect(pool.leaves.allSatisfy { $0.vdev.state == "ONLINE" })
    }

    @Test func mirrorRedundancyIsItsMembersLessOne() throws {
        let pool = try #require(ZpoolStatus(parsing: try Self.fixture("zfs-fuse-status-mirror-offline.txt")).pool("bzmirror"))
        #expect(pool.scan == .none)
        let mirror = try #require(pool.leaf("loop4")?.topLevel)
        #expect(mirror.name == "mirror-0")
        #expect(mirror.redundancy == 1)
        #expect(mirror.children.map(\.state) == ["OFFLINE", "ONLINE"])
    }

    @Test func healthyMeansNoPoolBlocks() throws {
        #expect(ZpoolStatus(parsing: try Self.fixture("zfs-fuse-status-x-healthy.txt")).pools.isEmpty)
        #expect(ZpoolStatus(parsing: "no pools available\n").pools.isEmpty)
    }

    /// A vdev zpool could not find at import is printed by its GUID with `was PATH`: a
    /// pulled disk is found by that path (for a whole disk OpenZFS notes its first
    /// partition's by-id link), and zpool is given the GUID. The layout is written by hand
    /// here, the same as zfs-fuse prints it in ZFSBackendTests's pulled-disk test.
    @Test func aVdevNamedByItsGUIDIsFoundByWhereItWas() throws {
        let text = """
          pool: tank
         state: DEGRADED
        config:

        \tNAME                       STATE     READ WRITE CKSUM
        \ttank                       DEGRADED     0     0     0
        \t  raidz1-0                 DEGRADED     0     0     0
        \t    ata-BYNAR_DISK_C1      ONLINE       0     0     0
        \t    4181977326170471243    UNAVAIL      0     0     0  was /dev/disk/by-id/ata-BYNAR_DISK_C2-part1
        \t    ata-BYNAR_DISK_C3      ONLINE       0     0     0

        errors: No known data errors
        """
        let status = ZpoolStatus(parsing: text)
        let leaf = try #require(status.pool("tank")?.leaf("4181977326170471243")?.vdev)
        #expect(leaf.formerPath == "/dev/disk/by-id/ata-BYNAR_DISK_C2-part1" && leaf.state == "UNAVAIL")
        var identity = Bynar_V1_DiskIdentity()
        identity.devPath = "/dev/sdc"
        identity.byID = ["ata-BYNAR_DISK_C2"]
        var pulled = BlockDevice(identity: identity, sysPath: "/sys/block/sdc")
        pulled.absent = true
        #expect(ZpoolStatus.find(pulled, in: status)?.leaf.name == "4181977326170471243")
        identity.byID = ["ata-BYNAR_DISK_C9"]
        var other = BlockDevice(identity: identity, sysPath: "/sys/block/sdc")
        other.absent = true
        #expect(ZpoolStatus.find(other, in: status) == nil, "another pulled disk is not it")
        #expect(ZpoolStatus.fullPath("4181977326170471243") == "4181977326170471243")
        #expect(ZpoolStatus.wholeDisk("/dev/disk/by-id/ata-X-part1") == "/dev/disk/by-id/ata-X")
        #expect(ZpoolStatus.wholeDisk("/dev/disk/by-id/ata-X-party") == "/dev/disk/by-id/ata-X-party")
        #expect(ZpoolStatus.wholeDisk("/dev/sdc1") == "/dev/sdc1")
    }

    @Test func openZFSScanLinesAndSections() throws {
        let status = ZpoolStatus(parsing: try Self.fixture("openzfs-status-resilvering.txt"))
        #expect(status.pools.map(\.name) == ["tank", "backup"])
        let tank = try #require(status.pool("tank"))
        #expect(tank.scan == .resilverRunning(percent: 14.97))
        #expect(tank.root.children.map(\.name) == ["raidz2-0", "raidz2-1", "nvme-BYNAR_LOG_1"])
        #expect(tank.root.children.map(\.section) == ["", "", "logs"])
        let failed = try #require(tank.leaf("ata-BYNAR_DISK_A2"))
        #expect(failed.vdev.state == "FAULTED")
        #expect(failed.vdev.readErrors == 14 && failed.vdev.writeErrors == 203)
        #expect(failed.vdev.note == "too many errors")
        #expect(failed.topLevel.redundancy == 2)
        #expect(tank.leaf("ata-BYNAR_DISK_A3")?.vdev.checksumErrors == 2)
        #expect(tank.leaf("ata-BYNAR_DISK_B7")?.vdev.note == "(resilvering)")
        let backup = try #require(status.pool("backup"))
        #expect(backup.scan == .scrubFinished(errors: 0, finished: Self.localTime(2026, 11, 8, 3, 36, 45)))
        #expect(backup.leaf("wwn-0x5000c500a1b2c3d4")?.topLevel.redundancy == 1)
    }

    /// A real OpenZFS capture, verbatim (openzfs-status-features.txt, from jc's test suite by
    /// way of Debian's source package): an ONLINE pool of two mirrors of wwn-named disks,
    /// whose status and action paragraphs go on over tab-indented lines, and OpenZFS's
    /// scrub line ("repaired 0B in 11:16:03").
    @Test func aCapturedOpenZFSStatusIsRead() throws {
        let text = try Self.fixture("openzfs-status-features.txt")
        // The body is the published file, byte for byte (its sha256 is in the header).
        let body = "/tmp/bynar-zfs-fixture-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: body) }
        try text.write(toFile: body, atomically: true, encoding: .utf8)
        #expect(try FaultyDisk.run("/usr/bin/sha256sum", [body]).hasPrefix("06aa1239cc979eb3e2d07290f56ca3f644a911f019f7d3b6b6d7d18ee267dbe2"))
        let status = ZpoolStatus(parsing: text)
        #expect(status.pools.map(\.name) == ["pool1"])
        let pool = try #require(status.pool("pool1"))
        #expect(pool.state == "ONLINE")
        #expect(pool.status == "Some supported and requested features are not enabled on the pool. The pool can still be used, but some features are unavailable.")
        #expect(pool.scan == .scrubFinished(errors: 0, finished: Self.localTime(2023, 2, 12, 11, 40, 4)))
        #expect(pool.root.name == "pool1" && pool.root.state == "ONLINE")
        #expect(pool.root.children.map(\.name) == ["mirror-0", "mirror-1"])
        #expect(pool.leaves.map(\.vdev.name) == ["wwn-0x5000c500c65ac66f", "wwn-0x5000c500c5eee542", "wwn-0x5000c500e39e8af6", "wwn-0x5000c500e3b3a41e"])
        #expect(pool.leaves.map(\.topLevel.name) == ["mirror-0", "mirror-0", "mirror-1", "mirror-1"])
        #expect(pool.leaves.allSatisfy { $0.vdev.state == "ONLINE" && $0.vdev.errorCount == 0 && $0.vdev.note.isEmpty && $0.topLevel.redundancy == 1 })
        #expect(pool.errors == "No known data errors")
        #expect(!pool.resilvering && !pool.scan.running)
    }

    @Test func listWithAndWithoutExactNumbers() throws {
        #expect(ZpoolListEntry.parse(try Self.fixture("zfs-fuse-list.txt")) == [
            ZpoolListEntry(name: "bzcap", size: "370M", allocated: "261M", free: "109M", capacityPercent: 70, health: "ONLINE"),
        ])
        let openZFS = ZpoolListEntry.parse(try Self.fixture("openzfs-list.txt"))
        #expect(openZFS.map(\.capacityPercent) == [77, 33])
        #expect(openZFS.map(\.health) == ["DEGRADED", "ONLINE"])
        #expect(ZpoolListEntry.parse("garbage\nno\ttabs\n").isEmpty)
    }

    @Test func scanLines() {
        #expect(ZFSScan(parsing: "scrub in progress for 0h1m, 40.00% done, 0h2m to go") == .scrubRunning(percent: 40))
        #expect(ZFSScan(parsing: "scrub completed after 0h0m with 3 errors on Sat Dec  5 03:22:35 2026") == .scrubFinished(errors: 3, finished: Self.localTime(2026, 12, 5, 3, 22, 35)))
        #expect(ZFSScan(parsing: "scrub canceled on Sat Dec  5 03:22:35 2026") == .other("scrub canceled on Sat Dec  5 03:22:35 2026"))
        #expect(ZFSScan(parsing: "resilvered 2.40G in 00:01:02 with 0 errors on Sat Dec  5 03:22:35 2026") == .resilverFinished(errors: 0, finished: Self.localTime(2026, 12, 5, 3, 22, 35)))
    }

    static func localTime(_ year: Int32, _ month: Int32, _ day: Int32, _ hour: Int32, _ minute: Int32, _ second: Int32) -> Int64 {
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = month - 1
        parts.tm_mday = day
        parts.tm_hour = hour
        parts.tm_min = minute
        parts.tm_sec = second
        parts.tm_isdst = -1
        return Int64(mktime(&parts))
    }
}
