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

/// Which OSDs a local disk serves, decided on stable identity, never on the kernel name
/// alone. A pure function of the facts, tested exhaustively.
///
/// Rules, in order:
/// 1. A BlueStore label names the OSD by uuid (the osdmap's uuid for that id). A label
///    whose uuid no OSD has (an old OSD's disk, another cluster's) names nothing.
///    A `bluefs db` / `bluefs wal` label also serves every other live OSD of this host
///    whose metadata names the same device (a DB device shared by several OSDs).
/// 2. An LVM physical volume: the OSDs of this host whose metadata `device_ids` carry the
///    disk's serial or WWN, else (live OSDs only) whose metadata names the kernel name.
/// 3. Readable with no such label: nothing. A new blank disk that came up under a
///    destroyed OSD's old kernel name is blank, not that OSD.
/// 4. Unreadable (the disk is dying): as rule 2. Metadata of a destroyed OSD is stale and
///    never matched by kernel name.
public enum OSDDeviceMatcher {
    public static func match(_ facts: DeviceFacts, osds: [CephOSD], hostname: String) -> [OSDDeviceMatch] {
        let live = osds.filter { $0.exists && !$0.destroyed }
        let labels = facts.labels.compactMap { label -> BluestoreLabel? in
            if case .bluestore(let bluestore) = label { return bluestore }
            return nil
        }
        if !labels.isEmpty {
            var matches: [OSDDeviceMatch] = []
            for label in labels {
                guard let osd = osds.first(where: { !$0.uuid.isEmpty && $0.uuid == label.osdUUID.lowercased() }) else { continue }
                let role = role(of: label)
                matches.append(OSDDeviceMatch(osd: osd.id, role: role, evidence: "BlueStore label (osd uuid \(label.osdUUID))"))
                if role != .main {
                    for other in live where other.id != osd.id && other.hostname == hostname && other.deviceNames.contains(facts.kernelName) {
                        matches.append(OSDDeviceMatch(osd: other.id, role: role, evidence: "metadata names \(facts.kernelName) as a \(role.rawValue) device of osd.\(other.id)"))
                    }
                }
            }
            return unique(matches)
        }
        let readable = !facts.labels.contains { if case .unreadable = $0 { return true } else { return false } }
        let isLVM = facts.labels.contains(.lvm)
        if readable && !isLVM { return [] }
        let local = osds.filter { $0.hostname == hostname && $0.exists }
        let stable = [facts.serial, facts.wwn].filter { $0.count >= 4 }
        let byID = local.filter { osd in
            osd.deviceIDs.values.contains { id in stable.contains { id == $0 || id.hasSuffix("_" + $0) } }
        }
        if !byID.isEmpty {
            return byID.map { OSDDeviceMatch(osd: $0.id, role: .main, evidence: "metadata device_ids name serial/WWN \(stable.joined(separator: "/"))") }
        }
        let why = isLVM ? "LVM physical volume" : "disk unreadable"
        return local.filter { !$0.destroyed && $0.deviceNames.contains(facts.kernelName) }.map {
            OSDDeviceMatch(osd: $0.id, role: .main, evidence: "metadata names \(facts.kernelName) (\(why))")
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
