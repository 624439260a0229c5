public import BynarProto
public import BynarStore
import GRDB
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The ticketing's own tables: the work queue (every accepted request, stored before it
/// is answered, kept until it is done or has failed for good) and the incident → ticket
/// record (one row per incident: the ticket, its state, when to check it next).
public struct TicketStore: Sendable {
    let store: LocalStore

    public init(store: LocalStore) {
        self.store = store
    }

    public static let migrations: [LocalStore.Migration] = [
        LocalStore.Migration("ticketing-v1: work queue and incident tickets") { db in
            try db.create(table: "ticket_work") { table in
                table.autoIncrementedPrimaryKey("id")
                // The envelope's message id: a request delivered twice is stored once.
                table.column("message_id", .text).notNull().unique()
                table.column("incident_id", .text).notNull()
                table.column("request", .blob).notNull()
                table.column("received_unix_ms", .integer).notNull()
                // pending until done, or failed (kept, with the reason) when it cannot succeed.
                table.column("state", .text).notNull().defaults(to: "pending")
                table.column("attempts", .integer).notNull().defaults(to: 0)
                table.column("last_error", .text)
                table.column("finished_unix_ms", .integer)
            }
            try db.create(index: "ticket_work_by_state", on: "ticket_work", columns: ["state", "id"])
            try db.create(table: "incident_ticket") { table in
                table.primaryKey("incident_id", .text)
                table.column("ticket_key", .text).notNull()
                table.column("ticket_number", .integer).notNull()
                table.column("url", .text).notNull()
                // open, resolved or closed.
                table.column("state", .text).notNull()
                table.column("detail", .text).notNull().defaults(to: "")
                table.column("backend", .text).notNull()
                // Whether the TicketEvent for the current state is in the outbox yet.
                table.column("announced", .boolean).notNull().defaults(to: false)
                table.column("changed_unix_ms", .integer).notNull()
                // Follow schedule; null when not followed (resolved, closed, or the backend cannot).
                table.column("next_check_unix_ms", .integer)
                table.column("check_interval_s", .integer).notNull().defaults(to: 0)
                // Whether the post-create search for duplicates was repeated at the first check.
                table.column("duplicates_checked", .boolean).notNull().defaults(to: false)
            }
            try db.create(index: "incident_ticket_next_check", on: "incident_ticket", columns: ["next_check_unix_ms"])
        },
    ]

    // MARK: Work queue

    /// One stored request.
    public struct Work: Sendable, Equatable {
        public var id: Int64
        public var messageId: String
        public var request: Bynar_V1_TicketRequest
        public var attempts: Int
        public var receivedUnixMs: Int64
    }

    /// Stores a request (once per message id); returns its work id, or nil when that
    /// message was stored before.
    public func accept(messageId: String, request: Bynar_V1_TicketRequest, nowMs: Int64) throws -> Int64? {
        let bytes: [UInt8] = try request.serializedBytes()
        return try store.database.write { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO ticket_work(message_id, incident_id, request, received_unix_ms) VALUES(?, ?, ?, ?)",
                arguments: [messageId, request.incidentID, Data(bytes), nowMs]
            )
            return db.changesCount > 0 ? db.lastInsertedRowID : nil
        }
    }

    /// The oldest pending work as (work id, incident), without decoding the requests.
    public func pendingWorkHeads(limit: Int) throws -> [(Int64, String)] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT id, incident_id FROM ticket_work WHERE state = 'pending' ORDER BY id LIMIT ?", arguments: [limit]).map { ($0["id"], $0["incident_id"]) }
        }
    }

    /// One stored request, whatever its state.
    public func work(id: Int64) throws -> Work? {
        try store.database.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT id, message_id, request, attempts, received_unix_ms FROM ticket_work WHERE id = ?", arguments: [id]) else { return nil }
            return Work(id: row["id"], messageId: row["message_id"], request: try Bynar_V1_TicketRequest(serializedBytes: [UInt8](row["request"] as Data)),
                        attempts: row["attempts"], receivedUnixMs: row["received_unix_ms"])
        }
    }

    /// Puts failed work back in the queue (after a restart the settings may be fixed);
    /// returns how many.
    @discardableResult
    public func requeueFailed() throws -> Int {
        try store.database.write { db in
            try db.execute(sql: "UPDATE ticket_work SET state = 'pending', finished_unix_ms = NULL WHERE state = 'failed'")
            return db.changesCount
        }
    }

    /// (state, count) of all stored work, for tests and logs.
    public func workCounts() throws -> [String: Int] {
        try store.database.read { db in
            Dictionary(uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM ticket_work GROUP BY state").map { ($0["state"], $0["n"]) })
        }
    }

    /// How a stored request ended: nil while it waits (or when no request of that message
    /// id is stored), "" when done, the reason when it failed for good.
    public func outcome(messageId: String) throws -> String? {
        try store.database.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT state, last_error FROM ticket_work WHERE message_id = ?", arguments: [messageId]) else { return nil }
            switch row["state"] as String {
            case "done": return ""
            case "failed": return (row["last_error"] as String?) ?? "failed"
            default: return nil
            }
        }
    }

    public func pendingCount() throws -> Int {
        try store.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM ticket_work WHERE state = 'pending'") ?? 0 }
    }

    /// Records a failed attempt that will be retried.
    public func recordAttempt(workId: Int64, error: String) throws {
        try store.database.write { db in
            try db.execute(sql: "UPDATE ticket_work SET attempts = attempts + 1, last_error = ? WHERE id = ?", arguments: [error, workId])
        }
    }

    /// Marks work done (`error` nil) or failed for good (kept with the reason).
    public func finish(workId: Int64, error: String?, nowMs: Int64) throws {
        try store.database.write { db in
            try db.execute(
                sql: "UPDATE ticket_work SET state = ?, last_error = COALESCE(?, last_error), finished_unix_ms = ?, attempts = attempts + 1 WHERE id = ?",
                arguments: [error == nil ? "done" : "failed", error, nowMs, workId]
            )
        }
    }

    /// Forgets finished work older than `beforeMs` (failed work is kept for people to read).
    public func pruneDone(beforeMs: Int64) throws {
        try store.database.write { db in
            try db.execute(sql: "DELETE FROM ticket_work WHERE state = 'done' AND finished_unix_ms < ?", arguments: [beforeMs])
        }
    }

    // MARK: Incident tickets

    public enum State: String, Sendable {
        case open, resolved, closed
    }

    /// One incident's ticket.
    public struct Ticket: Sendable, Equatable {
        public var incidentId: String
        public var ref: TicketRef
        public var state: State
        public var detail: String
        public var backend: String
        public var announced: Bool
        public var changedUnixMs: Int64
        public var nextCheckUnixMs: Int64?
        public var checkIntervalSeconds: Int
        public var duplicatesChecked: Bool
    }

    private static let columns = "incident_id, ticket_key, ticket_number, url, state, detail, backend, announced, changed_unix_ms, next_check_unix_ms, check_interval_s, duplicates_checked"

    private static func ticket(_ row: Row) -> Ticket {
        Ticket(
            incidentId: row["incident_id"], ref: TicketRef(key: row["ticket_key"], number: row["ticket_number"], url: row["url"]),
            state: State(rawValue: row["state"]) ?? .open, detail: row["detail"], backend: row["backend"], announced: row["announced"],
            changedUnixMs: row["changed_unix_ms"], nextCheckUnixMs: row["next_check_unix_ms"], checkIntervalSeconds: row["check_interval_s"],
            duplicatesChecked: row["duplicates_checked"]
        )
    }

    public func ticket(incident: String) throws -> Ticket? {
        try store.database.read { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.columns) FROM incident_ticket WHERE incident_id = ?", arguments: [incident]).map(Self.ticket)
        }
    }

    /// Writes the incident's ticket (insert or replace), not yet announced.
    public func record(_ ticket: Ticket) throws {
        try store.database.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO incident_ticket(\(Self.columns)) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                arguments: [ticket.incidentId, ticket.ref.key, ticket.ref.number, ticket.ref.url, ticket.state.rawValue, ticket.detail,
                            ticket.backend, ticket.announced, ticket.changedUnixMs, ticket.nextCheckUnixMs, ticket.checkIntervalSeconds,
                            ticket.duplicatesChecked]
            )
        }
    }

    /// Says the event for the ticket's state as of `changedUnixMs` is in the outbox.
    public func markAnnounced(incident: String, changedUnixMs: Int64) throws {
        try store.database.write { db in
            try db.execute(sql: "UPDATE incident_ticket SET announced = 1 WHERE incident_id = ? AND changed_unix_ms = ?", arguments: [incident, changedUnixMs])
        }
    }

    /// Tickets whose current state was not announced yet (a crash came in between).
    public func unannounced() throws -> [Ticket] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT \(Self.columns) FROM incident_ticket WHERE announced = 0").map(Self.ticket)
        }
    }

    /// Followed tickets due for a check at `nowMs`, earliest first.
    public func dueForCheck(nowMs: Int64, limit: Int) throws -> [Ticket] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT \(Self.columns) FROM incident_ticket WHERE next_check_unix_ms IS NOT NULL AND next_check_unix_ms <= ? ORDER BY next_check_unix_ms LIMIT ?", arguments: [nowMs, limit]).map(Self.ticket)
        }
    }

    /// When the next followed ticket is due, if any is followed.
    public func nextCheckDue() throws -> Int64? {
        try store.database.read { db in try Int64.fetchOne(db, sql: "SELECT MIN(next_check_unix_ms) FROM incident_ticket") }
    }

    /// Sets a ticket's next check (nil: stop following).
    public func schedule(incident: String, nextCheckUnixMs: Int64?, intervalSeconds: Int, duplicatesChecked: Bool) throws {
        try store.database.write { db in
            try db.execute(
                sql: "UPDATE incident_ticket SET next_check_unix_ms = ?, check_interval_s = ?, duplicates_checked = ? WHERE incident_id = ?",
                arguments: [nextCheckUnixMs, intervalSeconds, duplicatesChecked, incident]
            )
        }
    }

    /// How many incidents have a ticket, by state (for tests and the benchmark).
    public func ticketCount() throws -> Int {
        try store.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM incident_ticket") ?? 0 }
    }
}
