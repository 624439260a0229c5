import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// One OSD as the cluster sees it: the osdmap (`osd dump`) joined with what the OSD
/// reported about itself at its last boot (`osd metadata`). Metadata of an OSD that is
/// down or destroyed is stale: the devices it names may hold another disk by now.
public struct CephOSD: Sendable, Equatable {
    public var id: Int
    /// The OSD's uuid from the osdmap (the one its BlueStore label carries).
    public var uuid: String
    public var exists: Bool
    public var up: Bool
    public var `in`: Bool
    public var destroyed: Bool
    /// Ceph's name for the OSD's host (metadata `hostname`), empty when unknown.
    public var hostname: String
    /// Kernel names of its devices at its last boot ("sdb", "loop3"): `devices`,
    /// `bluestore_bdev_dev_node`, `bluefs_db_dev_node`, `bluefs_wal_dev_node` (and the
    /// role-specific sets below).
    public var deviceNames: Set<String>
    /// Stable ids of its devices from the metadata `device_ids` ("sdb=ATA_ST4000NM_Z1Z3ABCD"),
    /// by kernel name.
    public var deviceIDs: [String: String]
    /// Kernel names of the device holding its BlueStore DB when that is a device of its own
    /// (`bluefs_dedicated_db`): the partition (`bluefs_db_dev_node`, "loop3p1") and the disk
    /// it is on (`bluefs_db_devices`, "loop3").
    public var dbDeviceNames: Set<String>
    /// As ``dbDeviceNames``, for a dedicated WAL (`bluefs_wal_dev_node`, `bluefs_wal_devices`).
    public var walDeviceNames: Set<String>
    /// Kernel names of its main (data) device: `bluestore_bdev_dev_node` and
    /// `bluestore_bdev_devices`.
    public var mainDeviceNames: Set<String>

    public init(id: Int, uuid: String = "", exists: Bool = true, up: Bool = true, in isIn: Bool = true, destroyed: Bool = false,
                hostname: String = "", deviceNames: Set<String> = [], deviceIDs: [String: String] = [:],
                mainDeviceNames: Set<String> = [], dbDeviceNames: Set<String> = [], walDeviceNames: Set<String> = []) {
        self.id = id
        self.uuid = uuid
        self.exists = exists
        self.up = up
        self.in = isIn
        self.destroyed = destroyed
        self.hostname = hostname
        self.deviceNames = deviceNames.union(mainDeviceNames).union(dbDeviceNames).union(walDeviceNames)
        self.deviceIDs = deviceIDs
        self.mainDeviceNames = mainDeviceNames
        self.dbDeviceNames = dbDeviceNames
        self.walDeviceNames = walDeviceNames
    }

    /// Not destroyed and still in the osdmap: its devices must not be wiped.
    public var isLive: Bool { exists && !destroyed }

    /// What the metadata says the device named `kernelName` (a disk or a partition) is to
    /// this OSD: its main device first (an OSD with data and DB on two partitions of one
    /// disk is one OSD on that disk), then DB, then WAL; nil when the metadata does not
    /// name it, `.main` when it names it only in `devices` (no role known).
    public func metadataRole(of kernelName: String) -> OSDDeviceMatch.Role? {
        if mainDeviceNames.contains(kernelName) { return .main }
        if dbDeviceNames.contains(kernelName) { return .db }
        if walDeviceNames.contains(kernelName) { return .wal }
        return deviceNames.contains(kernelName) ? .main : nil
    }
}

/// One health check of `ceph health detail`: its code (`OSD_DOWN`, `PG_DAMAGED`,
/// `OSD_SCRUB_ERRORS`, ...), severity, summary and detail lines.
public struct CephHealthCheck: Sendable, Equatable {
    public var code: String
    public var severity: String
    public var summary: String
    public var details: [String]

    public init(code: String, severity: String, summary: String, details: [String]) {
        self.code = code
        self.severity = severity
        self.summary = summary
        self.details = details
    }
}

/// `ceph health detail`.
public struct CephHealth: Sendable, Equatable {
    /// HEALTH_OK, HEALTH_WARN or HEALTH_ERR.
    public var status: String
    public var checks: [CephHealthCheck]

    public init(status: String, checks: [CephHealthCheck]) {
        self.status = status
        self.checks = checks
    }

    /// PGs marked inconsistent by scrub, with their acting OSDs, from the `PG_DAMAGED`
    /// detail lines ("pg 2.3 is active+clean+inconsistent, acting [0,1,2]").
    public var inconsistentPGs: [(pg: String, acting: [Int])] {
        checks.filter { $0.code == "PG_DAMAGED" }.flatMap(\.details).compactMap { line in
            guard line.hasPrefix("pg "), line.contains("inconsistent") else { return nil }
            let pg = String(line.dropFirst(3).prefix { $0 != " " })
            guard let open = line.lastIndex(of: "["), let close = line.lastIndex(of: "]"), open < close else { return (pg, []) }
            let acting = line[line.index(after: open)..<close].split(separator: ",").compactMap { Int($0.filter { !$0.isWhitespace }) }
            return (pg, acting)
        }
    }
}

/// Read-only questions to a cluster, shared by the detector (which watches) and the
/// disk-manager (which acts). Nothing here changes the cluster.
extension RadosCluster {
    struct OSDDump: Decodable {
        struct OSD: Decodable {
            var osd: Int
            var uuid: String?
            var up: Int
            var `in`: Int
            var state: [String]
        }
        var epoch: Int
        var osds: [OSD]
    }

    struct Metadata: Decodable {
        var id: Int
        var hostname: String?
        var devices: String?
        var device_ids: String?
        var bluestore_bdev_dev_node: String?
        var bluestore_bdev_devices: String?
        var bluefs_db_dev_node: String?
        var bluefs_db_devices: String?
        var bluefs_wal_dev_node: String?
        var bluefs_wal_devices: String?
    }

    /// The kernel names in a metadata device node ("/dev/loop3p1") and device list
    /// ("loop3" or "sdb,sdc").
    static func kernelNames(node: String?, devices: String?) -> Set<String> {
        var names = Set((devices ?? "").split(separator: ",").map { String($0) }.filter { !$0.isEmpty })
        if let node, let last = node.split(separator: "/").last { names.insert(String(last)) }
        return names
    }

    /// Every OSD in the osdmap with (unless `metadata` is false: one command less, for
    /// polling loops) its last-boot metadata, and the osdmap epoch.
    public func osds(metadata withMetadata: Bool = true) throws -> (epoch: Int, osds: [CephOSD]) {
        let dumpReply = try checkedMonCommand(#"{"prefix":"osd dump","format":"json"}"#)
        let dump: OSDDump = try decode(dumpReply, "osd dump")
        var metadata: [Metadata] = []
        if withMetadata {
            let metadataReply = try checkedMonCommand(#"{"prefix":"osd metadata","format":"json"}"#)
            metadata = try decode(metadataReply, "osd metadata")
        }
        let byID = Dictionary(metadata.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let osds = dump.osds.map { entry in
            var osd = CephOSD(id: entry.osd, uuid: entry.uuid?.lowercased() ?? "", exists: entry.state.contains("exists"),
                              up: entry.up != 0, in: entry.in != 0, destroyed: entry.state.contains("destroyed"))
            if let meta = byID[entry.osd] {
                osd.hostname = meta.hostname ?? ""
                osd.mainDeviceNames = Self.kernelNames(node: meta.bluestore_bdev_dev_node, devices: meta.bluestore_bdev_devices)
                osd.dbDeviceNames = Self.kernelNames(node: meta.bluefs_db_dev_node, devices: meta.bluefs_db_devices)
                osd.walDeviceNames = Self.kernelNames(node: meta.bluefs_wal_dev_node, devices: meta.bluefs_wal_devices)
                osd.deviceNames = Self.kernelNames(node: nil, devices: meta.devices)
                    .union(osd.mainDeviceNames).union(osd.dbDeviceNames).union(osd.walDeviceNames)
                for pair in (meta.device_ids ?? "").split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    if parts.count == 2 { osd.deviceIDs[String(parts[0])] = String(parts[1]) }
                }
            }
            return osd
        }
        return (dump.epoch, osds)
    }

    struct HealthReply: Decodable {
        struct Check: Decodable {
            struct Message: Decodable { var message: String }
            var severity: String
            var summary: Message
            var detail: [Message]?
        }
        var status: String
        var checks: [String: Check]?
    }

    /// `ceph health detail`: status and every check with its detail lines.
    public func healthDetail() throws -> CephHealth {
        let reply = try checkedMonCommand(#"{"prefix":"health","detail":"detail","format":"json"}"#)
        let parsed: HealthReply = try decode(reply, "health detail")
        let checks = (parsed.checks ?? [:]).sorted { $0.key < $1.key }.map {
            CephHealthCheck(code: $0.key, severity: $0.value.severity, summary: $0.value.summary.message, details: ($0.value.detail ?? []).map(\.message))
        }
        return CephHealth(status: parsed.status, checks: checks)
    }

    /// The cluster's fsid.
    public func fsid() throws -> String {
        struct Reply: Decodable { var fsid: String }
        let reply = try checkedMonCommand(#"{"prefix":"fsid","format":"json"}"#)
        let parsed: Reply = try decode(reply, "fsid")
        return parsed.fsid
    }

    private func decode<T: Decodable>(_ reply: RadosReply, _ operation: String) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(reply.output))
        } catch {
            throw RadosError(operation: operation, code: -EINVAL, statusText: "unreadable reply: \(error)")
        }
    }
}
