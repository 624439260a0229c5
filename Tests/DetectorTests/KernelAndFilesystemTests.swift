import BynarTestSupport
import Detector
import Foundation
import Testing

struct KernelLogParserTests {
    @Test func parsesTheKernelsDiskErrorLines() {
        // Lines as Linux 6.18 logged them under faultfs (Tools/faultfs/README.md).
        let cases: [(String, String, String, UInt64?)] = [
            ("I/O error, dev loop0, sector 16600 op 0x0:(READ) flags 0x8800 phys_seg 1 prio class 2", "loop0", "io_error", 16600),
            ("critical medium error, dev sdb, sector 2048 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2", "sdb", "critical_medium_error", 2048),
            ("device offline error, dev loop3, sector 8 op 0x1:(WRITE) flags 0x0 phys_seg 1 prio class 2", "loop3", "device_offline_error", 8),
            ("Buffer I/O error on dev loop0, logical block 2075, async page read", "loop0", "buffer_io_error", nil),
            ("Buffer I/O error on device sdc1, logical block 2385", "sdc1", "buffer_io_error", nil),
            ("EXT4-fs error (device loop0): ext4_journal_check_start:87: comm bash: Detected aborted journal", "loop0", "ext4_error", nil),
            ("XFS (loop1): log I/O error -5", "loop1", "xfs_io_error", nil),
            ("XFS (loop1): Filesystem has been shut down due to log error (0x2).", "loop1", "xfs_shutdown", nil),
            ("loop0: writeback error on inode 132, offset 0, sector 80", "loop0", "writeback_error", nil),
            ("Aborting journal on device loop0-8.", "loop0", "journal_aborted", nil),
        ]
        for (line, device, kind, sector) in cases {
            let parsed = KernelLogParser.parse(line: line)
            #expect(parsed?.device == device, "\(line)")
            #expect(parsed?.kind == kind, "\(line)")
            #expect(parsed?.sector == sector, "\(line)")
        }
        for unrelated in ["EXT4-fs (loop0): mounted filesystem with ordered data mode", "loop0: detected capacity change from 0 to 131072", "blk_print_req_error: 10 callbacks suppressed"] {
            #expect(KernelLogParser.parse(line: unrelated) == nil, "\(unrelated)")
        }
        let record = KernelLogParser.parse(record: "3,345,206288417,-;I/O error, dev loop0, sector 16600 op 0x0:(READ) flags 0x8800 phys_seg 1 prio class 2\n SUBSYSTEM=block\n DEVICE=b7:0\n")
        #expect(record?.kernelMicros == 206_288_417)
        #expect(record?.device == "loop0")
    }

    @Test func mountinfoLinesWithEscapes() {
        let text = """
        22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/root rw,errors=remount-ro
        40 22 7:3 / /mnt/my\\040disk rw,relatime shared:20 - ext4 /dev/loop3 rw,relatime,errors=remount-ro,emergency_ro
        41 22 7:4 / /srv/data ro,relatime - xfs /dev/loop4 ro,attr2
        """
        let mounts = MountTable.parse(text)
        #expect(mounts.count == 3)
        #expect(mounts[1].mountpoint == "/mnt/my disk")
        #expect(mounts[1].majorMinor == "7:3")
        #expect(mounts[1].isEmergencyReadOnly && !mounts[1].isReadOnly)
        #expect(mounts[2].isReadOnly && mounts[2].fsType == "xfs" && mounts[2].source == "/dev/loop4")
        #expect(mounts[0].source == "/dev/root" && mounts[0].majorMinor == "254:1")
    }
}

@Suite(.serialized, .enabled(if: FaultyDisk.available, "\(FaultyDisk.unavailableReason ?? "")"))
struct KernelAndFilesystemLiveTests {
    @Test func aFailedReadReachesTheKernelLogStream() async throws {
        let disk = try FaultyDisk(sizeMB: 32)
        defer { disk.teardown() }
        let log = try KernelLog()
        log.start()
        defer { log.stop() }
        let errors = Collector(log.errors)
        try disk.control("fail 800 8")
        // The read fails with a real EIO from the block layer.
        #expect(throws: (any Error).self) {
            try FaultyDisk.run("/bin/dd", ["if=\(disk.device)", "of=/dev/null", "bs=4096", "count=1", "skip=100", "iflag=direct"])
        }
        let seen = await errors.wait(timeout: .seconds(5)) { $0.contains { $0.device == disk.name && $0.sector == 800 } }
        #expect(seen, "kmsg errors seen: \(errors.all.map(\.line))")
        #expect(errors.all.first { $0.device == disk.name }?.kind == "io_error")
        #expect(KernelLog.wholeDisk(of: disk.name) == disk.name)
    }

    @Test func ext4AbortIsEmergencyReadOnlyWithRecordedErrors() async throws {
        let disk = try FaultyDisk(sizeMB: 64, filesystem: "ext4")
        defer { disk.teardown() }
        let mountpoint = try #require(disk.mountpoint)
        let before = try #require(MountTable.current().first { $0.mountpoint == mountpoint })
        #expect(FilesystemChecks.inspect(before, wasReadWrite: true).isEmpty, "a healthy fresh ext4 has no findings")
        #expect(await WriteProbe().run(mountpoint: mountpoint, timeout: .seconds(10)) == nil, "the probe passes on a good disk")

        // Every write fails: the journal aborts and ext4 forces itself read-only.
        try disk.control("fail-writes 0 131072")
        try? "data".write(toFile: "\(mountpoint)/f", atomically: false, encoding: .utf8)
        _ = try? FaultyDisk.run("/bin/sync", ["-f", mountpoint])
        // ext4 gives up at its next journal commit, a few seconds later.
        var after = before
        var rules: [String] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            after = try #require(MountTable.current().first { $0.mountpoint == mountpoint })
            rules = FilesystemChecks.inspect(after, wasReadWrite: true).map(\.rule)
            if rules.contains("fs.ext4_errors") && after.isEmergencyReadOnly { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(rules.contains("fs.emergency_ro") || rules.contains("fs.read_only_remount"), "\(after) -> \(rules)")
        #expect(rules.contains("fs.ext4_errors"), "\(rules)")
        let probe = await WriteProbe().run(mountpoint: mountpoint, timeout: .seconds(10))
        #expect(probe?.rule == "fs.probe_failed", "\(String(describing: probe))")
    }

    @Test func probeFailsWhenTheDeviceVanishes() async throws {
        let disk = try FaultyDisk(sizeMB: 64, filesystem: "ext4")
        defer { disk.teardown() }
        let mountpoint = try #require(disk.mountpoint)
        try disk.control("vanish ENODEV")
        let probe = await WriteProbe().run(mountpoint: mountpoint, timeout: .seconds(10))
        #expect(probe != nil)
    }
}

@Suite(.serialized, .enabled(if: FaultyDisk.available, "\(FaultyDisk.unavailableReason ?? "")"))
struct XFSAndUnusedDiskTests {
    @Test func xfsShutdownIsFailed() async throws {
        let disk = try FaultyDisk(sizeMB: 320, filesystem: "xfs", mountOptions: "defaults")
        defer { disk.teardown() }
        let mountpoint = try #require(disk.mountpoint)
        let mounted = try #require(MountTable.current().first { $0.mountpoint == mountpoint })
        #expect(FilesystemChecks.inspect(mounted, wasReadWrite: true).isEmpty)
        try disk.control("fail-writes 0 655360")
        try? "data".write(toFile: "\(mountpoint)/f", atomically: false, encoding: .utf8)
        _ = try? FaultyDisk.run("/bin/sync", ["-f", mountpoint])
        var rules: [String] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline, !rules.contains("fs.xfs_shutdown") {
            rules = FilesystemChecks.inspect(mounted, wasReadWrite: true).map(\.rule)
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(rules.contains("fs.xfs_shutdown"), "\(rules)")
    }

    @Test func fsckOnlyOnUnusedDisksAndItFindsCorruption() throws {
        let disk = try FaultyDisk(sizeMB: 64, filesystem: "ext4", mount: false)
        defer { disk.teardown() }
        #expect(UnusedDiskCheck.filesystem(on: disk.device) == "ext")
        #expect(UnusedDiskCheck.busyReason(devicePath: disk.device, kernelName: disk.name, partitions: [], mounts: MountTable.current()) == nil)
        #expect(UnusedDiskCheck.check(devicePath: disk.device, timeout: .seconds(60)) == nil, "a fresh filesystem is clean")
        // Clear the root directory's inode: e2fsck -n must report it.
        try FaultyDisk.run("/sbin/debugfs", ["-w", "-R", "clri <2>", disk.device])
        let finding = UnusedDiskCheck.check(devicePath: disk.device, timeout: .seconds(60))
        #expect(finding?.rule == "fs.fsck_errors" && finding?.severity == .failing, "\(String(describing: finding))")

        // Mounted: busy, never checked.
        let mountpoint = disk.directory + "/m"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let fresh = try FaultyDisk(sizeMB: 64, filesystem: "ext4")
        defer { fresh.teardown() }
        let reason = UnusedDiskCheck.busyReason(devicePath: fresh.device, kernelName: fresh.name, partitions: [], mounts: MountTable.current())
        #expect(reason?.contains("is mounted on") == true, "\(String(describing: reason))")
    }
}

/// The offline commands, run as the operator would.
@Suite(.enabled(if: FaultyDisk.available, "\(FaultyDisk.unavailableReason ?? "")"))
struct DetectorCommandTests {
    @Test func smartCommandJudgesASavedBlob() throws {
        let blobs = "\(packageRoot)/../shared/smart-blobs"
        try #require(FileManager.default.fileExists(atPath: blobs), "../shared/smart-blobs is absent")
        let output = try FaultyDisk.run(builtExecutable("bynar-detector"), ["smart", "--blob", "\(blobs)/WDC_WD5000AAKS--00TMA0-12.01C01"])
        #expect(output.contains("\"state\""))
        #expect(output.contains("smart.attr_nonzero.5"), "\(output)")
        #expect(throws: (any Error).self) { try FaultyDisk.run(builtExecutable("bynar-detector"), ["smart", "--blob", "/nonexistent"]) }
    }

    @Test func checkCommandReportsAForcedReadOnlyDisk() async throws {
        let disk = try FaultyDisk(sizeMB: 64, filesystem: "ext4")
        defer { disk.teardown() }
        let mountpoint = try #require(disk.mountpoint)
        try disk.control("fail-writes 0 131072")
        try? "x".write(toFile: "\(mountpoint)/f", atomically: false, encoding: .utf8)
        _ = try? FaultyDisk.run("/bin/sync", ["-f", mountpoint])
        var line = ""
        let deadline = ContinuousClock.now + .seconds(20)
        var round = 0
        while ContinuousClock.now < deadline {
            // Keep giving ext4 failing writes until its journal gives up.
            try? "x\(round)".write(toFile: "\(mountpoint)/f\(round)", atomically: false, encoding: .utf8)
            _ = try? FaultyDisk.run("/bin/sync", ["-f", mountpoint])
            round += 1
            let log = disk.directory + "/check.json"
            let process = try ChildProcess(builtExecutable("bynar-detector"), ["check", "--json"], outputPath: log)
            _ = process.waitForExit(timeout: .seconds(30))
            line = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").first { $0.contains("\"\(disk.device)\"") }.map(String.init) ?? ""
            if line.contains("fs.emergency_ro") { break }
            try await Task.sleep(for: .milliseconds(300))
        }
        #expect(line.contains("\"DISK_STATE_FAILED\""), "\(line)")
        #expect(line.contains("fs.emergency_ro"), "\(line)")
    }

    /// Several hosts' detectors on one machine (scripts/chaos): `detector.watch_only` makes
    /// each watch only its own disks; every other disk is not reported at all.
    @Test func watchOnlyLeavesEveryOtherDiskOut() async throws {
        let mine = try FaultyDisk(sizeMB: 32, filesystem: nil)
        defer { mine.teardown() }
        let theirs = try FaultyDisk(sizeMB: 32, filesystem: nil)
        defer { theirs.teardown() }
        let config = mine.directory + "/bynar.json"
        try """
            {"host": "h1", "db_location": "\(mine.directory)/db", "detector": {"watch_only": ["\(mine.directory)/*"]}}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let log = mine.directory + "/check.json"
        let process = try ChildProcess(builtExecutable("bynar-detector"), ["check", "--json", "--config", config], outputPath: log)
        _ = process.waitForExit(timeout: .seconds(30))
        let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
        let mineLine = try #require(lines.first { $0.contains("\"\(mine.device)\"") }, "\(lines)")
        #expect(!mineLine.contains("\"excluded\""), "\(mineLine)")
        #expect(!lines.contains { $0.contains("\"\(theirs.device)\"") }, "\(lines)")
    }
}
