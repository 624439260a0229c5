public import GRDB
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

    /// Opens (creating if needed) the store at `path` and runs the shared migrations, then
    /// `migrations` (each registered once, in order, by identifier).
    public init(path: String, migrations: [Migration] = []) throws {
        self.path = path
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
    ]

    // MARK: Session counter

    /// Increments and returns this store's session counter (1 on the first start).
    public func nextSession() throws -> UInt64 {
        try database.write { db in
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
    }

    /// A message for the outbox, already serialized.
    public struct OutgoingMessage: Sendable, Equatable {
        public var messageId: String
        public var topic: String
        /// An envelope's bytes; empty with `retain` clears the topic's retained message.
        public var payload: [UInt8]
        public var retain: Bool
        public var createdUnixMs: Int64

        public init(messageId: String, topic: String, payload: [UInt8], retain: Bool, createdUnixMs: Int64) {
            self.messageId = messageId
            self.topic = topic
            self.payload = payload
            self.retain = retain
            self.createdUnixMs = createdUnixMs
        }
    }

    /// Writes a service's new state (`state`, on its own tables) and the messages that
    /// report it in one transaction: a crash keeps both or neither, so nothing is said that
    /// was not kept and nothing kept goes unsaid. Every service commits this way (through
    /// `Outbox.commit`); the outbox sends the messages once the transaction is done.
    public func commit(_ messages: [OutgoingMessage], state: (Database) throws -> Void = { _ in }) throws {
        try database.write { db in
            try state(db)
            for message in messages {
                try db.execute(
                    sql: "INSERT INTO outbox(message_id, topic, payload, retain, created_unix_ms) VALUES(?, ?, ?, ?, ?)",
                    arguments: [message.messageId, message.topic, Data(message.payload), message.retain, message.createdUnixMs]
                )
            }
        }
    }

    /// Writes a message to the outbox; it stays until ``removeFromOutbox(id:)``.
    @discardableResult
    public func enqueue(messageId: String, topic: String, payload: [UInt8], retain: Bool, createdUnixMs: Int64) throws -> Int64 {
        try database.write { db in
            try db.execute(
                sql: "INSERT INTO outbox(message_id, topic, payload, retain, created_unix_ms) VALUES(?, ?, ?, ?, ?)",
                arguments: [messageId, topic, Data(payload), retain, createdUnixMs]
            )
            return db.lastInsertedRowID
        }
    }

    /// The oldest pending messages, in the order they were written.
    public func pendingOutbox(after id: Int64 = 0, limit: Int) throws -> [OutboxEntry] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT id, message_id, topic, payload, retain, attempts FROM outbox WHERE state = 'pending' AND id > ? ORDER BY id LIMIT ?", arguments: [id, limit]).map { row in
                OutboxEntry(id: row["id"], messageId: row["message_id"], topic: row["topic"], payload: [UInt8](row["payload"] as Data), retain: row["retain"], attempts: row["attempts"])
            }
        }
    }

    /// Removes an acknowledged message.
    public func removeFromOutbox(id: Int64) throws {
        try removeFromOutbox(ids: [id])
    }

    /// Removes acknowledged messages, in one transaction.
    public func removeFromOutbox(ids: [Int64]) throws {
        guard !ids.isEmpty else { return }
        try database.write { db in
            for id in ids { try db.execute(sql: "DELETE FROM outbox WHERE id = ?", arguments: [id]) }
        }
    }

    /// Records a failed attempt; `refused` parks the message (the broker will not take it).
    public func recordOutboxFailure(id: Int64, error: String, refused: Bool) throws {
        try database.write { db in
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
