@testable import BynarStore
import Foundation
import GRDB
import Testing

/// shared-v5 adds the outbox's retained copies and narrows its receipt-group index to the
/// events sent until answered: a store written by the version before keeps every row and
/// what it waits for, and sends its events as they were (no copy).
struct OutboxMigrationTests {
    @Test func anOutboxFromBeforeRetainedCopiesKeepsItsRowsAndReceipts() throws {
        let directory = "/tmp/bynar-store-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/store.sqlite"
        // The store as the version before wrote it: the shared migrations up to shared-v4.
        do {
            let old = try DatabaseQueue(path: path)
            var migrator = DatabaseMigrator()
            let before = LocalStore.sharedMigrations.prefix { !$0.identifier.hasPrefix("shared-v5") }
            #expect(before.count == 4)
            for migration in before { migrator.registerMigration(migration.identifier, migrate: migration.apply) }
            try migrator.migrate(old)
            try old.write { db in
                let insert = """
                    INSERT INTO outbox(message_id, topic, payload, retain, created_unix_ms, state, receipt_from, receipt_group, resend_after_ms, next_send_unix_ms)
                    VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
                try db.execute(sql: insert, arguments: ["m1", "t/events", Data([1]), false, 1_000, "pending", nil, nil, nil, nil])
                try db.execute(sql: insert, arguments: ["m2", "t/notify", Data([2]), false, 1_000, "awaiting", "notifier", "m2", 300_000, 301_000])
                try db.execute(sql: insert, arguments: ["m3", "t/ticket", Data([3]), false, 1_000, "pending", "ticketing", "incident-1", 60_000, nil])
                try db.execute(sql: insert, arguments: ["m4", "t/state", Data([4]), true, 1_000, "pending", nil, nil, nil, nil])
                try db.execute(sql: "DELETE FROM outbox WHERE message_id = 'm4'")
            }
        }
        let store = try LocalStore(path: path)
        let rows = try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT id, message_id, state, receipt_from, receipt_group FROM outbox ORDER BY id")
                .map { "\($0[0] as Int64) \($0[1] as String) \($0[2] as String) \(($0[3] as String?) ?? "-") \(($0[4] as String?) ?? "-")" }
        }
        #expect(rows == ["1 m1 pending - -", "2 m2 awaiting notifier m2", "3 m3 pending ticketing incident-1"])
        try store.commit([.init(messageId: "m5", topic: "t/events", payload: [5], retain: false, createdUnixMs: 2_000, retainedCopy: "t/state/5")])
        #expect(try store.pendingOutbox(limit: 10).map { "\($0.id) \($0.retainedCopy ?? "-")" } == ["1 -", "3 -", "5 t/state/5"])
        // What the receipts and the sender look up still works on the rebuilt table.
        #expect(try store.confirmReceipt(messageId: "m2", from: "notifier") == .init(confirmed: true, unblocks: false))
        #expect(try store.confirmReceipt(messageId: "m1", from: "notifier") == .init(confirmed: false, unblocks: false))
        // The receipt group still holds events in order: one written after m3 in its group
        // goes only once m3 is answered.
        try store.commit([.init(messageId: "m6", topic: "t/ticket", payload: [6], retain: false, createdUnixMs: 2_000,
                                receiptFrom: "ticketing", receiptGroup: "incident-1", resendAfterMs: 60_000)])
        #expect(try store.pendingOutbox(limit: 10).map(\.messageId) == ["m1", "m3", "m5"])
        #expect(try store.confirmReceipt(messageId: "m3", from: "ticketing") == .init(confirmed: true, unblocks: true))
        #expect(try store.pendingOutbox(limit: 10).map(\.messageId) == ["m1", "m5", "m6"])
        let index = try store.database.read { db in
            try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'outbox_receipt_group'")
        }
        #expect(index == "CREATE INDEX outbox_receipt_group ON outbox(receipt_group, id) WHERE receipt_group IS NOT NULL")
        // Message ids stay unique.
        #expect(throws: (any Error).self) { try store.enqueue(messageId: "m1", topic: "t", payload: [], retain: false, createdUnixMs: 1) }
    }
}
