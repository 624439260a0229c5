#if canImport(Glibc)
import Glibc
#endif
public import BynarDisks

/// What the first block of a device (or of one of its partitions) says about its owner.
public enum DeviceLabel: Sendable, Equatable {
    /// A BlueStore label: the device is (or was) one of this OSD's devices.
    case bluestore(BluestoreLabel)
    /// An LVM physical volume (`LABELONE` in sector 1): ceph-volume's LVM layout keeps the
    /// BlueStore label inside the logical volume, so the disk itself names no OSD.
    case lvm
    /// Readable, and no BlueStore or LVM label: blank, or some other data.
    case other
    /// The device did not answer (a dead disk): only the cluster's memory can name it.
    case unreadable(String)

    /// Reads the label of the device at `path` (4 KiB at offset 0, O_DIRECT).
    public static func read(_ path: String) -> DeviceLabel {
        switch DeviceReader.read(path, offset: 0, length: 4096) {
        case .failed(let code):
            return .unreadable("\(path): \(String(cString: strerror(code)))")
        case .bytes(let block):
            if let label = BluestoreLabel.parse(block) { return .bluestore(label) }
            if block.count >= 520, Array(block[512..<520]) == Array("LABELONE".utf8) { return .lvm }
            return .other
        }
    }
}

/// The facts about one local disk that tie it to an OSD.
public struct DeviceFacts: Sendable, Equatable {
    public var key: String
    /// "sdb", "loop4": where the kernel put it now.
    public var kernelName: String
    public var serial: String
    public var wwn: String
    /// The disk's own label first, then its partitions'.
    public var labels: [DeviceLabel]

    public init(key: String, kernelName: String, serial: String = "", wwn: String = "", labels: [DeviceLabel]) {
        self.key = key
        self.kernelName = kernelName
        self.serial = serial
        self.wwn = wwn
        self.labels = labels
    }

    /// The facts of an inventory device, reading its label and its partitions' labels.
    public static func read(_ device: BlockDevice) -> DeviceFacts {
        let identity = device.identity
        let paths = [identity.devPath] + identity.partitions.map(\.devPath).filter { $0 != identity.devPath }
        // A vanished disk's old /dev name may be another disk's now: never read it.
        let labels = device.absent ? [DeviceLabel.unreadable("\(identity.devPath) is gone")] : paths.map(DeviceLabel.read)
        return DeviceFacts(key: identity.key, kernelName: String(identity.devPath.split(separator: "/").last ?? ""),
                           serial: identity.serial, wwn: identity.wwn, labels: labels)
    }
}

/// A disk found to serve an OSD, and on what evidence.
public struct OSDDeviceMatch: Sendable, Equatable {
    public enum Role: String, Sendable, Equatable {
        case main, db, wal
    }
    public var osd: Int
    public var role: Role
    /// Why: "BlueStore label (osd uuid …)", "metadata device_ids", "kernel name (disk unreadable)".
    public var evidence: String

    public init(osd: Int, role: Role, evidence: String) {
        self.osd = osd
        self.role = role
        self.evidence = evidence
    }
}

/// Which OSDs a local disk serves, and as what (data, DB, WAL), decided on stable identity,
/// never on the kernel name alone. A pure function of the facts, tested exhaustively.
///
/// A disk serves several OSDs when it holds their BlueStore DBs or WALs (one partition, or
/// one LV, per OSD: BlueFS takes a whole block device, so OSDs never share an unpartitioned
/// one). The disk-manager must know every one of them before it touches the disk.
///
/// Rules (the disk's own first block, then each partition's):
/// 1. A BlueStore label names its OSD by uuid (the osdmap's uuid for that id), with the
///    label's role ("main", "bluefs db", "bluefs wal"). A label whose uuid no OSD has (an
///    old OSD's disk, another cluster's) names nothing.
/// 2. A `bluefs db` / `bluefs wal` label also serves every other **up** OSD of this host
///    whose metadata names the disk, in the role the metadata gives it. Only up OSDs: a
///    down OSD's metadata is from before it went down, and device names may have moved
///    since (a reboot, a hot swap), so it could name a healthy disk that is someone
///    else's now.
/// 3. A part that is an LVM physical volume (ceph-volume's LVM layout keeps the BlueStore
///    labels inside the logical volumes) or that cannot be read (a dying disk): the OSDs of
///    this host whose metadata `device_ids` carry the disk's serial or WWN (destroyed ones
///    too: a removed disk is REMOVED, not blank), else the live (not destroyed) OSDs of this
///    host whose metadata names the disk's kernel name; each in the role the metadata
///    gives the disk. A down OSD counts here: the disk of a down OSD is the one most likely
///    to be unreadable, and naming one OSD too many only makes a removal refuse.
/// 4. Readable with no label at all: nothing. A new blank disk that came up under a
///    destroyed OSD's old kernel name is blank, not that OSD.
///
/// Each OSD is named once, with its first match (a label before the metadata).
public enum OSDDeviceMatcher {
    public static func match(_ facts: DeviceFacts, osds: [CephOSD], hostname: String) -> [OSDDeviceMatch] {
        var matches: [OSDDeviceMatch] = []
        var sharedRole: OSDDeviceMatch.Role?
        for label in facts.labels {
            guard case .bluestore(let label) = label else { continue }
            guard let osd = osds.first(where: { !$0.uuid.isEmpty && $0.uuid == label.osdUUID.lowercased() }) else { continue }
            let role = role(of: label)
            matches.append(OSDDeviceMatch(osd: osd.id, role: role, evidence: "BlueStore label (osd uuid \(label.osdUUID))"))
            if role != .main && sharedRole == nil { sharedRole = role }
        }
        if let sharedRole {
            for other in osds where other.up && other.isLive && other.hostname == hostname {
                guard let known = other.metadataRole(of: facts.kernelName) else { continue }
                // Named only in `devices` (no role known): as the label's role.
                let named = known == .main && !other.mainDeviceNames.contains(facts.kernelName) ? sharedRole : known
                matches.append(OSDDeviceMatch(osd: other.id, role: named, evidence: "metadata of up osd.\(other.id) names \(facts.kernelName) as its \(named.rawValue) device"))
            }
        }
        let unreadable = facts.labels.contains { if case .unreadable = $0 { return true } else { return false } }
        let isLVM = facts.labels.contains(.lvm)
        if unreadable || isLVM {
            matches += metadataMatches(facts, osds: osds, hostname: hostname, why: isLVM ? "LVM physical volume" : "disk unreadable")
        }
        return unique(matches)
    }

    /// Rule 3: the metadata's serials, else the kernel name of a live OSD.
    static func metadataMatches(_ facts: DeviceFacts, osds: [CephOSD], hostname: String, why: String) -> [OSDDeviceMatch] {
        let local = osds.filter { $0.hostname == hostname && $0.exists }
        let stable = [facts.serial, facts.wwn].filter { $0.count >= 4 }
        var byID: [OSDDeviceMatch] = []
        for osd in local {
            let named = osd.deviceIDs.first { _, id in stable.contains { id == $0 || id.hasSuffix("_" + $0) } }
            guard let named else { continue }
            let role = osd.metadataRole(of: named.key) ?? .main
            byID.append(OSDDeviceMatch(osd: osd.id, role: role, evidence: "metadata device_ids name serial/WWN \(stable.joined(separator: "/")) (\(why))"))
        }
        if !byID.isEmpty { return byID }
        return local.filter(\.isLive).compactMap { osd in
            osd.metadataRole(of: facts.kernelName).map {
                OSDDeviceMatch(osd: osd.id, role: $0, evidence: "metadata names \(facts.kernelName) as its \($0.rawValue) device (\(why))")
            }
        }
    }

    static func role(of label: BluestoreLabel) -> OSDDeviceMatch.Role {
        switch label.description {
        case "bluefs db": .db
        case "bluefs wal": .wal
        default: .main
        }
    }

    private static func unique(_ matches: [OSDDeviceMatch]) -> [OSDDeviceMatch] {
        var seen: Set<Int> = []
        return matches.filter { seen.insert($0.osd).inserted }
    }
}
