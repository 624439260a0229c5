import BynarStore
import Foundation
import GRDB
import Testing

struct LocalStoreTests {
    func temporaryPath() -> String { "/tmp/bynar-store-\(UUID().uuidString)/store.sqlite" }

    @Test func sessionCounterGrowsAcrossReopen() throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        #expect(try LocalStore(path: path).nextSession() == 1)
        #expect(try LocalStore(path: path).nextSession() == 2)
        let store = try LocalStore(path: path)
        #expect(try store.nextSession() == 3)
        #expect(try store.nextSession() == 4)
    }

    /// The retained ledger keeps the last retained message per topic (a clear too), and a
    /// reconnect's copies replace the unsent copies of an earlier one instead of piling up;
    /// clears older than the window are forgotten.
    @Test func retainedLedgerSaysTheLatestAgainOnce() throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let store = try LocalStore(path: path)
        try store.commit([.init(messageId: "a1", topic: "t/a", payload: [1], retain: true, createdUnixMs: 1_000),
                          .init(messageId: "x1", topic: "t/x", payload: [9], retain: false, createdUnixMs: 1_000),
                          .init(messageId: "b1", topic: "t/b", payload: [2], retain: true, createdUnixMs: 1_000)])
        try store.commit([.init(messageId: "a2", topic: "t/a", payload: [3], retain: true, createdUnixMs: 2_000),
                          .init(messageId: "b2", topic: "t/b", payload: [], retain: true, createdUnixMs: 2_000)])
        for entry in try store.pendingOutbox(limit: 100) { try store.removeFromOutbox(id: entry.id) }

        #expect(try store.reassertRetained(nowMs: 3_000, clearsKeptMs: 10_000, idPrefix: "r1") == (1, 1))
        #expect(try store.reassertRetained(nowMs: 3_500, clearsKeptMs: 10_000, idPrefix: "r2") == (1, 1))
        let again = try store.pendingOutbox(limit: 100)
        #expect(again.map(\.topic) == ["t/a", "t/b"], "one copy per topic, the plain message not at all")
        #expect(again.map(\.payload) == [[3], []])
        #expect(again.allSatisfy { $0.retain && $0.messageId.hasPrefix("again-r2-") })
        for entry in again { try store.removeFromOutbox(id: entry.id) }
        // A day later the clear is forgotten; the retained message is still said.
        #expect(try store.reassertRetained(nowMs: 20_000, clearsKeptMs: 10_000, idPrefix: "r3") == (1, 0))
    }

    @Test func outboxKeepsOrderAndSurvivesReopen() throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        do {
            let store = try LocalStore(path: path)
            for index in 0..<5 {
                try store.enqueue(messageId: "m\(index)", topic: "t/\(index)", payload: [UInt8(index), 0xff], retain: index == 2, createdUnixMs: 1)
            }
            // Message ids are unique: writing one twice is an error, not a second copy.
            #expect(throws: (any Error).self) { try store.enqueue(messageId: "m1", topic: "t", payload: [], retain: false, createdUnixMs: 1) }
        }
        let store = try LocalStore(path: path)
        let pending = try store.pendingOutbox(limit: 10)
        #expect(pending.map(\.messageId) == ["m0", "m1", "m2", "m3", "m4"])
        #expect(pending[2].retain && pending[2].payload == [2, 0xff])
        try store.removeFromOutbox(id: pending[0].id)
        try store.recordOutboxFailure(id: pending[1].id, error: "broker refused", refused: true)
        try store.recordOutboxFailure(id: pending[2].id, error: "timeout", refused: false)
        #expect(try store.pendingOutbox(limit: 10).map(\.messageId) == ["m2", "m3", "m4"])
        #expect(try store.pendingOutbox(limit: 10).first?.attempts == 1)
        #expect(try store.outboxCounts() == (pending: 3, refused: 1))
        #expect(try store.pendingOutbox(after: pending[2].id, limit: 1).map(\.messageId) == ["m3"])
    }

    @Test func serviceMigrationsRunOnceAndInOrder() throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let migrations = [
            LocalStore.Migration("svc-v1") { try $0.execute(sql: "CREATE TABLE sample(id INTEGER PRIMARY KEY, name TEXT)") },
            LocalStore.Migration("svc-v2") { try $0.execute(sql: "ALTER TABLE sample ADD COLUMN state TEXT NOT NULL DEFAULT 'new'") },
        ]
        do {
            let store = try LocalStore(path: path, migrations: [migrations[0]])
            try store.database.write { try $0.execute(sql: "INSERT INTO sample(name) VALUES('a')") }
        }
        let store = try LocalStore(path: path, migrations: migrations)
        let state = try store.database.read { try String.fetchOne($0, sql: "SELECT state FROM sample WHERE name = 'a'") }
        #expect(state == "new")
        _ = try LocalStore(path: path, migrations: migrations)  // again: nothing to do, no error
    }
}
