@testable import BynarDisks
import BynarProto
import BynarTestSupport
@testable import Detector
import Foundation
import Testing

// The inventory against real loop devices, and its parsers against prepared text.
//
// Loop tests need root and /dev/loop-control. Every loop device a test attaches is
// recorded by name and detached by that name in a `defer`, so a failing expectation
// never leaves one behind; other loop devices on the machine are never touched.

/// A system tool's full path (posix_spawn does not search PATH), or nil.
private func tool(_ name: String) -> String? {
    ["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"].map { $0 + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

private let canUseLoopDevices: Bool =
    getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")
        && ["losetup", "mkfs.ext4", "mount", "umount"].allSatisfy { tool($0) != nil }

private let canUseSwapPartitions: Bool =
    canUseLoopDevices && ["parted", "mkswap", "swapon", "swapoff"].allSatisfy { tool($0) != nil }

private struct CommandFailed: Error, CustomStringConvertible {
    let description: String
}

/// Runs a system tool to the end (60 s at most) and returns its output; throws unless it
/// exited 0.
@discardableResult
private func run(_ name: String, _ arguments: [String]) throws -> String {
    guard let executable = tool(name) else { throw CommandFailed(description: "\(name) not found") }
    let output = "/tmp/bynar-inventory-test-\(UUID().uuidString).out"
    defer { try? FileManager.default.removeItem(atPath: output) }
    let child = try ChildProcess(executable, arguments, outputPath: output)
    guard child.waitForExit(timeout: .seconds(60)) != nil else {
        child.stop(SIGKILL)
        throw CommandFailed(description: "\(name) \(arguments) did not finish in 60 s")
    }
    let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
    guard child.exitCode == 0 else {
        throw CommandFailed(description: "\(name) \(arguments.joined(separator: " ")) failed (\(child.exitStatus ?? -1)): \(text)")
    }
    return text
}

/// A sparse file of `bytes`.
private func makeImage(_ path: String, bytes: Int64) throws {
    let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw CommandFailed(description: "cannot create \(path)") }
    defer { close(fd) }
    guard ftruncate(fd, off_t(bytes)) == 0 else { throw CommandFailed(description: "cannot size \(path)") }
}

/// A loop device this test attached, known by the name losetup gave it.
private final class LoopDevice {
    /// "/dev/loopN"
    let devPath: String
    let backingFile: String
    private(set) var attached = true

    /// Attaches `image` to a free loop device. `partitionScan` is needed for any test that
    /// partitions it: only then does detaching drop the partitions (else they outlive it).
    init(image: String, partitionScan: Bool = false) throws {
        let output = try run("losetup", ["--find", "--show"] + (partitionScan ? ["--partscan"] : []) + [image])
        devPath = output.trimmingCharacters(in: .whitespacesAndNewlines)
        backingFile = image
        guard devPath.hasPrefix("/dev/loop") else { throw CommandFailed(description: "losetup printed \"\(output)\"") }
    }

    /// "loopN"
    var sysName: String { String(devPath.dropFirst("/dev/".count)) }

    /// The key the inventory must give it.
    var expectedKey: String { "serial-" + Inventory.sanitize(backingFile) }

    /// Detaches exactly this device.
    func detach() throws {
        guard attached else { return }
        try run("losetup", ["--detach", devPath])
        attached = false
    }

    /// Partitions the kernel still lists for this device ("loop3p1").
    var partitionsInSysfs: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/block/\(sysName)")) ?? []).filter { $0.hasPrefix(sysName + "p") }
    }

    /// For `defer`: detaches if still attached, reporting but not throwing a failure.
    func cleanUp() {
        do { try detach() } catch { Issue.record("cleanup: \(error)") }
    }
}

/// A scratch directory under /tmp, removed by `remove()`.
private struct Scratch {
    let path: String
    init() throws { path = try makeTemporaryDirectory(prefix: "bynar-inventory") }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// The kernel name of the whole disk holding "/", found independently of the inventory:
/// stat("/") and sysfs.
private func rootDiskSysName() -> String? {
    var info = stat()
    guard stat("/", &info) == 0 else { return nil }
    let number = DeviceNumber(info.st_dev)
    guard let path = realPath("/sys/dev/block/\(number)") else { return nil }
    let url = URL(fileURLWithPath: path)
    let isPartition = FileManager.default.fileExists(atPath: path + "/partition")
    return (isPartition ? url.deletingLastPathComponent() : url).lastPathComponent
}

/// Polls until `condition` holds or 2 s pass (the kernel adds partition nodes asynchronously).
private func eventually(_ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + .seconds(2)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

/// Everything here runs one test at a time: the loop tests change the machine's devices.
@Suite(.serialized)
enum InventoryTests {}

extension InventoryTests {
    @Suite
    struct LoopDevices {
        @Test(.enabled(if: canUseLoopDevices, "needs root, /dev/loop-control, losetup, mkfs.ext4 and mount"))
        func loopDevicesAreListedWithStableIdentity() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let mountedImage = scratch.path + "/mounted.img"
            let plainImage = scratch.path + "/plain disk.img"
            try makeImage(mountedImage, bytes: 64 << 20)
            try makeImage(plainImage, bytes: 96 << 20)

            let mounted = try LoopDevice(image: mountedImage)
            defer { mounted.cleanUp() }
            let plain = try LoopDevice(image: plainImage)
            defer { plain.cleanUp() }

            try run("mkfs.ext4", ["-q", "-F", mounted.devPath])
            // A space in the mount point: mountinfo writes it as "\040".
            let mountPoint = scratch.path + "/mount point"
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
            try run("mount", [mounted.devPath, mountPoint])
            defer { _ = try? run("umount", [mountPoint]) }

            let devices = try Inventory.scan(host: "h1", excluded: [])
            let mountedDevice = try #require(devices.first { $0.identity.devPath == mounted.devPath })
            let plainDevice = try #require(devices.first { $0.identity.devPath == plain.devPath })

            for (device, loop, size) in [(mountedDevice, mounted, UInt64(64 << 20)), (plainDevice, plain, UInt64(96 << 20))] {
                #expect(device.identity.host == "h1")
                #expect(device.identity.key == loop.expectedKey)
                #expect(device.identity.serial == loop.backingFile)
                #expect(device.identity.backingFile == loop.backingFile)
                #expect(device.identity.transport == .loop)
                #expect(device.identity.model == "loop")
                #expect(device.identity.wwn.isEmpty)
                #expect(device.identity.sizeBytes == size)
                #expect(device.sysPath.hasSuffix("/" + loop.sysName))
                #expect(!device.isSystemDisk)
                #expect(!device.excluded)
            }
            #expect(plainDevice.identity.key == "serial-" + Inventory.sanitize(plainImage))
            #expect(plainDevice.identity.key.contains("plain_disk.img"))

            // The filesystem is on the whole device: one entry with the device's own path.
            #expect(mountedDevice.identity.partitions.count == 1)
            let whole = try #require(mountedDevice.identity.partitions.first)
            #expect(whole.devPath == mounted.devPath)
            #expect(whole.mountpoints == [mountPoint])
            #expect(whole.filesystem == "ext4")
            #expect(whole.sizeBytes == 64 << 20)
            #expect(plainDevice.identity.partitions.isEmpty)

            // No device is listed twice, none without a key, none of size 0.
            #expect(Set(devices.map(\.identity.key)).count == devices.count)
            #expect(devices.allSatisfy { !$0.identity.key.isEmpty && $0.identity.sizeBytes > 0 })
            #expect(!devices.contains { $0.identity.devPath.hasPrefix("/dev/zram") || $0.identity.devPath.hasPrefix("/dev/ram") })
        }

        @Test(.enabled(if: canUseLoopDevices, "needs root and /dev/loop-control"))
        func rootDiskIsASystemDisk() throws {
            let rootName = try #require(rootDiskSysName(), "cannot find the disk under / in sysfs")
            let devices = try Inventory.scan(host: "h1", excluded: [])
            let root = try #require(devices.first { $0.sysPath.hasSuffix("/" + rootName) }, "root disk \(rootName) not listed; listed: \(devices.map(\.identity.devPath))")
            #expect(root.isSystemDisk)
            #expect(root.systemReasons.contains("holds /"))
            #expect(root.systemReason?.contains("holds /") == true)
            #expect(!devices.contains { $0.identity.transport == .loop && $0.systemReasons.contains("holds /") })
        }

        @Test func benchmarkHelperTimesEachScan() throws {
            let times = try InventoryBenchmark.scanTimes(host: "h1", iterations: 3)
            #expect(times.count == 3)
            #expect(times.allSatisfy { $0 > .zero && $0 < .seconds(5) })
            #expect(try InventoryBenchmark.scanTimes(host: "h1", iterations: 0).isEmpty)
        }

        @Test(.enabled(if: canUseLoopDevices, "needs root and /dev/loop-control"))
        func excludedPatternsMarkOnlyTheirDisks() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            try makeImage(scratch.path + "/keep.img", bytes: 32 << 20)
            try makeImage(scratch.path + "/skip-me.img", bytes: 32 << 20)
            let keep = try LoopDevice(image: scratch.path + "/keep.img")
            defer { keep.cleanUp() }
            let skip = try LoopDevice(image: scratch.path + "/skip-me.img")
            defer { skip.cleanUp() }

            // A glob on the serial (the backing path for loop devices), and an exact dev_path.
            var devices = try Inventory.scan(host: "h1", excluded: ["*/skip-me.img"])
            #expect(devices.first { $0.identity.devPath == skip.devPath }?.excluded == true)
            #expect(devices.first { $0.identity.devPath == skip.devPath }?.exclusionReason?.contains("*/skip-me.img") == true)
            #expect(devices.first { $0.identity.devPath == keep.devPath }?.excluded == false)

            devices = try Inventory.scan(host: "h1", excluded: [keep.devPath])
            #expect(devices.first { $0.identity.devPath == keep.devPath }?.exclusionReason?.contains("dev_path") == true)
            #expect(devices.first { $0.identity.devPath == skip.devPath }?.excluded == false)

            devices = try Inventory.scan(host: "h1", excluded: [skip.expectedKey])
            #expect(devices.first { $0.identity.devPath == skip.devPath }?.exclusionReason?.contains("key") == true)
        }

        @Test(.enabled(if: canUseLoopDevices, "needs root and /dev/loop-control"))
        func detachedDeviceDisappears() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            try makeImage(scratch.path + "/going.img", bytes: 16 << 20)
            let loop = try LoopDevice(image: scratch.path + "/going.img")
            defer { loop.cleanUp() }

            #expect(try Inventory.scan(host: "h1", excluded: []).contains { $0.identity.key == loop.expectedKey })
            try loop.detach()
            #expect(try !Inventory.scan(host: "h1", excluded: []).contains { $0.identity.key == loop.expectedKey })
        }

        /// Swap on a partition makes the whole disk a system disk (partition -> parent walk),
        /// and partitions are listed with their sizes and mounts.
        @Test(.enabled(if: canUseSwapPartitions, "needs root, /dev/loop-control, parted, mkswap and swapon"))
        func swapOnAPartitionMakesTheDiskASystemDisk() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            try makeImage(scratch.path + "/parted.img", bytes: 64 << 20)
            let loop = try LoopDevice(image: scratch.path + "/parted.img", partitionScan: true)
            defer { loop.cleanUp() }
            // parted tells the kernel about the new partitions itself (BLKPG): no udevd needed.
            try run("parted", ["-s", loop.devPath, "mklabel", "gpt", "mkpart", "data", "ext4", "1MiB", "33MiB", "mkpart", "swap", "linux-swap", "33MiB", "63MiB"])
            let first = loop.devPath + "p1"
            let second = loop.devPath + "p2"
            try #require(eventually { FileManager.default.fileExists(atPath: first) && FileManager.default.fileExists(atPath: second) }, "partition nodes did not appear")

            try run("mkfs.ext4", ["-q", "-F", first])
            let mountPoint = scratch.path + "/data"
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
            try run("mount", [first, mountPoint])
            defer { _ = try? run("umount", [mountPoint]) }
            try run("mkswap", ["-q", second])
            // Default priority: below any swap the machine already has.
            try run("swapon", [second])
            defer { _ = try? run("swapoff", [second]) }

            let devices = try Inventory.scan(host: "h1", excluded: [])
            let disk = try #require(devices.first { $0.identity.devPath == loop.devPath })
            #expect(disk.isSystemDisk)
            #expect(disk.systemReasons == ["holds swap"])
            #expect(disk.identity.partitions.map(\.devPath) == [first, second])
            #expect(disk.identity.partitions.map(\.sizeBytes) == [32 << 20, 30 << 20])
            #expect(disk.identity.partitions.first?.mountpoints == [mountPoint])
            #expect(disk.identity.partitions.first?.filesystem == "ext4")
            #expect(disk.identity.partitions.last?.filesystem == "swap")
            #expect(disk.identity.partitions.last?.mountpoints == [])
            // Partitions are not listed as devices of their own.
            #expect(!devices.contains { $0.identity.devPath == first || $0.identity.devPath == second })

            try run("swapoff", [second])
            let after = try Inventory.scan(host: "h1", excluded: [])
            #expect(after.first { $0.identity.devPath == loop.devPath }?.isSystemDisk == false)

            try run("umount", [mountPoint])
            try loop.detach()
            #expect(loop.partitionsInSysfs.isEmpty)
        }
    }

    @Suite
    struct Events {
        /// What the kernel sends for a loop device (measured on 6.x): attach is one `change`
        /// for the disk (preceded by `add` only when losetup had to create a new loopN);
        /// detach is two `change`s, the second with DISK_MEDIA_CHANGE=1, plus a `remove` per
        /// partition. New partitions (parted) come as `add` with devtype partition.
        @Test(.enabled(if: canUseSwapPartitions, "needs root, /dev/loop-control and parted"))
        func loopAttachAndDetachAreSeen() async throws {
            let monitor = try BlockEventMonitor()
            defer { monitor.stop() }
            let events = Collector(monitor.events)

            let scratch = try Scratch()
            defer { scratch.remove() }
            try makeImage(scratch.path + "/events.img", bytes: 16 << 20)
            let loop = try LoopDevice(image: scratch.path + "/events.img", partitionScan: true)
            defer { loop.cleanUp() }
            let name = loop.sysName
            func mine(_ all: [BlockEvent]) -> [BlockEvent] { all.filter { $0.sysName == name || $0.sysName.hasPrefix(name + "p") } }

            let attached = await events.wait(timeout: .seconds(2)) { mine($0).contains { $0.action == .change } }
            #expect(attached, "no change for \(name) within 2 s; got \(mine(events.all))")
            let attachEvent = try #require(mine(events.all).first { $0.action == .change })
            #expect(attachEvent.deviceType == .disk)
            #expect(attachEvent.devName == loop.devPath)
            #expect(attachEvent.devNumber.major == 7)
            #expect(attachEvent.properties["DISK_MEDIA_CHANGE"] == nil)
            #expect(!mine(events.all).contains { $0.action == .remove })

            try run("parted", ["-s", loop.devPath, "mklabel", "gpt", "mkpart", "p1", "1MiB", "8MiB"])
            let partitionAdded = await events.wait(timeout: .seconds(2)) {
                mine($0).contains { $0.action == .add && $0.sysName == name + "p1" && $0.deviceType == .partition }
            }
            #expect(partitionAdded, "no add for \(name)p1; got \(mine(events.all))")

            let before = mine(events.all).count
            try loop.detach()
            let detached = await events.wait(timeout: .seconds(2)) {
                mine($0).dropFirst(before).contains { $0.action == .change && $0.sysName == name && $0.properties["DISK_MEDIA_CHANGE"] == "1" }
            }
            #expect(detached, "no media change for \(name) within 2 s; got \(mine(events.all).dropFirst(before))")
            let partitionRemoved = await events.wait(timeout: .seconds(2)) {
                mine($0).dropFirst(before).contains { $0.action == .remove && $0.sysName == name + "p1" }
            }
            #expect(partitionRemoved)
            #expect(loop.partitionsInSysfs.isEmpty)
            #expect(monitor.droppedEvents == 0)
        }

        @Test(.enabled(if: getuid() == 0, "needs root for the netlink socket"))
        func stopFinishesTheStream() async throws {
            let monitor = try BlockEventMonitor()
            let start = ContinuousClock.now
            monitor.stop()
            #expect(ContinuousClock.now - start < .seconds(1))
            for await _ in monitor.events {}
            monitor.stop() // twice is harmless
        }
    }

    @Suite
    struct Parsing {
        @Test func mountInfoLinesParse() {
            let text = """
            27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
            36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
            40 27 7:3 / /tmp/bynar-inventory.x/mount\\040point rw,relatime shared:5 master:2 - ext4 /dev/loop3 rw
            41 27 0:44 /sub\\134dir /srv/tab\\011here rw - btrfs /dev/sdb2 rw
            garbage line
            42 27 8:1 / /boot rw
            """
            let entries = MountInfoEntry.parse(text)
            #expect(entries.count == 4)
            #expect(entries[0] == MountInfoEntry(devNumber: DeviceNumber(major: 254, minor: 0), root: "/", mountPoint: "/", fsType: "ext4", source: "/dev/vda",
                                                mountOptions: ["rw", "relatime"], superOptions: ["rw", "discard"]))
            #expect(entries[1].superOptions == ["rw", "errors=continue"])
            #expect(entries[1].devNumber == DeviceNumber(major: 98, minor: 0))
            #expect(entries[1].root == "/mnt1")
            #expect(entries[1].mountPoint == "/mnt2")
            #expect(entries[1].source == "/dev/root")
            #expect(entries[2].mountPoint == "/tmp/bynar-inventory.x/mount point")
            #expect(entries[2].fsType == "ext4")
            #expect(entries[2].source == "/dev/loop3")
            #expect(entries[3].root == "/sub\\dir")
            #expect(entries[3].mountPoint == "/srv/tab\there")
            #expect(entries[3].devNumber == DeviceNumber(major: 0, minor: 44))
        }

        @Test func swapsParse() {
            let text = """
            Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
            /dev/sda2                               partition\t8388604\t\t0\t\t-2
            /swap\\040file                           file\t\t1048572\t\t0\t\t-3
            """
            #expect(SwapEntry.parse(text) == [SwapEntry(path: "/dev/sda2", type: "partition"), SwapEntry(path: "/swap file", type: "file")])
            #expect(SwapEntry.parse("Filename\tType\tSize\tUsed\tPriority\n").isEmpty)
        }

        @Test func octalEscapes() {
            #expect(unescapeOctal("/a\\040b") == "/a b")
            #expect(unescapeOctal("\\134") == "\\")
            #expect(unescapeOctal("/end\\04") == "/end\\04") // truncated escape stays as it is
            #expect(unescapeOctal("/x\\999") == "/x\\999")
            #expect(unescapeOctal("plain") == "plain")
        }

        @Test func keysAreSanitised() {
            #expect(Inventory.key(wwn: "0x5000C500A1B2C3D4", serial: "S1") == "0x5000c500a1b2c3d4")
            #expect(Inventory.key(wwn: "", serial: "WD-WCC 123/4") == "serial-WD-WCC_123_4")
            #expect(Inventory.key(wwn: "", serial: "/tmp/x y/disk.img") == "serial-_tmp_x_y_disk.img")
            #expect(Inventory.key(wwn: "", serial: "") == "")
            #expect(InventorySnapshot.wwn(fromWWID: "naa.5000C500A1B2C3D4") == "0x5000c500a1b2c3d4")
            #expect(InventorySnapshot.wwn(fromWWID: "eui.0025388B71B1C1A2\n") == "eui.0025388b71b1c1a2")
            #expect(InventorySnapshot.wwn(fromWWID: "t10.ATA     Samsung SSD 860 EVO S3Z1") == nil)
            #expect(InventorySnapshot.wwn(fromWWID: "nvme.144d-5333-4d-1") == nil)
        }

        @Test func vpdPage80GivesTheSerial() {
            let bytes: [UInt8] = [0x00, 0x80, 0x00, 0x0a] + Array("  S3Z1NB0K".utf8)
            #expect(InventorySnapshot.serial(fromVPDPage80: bytes) == "S3Z1NB0K")
            #expect(InventorySnapshot.serial(fromVPDPage80: [0x00, 0x83, 0x00, 0x01, 0x41]) == nil)
        }

        @Test func exclusionMatchesFieldsExactlyOrByGlob() {
            var identity = Bynar_V1_DiskIdentity()
            identity.devPath = "/dev/sdc"
            identity.key = "0x5000c500a1b2c3d4"
            identity.wwn = "0x5000c500a1b2c3d4"
            identity.serial = "ZA1B2C3"
            identity.byPath = "/dev/disk/by-path/pci-0000:00:1f.2-ata-3"
            identity.byID = ["/dev/disk/by-id/ata-ST4000_ZA1B2C3"]
            #expect(ExclusionRules.reason(for: identity, patterns: []) == nil)
            #expect(ExclusionRules.reason(for: identity, patterns: ["/dev/sdd", ""]) == nil)
            #expect(ExclusionRules.reason(for: identity, patterns: ["/dev/sdc"])?.contains("dev_path") == true)
            #expect(ExclusionRules.reason(for: identity, patterns: ["ZA1*"])?.contains("serial") == true)
            #expect(ExclusionRules.reason(for: identity, patterns: ["0x5000c500*"])?.contains("key") == true)
            #expect(ExclusionRules.reason(for: identity, patterns: ["*ata-3"])?.contains("by_path") == true)
            #expect(ExclusionRules.reason(for: identity, patterns: ["/dev/disk/by-id/ata-ST4000_*"])?.contains("by_id") == true)
            #expect(ExclusionRules.reason(for: identity, patterns: ["/dev/sd[ab]"]) == nil)
        }

        /// System disks through a partition, through a device stacked on partitions (RAID 1
        /// root), a swap partition, and a disk mounted whole.
        @Test func systemDisksAreFoundThroughPartitionsAndStacks() {
            func disk(_ name: String, _ major: UInt32, _ minor: UInt32, serial: String) -> UdevBlockDevice {
                UdevBlockDevice(sysname: name, sysPath: "/sys/devices/pci0000:00/ata1/host0/block/\(name)", devNode: "/dev/\(name)", devType: "disk",
                                devNumber: DeviceNumber(major: major, minor: minor), parentSysname: nil, properties: [:],
                                attributes: ["size": "1000", "device/serial": serial, "device/vendor": "ATA"])
            }
            func part(_ name: String, of parent: String, _ major: UInt32, _ minor: UInt32, number: Int) -> UdevBlockDevice {
                UdevBlockDevice(sysname: name, sysPath: "/sys/x/\(parent)/\(name)", devNode: "/dev/\(name)", devType: "partition",
                                devNumber: DeviceNumber(major: major, minor: minor), parentSysname: parent, properties: [:],
                                attributes: ["size": "100", "partition": "\(number)"])
            }
            var md = disk("md0", 9, 0, serial: "")
            md.sysPath = "/sys/devices/virtual/block/md0"
            md.attributes = ["size": "100"]
            let snapshot = InventorySnapshot(
                blockDevices: [
                    disk("sda", 8, 0, serial: "A"), part("sda2", of: "sda", 8, 2, number: 2), part("sda1", of: "sda", 8, 1, number: 1),
                    disk("sdb", 8, 16, serial: "B"), part("sdb1", of: "sdb", 8, 17, number: 1),
                    disk("sdc", 8, 32, serial: "C"), part("sdc1", of: "sdc", 8, 33, number: 1),
                    disk("sdd", 8, 48, serial: "D"),
                    disk("sde", 8, 64, serial: "E"),
                    md,
                ],
                slaves: ["md0": ["sdb1", "sdc1"]],
                mounts: [
                    MountInfoEntry(devNumber: DeviceNumber(major: 9, minor: 0), root: "/", mountPoint: "/", fsType: "ext4", source: "/dev/md0"),
                    MountInfoEntry(devNumber: DeviceNumber(major: 8, minor: 1), root: "/", mountPoint: "/boot", fsType: "ext4", source: "/dev/sda1"),
                    MountInfoEntry(devNumber: DeviceNumber(major: 8, minor: 48), root: "/", mountPoint: "/srv", fsType: "xfs", source: "/dev/sdd"),
                ],
                swapDevices: [DeviceNumber(major: 8, minor: 2)],
                systemClaims: [
                    SystemClaim(devNumber: DeviceNumber(major: 9, minor: 0), reason: "holds /"),
                    SystemClaim(devNumber: DeviceNumber(major: 8, minor: 1), reason: "holds /boot"),
                    SystemClaim(devNumber: DeviceNumber(major: 8, minor: 2), reason: "holds swap"),
                    SystemClaim(devNumber: DeviceNumber(major: 8, minor: 64), reason: "holds /"),
                ],
                byID: ["/dev/sda": ["/dev/disk/by-id/ata-X_A", "/dev/disk/by-id/wwn-0x1"]],
                byPath: ["/dev/sda": ["/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "/dev/disk/by-path/pci-0000:00:1f.2-ata-1.0"]]
            )
            let devices = snapshot.devices(host: "h1", excluded: ["serial-D"])
            #expect(devices.map(\.identity.devPath) == ["/dev/sda", "/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde"]) // md0: no identity
            let byName = Dictionary(uniqueKeysWithValues: devices.map { ($0.identity.devPath, $0) })
            #expect(byName["/dev/sda"]?.systemReasons == ["holds /boot", "holds swap"])
            #expect(byName["/dev/sdb"]?.systemReasons == ["holds /"])
            #expect(byName["/dev/sdc"]?.systemReasons == ["holds /"])
            #expect(byName["/dev/sdd"]?.isSystemDisk == false)
            #expect(byName["/dev/sdd"]?.excluded == true)
            #expect(byName["/dev/sde"]?.systemReason == "holds /")
            let sda = byName["/dev/sda"]?.identity
            #expect(sda?.transport == .ata)
            #expect(sda?.key == "serial-A")
            #expect(sda?.sizeBytes == 512_000)
            #expect(sda?.partitions.map(\.devPath) == ["/dev/sda1", "/dev/sda2"])
            #expect(sda?.partitions.map(\.filesystem) == ["ext4", "swap"])
            #expect(sda?.partitions.first?.mountpoints == ["/boot"])
            #expect(sda?.byID == ["/dev/disk/by-id/ata-X_A", "/dev/disk/by-id/wwn-0x1"])
            #expect(sda?.byPath == "/dev/disk/by-path/pci-0000:00:1f.2-ata-1")
            // A filesystem on the whole disk is listed with the disk's own path.
            #expect(byName["/dev/sdd"]?.identity.partitions.map(\.devPath) == ["/dev/sdd"])
            #expect(byName["/dev/sdd"]?.identity.partitions.first?.mountpoints == ["/srv"])
        }

        @Test func prepareMountTablesThroughRoots() throws {
            // Swaps that cannot be traced refuse the scan rather than guess.
            let directory = try makeTemporaryDirectory(prefix: "bynar-inventory-roots")
            defer { try? FileManager.default.removeItem(atPath: directory) }
            try "27 1 254:0 / / rw - ext4 /dev/vda rw\n".write(toFile: directory + "/mountinfo", atomically: true, encoding: .utf8)
            try "Filename Type Size Used Priority\n/nonexistent\\040swap file 1 0 -2\n".write(toFile: directory + "/swaps", atomically: true, encoding: .utf8)
            let roots = InventoryRoots(mountInfoPath: directory + "/mountinfo", swapsPath: directory + "/swaps", diskLinksPath: directory + "/no-such-dir")
            #expect(throws: InventoryError.unresolvedSwap(path: "/nonexistent swap", errno: ENOENT)) {
                try Inventory.scan(host: "h1", excluded: [], roots: roots)
            }
            let missing = InventoryRoots(mountInfoPath: directory + "/missing")
            #expect(throws: InventoryError.unreadable(path: directory + "/missing", errno: ENOENT)) {
                try Inventory.scan(host: "h1", excluded: [], roots: missing)
            }
        }
    }
}

extension InventoryTests {
    /// The kept inventory against real changes: each look right after a change scans again,
    /// for the reason the change gives, and lists what a scan would.
    @Suite
    struct Kept {
        /// Looks until one answers from the kept scan (another engineer's loop device may
        /// make one scan again); fails the test if none does.
        func keptLook(_ cache: InventoryCache) throws -> [BlockDevice] {
            for _ in 0..<20 {
                let look = try cache.look()
                if look.scannedBecause.isEmpty { return look.devices }
            }
            Issue.record("no look answered from the kept scan")
            return []
        }

        /// What a look compares for the values the kernel changes without an event.
        @Test func uneventedValuesAreComparedAsRead() throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let size = scratch.path + "/size"
            try "614400\n".write(toFile: size, atomically: true, encoding: .utf8)
            #expect(InventoryCache.sameValues([size: "614400"]))
            try "1228800\n".write(toFile: size, atomically: true, encoding: .utf8)
            #expect(!InventoryCache.sameValues([size: "614400"]))
            #expect(!InventoryCache.sameValues([scratch.path + "/gone": "1"]))
            #expect(InventoryCache.sameValues([:]))
        }

        @Test(.enabled(if: canUseSwapPartitions && tool("resizepart") != nil, "needs root, /dev/loop-control, parted, resizepart, mkswap and swapon"))
        func everyChangeScansAgain() throws {
            let cache = InventoryCache(host: "h1", excluded: [])
            #expect(cache.watchError == nil, "\(String(describing: cache.watchError))")
            #expect(try cache.look().scannedBecause.contains(.invalidated), "the first look scans")
            _ = try keptLook(cache)

            let scratch = try Scratch()
            defer { scratch.remove() }
            try makeImage(scratch.path + "/kept.img", bytes: 64 << 20)
            let loop = try LoopDevice(image: scratch.path + "/kept.img", partitionScan: true)
            defer { loop.cleanUp() }
            var look = try cache.look()
            #expect(look.scannedBecause.contains(.blockDevices))
            #expect(look.devices.contains { $0.identity.key == loop.expectedKey })

            try run("parted", ["-s", loop.devPath, "mklabel", "gpt", "mkpart", "p1", "1MiB", "16MiB", "mkpart", "p2", "16MiB", "32MiB"])
            #expect(eventually { loop.partitionsInSysfs.count == 2 })
            let first = loop.devPath + "p1", second = loop.devPath + "p2"
            try run("mkfs.ext4", ["-q", first])
            try run("mkswap", [second])
            _ = try keptLook(cache)

            let mountPoint = scratch.path + "/mnt"
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try run("mount", [first, mountPoint])
            defer { _ = try? run("umount", [mountPoint]) }
            look = try cache.look()
            #expect(look.scannedBecause.contains(.mounts))
            #expect(look.devices.first { $0.identity.key == loop.expectedKey }?.identity.partitions.first { $0.devPath == first }?.mountpoints == [mountPoint])

            _ = try keptLook(cache)
            try run("swapon", [second])
            defer { _ = try? run("swapoff", [second]) }
            look = try cache.look()
            #expect(look.scannedBecause.contains(.swaps))
            #expect(look.devices.first { $0.identity.key == loop.expectedKey }?.systemReasons == ["holds swap"])
            _ = try keptLook(cache)
            try run("swapoff", [second])
            look = try cache.look()
            #expect(look.scannedBecause.contains(.swaps))
            #expect(look.devices.first { $0.identity.key == loop.expectedKey }?.isSystemDisk == false)

            // Changes the kernel sends no event for: a partition resized in place (BLKPG),
            // queue/rotational written by hand.
            try run("umount", [mountPoint])
            _ = try keptLook(cache)
            try run("resizepart", [loop.devPath, "1", "\(10 << 11)"])
            look = try cache.look()
            // The sysfs values are read only when no event already says to scan: another
            // test's mount on this machine may be the reason given.
            #expect(!look.scannedBecause.isEmpty)
            #expect(look.devices.first { $0.identity.key == loop.expectedKey }?.identity.partitions.first { $0.devPath == first }?.sizeBytes == 10 << 20)
            _ = try keptLook(cache)
            let rotational = "/sys/block/\(loop.sysName)/queue/rotational"
            let wasRotational = try String(contentsOfFile: rotational, encoding: .utf8).hasPrefix("1")
            try (wasRotational ? "0" : "1").write(toFile: rotational, atomically: false, encoding: .utf8)
            look = try cache.look()
            #expect(!look.scannedBecause.isEmpty)
            #expect(look.devices.first { $0.identity.key == loop.expectedKey }?.identity.rotational == !wasRotational)

            _ = try keptLook(cache)
            cache.invalidate()
            #expect(try cache.look().scannedBecause.contains(.invalidated))

            _ = try keptLook(cache)
            try loop.detach()
            look = try cache.look()
            #expect(look.scannedBecause.contains(.blockDevices))
            #expect(!look.devices.contains { $0.identity.key == loop.expectedKey })
        }
    }
}
