import CSQLiteSession
public import GRDB
import Synchronization

/// Where a replicated store's writes go before they commit (etcd, for coordinated
/// orchestrators): every write transaction's changes, as one SQLite changeset.
public protocol StoreReplicator: Sendable {
    /// Called inside each write transaction through ``LocalStore/write(_:)``, before it
    /// commits, with the changes it made; throwing rolls the transaction back, so the
    /// store never holds what was not replicated. `db` is that transaction: the replicator
    /// records its own position there, in one of its ``localTables``.
    func replicate(_ changeset: [UInt8], in db: Database) throws
    /// Tables that stay local (the replicator's bookkeeping): never in a changeset.
    var localTables: Set<String> { get }
}

/// Why a replicated store refused a write.
public enum ReplicationError: Error, CustomStringConvertible, Sendable {
    /// A write went around ``LocalStore/write(_:)`` (`database.write` directly): it would
    /// never reach the replicas, so it is rolled back.
    case unreplicatedWrite
    /// SQLite's session extension failed (the code it returned).
    case session(String, Int32)

    public var description: String {
        switch self {
        case .unreplicatedWrite: "a write went around LocalStore.write and would not be replicated: rolled back (a bug: every write of a replicated store goes through LocalStore.write)"
        case .session(let step, let code): "SQLite session extension: \(step) failed with code \(code)"
        }
    }
}

/// Captures the changes of one transaction (SQLite's session extension) on every table
/// but the excluded ones. Tables need a declared primary key to be captured (all of ours
/// have one).
struct ChangeCapture {
    private let session: OpaquePointer

    /// Excluded table names, for the filter callback (a C function with a context pointer).
    private final class Exclusions {
        let names: Set<String>
        init(_ names: Set<String>) { self.names = names }
    }
    private let exclusions: Unmanaged<Exclusions>

    init(_ db: Database, excluding tables: Set<String>) throws {
        var session: OpaquePointer?
        let created = sqlite3session_create(db.sqliteConnection, "main", &session)
        guard created == 0, let session else { throw ReplicationError.session("sqlite3session_create", created) }
        self.session = session
        exclusions = Unmanaged.passRetained(Exclusions(tables))
        sqlite3session_table_filter(session, { context, name in
            guard let context, let name else { return 1 }
            let table = String(cString: name)
            if table.hasPrefix("sqlite_") { return 0 }
            return Unmanaged<Exclusions>.fromOpaque(context).takeUnretainedValue().names.contains(table) ? 0 : 1
        }, exclusions.toOpaque())
        let attached = sqlite3session_attach(session, nil)
        guard attached == 0 else {
            close()
            throw ReplicationError.session("sqlite3session_attach", attached)
        }
    }

    /// The changes made since the capture began (empty: none).
    func changeset() throws -> [UInt8] {
        var size: Int32 = 0
        var buffer: UnsafeMutableRawPointer?
        let code = sqlite3session_changeset(session, &size, &buffer)
        defer { if let buffer { bynar_sqlite3_free_changeset(buffer) } }
        guard code == 0 else { throw ReplicationError.session("sqlite3session_changeset", code) }
        guard let buffer, size > 0 else { return [] }
        return [UInt8](UnsafeRawBufferPointer(start: buffer, count: Int(size)))
    }

    func close() {
        sqlite3session_delete(session)
        exclusions.release()
    }
}

/// Refuses commits that did not come through ``LocalStore/write(_:)`` on a replicated store.
final class ReplicationGuard: TransactionObserver, Sendable {
    let inside = Mutex(false)
    func observes(eventsOfKind eventKind: DatabaseEventKind) -> Bool { false }
    func databaseDidChange(with event: DatabaseEvent) {}
    func databaseWillCommit() throws {
        guard inside.withLock({ $0 }) else { throw ReplicationError.unreplicatedWrite }
    }
    func databaseDidCommit(_ db: Database) { inside.withLock { $0 = false } }
    func databaseDidRollback(_ db: Database) { inside.withLock { $0 = false } }
}

extension LocalStore {
    /// Applies a changeset another copy of this store committed (a replica following its
    /// leader), and runs `position` in the same transaction (where the follower records
    /// how far it got). A row that already matches, or is already gone, is taken as it
    /// comes; returns how many changes met such a conflict.
    @discardableResult
    public func apply(_ changeset: [UInt8], position: (Database) throws -> Void) throws -> Int {
        final class Conflicts { var count = 0 }
        let conflicts = Conflicts()
        try database.write { db in
            var bytes = changeset
            let context = Unmanaged.passUnretained(conflicts).toOpaque()
            let code = bytes.withUnsafeMutableBytes { raw in
                sqlite3changeset_apply(db.sqliteConnection, Int32(raw.count), raw.baseAddress, nil, { context, kind, _ in
                    Unmanaged<Conflicts>.fromOpaque(context!).takeUnretainedValue().count += 1
                    // The leader's row wins: replace what differs; skip what is not there.
                    switch kind {
                    case BYNAR_CHANGESET_DATA, BYNAR_CHANGESET_CONFLICT: return BYNAR_CHANGESET_REPLACE
                    default: return BYNAR_CHANGESET_OMIT
                    }
                }, context)
            }
            guard code == 0 else { throw ReplicationError.session("sqlite3changeset_apply", code) }
            try position(db)
        }
        return conflicts.count
    }
}
