public import BynarConfig
public import BynarStore
import GRDB
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The built-in ticket backend: tickets kept in ticketing's own SQLite store, for teams
/// without JIRA (and the local demo). A person resolves one with `bynar tickets resolve`
/// (a signed operator command, ``TicketOperatorDesk``); the follow loop then reports it
/// RESOLVED exactly as it does a JIRA ticket a technician resolved.
///
/// It can search (tickets carry the incident's label) and be followed. Its tickets live in
/// one instance's store: run a single bynar-ticketing with this backend (another instance
/// would keep tickets of its own, and `bynar tickets resolve` reaches one of them).
public struct LocalBackend: TicketBackend {
    public let name = "local"
    public let canSearch = true
    public let canFollow = true
    let keyPrefix: String
    let store: LocalStore

    public init(_ local: TicketingSettings.Local, store: LocalStore) {
        keyPrefix = local.keyPrefix
        self.store = store
    }

    public static let migrations: [LocalStore.Migration] = [
        LocalStore.Migration("ticketing-local-v1: local tickets") { db in
            try db.create(table: "local_ticket") { table in
                // The ticket's number: `<prefix>-<number>`.
                table.autoIncrementedPrimaryKey("number")
                table.column("ticket_key", .text).notNull().unique()
                table.column("incident_id", .text).notNull().indexed()
                table.column("label", .text).notNull()
                table.column("summary", .text).notNull()
                table.column("description", .text).notNull()
                // open, resolved, closed or discarded (a duplicate).
                table.column("state", .text).notNull().defaults(to: "open")
                // Who resolved it (the operator key id) and why.
                table.column("resolved_by", .text)
                table.column("resolution", .text)
                table.column("created_unix_ms", .integer).notNull()
                table.column("changed_unix_ms", .integer).notNull()
            }
            try db.create(table: "local_ticket_comment") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("ticket_key", .text).notNull().indexed()
                table.column("text", .text).notNull()
                table.column("at_unix_ms", .integer).notNull()
            }
        },
    ]

    /// One local ticket as stored.
    public struct Ticket: Sendable, Equatable {
        public var ref: TicketRef
        public var incidentID: String
        public var summary: String
        public var state: String
        public var resolvedBy: String?
        public var resolution: String?
    }

    /// What ``resolve(_:by:reason:nowMs:)`` found.
    public enum Resolution: Sendable, Equatable {
        /// Resolved now.
        case resolved(Ticket)
        /// Nothing done: the ticket was resolved, closed or discarded before.
        case alreadyDone(Ticket)
        /// No ticket has that key, and no incident that id.
        case unknown
    }

    static func now() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    /// Runs `body` on the store; a store failure is the backend being unavailable (retried).
    private func database<T>(_ body: (Database) throws -> T, write: Bool = false) throws(TicketBackendError) -> T {
        do {
            return write ? try store.database.write(body) : try store.database.read(body)
        } catch {
            throw .unavailable(detail: "local ticket store: \(error)")
        }
    }

    private static let columns = "number, ticket_key, incident_id, summary, state, resolved_by, resolution"

    private static func ticket(_ row: Row) -> Ticket {
        Ticket(ref: TicketRef(key: row["ticket_key"], number: row["number"], url: ""), incidentID: row["incident_id"], summary: row["summary"],
               state: row["state"], resolvedBy: row["resolved_by"], resolution: row["resolution"])
    }

    public func create(_ ticket: NewTicket) async throws(TicketBackendError) -> TicketRef {
        let label = TicketText.incidentLabel(ticket.incidentID)
        let prefix = keyPrefix
        let now = Self.now()
        return try database({ db in
            // The key names the number SQLite gives the row: insert, then set it.
            try db.execute(
                sql: "INSERT INTO local_ticket(ticket_key, incident_id, label, summary, description, created_unix_ms, changed_unix_ms) VALUES(?, ?, ?, ?, ?, ?, ?)",
                arguments: ["pending-\(UUID().uuidString)", ticket.incidentID, label, ticket.summary, ticket.description, now, now]
            )
            let number = Int(db.lastInsertedRowID)
            let key = "\(prefix)-\(number)"
            try db.execute(sql: "UPDATE local_ticket SET ticket_key = ? WHERE number = ?", arguments: [key, number])
            return TicketRef(key: key, number: number, url: "")
        }, write: true)
    }

    public func find(incidentID: String) async throws(TicketBackendError) -> [TicketRef] {
        let label = TicketText.incidentLabel(incidentID)
        return try database { db in
            try Row.fetchAll(db, sql: "SELECT \(Self.columns) FROM local_ticket WHERE label = ? AND state != 'discarded' ORDER BY number", arguments: [label])
                .map { Self.ticket($0).ref }
        }
    }

    public func comment(key: String, text: String) async throws(TicketBackendError) {
        let now = Self.now()
        let found = try database({ db in
            guard try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM local_ticket WHERE ticket_key = ?", arguments: [key]) == 1 else { return false }
            try db.execute(sql: "INSERT INTO local_ticket_comment(ticket_key, text, at_unix_ms) VALUES(?, ?, ?)", arguments: [key, text, now])
            return true
        }, write: true)
        if !found { throw .rejected(status: 404, detail: "no local ticket \(key)") }
    }

    public func close(key: String) async throws(TicketBackendError) {
        let now = Self.now()
        let found = try database({ db in
            try db.execute(sql: "UPDATE local_ticket SET state = 'closed', changed_unix_ms = ? WHERE ticket_key = ? AND state IN ('open', 'resolved')", arguments: [now, key])
            return try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM local_ticket WHERE ticket_key = ?", arguments: [key]) == 1
        }, write: true)
        if !found { throw .rejected(status: 404, detail: "no local ticket \(key)") }
    }

    public func status(key: String) async throws(TicketBackendError) -> TicketStatus {
        guard let ticket = try self.ticket(key: key) else { return .gone }
        switch ticket.state {
        case "open": return .open(status: "open")
        case "discarded": return .gone
        default:
            let by = ticket.resolvedBy.map { "by \($0)" } ?? ""
            let why = ticket.resolution.map { ": \($0)" } ?? ""
            return .resolved(status: ticket.state, resolution: by + why)
        }
    }

    public func discard(duplicate: TicketRef, kept: TicketRef) async throws(TicketBackendError) {
        let now = Self.now()
        try database({ db in
            try db.execute(sql: "UPDATE local_ticket SET state = 'discarded', resolution = ?, changed_unix_ms = ? WHERE ticket_key = ?",
                           arguments: ["duplicate of \(kept.key)", now, duplicate.key])
        }, write: true)
    }

    public func shutdown() async {}

    // MARK: For operators

    /// The ticket called `key`.
    public func ticket(key: String) throws(TicketBackendError) -> Ticket? {
        try database { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.columns) FROM local_ticket WHERE ticket_key = ?", arguments: [key]).map(Self.ticket)
        }
    }

    /// Marks the ticket `keyOrIncident` names (its key, else the incident whose ticket it is)
    /// resolved by `by` for `reason`, once: a ticket resolved, closed or discarded before is
    /// left as it is.
    public func resolve(_ keyOrIncident: String, by: String, reason: String, nowMs: Int64) throws(TicketBackendError) -> Resolution {
        let label = TicketText.incidentLabel(keyOrIncident)
        return try database({ db in
            let row = try Row.fetchOne(db, sql: "SELECT \(Self.columns) FROM local_ticket WHERE ticket_key = ?", arguments: [keyOrIncident])
                ?? Row.fetchOne(db, sql: "SELECT \(Self.columns) FROM local_ticket WHERE label = ? ORDER BY state != 'open', number LIMIT 1", arguments: [label])
            guard let row else { return .unknown }
            var ticket = Self.ticket(row)
            guard ticket.state == "open" else { return .alreadyDone(ticket) }
            try db.execute(sql: "UPDATE local_ticket SET state = 'resolved', resolved_by = ?, resolution = ?, changed_unix_ms = ? WHERE number = ?",
                           arguments: [by, reason, nowMs, ticket.ref.number])
            ticket.state = "resolved"
            ticket.resolvedBy = by
            ticket.resolution = reason
            return .resolved(ticket)
        }, write: true)
    }
}
