import BynarStore
import Foundation
import GRDB
import Synchronization
import Testing

/// The replicated store's mechanism on real SQLite files: every write's changeset goes to
/// the replicator before the commit, a refusal rolls it back, a write around
/// `LocalStore.write` is refused, and the changesets rebuild the same rows elsewhere. The
/// replicator here keeps the changesets in memory; the etcd one is tested against a real
/// etcd in CoordinationTests.
struct ReplicationTests {
    final class Recorder: StoreReplicator {
        let changesets = Mutex<[[UInt8]]>([])
        let refuse = Mutex(false)
        var localTables: Set<String> { ["mine"] }
        struct Refused: Error {}
        func replicate(_ changeset: [UInt8], in db: Database) throws {
            if refuse.withLock({ $0 }) { throw Refused() }
            changesets.withLock { $0.append(changeset) }
            try db.execute(sql: "INSERT INTO mine(id, seq) VALUES(1, 1) ON CONFLICT(id) DO UPDATE SET seq = seq + 1")
        }
    }

    static let migrations = [
        LocalStore.Migration("test: tables") { db in
            try db.execute(sql: "CREATE TABLE thing(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            try db.execute(sql: "CREATE TABLE mine(id INTEGER PRIMARY KEY, seq INTEGER NOT NULL)")
        },
    ]

    func path() -> String { "/tmp/bynar-replication-\(UUID().uuidString)/store.sqlite" }

    func things(_ store: LocalStore) throws -> [String] {
        try store.database.read { try String.fetchAll($0, sql: "SELECT name FROM thing ORDER BY id") }
    }

    @Test("every write's changes go to the replicator before the commit, and rebuild the same rows in a replica")
    func changesetsRebuildTheRows() throws {
        let recorder = Recorder()
        let leader = try LocalStore(path: path(), migrations: Self.migrations, replicator: recorder)
        try leader.write { db in try db.execute(sql: "INSERT INTO thing(id, name) VALUES(1, 'a'), (2, 'b')") }
        try leader.write { db in
            try db.execute(sql: "UPDATE thing SET name = 'B' WHERE id = 2")
            try db.execute(sql: "DELETE FROM thing WHERE id = 1")
            try db.execute(sql: "INSERT INTO thing(id, name) VALUES(3, 'c')")
        }
        // The outbox and the retained ledger are tables like any other.
        try leader.commit([.init(messageId: "m1", topic: "t/1", payload: [1, 2], retain: true, createdUnixMs: 5)])
        try leader.write { _ in }  // no change, nothing to replicate
        let changesets = recorder.changesets.withLock { $0 }
        #expect(changesets.count == 3)

        let replica = try LocalStore(path: path(), migrations: Self.migrations)
        for changeset in changesets { #expect(try replica.apply(changeset) { _ in } == 0, "no conflicts") }
        #expect(try things(replica) == ["B", "c"])
        #expect(try replica.pendingOutbox(limit: 10).map(\.messageId) == ["m1"])
        // The replicator's own table stays local.
        #expect(try replica.database.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM mine") } == 0)
        #expect(try leader.database.read { try Int.fetchOne($0, sql: "SELECT seq FROM mine") } == 3)
    }

    @Test("a write the replicator refuses is rolled back: the store never holds what was not replicated")
    func refusedWriteIsRolledBack() throws {
        let recorder = Recorder()
        let store = try LocalStore(path: path(), migrations: Self.migrations, replicator: recorder)
        try store.write { db in try db.execute(sql: "INSERT INTO thing(id, name) VALUES(1, 'kept')") }
        recorder.refuse.withLock { $0 = true }
        #expect(throws: Recorder.Refused.self) {
            try store.write { db in try db.execute(sql: "INSERT INTO thing(id, name) VALUES(2, 'lost')") }
        }
        #expect(try things(store) == ["kept"])
        recorder.refuse.withLock { $0 = false }
        try store.write { db in try db.execute(sql: "INSERT INTO thing(id, name) VALUES(3, 'after')") }
        #expect(try things(store) == ["kept", "after"])
    }

    @Test("a write around LocalStore.write is refused on a replicated store, and allowed on a plain one")
    func writesAroundTheReplicatorAreRefused() throws {
        let store = try LocalStore(path: path(), migrations: Self.migrations, replicator: Recorder())
        #expect(throws: ReplicationError.self) {
            try store.database.write { db in try db.execute(sql: "INSERT INTO thing(id, name) VALUES(1, 'sneaky')") }
        }
        #expect(try things(store).isEmpty)
        let plain = try LocalStore(path: path(), migrations: Self.migrations)
        try plain.database.write { db in try db.execute(sql: "INSERT INTO thing(id, name) VALUES(1, 'fine')") }
        #expect(try things(plain) == ["fine"])
    }
}
