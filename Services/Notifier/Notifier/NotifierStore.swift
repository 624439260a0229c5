import BynarProto
import BynarStore
import GRDB
import SwiftProtobuf
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A notification as the notifier keeps it: completed from the incident history (where,
/// what next) when it arrived.
struct Notice: Sendable, Equatable {
    var notification: Bynar_V1_Notification
    var receivedUnixMs: Int64
}

/// What the notifier remembers of one incident, for messages and the digest.
/// A storage pool as its host last reported it.
struct PoolRecord: Sendable, Equatable {
    var host: String
    var state: Bynar_V1_PoolState
}

struct IncidentRecord: Sendable, Equatable {
    var id: String
    var host = ""
    var disk = Bynar_V1_DiskIdentity()
    var state = Bynar_V1_IncidentState.unspecified
    /// Why the disk was judged failed (the detector's reasons), one line.
    var reasons = ""
    var detail = ""
    var openedUnixMs: Int64 = 0
    var removedUnixMs: Int64?
    var resolvedUnixMs: Int64?
    /// Resolved or cancelled.
    var endedUnixMs: Int64?
    var ticketKey = ""
    var ticketURL = ""
    var ticketState = Bynar_V1_TicketState.unspecified
    var updatedUnixMs: Int64 = 0

    init(id: String) { self.id = id }

    /// Opened to back in service, when it was repaired.
    var timeToRepairMs: Int64? {
        guard let resolvedUnixMs, openedUnixMs > 0 else { return nil }
        return resolvedUnixMs - openedUnixMs
    }

    /// The ticket is filed and not closed yet.
    var ticketOpen: Bool {
        !ticketKey.isEmpty && (ticketState == .opened || ticketState == .resolved)
    }
}

/// The notifier's tables in its local store: notifications waiting to be coalesced, messages
/// waiting to be sent, messages parked after a refusal, and the incident history.
struct NotifierStore: Sendable {
    let store: LocalStore

    init(store: LocalStore) { self.store = store }

    static let migrations: [LocalStore.Migration] = [
        LocalStore.Migration("notifier-v1: queues and incident history") { db in
            try db.create(table: "notifier_pending") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("channel", .text).notNull()
                table.column("received_unix_ms", .integer).notNull()
                table.column("notification", .blob).notNull()
            }
            try db.create(index: "notifier_pending_channel", on: "notifier_pending", columns: ["channel", "received_unix_ms"])
            for name in ["notifier_outgoing", "notifier_parked"] {
                try db.create(table: name) { table in
                    table.autoIncrementedPrimaryKey("id")
                    table.column("channel", .text).notNull()
                    table.column("kind", .text).notNull()
                    table.column("subject", .text).notNull()
                    table.column("body", .text).notNull()
                    table.column("html", .text)
                    table.column("recipients", .text).notNull()
                    table.column("items", .integer).notNull()
                    table.column("created_unix_ms", .integer).notNull()
                    table.column("attempts", .integer).notNull().defaults(to: 0)
                    table.column("next_attempt_unix_ms", .integer).notNull().defaults(to: 0)
                    table.column("last_error", .text)
                    table.column("parked_unix_ms", .integer)
                }
            }
            try db.create(table: "notifier_incident") { table in
                table.primaryKey("id", .text)
                table.column("host", .text).notNull()
                table.column("disk", .blob).notNull()
                table.column("state", .integer).notNull()
                table.column("reasons", .text).notNull()
                table.column("detail", .text).notNull()
                table.column("opened_unix_ms", .integer).notNull()
                table.column("removed_unix_ms", .integer)
                table.column("resolved_unix_ms", .integer)
                table.column("ended_unix_ms", .integer)
                table.column("ticket_key", .text).notNull()
                table.column("ticket_url", .text).notNull()
                table.column("ticket_state", .integer).notNull()
                table.column("updated_unix_ms", .integer).notNull()
            }
            try db.create(index: "notifier_incident_updated", on: "notifier_incident", columns: ["updated_unix_ms"])
            try db.create(table: "notifier_host") { table in
                table.primaryKey("host", .text)
                table.column("up", .boolean).notNull()
                table.column("since_unix_ms", .integer).notNull()
            }
        },
        LocalStore.Migration("notifier-v2: notifications seen, by message id") { db in
            // Notifications are sent until the notifier answers (Outbox.Receipt): a copy of
            // one already queued is answered again and not queued twice.
            try db.create(table: "notifier_seen") { table in
                table.primaryKey("message_id", .text)
                table.column("seen_unix_ms", .integer).notNull()
            }
            try db.create(index: "notifier_seen_time", on: "notifier_seen", columns: ["seen_unix_ms"])
        },
        LocalStore.Migration("notifier-v3: storage pools as their hosts last reported them") { db in
            try db.create(table: "notifier_pool") { table in
                table.column("host", .text).notNull()
                table.column("pool", .text).notNull()
                table.column("state", .blob).notNull()
                table.column("observed_unix_ms", .integer).notNull()
                table.primaryKey(["host", "pool"])
            }
        },
    ]

    /// How long a notification's message id is remembered: well past the day its sender
    /// sends it for (`NotifierService.receipt`).
    static let seenForMs: Int64 = 2 * 86_400_000

    /// Whether a notification with this message id was queued before.
    func seen(messageId: String) throws -> Bool {
        try store.database.read { db in
            try Bool.fetchOne(db, sql: "SELECT EXISTS(SELECT 1 FROM notifier_seen WHERE message_id = ?)", arguments: [messageId]) ?? false
        }
    }

    /// Remembers a queued notification's message id, and forgets ids older than ``seenForMs``.
    func markSeen(messageId: String, nowMs: Int64) throws {
        try store.database.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO notifier_seen(message_id, seen_unix_ms) VALUES(?, ?)", arguments: [messageId, nowMs])
            try db.execute(sql: "DELETE FROM notifier_seen WHERE seen_unix_ms < ?", arguments: [nowMs - Self.seenForMs])
        }
    }

    // MARK: Waiting notifications

    func addPending(channel: String, notice: Notice, receivedUnixMs: Int64) throws {
        let bytes = try notice.notification.serializedBytes() as [UInt8]
        try store.database.write { db in
            try db.execute(sql: "INSERT INTO notifier_pending(channel, received_unix_ms, notification) VALUES(?, ?, ?)",
                           arguments: [channel, receivedUnixMs, Data(bytes)])
        }
    }

    /// When the oldest and the newest waiting notification of `channel` arrived, or nil.
    func pendingSpan(channel: String) throws -> (firstMs: Int64, lastMs: Int64)? {
        try store.database.read { db in
            let row = try Row.fetchOne(db, sql: "SELECT MIN(received_unix_ms) AS first, MAX(received_unix_ms) AS last FROM notifier_pending WHERE channel = ?", arguments: [channel])
            guard let row, let first: Int64 = row["first"], let last: Int64 = row["last"] else { return nil }
            return (first, last)
        }
    }

    /// In one transaction: every waiting notification of `channel` becomes one rendered
    /// message, stored for sending, and leaves the waiting list. Returns how many there were.
    func coalescePending(channel: String, render: ([Notice]) -> OutgoingMessage) throws -> Int {
        try store.database.write { db in
            let rows = try Row.fetchAll(db, sql: "SELECT id, received_unix_ms, notification FROM notifier_pending WHERE channel = ? ORDER BY id", arguments: [channel])
            guard !rows.isEmpty else { return 0 }
            var notices: [Notice] = []
            for row in rows {
                let data: Data = row["notification"]
                // Written by this code from a decoded message; a row that no longer decodes
                // is still told of rather than dropped.
                let notification = (try? Bynar_V1_Notification(serializedBytes: [UInt8](data))) ?? {
                    var unreadable = Bynar_V1_Notification()
                    unreadable.severity = .warning
                    unreadable.title = "A stored notification could not be read back (row \(row["id"] as Int64))"
                    return unreadable
                }()
                notices.append(Notice(notification: notification, receivedUnixMs: row["received_unix_ms"]))
            }
            try insert(db, render(notices))
            let last: Int64 = rows.last!["id"]
            try db.execute(sql: "DELETE FROM notifier_pending WHERE channel = ? AND id <= ?", arguments: [channel, last])
            return rows.count
        }
    }

    // MARK: Messages to send

    func addOutgoing(_ messages: [OutgoingMessage]) throws {
        try store.database.write { db in
            for message in messages { try insert(db, message) }
        }
    }

    private func insert(_ db: Database, _ message: OutgoingMessage) throws {
        try db.execute(sql: """
            INSERT INTO notifier_outgoing(channel, kind, subject, body, html, recipients, items, created_unix_ms)
            VALUES(?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [message.channel, message.kind, message.subject, message.text, message.html,
                             message.recipients.joined(separator: ","), message.items, message.createdUnixMs])
    }

    /// The oldest message of `channel` not yet sent (messages leave in order).
    func nextOutgoing(channel: String) throws -> OutgoingMessage? {
        try store.database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM notifier_outgoing WHERE channel = ? ORDER BY id LIMIT 1", arguments: [channel]).map(Self.message)
        }
    }

    private static func message(_ row: Row) -> OutgoingMessage {
        let recipients: String = row["recipients"]
        return OutgoingMessage(
            id: row["id"], channel: row["channel"], kind: row["kind"], subject: row["subject"], text: row["body"], html: row["html"],
            recipients: recipients.split(separator: ",").map(String.init), items: row["items"], createdUnixMs: row["created_unix_ms"],
            attempts: row["attempts"], nextAttemptUnixMs: row["next_attempt_unix_ms"]
        )
    }

    func removeOutgoing(id: Int64) throws {
        try store.database.write { db in try db.execute(sql: "DELETE FROM notifier_outgoing WHERE id = ?", arguments: [id]) }
    }

    func recordAttempt(id: Int64, error: String, nextAttemptUnixMs: Int64) throws {
        try store.database.write { db in
            try db.execute(sql: "UPDATE notifier_outgoing SET attempts = attempts + 1, last_error = ?, next_attempt_unix_ms = ? WHERE id = ?",
                           arguments: [error, nextAttemptUnixMs, id])
        }
    }

    /// Moves a refused message to `notifier_parked`, with the reason, so it is kept for
    /// an operator rather than lost or retried forever.
    func park(id: Int64, error: String, atUnixMs: Int64) throws {
        try store.database.write { db in
            try db.execute(sql: """
                INSERT INTO notifier_parked(channel, kind, subject, body, html, recipients, items, created_unix_ms, attempts, next_attempt_unix_ms, last_error, parked_unix_ms)
                SELECT channel, kind, subject, body, html, recipients, items, created_unix_ms, attempts + 1, 0, ?, ? FROM notifier_outgoing WHERE id = ?
                """, arguments: [error, atUnixMs, id])
            try db.execute(sql: "DELETE FROM notifier_outgoing WHERE id = ?", arguments: [id])
        }
    }

    /// Per channel: notifications waiting to be coalesced, messages waiting to be sent,
    /// messages parked.
    struct QueueCounts: Sendable, Equatable {
        var pending = 0
        var outgoing = 0
        var parked = 0
    }

    func queueCounts() throws -> [String: QueueCounts] {
        try store.database.read { db in
            var counts: [String: QueueCounts] = [:]
            for (table, key) in [("notifier_pending", \QueueCounts.pending), ("notifier_outgoing", \.outgoing), ("notifier_parked", \.parked)] {
                for row in try Row.fetchAll(db, sql: "SELECT channel, COUNT(*) AS n FROM \(table) GROUP BY channel") {
                    counts[row["channel"], default: QueueCounts()][keyPath: key] = row["n"]
                }
            }
            return counts
        }
    }

    /// Parked messages, newest first: channel, subject, why, when.
    func parked(limit: Int = 20) throws -> [(channel: String, subject: String, error: String, parkedUnixMs: Int64)] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT channel, subject, last_error, parked_unix_ms FROM notifier_parked ORDER BY id DESC LIMIT ?", arguments: [limit]).map {
                ($0["channel"], $0["subject"], $0["last_error"] ?? "", $0["parked_unix_ms"] ?? 0)
            }
        }
    }

    // MARK: Incident history

    /// Records the incident state an orchestrator's notification carries (nothing for one
    /// that carries none). Notifications are sent until answered, incident events at most
    /// once: so the history learns an incident's last transition (resolved, cancelled) even
    /// when this notifier lost the event that said it.
    func record(_ note: Bynar_V1_Notification, receivedUnixMs: Int64) throws {
        guard !note.incidentID.isEmpty, note.incidentState != .unspecified else { return }
        var event = Bynar_V1_IncidentEvent()
        event.incident.id = note.incidentID
        event.incident.state = note.incidentState
        event.incident.updatedUnixMs = note.incidentUpdatedUnixMs
        if note.hasDisk { event.incident.disk = note.disk }
        event.message = note.title
        try record(event, receivedUnixMs: receivedUnixMs, fromNotification: true)
    }

    /// Records an incident's new state; keeps the first time it reached each milestone.
    /// `fromNotification`: the state came without the transition (no `from_state`), so a
    /// resolution does not imply a removal.
    func record(_ event: Bynar_V1_IncidentEvent, receivedUnixMs: Int64, fromNotification: Bool = false) throws {
        let incident = event.incident
        guard !incident.id.isEmpty else { return }
        try store.database.write { db in
            var record = try Self.incident(db, id: incident.id) ?? IncidentRecord(id: incident.id)
            let at = incident.updatedUnixMs > 0 ? incident.updatedUnixMs : receivedUnixMs
            // Events may arrive out of order after a reconnect: an older one adds milestones
            // but does not roll the state back.
            let newer = at >= record.updatedUnixMs
            if incident.hasDisk { record.disk = incident.disk }
            record.host = record.disk.host.isEmpty ? record.host : record.disk.host
            if incident.openedUnixMs > 0 { record.openedUnixMs = incident.openedUnixMs }
            if record.openedUnixMs == 0 { record.openedUnixMs = at }
            if !incident.reasons.isEmpty { record.reasons = incident.reasons.map { $0.detail.isEmpty ? $0.rule : $0.detail }.joined(separator: "; ") }
            if !incident.ticketKey.isEmpty { record.ticketKey = incident.ticketKey }
            if newer {
                record.state = incident.state
                record.updatedUnixMs = at
                if !incident.detail.isEmpty || !event.message.isEmpty { record.detail = incident.detail.isEmpty ? event.message : incident.detail }
            }
            switch incident.state {
            case .removed, .ticketed, .waitingForReplacement, .adding:
                if record.removedUnixMs == nil { record.removedUnixMs = at }
            case .resolved:
                if record.removedUnixMs == nil && !fromNotification && event.fromState != .opened && event.fromState != .checkingSafety { record.removedUnixMs = at }
                record.resolvedUnixMs = record.resolvedUnixMs ?? at
                record.endedUnixMs = record.endedUnixMs ?? at
            case .cancelled:
                record.endedUnixMs = record.endedUnixMs ?? at
            default:
                break
            }
            try Self.save(db, record)
        }
    }

    /// Records a ticket's state against its incident.
    func record(_ event: Bynar_V1_TicketEvent, receivedUnixMs: Int64) throws {
        guard !event.incidentID.isEmpty else { return }
        try store.database.write { db in
            var record = try Self.incident(db, id: event.incidentID) ?? IncidentRecord(id: event.incidentID)
            if record.openedUnixMs == 0 { record.openedUnixMs = event.changedUnixMs > 0 ? event.changedUnixMs : receivedUnixMs }
            if !event.ticketKey.isEmpty { record.ticketKey = event.ticketKey }
            if !event.url.isEmpty { record.ticketURL = event.url }
            record.ticketState = event.state
            if record.updatedUnixMs == 0 { record.updatedUnixMs = record.openedUnixMs }
            try Self.save(db, record)
        }
    }

    func incident(id: String) throws -> IncidentRecord? {
        try store.database.read { db in try Self.incident(db, id: id) }
    }

    /// Incidents that matter for a report of `[sinceMs, now]`: opened, changed or ended in
    /// it, or still open. Oldest first.
    func incidents(sinceUnixMs sinceMs: Int64) throws -> [IncidentRecord] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: """
                SELECT * FROM notifier_incident
                WHERE updated_unix_ms >= ?1 OR opened_unix_ms >= ?1 OR ended_unix_ms >= ?1 OR ended_unix_ms IS NULL
                ORDER BY opened_unix_ms, id
                """, arguments: [sinceMs]).map(Self.incident)
        }
    }

    private static func incident(_ db: Database, id: String) throws -> IncidentRecord? {
        try Row.fetchOne(db, sql: "SELECT * FROM notifier_incident WHERE id = ?", arguments: [id]).map(incident)
    }

    private static func incident(_ row: Row) -> IncidentRecord {
        var record = IncidentRecord(id: row["id"])
        record.host = row["host"]
        let disk: Data = row["disk"]
        record.disk = (try? Bynar_V1_DiskIdentity(serializedBytes: [UInt8](disk))) ?? Bynar_V1_DiskIdentity()
        record.state = Bynar_V1_IncidentState(rawValue: row["state"]) ?? .unspecified
        record.reasons = row["reasons"]
        record.detail = row["detail"]
        record.openedUnixMs = row["opened_unix_ms"]
        record.removedUnixMs = row["removed_unix_ms"]
        record.resolvedUnixMs = row["resolved_unix_ms"]
        record.endedUnixMs = row["ended_unix_ms"]
        record.ticketKey = row["ticket_key"]
        record.ticketURL = row["ticket_url"]
        record.ticketState = Bynar_V1_TicketState(rawValue: row["ticket_state"]) ?? .unspecified
        record.updatedUnixMs = row["updated_unix_ms"]
        return record
    }

    private static func save(_ db: Database, _ record: IncidentRecord) throws {
        let disk = try record.disk.serializedBytes() as [UInt8]
        try db.execute(sql: """
            INSERT OR REPLACE INTO notifier_incident(id, host, disk, state, reasons, detail, opened_unix_ms, removed_unix_ms, resolved_unix_ms,
                ended_unix_ms, ticket_key, ticket_url, ticket_state, updated_unix_ms)
            VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [record.id, record.host, Data(disk), record.state.rawValue, record.reasons, record.detail, record.openedUnixMs,
                             record.removedUnixMs, record.resolvedUnixMs, record.endedUnixMs, record.ticketKey, record.ticketURL,
                             record.ticketState.rawValue, record.updatedUnixMs])
    }

    // MARK: Storage pools

    /// A pool's state from `host` (the topic's host); an older reading than the one kept is
    /// ignored (retained copies and reconnects may bring one).
    func record(pool state: Bynar_V1_PoolState, host: String) throws {
        guard !state.pool.isEmpty else { return }
        let bytes = try state.serializedBytes() as [UInt8]
        try store.database.write { db in
            try db.execute(sql: """
                INSERT INTO notifier_pool(host, pool, state, observed_unix_ms) VALUES(?, ?, ?, ?)
                ON CONFLICT(host, pool) DO UPDATE SET state = excluded.state, observed_unix_ms = excluded.observed_unix_ms
                WHERE excluded.observed_unix_ms >= notifier_pool.observed_unix_ms
                """, arguments: [host, state.pool, Data(bytes), state.observedUnixMs])
        }
    }

    /// Every pool reported since `sinceUnixMs`, by host and name.
    func pools(sinceUnixMs: Int64) throws -> [PoolRecord] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT host, state FROM notifier_pool WHERE observed_unix_ms >= ? ORDER BY host, pool", arguments: [sinceUnixMs]).compactMap { row in
                let bytes: Data = row["state"]
                guard let state = try? Bynar_V1_PoolState(serializedBytes: [UInt8](bytes)) else { return nil }
                return PoolRecord(host: row["host"], state: state)
            }
        }
    }

    // MARK: Hosts and settings

    /// The last up/down state recorded for `host`.
    func hostState(_ host: String) throws -> (up: Bool, sinceUnixMs: Int64)? {
        try store.database.read { db in
            try Row.fetchOne(db, sql: "SELECT up, since_unix_ms FROM notifier_host WHERE host = ?", arguments: [host]).map { ($0["up"], $0["since_unix_ms"]) }
        }
    }

    func setHostState(_ host: String, up: Bool, sinceUnixMs: Int64) throws {
        try store.database.write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO notifier_host(host, up, since_unix_ms) VALUES(?, ?, ?)", arguments: [host, up, sinceUnixMs])
        }
    }

    func setting(_ key: String) throws -> String? {
        try store.database.read { db in try String.fetchOne(db, sql: "SELECT value FROM setting WHERE key = ?", arguments: [key]) }
    }

    func setSetting(_ key: String, _ value: String) throws {
        try store.database.write { db in
            try db.execute(sql: "INSERT INTO setting(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", arguments: [key, value])
        }
    }
}
