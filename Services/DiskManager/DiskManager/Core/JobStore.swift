public import BynarProto
public import BynarStore
import GRDB
import SwiftProtobuf
import FoundationEssentials

/// Long operations (Remove, Add, Deploy) as jobs in the disk-manager's store: the request
/// that started each, its latest progress, and which backend id it took out or put back.
/// A job still running when the service stopped is resumed on the next start with the
/// backend and place it was accepted for (the backends' operations check the world before
/// each step), and the disks-out count is rebuilt from finished jobs and checked against
/// the world, so the host's limit holds across restarts.
public struct JobStore: Sendable {
    public static let migrations: [LocalStore.Migration] = [
        LocalStore.Migration("disk-manager-jobs-v1") { db in
            try db.create(table: "dm_job") { table in
                table.primaryKey("id", .text)
                table.column("request_id", .text).notNull().unique()
                table.column("operation", .text).notNull()
                table.column("disk_key", .text).notNull().indexed()
                table.column("request", .blob).notNull()
                table.column("running", .boolean).notNull()
                table.column("progress", .blob).notNull()
                // Remove: the backend id taken out; Add: the id put back ("backend:id").
                table.column("out_key", .text).notNull()
                table.column("created_unix_ms", .integer).notNull()
                table.column("updated_unix_ms", .integer).notNull()
            }
        },
        LocalStore.Migration("disk-manager-jobs-v2: backend and place kept with the job") { db in
            // Which backend the job was accepted for and the place it works on (the claim's
            // id for Remove): a resumed Remove must not depend on the disk still looking
            // claimed after its own unmount or destroy.
            try db.alter(table: "dm_job") { table in
                table.add(column: "backend", .text).notNull().defaults(to: "")
                table.add(column: "claim_id", .text).notNull().defaults(to: "")
            }
        },
    ]

    public let store: LocalStore

    public init(store: LocalStore) {
        self.store = store
    }

    public struct Job: Sendable, Equatable {
        public var id: String
        public var request: Bynar_V1_DiskManagerRequest
        public var progress: Bynar_V1_JobProgress
        public var running: Bool
        public var outKey: String
        /// The backend the job was accepted for ("ceph", "filesystem").
        public var backend: String
        /// The backend's id of the disk when a Remove was accepted ("" for Add and Deploy).
        public var claimID: String
    }

    public func insert(id: String, request: Bynar_V1_DiskManagerRequest, diskKey: String, backend: String, claimID: String, progress: Bynar_V1_JobProgress, nowMs: Int64) throws {
        let requestBytes: [UInt8] = try request.serializedBytes()
        let progressBytes: [UInt8] = try progress.serializedBytes()
        try store.database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO dm_job(id, request_id, operation, disk_key, request, running, progress, out_key, created_unix_ms, updated_unix_ms, backend, claim_id)
                    VALUES(?, ?, ?, ?, ?, 1, ?, '', ?, ?, ?, ?)
                    """,
                arguments: [id, request.requestID, progress.operation, diskKey, Data(requestBytes), Data(progressBytes), nowMs, nowMs, backend, claimID]
            )
        }
    }

    /// Records the job's latest progress; a finished job (SUCCEEDED/FAILED) stops running.
    public func update(id: String, progress: Bynar_V1_JobProgress, outKey: String = "") throws {
        let bytes: [UInt8] = try progress.serializedBytes()
        let running = progress.state == .running
        try store.database.write { db in
            try db.execute(
                sql: "UPDATE dm_job SET progress = ?, running = ?, out_key = CASE WHEN ? = '' THEN out_key ELSE ? END, updated_unix_ms = ? WHERE id = ?",
                arguments: [Data(bytes), running, outKey, outKey, progress.updatedUnixMs, id]
            )
        }
    }

    public func job(id: String) throws -> Job? {
        try store.database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM dm_job WHERE id = ?", arguments: [id]).map(Self.job)
        }
    }

    /// The job a request started, if it started one.
    public func job(requestID: String) throws -> Job? {
        try store.database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM dm_job WHERE request_id = ?", arguments: [requestID]).map(Self.job)
        }
    }

    /// Jobs that were running when the service last stopped, oldest first.
    public func running() throws -> [Job] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM dm_job WHERE running = 1 ORDER BY created_unix_ms").map(Self.job)
        }
    }

    /// Backend ids out now: taken out by a successful Remove and not put back by a later
    /// successful Add of the same id.
    public func outKeys() throws -> Set<String> {
        try store.database.read { db in
            var out: Set<String> = []
            let rows = try Row.fetchAll(
                db, sql: "SELECT operation, out_key FROM dm_job WHERE running = 0 AND out_key != '' ORDER BY updated_unix_ms, created_unix_ms"
            )
            for row in rows {
                let key: String = row["out_key"]
                switch row["operation"] as String {
                case "Remove": out.insert(key)
                default: out.remove(key)
                }
            }
            return out
        }
    }

    static func job(_ row: Row) throws -> Job {
        let request = try Bynar_V1_DiskManagerRequest(serializedBytes: [UInt8]((row["request"] as Data?) ?? Data()))
        let progress = try Bynar_V1_JobProgress(serializedBytes: [UInt8]((row["progress"] as Data?) ?? Data()))
        return Job(id: row["id"], request: request, progress: progress, running: row["running"], outKey: row["out_key"],
                   backend: row["backend"], claimID: row["claim_id"])
    }
}
