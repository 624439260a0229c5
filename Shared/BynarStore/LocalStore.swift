public import GRDB
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A service's own SQLite database: its outbox, its session counter, and whatever tables
/// the service adds with its own migrations. No service opens another's store.
public final class LocalStore: Sendable {
    /// The GRDB connection, for services' own tables.
    public let database: DatabaseQueue
    /// Where the file is (":memory:" for an in-memory store).
    public let path: String
    /// Where every write goes before it commits (nil: a store of this host only).
    public let replicator: (any StoreReplicator)?
    private let replicationGuard: ReplicationGuard?
    /// The outbox sender's own connection (``pendingOutbox(after:limit:)``), opened on first
    /// use: in WAL mode its reads neither wait for the service's commits nor hold them up.
    private let outboxReader = Mutex<DatabaseQueue?>(nil)

    /// Opens (creating if needed) the store at `path` and runs the shared migrations, then
    /// `migrations` (each registered once, in order, by identifier).
    /// With a `replicator`, every write transaction's changes go to it before they commit
    /// (``write(_:)``); migrations are not replicated (every copy runs them itself).
    public init(path: String, migrations: [Migration] = [], replicator: (any StoreReplicator)? = nil) throws {
        self.path = path
        self.replicator = replicator
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        if path == ":memory:" {
            database = try DatabaseQueue(configuration: configuration)
        } else {
            let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            if !directory.isEmpty {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
            database = try DatabaseQueue(path: path, configuration: configuration)
            // WAL: readers do not block the writer, and a crash loses no committed row.
            _ = try database.writeWithoutTransaction { try $0.execute(sql: "PRAGMA journal_mode=WAL") }
        }
        var migrator = DatabaseMigrator()
        for migration in LocalStore.sharedMigrations + migrations {
            migrator.registerMigration(migration.identifier, migrate: migration.apply)
        }
        try migrator.migrate(database)
        if replicator != nil {
            let guardian = ReplicationGuard()
            database.add(transactionObserver: guardian, extent: .observerLifetime)
            replicationGuard = guardian
        } else {
            replicationGuard = nil
        }
    }

    /// The one way to write: runs `body` in a transaction and, on a replicated store, hands
    /// its changes to the ``replicator`` before the commit (its refusal rolls them back).
    public func write<T>(_ body: (Database) throws -> T) throws -> T {
        try database.write { db in
            guard let replicator, let replicationGuard else { return try body(db) }
            let capture = try ChangeCapture(db, excluding: replicator.localTables)
            defer { capture.close() }
            let result = try body(db)
            let changes = try capture.changeset()
            if !changes.isEmpty { try replicator.replicate(changes, in: db) }
            replicationGuard.inside.withLock { $0 = true }
            return result
        }
    }

    /// A second connection to the same file that can only read, for a reader on a thread of
    /// its own (the orchestrator's status page): in WAL mode its reads neither wait for the
    /// service's writes nor hold them up, as reads through ``database`` (one queue) would.
    /// An in-memory store has no file to share: its own queue is returned.
    public func readOnlyConnection() throws -> DatabaseQueue {
        guard path != ":memory:" else { return database }
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(5)
        return try DatabaseQueue(path: path, configuration: configuration)
    }

    /// One schema change, applied once per store.
    public struct Migration: Sendable {
        public var identifier: String
        public var apply: @Sendable (Database) throws -> Void
        public init(_ identifier: String, apply: @escaping @Sendable (Database) throws -> Void) {
            self.identifier = identifier
            self.apply = apply
        }
    }

    static let sharedMigrations: [Migration] = [
        Migration("shared-v1: outbox and settings") { db in
            try db.create(table: "outbox") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("message_id", .text).notNull().unique()
                table.column("topic", .text).notNull()
                table.column("payload", .blob).notNull()
                table.column("retain", .boolean).notNull().defaults(to: false)
                table.column("created_unix_ms", .integer).notNull()
                table.column("attempts", .integer).notNull().defaults(to: 0)
                // "pending" until the broker accepts it; "refused" when the broker said no
                // (kept, not retried, so nothing is lost silently).
                table.column("state", .text).notNull().defaults(to: "pending")
                table.column("last_error", .text)
            }
            try db.create(table: "setting") { table in
                table.primaryKey("key", .text)
                table.column("value", .text).notNull()
            }
        },
        Migration("shared-v2: outbox receipts") { db in
            // An event sent "until answered": kept after the broker's acknowledgement
            // ("awaiting") until a reply from `receipt_from` comes, and sent again (same
            // message id) at `next_send_unix_ms`, every `resend_after_ms`, until
            // `give_up_unix_ms` (if set: then "unanswered"). Such events of one
            // `receipt_group` (an incident) go one at a time, in order.
            try db.alter(table: "outbox") { table in
                table.add(column: "receipt_from", .text)
                table.add(column: "receipt_group", .text)
                table.add(column: "resend_after_ms", .integer)
                table.add(column: "next_send_unix_ms", .integer)
                table.add(column: "give_up_unix_ms", .integer)
            }
            try db.create(index: "outbox_receipt_group", on: "outbox", columns: ["receipt_group", "id"])
        },
        Migration("shared-v3: retained ledger") { db in
            // The last retained message this service committed per topic (an empty payload:
            // it cleared the topic), written in the commit that sends it. After a reconnect
            // the outbox says them all again (``reassertRetained(nowMs:clearsKeptMs:)``): a
            // broker that crashed comes back with the retained messages of its last save.
            try db.create(table: "retained_ledger") { table in
                table.primaryKey("topic", .text)
                table.column("payload", .blob).notNull()
                table.column("updated_unix_ms", .integer).notNull()
            }
        },
        Migration("shared-v4: pending outbox index") { db in
            // The sender reads the oldest pending events; without this it walked past every
            // event awaiting a receipt (a day of notifications when no notifier answers) on
            // every batch, holding the store from the service's own commits.
            try db.execute(sql: "CREATE INDEX outbox_pending ON outbox(id) WHERE state = 'pending'")
        },
        Migration("shared-v5: retained copies; the receipt-group index only on the rows that use it") { db in
            // `retained_copy`: the event also goes, as it is (same envelope, same message id),
            // retained to this topic, right after its own: one row, one envelope and one
            // delivery write for an event and the retained state it sets (an incident's step
            // on the incident stream and as the incident's retained state).
            try db.alter(table: "outbox") { table in
                table.add(column: "retained_copy", .text)
            }
            // Only events sent until answered have a receipt group (``pendingOutbox`` and
            // ``confirmReceipt`` look them up by it); every other event wrote a NULL key into
            // this index when stored and again when the broker took it.
            try db.execute(sql: """
                DROP INDEX outbox_receipt_group;
                CREATE INDEX outbox_receipt_group ON outbox(receipt_group, id) WHERE receipt_group IS NOT NULL;
                """)
        },
    ]

    // MARK: Session counter

    /// Increments and returns this store's session counter (1 on the first start).
    public func nextSession() throws -> UInt64 {
        try write { db in
            let current = try String.fetchOne(db, sql: "SELECT value FROM setting WHERE key = 'session'").flatMap { UInt64($0) } ?? 0
            let next = current + 1
            try db.execute(sql: "INSERT INTO setting(key, value) VALUES('session', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", arguments: [String(next)])
            return next
        }
    }

    // MARK: Outbox

    /// A message waiting for the broker's acknowledgement.
    public struct OutboxEntry: Sendable, Equatable {
        public var id: Int64
        public var messageId: String
        public var topic: String
        public var payload: [UInt8]
        public var retain: Bool
        public var attempts: Int
        /// The service whose reply confirms this message (nil: the broker's ack does).
        public var receiptFrom: String?
        public var resendAfterMs: Int64?
        /// Also sent, retained, to this topic (the same bytes), right after `topic`.
        public var retainedCopy: String? = nil
    }

    /// A message for the outbox, already serialized.
    public struct OutgoingMessage: Sendable, Equatable {
        public var messageId: String
        public var topic: String
        /// An envelope's bytes; empty with `retain` clears the topic's retained message.
        public var payload: [UInt8]
        public var retain: Bool
        public var createdUnixMs: Int64
        /// Sent until a reply from this service confirms it, every `resendAfterMs`, after
        /// the earlier such messages of its `receiptGroup` were confirmed.
        public var receiptFrom: String?
        public var receiptGroup: String?
        public var resendAfterMs: Int64?
        /// Unanswered by then: given up (kept as "unanswered", not sent again).
        public var giveUpUnixMs: Int64?
        /// Also sent, retained, to this topic (the same bytes, so the same message id),
        /// right after `topic`; the retained ledger keeps it for that topic.
        public var retainedCopy: String?

        public init(messageId: String, topic: String, payload: [UInt8], retain: Bool, createdUnixMs: Int64,
                    receiptFrom: String? = nil, receiptGroup: String? = nil, resendAfterMs: Int64? = nil, giveUpUnixMs: Int64? = nil,
                    retainedCopy: String? = nil) {
            self.messageId = messageId
            self.topic = topic
            self.payload = payload
            self.retain = retain
            self.createdUnixMs = createdUnixMs
            self.receiptFrom = receiptFrom
            self.receiptGroup = receiptGroup
            self.resendAfterMs = resendAfterMs
            self.giveUpUnixMs = giveUpUnixMs
            self.retainedCopy = retainedCopy
        }
    }

    /// Writes a service's new state (`state`, on its own tables) and the messages that
    /// report it in one transaction: a crash keeps both or neither, so nothing is said that
    /// was not kept and nothing kept goes unsaid. Every service commits this way (through
    /// `Outbox.commit`); the outbox sends the messages once the transaction is done.
    public func commit(_ messages: [OutgoingMessage], state: (Database) throws -> Void = { _ in }) throws {
        try write { db in
            try state(db)
            guard !messages.isEmpty else { return }
            // Prepared once per connection: a batch of hundreds of messages is not parsed
            // hundreds of times (parsing was a fifth of the orchestrator's flood profile).
            let insert = try db.cachedStatement(sql: """
                INSERT INTO outbox(message_id, topic, payload, retain, created_unix_ms, receipt_from, receipt_group, resend_after_ms, give_up_unix_ms, retained_copy)
                VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            let ledger = try db.cachedStatement(sql: """
                INSERT INTO retained_ledger(topic, payload, updated_unix_ms) VALUES(?, ?, ?)
                ON CONFLICT(topic) DO UPDATE SET payload = excluded.payload, updated_unix_ms = excluded.updated_unix_ms
                """)
            for message in messages {
                let payload = Data(message.payload)
                try insert.execute(arguments: [message.messageId, message.topic, payload, message.retain, message.createdUnixMs,
                                               message.receiptFrom, message.receiptFrom == nil ? nil : (message.receiptGroup ?? ""), message.resendAfterMs, message.giveUpUnixMs,
                                               message.retainedCopy])
                if message.retain {
                    try ledger.execute(arguments: [message.topic, payload, message.createdUnixMs])
                }
                if let copy = message.retainedCopy {
                    try ledger.execute(arguments: [copy, payload, message.createdUnixMs])
                }
            }
        }
    }

    /// After a reconnect: every retained message in the ledger goes into the outbox again
    /// (the same envelope bytes, so receivers see the same message id), and every topic
    /// cleared within `clearsKeptMs` is cleared again; older clears are forgotten. One
    /// transaction, queued behind what is pending. Returns (said again, cleared again).
    /// Copies an earlier reconnect queued and not yet sent are dropped first (the new ones
    /// say the same or newer), so a flapping broker does not pile them up.
    @discardableResult
    public func reassertRetained(nowMs: Int64, clearsKeptMs: Int64, idPrefix: String) throws -> (said: Int, cleared: Int) {
        try write { db in
            try db.execute(sql: "DELETE FROM retained_ledger WHERE length(payload) = 0 AND updated_unix_ms < ?", arguments: [nowMs - clearsKeptMs])
            try db.execute(sql: "DELETE FROM outbox WHERE state = 'pending' AND message_id LIKE 'again-%'")
            let rows = try Row.fetchAll(db, sql: "SELECT topic, payload FROM retained_ledger ORDER BY updated_unix_ms, topic")
            var said = 0, cleared = 0
            for (index, row) in rows.enumerated() {
                let payload: Data = row["payload"]
                try db.execute(sql: "INSERT INTO outbox(message_id, topic, payload, retain, created_unix_ms) VALUES(?, ?, ?, 1, ?)",
                               arguments: ["again-\(idPrefix)-\(index)", row["topic"] as String, payload, nowMs])
                if payload.isEmpty { cleared += 1 } else { said += 1 }
            }
            return (said, cleared)
        }
    }

    /// Writes a message to the outbox; it stays until ``removeFromOutbox(id:)``.
    @discardableResult
    public func enqueue(messageId: String, topic: String, payload: [UInt8], retain: Bool, createdUnixMs: Int64) throws -> Int64 {
        try write { db in
            try db.execute(
                sql: "INSERT INTO outbox(message_id, topic, payload, retain, created_unix_ms) VALUES(?, ?, ?, ?, ?)",
                arguments: [messageId, topic, Data(payload), retain, createdUnixMs]
            )
            return db.lastInsertedRowID
        }
    }

    /// The oldest pending messages after `id`, in the order they were written; a message
    /// sent until answered waits while an earlier one of its receipt group is not confirmed
    /// (a close must not overtake the comment before it that a receiver lost). Read on a
    /// connection of its own (a file store): the sender does not wait for the commits.
    public func pendingOutbox(after id: Int64 = 0, limit: Int) throws -> [OutboxEntry] {
        try reader().read { db in
            try Row.fetchAll(db, sql: """
                SELECT id, message_id, topic, payload, retain, attempts, receipt_from, resend_after_ms, retained_copy FROM outbox AS o
                WHERE state = 'pending' AND id > ? AND (receipt_from IS NULL OR NOT EXISTS (
                    SELECT 1 FROM outbox AS e WHERE e.receipt_group = o.receipt_group AND e.id < o.id AND e.state IN ('pending', 'awaiting')))
                ORDER BY id LIMIT ?
                """, arguments: [id, limit]).map { row in
                // By position, in the SELECT's order (by name, each look-up compares lowercased names).
                OutboxEntry(id: row[0], messageId: row[1], topic: row[2], payload: [UInt8](row[3] as Data), retain: row[4], attempts: row[5],
                            receiptFrom: row[6], resendAfterMs: row[7], retainedCopy: row[8])
            }
        }
    }

    private func reader() throws -> DatabaseQueue {
        try outboxReader.withLock { reader in
            if let reader { return reader }
            let opened = try readOnlyConnection()
            reader = opened
            return opened
        }
    }

    // MARK: Receipts

    /// What the broker took of one outbox batch, in one transaction: `delivered` removed,
    /// `awaiting` kept for their receipts and due again `resend_after_ms` from `nowMs`. One
    /// write per batch, not one for each kind: with etcd coordination every store write is
    /// an etcd transaction, and the two were a round trip each.
    public func settleOutbox(delivered: [Int64], awaiting: [Int64], nowMs: Int64) throws {
        guard !delivered.isEmpty || !awaiting.isEmpty else { return }
        try write { db in
            if !delivered.isEmpty {
                let delete = try db.cachedStatement(sql: "DELETE FROM outbox WHERE id = ?")
                for id in delivered { try delete.execute(arguments: [id]) }
            }
            if !awaiting.isEmpty {
                let update = try db.cachedStatement(sql: "UPDATE outbox SET state = 'awaiting', next_send_unix_ms = ? + resend_after_ms WHERE id = ? AND state = 'pending'")
                for id in awaiting { try update.execute(arguments: [nowMs, id]) }
            }
        }
    }

    /// Puts the messages whose receipt is overdue back in the queue (same id, same place in
    /// the order), and gives up on those past their give-up time (kept as "unanswered", not
    /// sent again); returns the topics and receivers of those given up.
    @discardableResult
    public func releaseOverdueReceipts(nowMs: Int64) throws -> [(topic: String, receiptFrom: String)] {
        try write { db in
            let given = try Row.fetchAll(db, sql: "SELECT topic, receipt_from FROM outbox WHERE state = 'awaiting' AND give_up_unix_ms <= ?", arguments: [nowMs])
                .map { (topic: $0["topic"] as String, receiptFrom: $0["receipt_from"] as String) }
            try db.execute(sql: "UPDATE outbox SET state = 'unanswered', last_error = 'no receipt came in time' WHERE state = 'awaiting' AND give_up_unix_ms <= ?",
                           arguments: [nowMs])
            try db.execute(sql: "UPDATE outbox SET state = 'pending', attempts = attempts + 1 WHERE state = 'awaiting' AND next_send_unix_ms <= ?", arguments: [nowMs])
            return given
        }
    }

    /// When the next awaiting message is due to be sent again (nil: none waits).
    public func nextResendUnixMs() throws -> Int64? {
        try database.read { db in
            try Int64.fetchOne(db, sql: "SELECT MIN(next_send_unix_ms) FROM outbox WHERE state = 'awaiting'")
        }
    }

    /// What a receipt did (``confirmReceipt(messageId:from:)``).
    public struct Confirmation: Sendable, Equatable {
        /// A message of that id waited for that service's receipt; it is forgotten.
        public var confirmed: Bool
        /// Later messages of its receipt group wait in the outbox: they may go now.
        public var unblocks: Bool
    }

    /// A reply from `service` confirmed message `messageId`: it is forgotten. Not confirmed
    /// when no message of that id waits for that service's receipt (already confirmed, or
    /// a reply from someone else, which confirms nothing).
    @discardableResult
    public func confirmReceipt(messageId: String, from service: String) throws -> Confirmation {
        try write { db in
            let groups = try String?.fetchAll(db, sql: """
                DELETE FROM outbox WHERE message_id = ? AND receipt_from = ? AND state IN ('pending', 'awaiting') RETURNING receipt_group
                """, arguments: [messageId, service])
            // One row at most (message ids are unique).
            guard let deleted = groups.first else { return Confirmation(confirmed: false, unblocks: false) }
            // A group of its own (sent on its own, not in order): nothing waits behind it.
            guard let group = deleted, group != messageId else { return Confirmation(confirmed: true, unblocks: false) }
            let waiting = try Bool.fetchOne(db, sql: "SELECT EXISTS(SELECT 1 FROM outbox WHERE receipt_group = ? AND state = 'pending')", arguments: [group]) ?? false
            return Confirmation(confirmed: true, unblocks: waiting)
        }
    }

    /// How many messages were taken by the broker and wait for their receipt.
    public func awaitingReceipts() throws -> Int {
        try database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox WHERE state = 'awaiting'") ?? 0
        }
    }

    /// Whether any stored message waits for a receipt (from `service`, or from anyone).
    public func expectsReceipts(from service: String? = nil) throws -> Bool {
        try database.read { db in
            try Bool.fetchOne(db, sql: "SELECT EXISTS(SELECT 1 FROM outbox WHERE receipt_from = COALESCE(?, receipt_from) AND state IN ('pending', 'awaiting'))",
                              arguments: [service]) ?? false
        }
    }

    /// Removes an acknowledged message.
    public func removeFromOutbox(id: Int64) throws {
        try removeFromOutbox(ids: [id])
    }

    /// Removes acknowledged messages, in one transaction.
    public func removeFromOutbox(ids: [Int64]) throws {
        try settleOutbox(delivered: ids, awaiting: [], nowMs: 0)
    }

    /// Records a failed attempt; `refused` parks the message (the broker will not take it).
    public func recordOutboxFailure(id: Int64, error: String, refused: Bool) throws {
        try write { db in
            try db.execute(
                sql: "UPDATE outbox SET attempts = attempts + 1, last_error = ?, state = CASE WHEN ? THEN 'refused' ELSE state END WHERE id = ?",
                arguments: [error, refused, id]
            )
        }
    }

    /// How many messages are pending and how many were refused.
    public func outboxCounts() throws -> (pending: Int, refused: Int) {
        try database.read { db in
            let pending = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox WHERE state = 'pending'") ?? 0
            let refused = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox WHERE state = 'refused'") ?? 0
            return (pending, refused)
        }
    }

    /// When the oldest pending message was written (Unix ms), or nil when none is pending:
    /// how long the outbox has been backing up.
    public func oldestPendingOutboxUnixMs() throws -> Int64? {
        try database.read { db in
            try Int64.fetchOne(db, sql: "SELECT MIN(created_unix_ms) FROM outbox WHERE state = 'pending'")
        }
    }
}
