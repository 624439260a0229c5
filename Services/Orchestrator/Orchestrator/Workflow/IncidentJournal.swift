public import BynarStore
import BynarBus
import BynarProto
public import GRDB
import Logging
import Synchronization
#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// The orchestrator's memory in its SQLite store: every incident (its whole machine: state,
/// step in flight, attempts, deadlines, request generations), the removal rate limiter, the
/// maintenance windows, the operator audit trail, the failures left unrepaired because of
/// maintenance, the hook events already handled, and each incident's timeline (every state
/// and detail it went through, written in the same transaction as the incident).
///
/// An incident's new state and the messages that report it are written in one transaction
/// (``changes(_:extras:)`` inside `Outbox.commit`, the one way every service commits), so a
/// crash can neither lose a report nor report a change that was not kept; the shared outbox
/// deletes a message only once the broker acknowledged it. One commit per batch of changes.
public struct IncidentJournal: Sendable {
    public let store: LocalStore

    public init(store: LocalStore) {
        self.store = store
    }

    public static let migrations: [LocalStore.Migration] = [
        LocalStore.Migration("orchestrator-v1: incidents, their messages, hook events") { db in
            try db.create(table: "orchestrator_incident") { table in
                table.primaryKey("id", .text)
                table.column("host", .text).notNull()
                table.column("disk_key", .text).notNull()
                table.column("state", .text).notNull()
                table.column("open", .boolean).notNull()
                table.column("machine", .blob).notNull()
                table.column("opened_unix_ms", .integer).notNull()
                table.column("updated_unix_ms", .integer).notNull()
            }
            try db.create(index: "orchestrator_incident_open", on: "orchestrator_incident", columns: ["open"])
            try db.create(table: "orchestrator_message") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("topic", .text).notNull()
                table.column("payload", .blob).notNull()
                table.column("retain", .boolean).notNull()
            }
            try db.create(table: "orchestrator_hook_event") { table in
                table.primaryKey("event_id", .text)
                table.column("host", .text).notNull()
                table.column("service", .text).notNull()
                table.column("up", .boolean).notNull()
                table.column("started_unix_ms", .integer).notNull()
                table.column("finished", .boolean).notNull().defaults(to: false)
            }
        },
        LocalStore.Migration("orchestrator-v2: operator audit, failures left unrepaired in maintenance") { db in
            try db.create(table: "orchestrator_operator_audit") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("at_unix_ms", .integer).notNull()
                table.column("request_id", .text).notNull()
                table.column("key_id", .text).notNull()
                table.column("verified", .boolean).notNull()
                table.column("action", .text).notNull()
                table.column("incident_id", .text).notNull()
                table.column("target", .text).notNull()
                table.column("reason", .text).notNull()
                table.column("outcome", .text).notNull()
            }
            try db.create(index: "orchestrator_operator_audit_incident", on: "orchestrator_operator_audit", columns: ["incident_id"])
            try db.create(table: "orchestrator_unrepaired") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("at_unix_ms", .integer).notNull()
                table.column("host", .text).notNull()
                table.column("disk_key", .text).notNull()
                table.column("reasons", .text).notNull()
                table.column("why", .text).notNull()
            }
        },
        LocalStore.Migration("orchestrator-v3: incident messages go through the shared outbox") { db in
            // What the old sender had not yet delivered moves to the outbox, in order.
            try db.execute(sql: """
                INSERT INTO outbox(message_id, topic, payload, retain, created_unix_ms)
                SELECT 'orchestrator-message-' || id, topic, payload, retain, 0 FROM orchestrator_message ORDER BY id
                """)
            try db.drop(table: "orchestrator_message")
        },
        LocalStore.Migration("orchestrator-v4: incident timeline") { db in
            try db.create(table: "orchestrator_incident_step") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("incident_id", .text).notNull()
                table.column("at_unix_ms", .integer).notNull()
                table.column("state", .text).notNull()
                table.column("step", .text).notNull()
                table.column("detail", .text).notNull()
            }
            try db.create(index: "orchestrator_incident_step_incident", on: "orchestrator_incident_step", columns: ["incident_id"])
        },
        LocalStore.Migration("orchestrator-v5: hardware incidents") { db in
            try db.create(table: "orchestrator_hardware_incident") { table in
                table.primaryKey("id", .text)
                table.column("host", .text).notNull()
                table.column("part_id", .text).notNull()
                table.column("open", .boolean).notNull()
                table.column("record", .blob).notNull()
                table.column("opened_unix_ms", .integer).notNull()
                table.column("updated_unix_ms", .integer).notNull()
            }
            try db.create(index: "orchestrator_hardware_incident_open", on: "orchestrator_hardware_incident", columns: ["open"])
        },
    ]

    /// Hardware incidents not closed (``HardwareIncidents``).
    func openHardwareIncidents() throws -> [HardwareIncidents.Incident] {
        try store.database.read(Self.openHardwareIncidents)
    }

    static func openHardwareIncidents(_ db: Database) throws -> [HardwareIncidents.Incident] {
        try Data.fetchAll(db, sql: "SELECT record FROM orchestrator_hardware_incident WHERE open ORDER BY opened_unix_ms")
            .map { try JSONDecoder().decode(HardwareIncidents.Incident.self, from: $0) }
    }

    /// Writes hardware incidents as they are now, inside `Outbox.commit` with their messages.
    func hardwareChanges(_ incidents: [HardwareIncidents.Incident]) throws -> @Sendable (Database) throws -> Void {
        let rows = try incidents.map { ($0, try JSONEncoder().encode($0)) }
        return { db in
            for (incident, record) in rows {
                try db.execute(sql: """
                    INSERT INTO orchestrator_hardware_incident(id, host, part_id, open, record, opened_unix_ms, updated_unix_ms)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET open = excluded.open, record = excluded.record, updated_unix_ms = excluded.updated_unix_ms
                    """, arguments: [incident.id, incident.host, incident.partID, incident.isOpen, record, incident.openedMs, incident.updatedMs])
            }
        }
    }

    /// One entry of an incident's timeline: a state it entered, or a new detail in it.
    public struct TimelineEntry: Sendable, Equatable, Codable {
        public var atUnixMs: Int64
        /// The machine's state (`checkingSafety`, ...).
        public var state: String
        /// The step in flight (`safe`, `remove`, `ticket`, `add`; empty for none).
        public var step: String
        public var detail: String
    }

    /// One operator command and what became of it (the audit trail).
    public struct AuditEntry: Sendable, Equatable {
        /// When the orchestrator answered (unix ms).
        public var atMs: Int64
        /// The command's own id (chosen by the CLI).
        public var requestID: String
        /// The key that signed it when verified; otherwise the key id it claimed.
        public var keyID: String
        public var verified: Bool
        /// "show", "retry", "cancel", "resolve", "maintenance-on", "maintenance-off".
        public var action: String
        /// The incident it named (empty for maintenance).
        public var incidentID: String
        /// What else it named ("host stor1", "disk X on stor1").
        public var target: String
        /// Why, as the operator wrote it.
        public var reason: String
        /// "done: ..." or "refused: ...".
        public var outcome: String
        /// An entry as written.
        public init(atMs: Int64, requestID: String, keyID: String, verified: Bool, action: String, incidentID: String, target: String, reason: String, outcome: String) {
            self.atMs = atMs
            self.requestID = requestID
            self.keyID = keyID
            self.verified = verified
            self.action = action
            self.incidentID = incidentID
            self.target = target
            self.reason = reason
            self.outcome = outcome
        }
    }

    /// A failure the orchestrator did not repair (a maintenance window covered it).
    public struct Unrepaired: Sendable, Equatable {
        /// When the failure was held back (unix ms).
        public var atMs: Int64
        public var host: String
        public var diskKey: String
        /// The detector's reasons for the failure.
        public var reasons: [String]
        /// Which window held it back, by whom and why.
        public var why: String
        /// A failure as recorded.
        public init(atMs: Int64, host: String, diskKey: String, reasons: [String], why: String) {
            self.atMs = atMs
            self.host = host
            self.diskKey = diskKey
            self.reasons = reasons
            self.why = why
        }
    }

    /// What one batch of inputs changed besides incidents and messages.
    public struct Extras: Sendable {
        /// The removal rate limiter, when it changed.
        public var bucket: ClusterBrake.Bucket?
        /// The maintenance windows, when they changed.
        public var maintenance: MaintenanceBook?
        /// Operator commands answered in the batch.
        public var audit: [AuditEntry] = []
        /// Failures held back by maintenance in the batch.
        public var unrepaired: [Unrepaired] = []
        /// What a batch changed besides incidents.
        public init(bucket: ClusterBrake.Bucket? = nil, maintenance: MaintenanceBook? = nil, audit: [AuditEntry] = [], unrepaired: [Unrepaired] = []) {
            self.bucket = bucket
            self.maintenance = maintenance
            self.audit = audit
            self.unrepaired = unrepaired
        }
    }

    /// Incidents not closed (stuck and kept-out cancelled ones included: their disks may be out).
    public func openIncidents() throws -> [IncidentMachine] {
        try store.database.read(Self.openIncidents)
    }

    /// ``openIncidents()`` on `db`: the journal's connection, or a read-only one
    /// (``LocalStore/readOnlyConnection()``).
    public static func openIncidents(_ db: Database) throws -> [IncidentMachine] {
        try Data.fetchAll(db, sql: "SELECT machine FROM orchestrator_incident WHERE open ORDER BY updated_unix_ms")
            .map(Self.machine(from:))
    }

    /// The open incidents, `pageSize` at a time, each page handed to `body` before the next
    /// is read: never all of them in memory at once.
    public func openIncidents(pageSize: Int, _ body: ([IncidentMachine]) throws -> Void) throws {
        var after: Int64 = 0
        while true {
            let rows = try store.database.read { db in
                try Row.fetchAll(db.cachedStatement(sql: "SELECT rowid, machine FROM orchestrator_incident WHERE open AND rowid > ? ORDER BY rowid LIMIT ?"),
                                 arguments: [after, pageSize])
            }
            guard let last = rows.last else { return }
            after = last["rowid"]
            try body(try rows.map { try Self.machine(from: $0["machine"]) })
        }
    }

    /// The open incidents among `ids` (the core asked for their machines), read in one
    /// transaction.
    public func openIncidents(ids: [String]) throws -> [IncidentMachine] {
        try store.database.read { db in
            let statement = try db.cachedStatement(sql: "SELECT machine FROM orchestrator_incident WHERE id = ? AND open")
            return try ids.compactMap { id in
                try Data.fetchOne(statement, arguments: [id]).map(Self.machine(from:))
            }
        }
    }

    /// How the journal stores a machine: protobuf (proto/bynar/v1/journal.proto).
    public static func record(of machine: IncidentMachine) throws -> Data {
        try machine.journalRecord.serializedData()
    }

    /// The machine a journal row holds: protobuf, or JSON as versions before the protobuf
    /// record wrote it (a JSON object begins with '{'; a record begins with field 1's tag).
    public static func machine(from data: Data) throws -> IncidentMachine {
        if data.first == UInt8(ascii: "{") {
            return try JSONDecoder().decode(IncidentMachine.self, from: data)
        }
        return try IncidentMachine(journalRecord: Bynar_V1_IncidentRecord(serializedBytes: data))
    }

    /// The timelines of `incidents`, oldest entry first, read on `db`.
    public static func timelines(_ db: Database, of incidents: [String]) throws -> [String: [TimelineEntry]] {
        var result: [String: [TimelineEntry]] = [:]
        for id in incidents {
            result[id] = try Row.fetchAll(db, sql: "SELECT * FROM orchestrator_incident_step WHERE incident_id = ? ORDER BY id", arguments: [id]).map { row in
                TimelineEntry(atUnixMs: row["at_unix_ms"], state: row["state"], step: row["step"], detail: row["detail"])
            }
        }
        return result
    }

    /// When the latest incident of each disk ("host/key") was opened, open or not: a
    /// retained FAILED health older than that is the same failure, not a new one.
    public func latestOpenings() throws -> [String: Int64] {
        try store.database.read { db in
            var result: [String: Int64] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT host, disk_key, MAX(opened_unix_ms) AS opened FROM orchestrator_incident GROUP BY host, disk_key") {
                result["\(row["host"] as String)/\(row["disk_key"] as String)"] = row["opened"]
            }
            return result
        }
    }

    /// One incident by id, open or not.
    public func incident(id: String) throws -> IncidentMachine? {
        try store.database.read { db in
            try Data.fetchOne(db, sql: "SELECT machine FROM orchestrator_incident WHERE id = ?", arguments: [id])
                .map(Self.machine(from:))
        }
    }

    /// The changed incidents, the brake's bucket, the maintenance windows, audit entries and
    /// unrepaired failures, as one write for `Outbox.commit`, which writes them in the same
    /// transaction as the messages that report them.
    public func changes(_ incidents: [IncidentMachine], extras: Extras = Extras()) throws -> @Sendable (Database) throws -> Void {
        let encoder = JSONEncoder()
        let rows = try incidents.map { ($0, try Self.record(of: $0)) }
        let bucketText = try extras.bucket.map { String(decoding: try encoder.encode($0), as: UTF8.self) }
        let maintenanceText = try extras.maintenance.map { String(decoding: try encoder.encode($0), as: UTF8.self) }
        return { db in
            // Prepared once per connection, not parsed again for every incident of every batch.
            let upsert = try db.cachedStatement(sql: """
                INSERT INTO orchestrator_incident(id, host, disk_key, state, open, machine, opened_unix_ms, updated_unix_ms) VALUES(?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET state = excluded.state, open = excluded.open, machine = excluded.machine,
                    updated_unix_ms = excluded.updated_unix_ms
                """)
            let timeline = try db.cachedStatement(sql: """
                INSERT INTO orchestrator_incident_step(incident_id, at_unix_ms, state, step, detail)
                SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (
                    SELECT 1 FROM orchestrator_incident_step WHERE state = ? AND detail = ?
                    AND id = (SELECT MAX(id) FROM orchestrator_incident_step WHERE incident_id = ?))
                """)
            for (machine, data) in rows {
                try upsert.execute(arguments: [machine.id, machine.disk.host, machine.disk.key, machine.state.rawValue,
                                               !machine.isClosed, data, machine.openedMs, machine.updatedMs])
                // The timeline gets an entry when the state or its detail changed.
                let step = machine.step?.rawValue ?? ""
                try timeline.execute(arguments: [machine.id, machine.updatedMs, machine.state.rawValue, step, machine.detail,
                                                 machine.state.rawValue, machine.detail, machine.id])
            }
            if let bucketText {
                try db.execute(sql: "INSERT INTO setting(key, value) VALUES('orchestrator.brake_bucket', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                               arguments: [bucketText])
            }
            if let maintenanceText {
                try db.execute(sql: "INSERT INTO setting(key, value) VALUES('orchestrator.maintenance', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                               arguments: [maintenanceText])
            }
            for entry in extras.audit {
                try db.execute(sql: """
                    INSERT INTO orchestrator_operator_audit(at_unix_ms, request_id, key_id, verified, action, incident_id, target, reason, outcome)
                    VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [entry.atMs, entry.requestID, entry.keyID, entry.verified, entry.action, entry.incidentID, entry.target, entry.reason, entry.outcome])
            }
            for failure in extras.unrepaired {
                try db.execute(sql: "INSERT INTO orchestrator_unrepaired(at_unix_ms, host, disk_key, reasons, why) VALUES(?, ?, ?, ?, ?)",
                               arguments: [failure.atMs, failure.host, failure.diskKey, failure.reasons.joined(separator: "; "), failure.why])
            }
        }
    }

    /// The maintenance windows as last committed (an empty book when none ever was).
    public func maintenance() throws -> MaintenanceBook {
        try store.database.read { db in
            try String.fetchOne(db, sql: "SELECT value FROM setting WHERE key = 'orchestrator.maintenance'")
                .map { try JSONDecoder().decode(MaintenanceBook.self, from: Data($0.utf8)) } ?? MaintenanceBook()
        }
    }

    /// The audit trail, oldest first: of one incident, or all of it when `incidentID` is nil.
    public func audit(incidentID: String? = nil) throws -> [AuditEntry] {
        try store.database.read { db in
            let rows = if let incidentID {
                try Row.fetchAll(db, sql: "SELECT * FROM orchestrator_operator_audit WHERE incident_id = ? ORDER BY id", arguments: [incidentID])
            } else {
                try Row.fetchAll(db, sql: "SELECT * FROM orchestrator_operator_audit ORDER BY id")
            }
            return rows.map { row in
                AuditEntry(atMs: row["at_unix_ms"], requestID: row["request_id"], keyID: row["key_id"], verified: row["verified"], action: row["action"],
                           incidentID: row["incident_id"], target: row["target"], reason: row["reason"], outcome: row["outcome"])
            }
        }
    }

    /// Failures left unrepaired because of maintenance, oldest first.
    public func unrepaired() throws -> [Unrepaired] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM orchestrator_unrepaired ORDER BY id").map { row in
                Unrepaired(atMs: row["at_unix_ms"], host: row["host"], diskKey: row["disk_key"],
                           reasons: (row["reasons"] as String).components(separatedBy: "; "), why: row["why"])
            }
        }
    }

    /// The removal rate limiter as last committed.
    public func bucket() throws -> ClusterBrake.Bucket? {
        try store.database.read(Self.bucket)
    }

    /// ``bucket()`` on `db`.
    public static func bucket(_ db: Database) throws -> ClusterBrake.Bucket? {
        try String.fetchOne(db, sql: "SELECT value FROM setting WHERE key = 'orchestrator.brake_bucket'")
            .map { try JSONDecoder().decode(ClusterBrake.Bucket.self, from: Data($0.utf8)) }
    }


    // MARK: Hook events

    /// Records that `eventID` is being handled; false when it was handled (or started) before.
    /// An "up" forgets the same service's handled "down" events: a will carries the same
    /// message id every time one run of a service loses its connection.
    public func claimHookEvent(_ eventID: String, host: String, service: String, up: Bool, nowMs: Int64) throws -> Bool {
        try store.write { db in
            if up {
                try db.execute(sql: "DELETE FROM orchestrator_hook_event WHERE host = ? AND service = ? AND NOT up", arguments: [host, service])
            }
            try db.execute(sql: "INSERT OR IGNORE INTO orchestrator_hook_event(event_id, host, service, up, started_unix_ms) VALUES(?, ?, ?, ?, ?)",
                           arguments: [eventID, host, service, up, nowMs])
            return db.changesCount == 1
        }
    }

    public func finishHookEvent(_ eventID: String) throws {
        try store.write { db in
            try db.execute(sql: "UPDATE orchestrator_hook_event SET finished = 1 WHERE event_id = ?", arguments: [eventID])
        }
    }

    /// Forgets handled events older than `beforeMs` (the journal only has to outlive redelivery).
    public func pruneHookEvents(beforeMs: Int64) throws {
        try store.write { db in
            try db.execute(sql: "DELETE FROM orchestrator_hook_event WHERE started_unix_ms < ?", arguments: [beforeMs])
        }
    }
}

/// A queue one task drains: ``post(_:)`` from anywhere, ``next(upTo:)`` takes what was
/// posted so far, oldest first (waiting while there is nothing).
final class Mailbox<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        /// Items before this index were taken.
        var head = 0
        var waiter: CheckedContinuation<Void, Never>?

        mutating func take(_ limit: Int) -> [Element] {
            let end = min(items.count, head + limit)
            let taken = Array(items[head..<end])
            head = end
            if head == items.count {
                // A flood's backlog does not keep its room once drained.
                items.removeAll(keepingCapacity: items.capacity <= 1024)
                head = 0
            } else if head >= 4096 && head * 2 >= items.count {
                items.removeFirst(head)
                head = 0
            }
            return taken
        }
    }
    private let state = Mutex(State())

    init() {}

    func post(_ element: Element) { post(contentsOf: [element]) }

    func post(contentsOf elements: [Element]) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.items += elements
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Everything posted so far, at most `limit` items; waits for at least one. Returns []
    /// when the task is cancelled.
    func next(upTo limit: Int = .max) async -> [Element] {
        while !Task.isCancelled {
            let taken = state.withLock { $0.take(limit) }
            if !taken.isEmpty { return taken }
            await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    let ready = state.withLock { state -> Bool in
                        if state.head < state.items.count { return true }
                        state.waiter = continuation
                        return false
                    }
                    if ready { continuation.resume() }
                }
            } onCancel: {
                let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                    defer { state.waiter = nil }
                    return state.waiter
                }
                waiter?.resume()
            }
        }
        return []
    }
}
