import BynarDisks
import BynarProto
import BynarStore
import GRDB
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif

/// The disks this host has had, as last seen: a disk that drops off the bus entirely (the
/// commonest death) can still be taken out of its cluster, because the disk-manager still
/// knows who it was (key, serial, WWN, its last /dev name). The backends decide on that
/// identity as on a present disk's (the Ceph backend: `osd metadata` serials, or the last
/// kernel name of a live OSD), and nothing is ever written to a vanished disk's old /dev
/// name, which may belong to another disk by now.
struct KnownDisks {
    static let migrations: [LocalStore.Migration] = [
        LocalStore.Migration("disk-manager-known-disks-v1") { db in
            try db.create(table: "dm_known_disk") { table in
                table.primaryKey("key", .text)
                table.column("identity", .blob).notNull()
                table.column("seen_unix_ms", .integer).notNull()
            }
        },
    ]

    let store: LocalStore

    /// Records every present disk (one transaction; the identities change rarely). The
    /// service calls it only when what it would record differs from what it last recorded,
    /// so `seen_unix_ms` is the last change seen while the disk was present: vanished disks
    /// still sort by when they were last seen.
    func remember(_ devices: [BlockDevice], nowMs: Int64) throws {
        let rows = try devices.filter { !$0.identity.key.isEmpty }.map { ($0.identity.key, Data(try $0.identity.serializedBytes() as [UInt8])) }
        try store.database.write { db in
            for (key, identity) in rows {
                try db.execute(sql: """
                    INSERT INTO dm_known_disk(key, identity, seen_unix_ms) VALUES(?, ?, ?)
                    ON CONFLICT(key) DO UPDATE SET identity = excluded.identity, seen_unix_ms = excluded.seen_unix_ms
                    """, arguments: [key, identity, nowMs])
            }
        }
    }

    /// A disk that is not present now and that `selector` names, as it was last seen,
    /// marked absent; nil when none.
    func vanished(matching selector: Bynar_V1_DiskSelector, present: [BlockDevice], matches: (BlockDevice, Bynar_V1_DiskSelector) -> Bool) throws -> BlockDevice? {
        let presentKeys = Set(present.map(\.identity.key))
        let rows = try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT key, identity FROM dm_known_disk ORDER BY seen_unix_ms DESC")
        }
        for row in rows {
            let key: String = row["key"]
            guard !presentKeys.contains(key) else { continue }
            let bytes: Data = row["identity"]
            guard let identity = try? Bynar_V1_DiskIdentity(serializedBytes: [UInt8](bytes)) else { continue }
            var device = BlockDevice(identity: identity, sysPath: "")
            device.absent = true
            // The old /dev name may be another disk's now: it only ever identifies, never
            // selects (a selector by /dev path matches present disks only).
            var byIdentity = selector
            byIdentity.devPath = ""
            if matches(device, byIdentity) { return device }
        }
        return nil
    }
}
