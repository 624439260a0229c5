// The block device inventory of one host: which whole disks there are, who they are (an
// identity that survives /dev/sdX renames), which of them the host runs on (never repair
// candidates) and which the operator excluded.
//
// A scan gathers facts (libudev enumeration, sysfs, /proc/self/mountinfo, /proc/swaps,
// /dev/disk links) into an `InventorySnapshot`; turning a snapshot into `BlockDevice`s is
// pure and is where the rules live. A scan never opens a disk: a dying disk can hang any
// I/O, and the inventory must still come back. So filesystem type and UUID come from the
// udev database when udevd filled it, else the type from mountinfo or /proc/swaps for what
// is in use, else nothing; `blkid` is deliberately not run.

public import BynarProto
import BynarProcess
import Glibc

/// A block device number, as in "8:16".
public struct DeviceNumber: Sendable, Hashable, CustomStringConvertible {
    /// The driver's number (8 for sd, 7 for loop, 259 for NVMe and extended partitions).
    public var major: UInt32
    /// The device's number within its driver.
    public var minor: UInt32

    /// The number `major`:`minor`.
    public init(major: UInt32, minor: UInt32) {
        self.major = major
        self.minor = minor
    }

    /// Decodes glibc's `dev_t` layout (what stat() and libudev return).
    init(_ raw: dev_t) {
        let value = UInt64(raw)
        major = UInt32(truncatingIfNeeded: ((value >> 8) & 0xfff) | ((value >> 32) & 0xffff_f000))
        minor = UInt32(truncatingIfNeeded: (value & 0xff) | ((value >> 12) & 0xffff_ff00))
    }

    /// The number of the block or character device at `path`; nil if it is none.
    package init?(deviceAt path: String) {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFBLK || (info.st_mode & S_IFMT) == S_IFCHR else { return nil }
        self.init(info.st_rdev)
    }

    /// Parses "major:minor"; nil if it is not that.
    init?(parsing text: Substring) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]) else { return nil }
        self.init(major: major, minor: minor)
    }

    /// "major:minor".
    public var description: String { "\(major):\(minor)" }
}

/// Where a scan reads the kernel's mount and swap tables and the /dev/disk links.
///
/// Tests point these at prepared files; `.live` reads the running system. sysfs itself is
/// read through libudev, which always reads the live /sys.
public struct InventoryRoots: Sendable, Equatable {
    /// The mount table in mountinfo format (major:minor per mount).
    public var mountInfoPath: String
    /// The active swap areas in /proc/swaps format.
    public var swapsPath: String
    /// The directory holding udev's `by-id` and `by-path` link directories; missing
    /// directories (no udevd) give empty link lists, not an error.
    public var diskLinksPath: String

    /// Reads the given paths; defaults are the live system's.
    public init(
        mountInfoPath: String = "/proc/self/mountinfo",
        swapsPath: String = "/proc/swaps",
        diskLinksPath: String = "/dev/disk"
    ) {
        self.mountInfoPath = mountInfoPath
        self.swapsPath = swapsPath
        self.diskLinksPath = diskLinksPath
    }

    /// The running system's /proc/self/mountinfo, /proc/swaps and /dev/disk.
    public static let live = InventoryRoots()
}

/// One whole block device of this host, with the identity it is tracked by.
public struct BlockDevice: Sendable, Equatable {
    /// Who the disk is: WWN/serial/model…, its current /dev name, size, transport, partitions,
    /// and `key`, the stable name used in topics (never the /dev name alone).
    public var identity: Bynar_V1_DiskIdentity
    /// Its sysfs directory at scan time ("/sys/devices/.../block/sda").
    public var sysPath: String
    /// Why the host depends on it ("holds /", "holds /boot", "holds /boot/efi",
    /// "holds swap"), in that order; empty for a disk the host does not run on.
    public var systemReasons: [String]
    /// Why the operator's configuration excludes it (the pattern and the field it
    /// matched), or nil.
    public var exclusionReason: String?
    /// The disk is gone from the host (the disk-manager remembers it to take it out of its
    /// cluster): nothing may be read from or written to its old /dev name.
    public var absent = false

    /// A device as given.
    public init(identity: Bynar_V1_DiskIdentity, sysPath: String, systemReasons: [String] = [], exclusionReason: String? = nil) {
        self.identity = identity
        self.sysPath = sysPath
        self.systemReasons = systemReasons
        self.exclusionReason = exclusionReason
    }

    /// Whether the host runs on this disk (/, /boot, /boot/efi or active swap on it, on one
    /// of its partitions, or on a device stacked on them). Never a repair candidate.
    public var isSystemDisk: Bool { !systemReasons.isEmpty }

    /// `systemReasons` joined with ", ", or nil for a disk the host does not run on.
    public var systemReason: String? { systemReasons.isEmpty ? nil : systemReasons.joined(separator: ", ") }

    /// Whether the configuration excludes this disk. Never a repair candidate.
    public var excluded: Bool { exclusionReason != nil }
}

/// Why a scan could not produce an inventory it could stand behind.
public enum InventoryError: Error, Equatable, CustomStringConvertible {
    /// A kernel table the scan needs could not be read.
    case unreadable(path: String, errno: Int32)
    /// libudev or the system failed (the message names the call).
    case system(String)
    /// An active swap area whose device could not be found; the scan refuses to guess
    /// rather than risk offering the swap disk for repair.
    case unresolvedSwap(path: String, errno: Int32)

    /// What failed, for a log line.
    public var description: String {
        switch self {
        case let .unreadable(path, code): "cannot read \(path): \(String(cString: strerror(code)))"
        case let .system(message): message
        case let .unresolvedSwap(path, code): "cannot find the device of swap area \(path): \(String(cString: strerror(code)))"
        }
    }
}

/// The host's whole block devices.
public enum Inventory {
    /// Every whole block device of this host that has a stable identity, ordered by device
    /// path, with `host` set in each identity.
    ///
    /// Left out: devices of size 0 (unused loop devices, empty drives), ram and zram
    /// devices, hidden devices (NVMe multipath paths), and devices with neither WWN nor
    /// serial (nothing to track them by across renames; device-mapper and md devices
    /// usually). Partitions are listed inside their disk's identity, not on their own; a
    /// filesystem on a whole disk (no partition table) appears there as a partition with
    /// the disk's own dev_path.
    ///
    /// A disk is a system disk when `/`, `/boot`, `/boot/efi` or an active swap area (a swap
    /// partition, or the filesystem holding a swap file) is on it: on the disk itself, on
    /// one of its partitions, or on a device stacked on them (dm, md), matched by device
    /// number from the mount table and from stat() of the /proc/swaps paths. Only mounts
    /// visible in this process's mount namespace count: run it in the host's.
    ///
    /// `excluded` patterns are matched, each exactly or as an fnmatch(3) shell glob with no
    /// flags (so `*` also matches "/"), against the disk's dev_path, key, serial, wwn,
    /// by_path and each by_id link; the first match excludes it.
    ///
    /// Throws when libudev fails, the mount table cannot be read, or an active swap area
    /// cannot be traced to a device: without those it could not say which disks are
    /// system disks.
    /// With `only` non-empty, a disk that matches none of its patterns is excluded too
    /// ("manage only these slots").
    public static func scan(host: String, excluded: [String], only: [String] = [], roots: InventoryRoots = .live) throws -> [BlockDevice] {
        try devices(of: InventorySnapshot.gather(roots: roots), host: host, excluded: excluded, only: only)
    }

    /// The rules of ``scan(host:excluded:only:roots:)`` applied to what a scan read.
    static func devices(of snapshot: InventorySnapshot, host: String, excluded: [String], only: [String]) -> [BlockDevice] {
        var devices = snapshot.devices(host: host, excluded: excluded)
        guard !only.isEmpty else { return devices }
        for index in devices.indices where devices[index].exclusionReason == nil
            && ExclusionRules.reason(for: devices[index].identity, patterns: only) == nil {
            devices[index].exclusionReason = "not among the disks this host manages (\(only.joined(separator: ", ")))"
        }
        return devices
    }

    /// Why the configuration excludes a disk known only by its identity (one that has left
    /// the host, so no scan lists it): `excluded` and `only` as for ``scan(host:excluded:only:roots:)``.
    public static func exclusionReason(for identity: Bynar_V1_DiskIdentity, excluded: [String], only: [String] = []) -> String? {
        if let reason = ExclusionRules.reason(for: identity, patterns: excluded) { return reason }
        if !only.isEmpty && ExclusionRules.reason(for: identity, patterns: only) == nil {
            return "not among the disks this host manages (\(only.joined(separator: ", ")))"
        }
        return nil
    }

    /// The topic key for a disk: its WWN, else "serial-" + serial, with every character
    /// outside [A-Za-z0-9._-] replaced by "_"; empty when it has neither.
    static func key(wwn: String, serial: String) -> String {
        if !wwn.isEmpty { return sanitize(wwn.lowercased()) }
        if !serial.isEmpty { return "serial-" + sanitize(serial) }
        return ""
    }

    /// `text` with every character outside [A-Za-z0-9._-] replaced by "_".
    static func sanitize(_ text: String) -> String {
        String(text.unicodeScalars.map { scalar -> Character in
            switch scalar {
            case "A"..."Z", "a"..."z", "0"..."9", ".", "_", "-": Character(scalar)
            default: "_"
            }
        })
    }
}

/// Times whole scans, for the benchmark runner.
public enum InventoryBenchmark {
    /// The wall-clock duration of each of `iterations` live scans (no exclusions), in order.
    public static func scanTimes(host: String, iterations: Int) throws -> [Duration] {
        let clock = ContinuousClock()
        var times: [Duration] = []
        times.reserveCapacity(max(iterations, 0))
        for _ in 0..<max(iterations, 0) {
            let start = clock.now
            _ = try Inventory.scan(host: host, excluded: [])
            times.append(clock.now - start)
        }
        return times
    }
}

// MARK: - Mount and swap tables

/// One line of /proc/self/mountinfo (proc(5)); paths unescaped.
package struct MountInfoEntry: Sendable, Equatable {
    package var devNumber: DeviceNumber
    /// The directory of the filesystem that forms this mount's root (not "/" for bind mounts).
    package var root: String
    package var mountPoint: String
    package var fsType: String
    /// The mount source ("/dev/sda1", "/dev/root", "tmpfs").
    package var source: String
    /// Per-mount options ("rw", "relatime", ...).
    package var mountOptions: [String] = []
    /// Filesystem (super block) options ("errors=remount-ro", "emergency_ro", ...).
    package var superOptions: [String] = []

    /// The entries of a mountinfo text; malformed lines are skipped.
    package static func parse(_ text: String) -> [MountInfoEntry] {
        // Split as bytes: the kernel escapes every space, tab and newline in a field, and
        // byte splitting is several times cheaper than by Character (a List reads it often).
        text.utf8.split(separator: UInt8(ascii: "\n")).compactMap { parseLine(Substring($0)) }
    }

    /// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    package static func parseLine(_ line: Substring) -> MountInfoEntry? {
        let fields = line.utf8.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true).map { Substring($0) }
        // Six fixed fields, zero or more optional fields, "-", then type, source, options.
        guard fields.count >= 9,
              let devNumber = DeviceNumber(parsing: fields[2]),
              let separator = fields[6...].firstIndex(of: "-"),
              separator + 2 < fields.count
        else { return nil }
        return MountInfoEntry(
            devNumber: devNumber,
            root: unescapeOctal(fields[3]),
            mountPoint: unescapeOctal(fields[4]),
            fsType: unescapeOctal(fields[separator + 1]),
            source: unescapeOctal(fields[separator + 2]),
            mountOptions: fields[5].split(separator: ",").map(String.init),
            superOptions: separator + 3 < fields.count ? fields[separator + 3].split(separator: ",").map(String.init) : []
        )
    }
}

/// One active swap area from /proc/swaps; path unescaped.
struct SwapEntry: Sendable, Equatable {
    var path: String
    /// "partition" or "file".
    var type: String

    /// The entries of a /proc/swaps text (header skipped); malformed lines are skipped.
    static func parse(_ text: String) -> [SwapEntry] {
        text.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2 else { return nil }
            return SwapEntry(path: unescapeOctal(fields[0]), type: String(fields[1]))
        }
    }
}

/// Undoes the kernel's octal escapes in /proc paths ("\040" space, "\011" tab, "\012"
/// newline, "\134" backslash); anything that is not such an escape stays as it is.
package func unescapeOctal(_ text: Substring) -> String {
    guard text.contains("\\") else { return String(text) }
    var bytes: [UInt8] = []
    let input = Array(text.utf8)
    var index = 0
    while index < input.count {
        if input[index] == UInt8(ascii: "\\"), index + 3 < input.count {
            let digits = input[(index + 1)...(index + 3)]
            if digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7") }) {
                let value = digits.reduce(0) { $0 * 8 + Int($1 - UInt8(ascii: "0")) }
                if value <= 0xff {
                    bytes.append(UInt8(value))
                    index += 4
                    continue
                }
            }
        }
        bytes.append(input[index])
        index += 1
    }
    return String(decoding: bytes, as: UTF8.self)
}

// MARK: - Exclusion

/// The operator's exclusion patterns, matched against a disk's names.
enum ExclusionRules {
    /// Why `identity` is excluded by one of `patterns` (the first that matches, and what it
    /// matched), or nil. A pattern matches a non-empty field exactly or as an fnmatch glob.
    static func reason(for identity: Bynar_V1_DiskIdentity, patterns: [String]) -> String? {
        let fields: [(name: String, value: String)] =
            [("dev_path", identity.devPath), ("key", identity.key), ("serial", identity.serial),
             ("wwn", identity.wwn), ("by_path", identity.byPath)]
            + identity.byID.map { ("by_id", $0) }
        for pattern in patterns where !pattern.isEmpty {
            for field in fields where !field.value.isEmpty {
                if field.value == pattern || fnmatch(pattern, field.value, 0) == 0 {
                    return "excluded by pattern \"\(pattern)\" (\(field.name) \(field.value))"
                }
            }
        }
        return nil
    }
}

// MARK: - Snapshot

/// Something the host runs on, found by device number: a mount of /, /boot or /boot/efi,
/// or an active swap area.
struct SystemClaim: Sendable, Equatable {
    var devNumber: DeviceNumber
    /// "holds /", "holds swap", …
    var reason: String
}

/// Everything a scan read, before any rule is applied. `devices(host:excluded:)` is pure.
struct InventorySnapshot: Sendable, Equatable {
    /// Every block disk and partition libudev listed, including ones that will not be
    /// listed (dm, md, ram…): they link system mounts to the disks under them.
    var blockDevices: [UdevBlockDevice]
    /// sysname -> sysnames of the devices it is stacked on (sysfs `slaves/`).
    var slaves: [String: [String]]
    var mounts: [MountInfoEntry]
    /// Device numbers of active swap areas that are block devices (for partition
    /// filesystem "swap").
    var swapDevices: Set<DeviceNumber>
    var systemClaims: [SystemClaim]
    /// Device node ("/dev/sda") -> its /dev/disk/by-id links, sorted.
    var byID: [String: [String]]
    /// Device node -> its /dev/disk/by-path links, sorted.
    var byPath: [String: [String]]

    /// Mount points that make a disk a system disk.
    static let systemMountPoints = ["/", "/boot", "/boot/efi"]

    /// Attribute a scan reads for a whole disk. "device/vpd_pg80" is binary and is read
    /// separately into `attributes` as the decoded serial.
    static let diskAttributes = [
        "size", "hidden", "queue/rotational", "serial", "wwid", "loop/backing_file",
        "device/model", "device/name", "device/vendor", "device/rev", "device/firmware_rev",
        "device/serial", "device/wwid",
    ]
    static let partitionAttributes = ["size", "partition"]
    static let vpdSerialAttribute = "device/vpd_pg80"

    // MARK: Rules

    /// The whole disks of this snapshot, as documented on `Inventory.scan`.
    func devices(host: String, excluded: [String]) -> [BlockDevice] {
        let bySysname = Dictionary(blockDevices.map { ($0.sysname, $0) }, uniquingKeysWith: { first, _ in first })
        let reasons = systemReasons(bySysname: bySysname)
        let partitionsByDisk = Dictionary(grouping: blockDevices.filter { $0.devType == "partition" }) { $0.parentSysname ?? "" }

        var result: [BlockDevice] = []
        for disk in blockDevices where disk.devType == "disk" && Self.isListable(disk) {
            var identity = Self.identity(of: disk, host: host)
            guard !identity.key.isEmpty else { continue }
            if let node = disk.devNode {
                identity.byID = byID[node] ?? []
                identity.byPath = byPath[node]?.first ?? ""
            }
            // A filesystem on the whole disk (no partition table) is listed as a partition
            // with the disk's own dev_path, so mounts on it are not lost.
            if let whole = partition(disk), !whole.filesystem.isEmpty || !whole.mountpoints.isEmpty {
                identity.partitions.append(whole)
            }
            let partitions = (partitionsByDisk[disk.sysname] ?? []).sorted {
                (Int($0.attributes["partition"] ?? "") ?? .max, $0.sysname) < (Int($1.attributes["partition"] ?? "") ?? .max, $1.sysname)
            }
            identity.partitions += partitions.compactMap(partition)
            var device = BlockDevice(identity: identity, sysPath: disk.sysPath, systemReasons: reasons[disk.sysname] ?? [])
            device.exclusionReason = ExclusionRules.reason(for: identity, patterns: excluded)
            result.append(device)
        }
        return result.sorted { $0.identity.devPath < $1.identity.devPath }
    }

    /// The sysfs values this snapshot rests on that the kernel changes without sending a
    /// uevent, as they were read: a listed disk's `size` and `queue/rotational` (the latter
    /// writable by hand) and its partitions' `size` (a BLKPG resize, as `resizepart` and
    /// parted do, sends none). Path -> value.
    func uneventedValues() -> [String: String] {
        var values: [String: String] = [:]
        let listed = Set(blockDevices.filter { $0.devType == "disk" && Self.isListable($0) }.map(\.sysname))
        for device in blockDevices where listed.contains(device.devType == "disk" ? device.sysname : device.parentSysname ?? "") {
            for name in device.devType == "disk" ? ["size", "queue/rotational"] : ["size"] {
                if let value = device.attributes[name] { values[device.sysPath + "/" + name] = value }
            }
        }
        return values
    }

    /// Not ram, zram, hidden or empty.
    static func isListable(_ disk: UdevBlockDevice) -> Bool {
        if disk.sysname.hasPrefix("ram") || disk.sysname.hasPrefix("zram") { return false }
        if disk.attributes["hidden"] == "1" { return false }
        return (UInt64(disk.attributes["size"] ?? "") ?? 0) > 0
    }

    /// The identity of a whole disk from its udev/sysfs facts; `key` empty when it has
    /// neither WWN nor serial. by_id, by_path and partitions are left to the caller.
    static func identity(of disk: UdevBlockDevice, host: String) -> Bynar_V1_DiskIdentity {
        let attributes = disk.attributes
        let properties = disk.properties
        func first(_ values: String?...) -> String {
            values.lazy.compactMap { $0 }.first { !$0.isEmpty } ?? ""
        }
        var identity = Bynar_V1_DiskIdentity()
        identity.host = host
        identity.devPath = disk.devNode ?? "/dev/\(disk.sysname)"
        identity.sizeBytes = (UInt64(attributes["size"] ?? "") ?? 0) &* 512
        identity.rotational = attributes["queue/rotational"] == "1"
        identity.transport = transport(of: disk)
        if identity.transport == .loop {
            identity.backingFile = attributes["loop/backing_file"] ?? ""
            identity.serial = identity.backingFile
            identity.model = "loop"
        } else {
            identity.wwn = first(wwn(fromWWID: attributes["wwid"]), wwn(fromWWID: attributes["device/wwid"]),
                                 properties["ID_WWN_WITH_EXTENSION"]?.lowercased(), properties["ID_WWN"]?.lowercased())
            identity.serial = first(attributes["serial"], attributes[vpdSerialAttribute], attributes["device/serial"],
                                    properties["ID_SERIAL_SHORT"], properties["ID_SERIAL"])
            identity.model = first(attributes["device/model"], attributes["device/name"], properties["ID_MODEL"])
            identity.vendor = first(attributes["device/vendor"], properties["ID_VENDOR"])
            identity.firmware = first(attributes["device/rev"], attributes["device/firmware_rev"], properties["ID_REVISION"])
        }
        identity.key = Inventory.key(wwn: identity.wwn, serial: identity.serial)
        return identity
    }

    /// A WWN from a sysfs `wwid` ("naa.5000C500A1B2C3D4" -> "0x5000c500a1b2c3d4",
    /// "eui.0025…" stays "eui.0025…"); nil for identifiers made up from vendor, model and
    /// serial ("t10.…", "nvme.…"), which are no WWN.
    static func wwn(fromWWID wwid: String?) -> String? {
        guard let wwid = wwid?.trimmingWhitespace().lowercased(), !wwid.isEmpty else { return nil }
        if wwid.hasPrefix("naa.") { return "0x" + wwid.dropFirst(4) }
        if wwid.hasPrefix("eui.") || wwid.hasPrefix("0x") { return wwid }
        return nil
    }

    /// The transport from the kernel name and sysfs path.
    static func transport(of disk: UdevBlockDevice) -> Bynar_V1_DiskIdentity.Transport {
        let name = disk.sysname
        let path = disk.sysPath
        if name.hasPrefix("loop") { return .loop }
        if name.hasPrefix("nvme") { return .nvme }
        if path.contains("/virtio") || path.contains("/xen") || name.hasPrefix("xvd") { return .virtual }
        if disk.attributes["device/vendor"] == "ATA" || path.split(separator: "/").contains(where: { $0.hasPrefix("ata") && $0.dropFirst(3).allSatisfy(\.isNumber) && $0.count > 3 }) {
            return .ata
        }
        if name.hasPrefix("sd") { return .scsi }
        if path.hasPrefix("/sys/devices/virtual/") { return .virtual }
        return .unspecified
    }

    /// A partition entry for `device` (a partition, or a whole disk carrying a filesystem).
    func partition(_ device: UdevBlockDevice) -> Bynar_V1_Partition? {
        var partition = Bynar_V1_Partition()
        partition.devPath = device.devNode ?? "/dev/\(device.sysname)"
        partition.sizeBytes = (UInt64(device.attributes["size"] ?? "") ?? 0) &* 512
        let mounted = mounts.filter { $0.devNumber == device.devNumber }
        var mountpoints: [String] = []
        for mount in mounted where !mountpoints.contains(mount.mountPoint) {
            mountpoints.append(mount.mountPoint)
        }
        partition.mountpoints = mountpoints
        partition.filesystem = device.properties["ID_FS_TYPE"]
            ?? mounted.first?.fsType
            ?? (swapDevices.contains(device.devNumber) ? "swap" : "")
        partition.fsUuid = device.properties["ID_FS_UUID"] ?? ""
        return partition
    }

    /// sysname of each whole disk the host runs on -> why, in claim order.
    func systemReasons(bySysname: [String: UdevBlockDevice]) -> [String: [String]] {
        let byNumber = Dictionary(blockDevices.map { ($0.devNumber, $0.sysname) }, uniquingKeysWith: { first, _ in first })
        var result: [String: [String]] = [:]
        for claim in systemClaims {
            guard let start = byNumber[claim.devNumber] else { continue }
            for disk in wholeDisks(under: start, bySysname: bySysname) where !(result[disk]?.contains(claim.reason) ?? false) {
                result[disk, default: []].append(claim.reason)
            }
        }
        return result
    }

    /// The whole disks `sysname` rests on: its parent if a partition, the devices it is
    /// stacked on if any (dm, md), recursively; itself if none of these.
    func wholeDisks(under sysname: String, bySysname: [String: UdevBlockDevice]) -> [String] {
        var result: [String] = []
        var seen: Set<String> = []
        var pending = [sysname]
        while let name = pending.popLast() {
            guard seen.insert(name).inserted, let device = bySysname[name] else { continue }
            if device.devType == "partition" {
                if let parent = device.parentSysname { pending.append(parent) }
                continue
            }
            let below = slaves[name] ?? []
            if below.isEmpty {
                result.append(name)
            } else {
                pending.append(contentsOf: below)
            }
        }
        return result.sorted()
    }

    // MARK: Gathering

    /// Reads the live facts: libudev, sysfs, and the tables and links `roots` names.
    static func gather(roots: InventoryRoots) throws -> InventorySnapshot {
        let mountText: String
        switch readFile(roots.mountInfoPath) {
        case let .success(bytes): mountText = String(decoding: bytes, as: UTF8.self)
        case let .failure(error): throw InventoryError.unreadable(path: roots.mountInfoPath, errno: error.code)
        }
        let swapText: String
        switch readFile(roots.swapsPath) {
        case let .success(bytes): swapText = String(decoding: bytes, as: UTF8.self)
        case let .failure(error) where error.code == ENOENT: swapText = "" // kernel without swap support
        case let .failure(error): throw InventoryError.unreadable(path: roots.swapsPath, errno: error.code)
        }
        let mounts = MountInfoEntry.parse(mountText)
        let swaps = SwapEntry.parse(swapText)

        var devices: [UdevBlockDevice]
        do {
            let udev = try UdevContext()
            devices = try udev.blockDevices(diskAttributes: diskAttributes, partitionAttributes: partitionAttributes)
        } catch let error as UdevError {
            throw InventoryError.system(error.description)
        }
        var slaves: [String: [String]] = [:]
        for index in devices.indices where devices[index].devType == "disk" {
            let below = listDirectory(devices[index].sysPath + "/slaves")
            if !below.isEmpty { slaves[devices[index].sysname] = below.sorted() }
            if case let .success(bytes) = readFile(devices[index].sysPath + "/" + vpdSerialAttribute),
               let serial = serial(fromVPDPage80: bytes) {
                devices[index].attributes[vpdSerialAttribute] = serial
            }
        }

        var claims: [SystemClaim] = []
        for mountPoint in systemMountPoints {
            for mount in mounts where mount.mountPoint == mountPoint {
                let reason = "holds \(mountPoint)"
                claims.append(SystemClaim(devNumber: mount.devNumber, reason: reason))
                // btrfs and others report an anonymous 0:N; the source device still names it.
                if mount.source.hasPrefix("/dev/"), case let .success(info) = statPath(mount.source),
                   (info.st_mode & S_IFMT) == S_IFBLK {
                    claims.append(SystemClaim(devNumber: DeviceNumber(info.st_rdev), reason: reason))
                }
            }
        }
        var swapDevices: Set<DeviceNumber> = []
        for swap in swaps {
            switch statPath(swap.path) {
            case let .success(info):
                // A swap partition is that device; a swap file lives on its filesystem's.
                let isBlock = (info.st_mode & S_IFMT) == S_IFBLK
                let number = DeviceNumber(isBlock ? info.st_rdev : info.st_dev)
                if isBlock { swapDevices.insert(number) }
                claims.append(SystemClaim(devNumber: number, reason: "holds swap"))
            case let .failure(error):
                throw InventoryError.unresolvedSwap(path: swap.path, errno: error.code)
            }
        }

        return InventorySnapshot(
            blockDevices: devices,
            slaves: slaves,
            mounts: mounts,
            swapDevices: swapDevices,
            systemClaims: claims,
            byID: links(in: roots.diskLinksPath + "/by-id"),
            byPath: links(in: roots.diskLinksPath + "/by-path")
        )
    }

    /// The serial in a SCSI VPD page 0x80 (Unit Serial Number) as sysfs gives it: a 4-byte
    /// header whose bytes 2-3 are the length, then ASCII. libata fills it from ATA IDENTIFY.
    static func serial(fromVPDPage80 bytes: [UInt8]) -> String? {
        guard bytes.count > 4, bytes[1] == 0x80 else { return nil }
        let length = Int(bytes[2]) << 8 | Int(bytes[3])
        let body = bytes[4..<min(4 + length, bytes.count)].prefix { $0 != 0 }
        let serial = String(decoding: body, as: UTF8.self).trimmingWhitespace()
        return serial.isEmpty ? nil : serial
    }

    /// Device node -> the links in `directory` that resolve to it, sorted; empty when the
    /// directory does not exist.
    static func links(in directory: String) -> [String: [String]] {
        var result: [String: [String]] = [:]
        for name in listDirectory(directory).sorted() {
            let link = directory + "/" + name
            guard let target = realPath(link) else { continue }
            result[target, default: []].append(link)
        }
        return result
    }
}

// MARK: - Small Glibc helpers

/// An errno value as an Error.
package struct SystemErrno: Error, Equatable {
    package let code: Int32
    package init(_ code: Int32) { self.code = code }
}

/// The whole content of a file (sysfs and /proc report size 0, so read to EOF), or errno.
package func readFile(_ path: String) -> Result<[UInt8], SystemErrno> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(SystemErrno(errno)) }
    defer { close(fd) }
    var result: [UInt8] = []
    // Not zero-filled, and on the stack: a List reads a hundred small sysfs values.
    return withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 16) { buffer in
        while true {
            let count = read(fd, buffer.baseAddress, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                return .failure(SystemErrno(errno))
            }
            if count == 0 { return .success(result) }
            result.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }
}


/// stat(2) of `path` (following links), or errno.
func statPath(_ path: String) -> Result<stat, SystemErrno> {
    var info = stat()
    guard stat(path, &info) == 0 else { return .failure(SystemErrno(errno)) }
    return .success(info)
}

/// The canonical absolute path of `path`, or nil.
func realPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}
