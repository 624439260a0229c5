import BynarConfig
import BynarProcess
public import BynarRuntime
public import BynarStore
import GRDB
public import Logging
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// Several orchestrators for one cluster on etcd (`orchestrator.coordination.etcd`): one
/// leads through an etcd lease, the others stand by with a replica of its store.
///
/// The store is the journal: every write transaction of the leader's SQLite store goes to
/// etcd as one changeset (SQLite's session extension) under `PREFIX/log/SEQ`, in an etcd
/// transaction that also checks the leader key is still the one this leader created
/// (its epoch), and only then commits locally. Incidents, outgoing messages, hook claims,
/// the brake's state: everything the orchestrator keeps is in that log. A standby applies
/// the log to its own copy as it grows; when the leader's lease ends (a dead or cut-off
/// leader stops renewing it), one standby creates the leader key, applies the rest of the
/// log and starts as the orchestrator, with the same store, so it resumes every open
/// incident with the same request ids.
///
/// Keys under the prefix: `leader` (the leader's host, on its lease; its create revision
/// is the epoch), `log/%020d` (changesets), `snapshot/...` (the store folded at a log
/// position, in chunks, so the log does not grow without end).
final class EtcdCoordination: Sendable {
    let config: OrchestratorConfig.EtcdConfig
    let etcd: EtcdClient
    let host: String
    let logger: Logger

    var leaderKey: String { config.prefix + "/leader" }
    var logPrefix: String { config.prefix + "/log/" }
    var snapshotPrefix: String { config.prefix + "/snapshot/" }
    var partsPrefix: String { config.prefix + "/parts/" }
    func logKey(_ seq: Int64) -> String { logPrefix + Self.padded(seq) }
    /// Where the parts of a changeset too large for one etcd request go, before its log
    /// entry (which then says `parts N`) is written.
    func partKey(_ seq: Int64, _ part: Int) -> String { partsPrefix + Self.padded(seq) + "/" + String(part) }

    /// A log entry's changeset: the value itself, or the parts it names.
    func changeset(of entry: EtcdClient.KeyValue, seq: Int64) async throws -> [UInt8] {
        let value = entry.valueBytes
        guard let count = Self.partCount(value) else { return value }
        var bytes: [UInt8] = []
        for part in 0..<count {
            let key = partKey(seq, part)
            guard let found = try await offThread({ [etcd] in try etcd.range(key) }).kvs.first else {
                throw Unusable(description: "log entry \(seq) names \(count) parts but part \(part) is missing")
            }
            bytes += found.valueBytes
        }
        return bytes
    }

    /// `parts N` (a changeset starts with "T" or "P", never with this).
    static func partCount(_ value: [UInt8]) -> Int? {
        guard value.count < 32, value.starts(with: Array("parts ".utf8)) else { return nil }
        return Int(String(decoding: value.dropFirst(6), as: UTF8.self))
    }
    static func padded(_ seq: Int64) -> String {
        let digits = String(seq)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
    }

    init(config: OrchestratorConfig.EtcdConfig, host: String, logger: Logger) throws {
        self.config = config
        self.etcd = try EtcdClient(config: config)
        self.host = host
        self.logger = logger
    }

    /// The replica's own bookkeeping: how far into the group's log it is (never replicated).
    static let positionMigration = LocalStore.Migration("coordination-v1: replica position") { db in
        try db.create(table: "replica_position") { table in
            table.primaryKey("id", .integer).check { $0 == 1 }
            table.column("prefix", .text).notNull()
            table.column("seq", .integer).notNull()
        }
    }

    static func position(_ db: Database) throws -> (prefix: String, seq: Int64)? {
        try Row.fetchOne(db, sql: "SELECT prefix, seq FROM replica_position WHERE id = 1").map { ($0["prefix"], $0["seq"]) }
    }

    static func setPosition(_ db: Database, prefix: String, seq: Int64) throws {
        try db.execute(sql: "INSERT INTO replica_position(id, prefix, seq) VALUES(1, ?, ?) ON CONFLICT(id) DO UPDATE SET prefix = excluded.prefix, seq = excluded.seq",
                       arguments: [prefix, seq])
    }

    /// A problem that stops this orchestrator from standing by at all (not a passing one).
    struct Unusable: Error, CustomStringConvertible {
        var description: String
    }

    // MARK: Standing by and taking over

    /// Stands by until this process leads: follows the log into the replica at
    /// `storePath`, tries to take the leader key whenever it is free, and once it holds it
    /// applies the rest of the log and returns the term. Waits through etcd outages,
    /// saying why every few seconds. Returns nil when cancelled (shutdown).
    func lead(storePath: String, migrations: [LocalStore.Migration]) async throws -> ServiceTerm? {
        let replica = try LocalStore(path: storePath, migrations: migrations + [Self.positionMigration])
        try checkReplica(replica)
        var lease: Int64?
        var lastLeader = ""
        var lastComplaint = ContinuousClock.now - .seconds(60)
        var lastRenewal = ContinuousClock.now - .seconds(3600)
        let started = ContinuousClock.now
        while !Task.isCancelled {
            do {
                if lease == nil || ContinuousClock.now - lastRenewal > .seconds(max(1, config.leaseTtlSeconds / 3)) {
                    let asked = ContinuousClock.now
                    if let held = lease, try await offThread({ [etcd] in try etcd.keepAlive(lease: held) }) > 0 {
                        lastRenewal = asked
                    } else {
                        lease = try await offThread { [etcd, config] in try etcd.grantLease(ttl: config.leaseTtlSeconds) }
                        lastRenewal = asked
                    }
                }
                let held = lease!
                let value = Array("\(host) pid \(getpid())".utf8)
                let attempt = try await offThread { [etcd, leaderKey] in
                    try etcd.txn([.created(leaderKey, at: 0)], success: [.put(leaderKey, value, lease: held)], failure: [.get(leaderKey)])
                }
                if attempt.succeeded {
                    let epoch = attempt.revision
                    let applied = try await catchUp(replica)
                    let waited = ContinuousClock.now - started
                    logger.notice("leading the orchestrator group", metadata: [
                        "group": "\(config.group)", "epoch": "\(epoch)", "log_position": "\(applied)", "stood_by": "\(waited)"])
                    return try makeTerm(epoch: epoch, lease: held, renewed: lastRenewal, position: applied, migrations: migrations)
                }
                let leader = attempt.found.first.map { "\(String(decoding: $0.valueBytes, as: UTF8.self)) (epoch \($0.createRevision))" } ?? "nobody"
                if leader != lastLeader {
                    logger.notice("standing by", metadata: ["group": "\(config.group)", "leader": "\(leader)"])
                    lastLeader = leader
                }
                _ = try await catchUp(replica)
            } catch let problem as Unusable {
                throw problem
            } catch {
                if ContinuousClock.now - lastComplaint > .seconds(10) {
                    logger.error("standing by: etcd does not answer; this orchestrator neither leads nor acts until it does", metadata: [
                        "group": "\(config.group)", "error": "\(error)"])
                    lastComplaint = .now
                }
                lease = nil
            }
            try? await Task.sleep(for: .milliseconds(300))
        }
        return nil
    }

    /// A replica kept for another group, or ahead of the group's log, is not used.
    private func checkReplica(_ replica: LocalStore) throws {
        guard let position = try replica.database.read({ try Self.position($0) }) else {
            let incidents = try replica.database.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM orchestrator_incident") ?? 0 }
            if incidents > 0 {
                throw Unusable(description: "\(replica.path) holds \(incidents) incidents of an orchestrator that ran without etcd; the group's journal would not have them. Move the file away (its incidents are not carried over) or keep this orchestrator on its own")
            }
            return
        }
        if position.prefix != config.prefix {
            throw Unusable(description: "\(replica.path) is a replica of the group at \(position.prefix), not \(config.prefix): move it away to stand by for this group")
        }
    }

    /// Applies every log entry after the replica's position (from a snapshot first when
    /// the log no longer starts there); returns the new position.
    func catchUp(_ replica: LocalStore) async throws -> Int64 {
        var position = try await replica.database.read { try Self.position($0)?.seq } ?? 0
        while true {
            let from = logKey(position + 1)
            let page = try await offThread { [etcd, logPrefix] in try etcd.range(from, end: EtcdClient.prefixEnd(logPrefix), limit: 256) }
            if let first = page.kvs.first, Self.seq(of: first.keyText) != position + 1 {
                position = try await restoreSnapshot(into: replica, below: Self.seq(of: first.keyText) ?? 0)
                continue
            }
            if page.kvs.isEmpty, try await snapshotIsAhead(of: position) {
                position = try await restoreSnapshot(into: replica, below: .max)
                continue
            }
            for entry in page.kvs {
                guard let seq = Self.seq(of: entry.keyText), seq == position + 1 else {
                    throw Unusable(description: "the group's log skips from \(position) to \(entry.keyText)")
                }
                let changes = try await changeset(of: entry, seq: seq)
                try replica.apply(changes) { db in try Self.setPosition(db, prefix: config.prefix, seq: seq) }
                position = seq
            }
            if !page.more { return position }
        }
    }

    static func seq(of key: String) -> Int64? {
        key.split(separator: "/").last.flatMap { Int64($0) }
    }

    // MARK: Leading

    private func makeTerm(epoch: Int64, lease: Int64, renewed: ContinuousClock.Instant, position: Int64, migrations: [LocalStore.Migration]) throws -> ServiceTerm {
        let term = LeaderTerm(coordination: self, epoch: epoch, lease: lease, position: position, renewed: renewed)
        term.startKeepingLease()
        return ServiceTerm(replicator: term, localMigrations: [Self.positionMigration], mayPublish: { term.mayPublish },
                           fenceGroup: config.group, epoch: epoch, endedWhy: { term.endedWhy }, opened: { store in term.store.withLock { $0 = store } })
    }
}

/// One leader's term: replicates each write to etcd under the leadership check, keeps the
/// lease alive, and ends (once, saying why) when either fails.
final class LeaderTerm: StoreReplicator, Sendable {
    let coordination: EtcdCoordination
    let epoch: Int64
    let lease: Int64
    private let position: Mutex<Int64>
    private let end = Mutex<String?>(nil)
    private let snapshotting = Mutex(false)
    /// The store this term writes (set once it is open), for snapshots.
    let store = Mutex<LocalStore?>(nil)
    var localTables: Set<String> { ["replica_position"] }

    /// When the last renewal that etcd accepted was sent: the lease lasts at least its time
    /// to live from then.
    private let renewed: Mutex<ContinuousClock.Instant>

    init(coordination: EtcdCoordination, epoch: Int64, lease: Int64, position: Int64, renewed: ContinuousClock.Instant) {
        self.coordination = coordination
        self.epoch = epoch
        self.lease = lease
        self.position = Mutex(position)
        self.renewed = Mutex(renewed)
    }

    /// The term lasts and the lease cannot have expired yet (half a second of margin).
    var mayPublish: Bool {
        !isOver && ContinuousClock.now < renewed.withLock { $0 } + .seconds(coordination.config.leaseTtlSeconds) - .milliseconds(500)
    }

    var logger: Logger { coordination.logger }
    var isOver: Bool { end.withLock { $0 != nil } }

    /// Largest changeset one etcd request carries (etcd's default request limit is 1.5 MiB;
    /// base64 in JSON makes 1 MB about 1.33 MB); a larger one goes in parts of this size.
    static let maxChangeset = 1_000_000

    struct NotLeading: Error, CustomStringConvertible {
        var description: String
    }

    func replicate(_ changeset: [UInt8], in db: Database) throws {
        if let why = endedWhy { throw NotLeading(description: "no longer leading: \(why)") }
        let seq = try EtcdCoordination.position(db).map { $0.seq + 1 } ?? 1
        let key = coordination.logKey(seq)
        let guards: [EtcdClient.Compare] = [.created(coordination.leaderKey, at: epoch), .created(key, at: 0)]
        var result: EtcdClient.TxnResult
        do {
            var entry = changeset
            if changeset.count > Self.maxChangeset {
                // In parts, each under the same checks; the entry that names them comes last,
                // so a leader that dies between parts leaves no entry (its parts are
                // overwritten by the next writer of this position, or folded away).
                let parts = stride(from: 0, to: changeset.count, by: Self.maxChangeset).map { Array(changeset[$0..<min(changeset.count, $0 + Self.maxChangeset)]) }
                for (index, part) in parts.enumerated() {
                    result = try coordination.etcd.txn(guards, success: [.put(coordination.partKey(seq, index), part)], failure: [.get(coordination.leaderKey)])
                    guard result.succeeded else { return try lost(result) }
                }
                entry = Array("parts \(parts.count)".utf8)
            }
            result = try coordination.etcd.txn(guards, success: [.put(key, entry)], failure: [.get(coordination.leaderKey)])
        } catch {
            // The write may or may not have landed: only a fresh start from etcd knows.
            finish("cannot write the journal to etcd (\(error)); whether the last write landed is unknown, so this leader stops and a standby (or this process, restarted) resumes from etcd")
            throw NotLeading(description: "\(error)")
        }
        guard result.succeeded else { return try lost(result) }
        try EtcdCoordination.setPosition(db, prefix: coordination.config.prefix, seq: seq)
        position.withLock { $0 = seq }
        if seq % Int64(coordination.config.snapshotEvery) == 0 { startSnapshot() }
    }

    /// A write's checks failed: another leads (or the lease is gone).
    private func lost(_ result: EtcdClient.TxnResult) throws {
        let now = result.found.first.map { "\(String(decoding: $0.valueBytes, as: UTF8.self)) leads with epoch \($0.createRevision)" } ?? "the leader key is gone (lease expired)"
        finish("lost the leadership: \(now); this orchestrator's epoch was \(epoch)")
        throw NotLeading(description: "lost the leadership")
    }

    /// Renews the lease every third of its time to live, on a thread of its own; a lease
    /// that is gone, a leader key that is not ours, or no renewal for longer than the lease
    /// minus one call's deadline ends the term, before another orchestrator can take over.
    func startKeepingLease() {
        let ttl = coordination.config.leaseTtlSeconds
        let deadline = Duration.seconds(ttl - coordination.config.requestTimeoutSeconds)
        Task.detached { [self] in
            while !isOver {
                try? await Task.sleep(for: .seconds(Double(ttl) / 3))
                let asked = ContinuousClock.now
                do {
                    let left = try await offThread { [self] in try coordination.etcd.keepAlive(lease: lease) }
                    guard left > 0 else { finish("the leadership lease expired (no renewal reached etcd in \(ttl) s)"); return }
                    let key = try await offThread { [self] in try coordination.etcd.range(coordination.leaderKey) }
                    guard let holder = key.kvs.first, holder.createRevision == epoch else {
                        finish("the leader key is no longer this orchestrator's (epoch \(epoch))"); return
                    }
                    renewed.withLock { $0 = asked }
                } catch {
                    let since = ContinuousClock.now - renewed.withLock { $0 }
                    if since > deadline {
                        finish("cannot renew the leadership lease: etcd has not answered for \(since) (\(error)); quorum lost or cut off")
                        return
                    }
                    logger.warning("cannot renew the leadership lease; retrying", metadata: ["error": "\(error)"])
                }
            }
        }
        // A renewal stuck in calls to unreachable members must not outlast the lease: the
        // term ends on this host's clock once the last renewal is older than the lease
        // minus half a second, whatever etcd says later.
        Task.detached { [self] in
            while !isOver {
                try? await Task.sleep(for: .milliseconds(100))
                let since = ContinuousClock.now - renewed.withLock { $0 }
                if since > .seconds(ttl) - .milliseconds(500) {
                    finish("no renewal of the leadership lease reached etcd for \(since), near its \(ttl) s time to live; quorum lost or cut off")
                }
            }
        }
    }

    func finish(_ why: String) {
        let first = end.withLock { state -> Bool in
            guard state == nil else { return false }
            state = why
            return true
        }
        if first { logger.critical("leadership term over", metadata: ["why": "\(why)", "epoch": "\(epoch)"]) }
    }

    var endedWhy: String? { end.withLock { $0 } }

    /// Folds the log into a snapshot (every `snapshot_every` entries), one at a time, after
    /// the write that reached that position committed.
    func startSnapshot() {
        guard !isOver, let store = store.withLock({ $0 }) else { return }
        guard snapshotting.withLock({ busy in defer { busy = true }; return !busy }) else { return }
        Task.detached { [self] in
            defer { snapshotting.withLock { $0 = false } }
            do {
                try await Task.sleep(for: .milliseconds(10))
                try await coordination.writeSnapshot(of: store, epoch: epoch)
            } catch {
                logger.error("cannot write a snapshot of the journal; the log keeps growing until one is written", metadata: ["error": "\(error)"])
            }
        }
    }
}

// MARK: Snapshots

extension EtcdCoordination {
    /// Largest value one snapshot key holds.
    static let chunkBytes = 1 << 20

    /// Writes a consistent copy of `store` as chunks under `snapshot/SEQ/`, points
    /// `snapshot/current` at it and deletes the log up to SEQ and the snapshot before, each
    /// step only while `epoch` still leads.
    func writeSnapshot(of store: LocalStore, epoch: Int64) async throws {
        let started = ContinuousClock.now
        let file = "\(store.path).snapshot-\(getpid())"
        defer { unlink(file) }
        let copy = try DatabaseQueue(path: file)
        try store.database.backup(to: copy)
        guard let seq = try await copy.read({ try Self.position($0)?.seq }) else { return }
        try copy.close()
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        let chunks = max(1, (bytes.count + Self.chunkBytes - 1) / Self.chunkBytes)
        let base = snapshotPrefix + Self.padded(seq) + "/"
        let leads = EtcdClient.Compare.created(leaderKey, at: epoch)
        for index in 0..<chunks {
            let part = Array(bytes[(index * Self.chunkBytes)..<min(bytes.count, (index + 1) * Self.chunkBytes)])
            let done = try await offThread { [etcd] in try etcd.txn([leads], success: [.put(base + String(index), part)]) }
            guard done.succeeded else { return }
        }
        let current = snapshotPrefix + "current"
        let previous = try await offThread { [etcd] in try etcd.range(current) }.kvs.first.map { String(decoding: $0.valueBytes, as: UTF8.self) }
        var flip: [EtcdClient.Operation] = [.put(current, Array("\(seq) \(chunks)".utf8)), .deleteRange(from: logPrefix, to: logKey(seq + 1)),
                                            .deleteRange(from: partsPrefix, to: partsPrefix + Self.padded(seq + 1))]
        if let previous, let old = previous.split(separator: " ").first.flatMap({ Int64($0) }), old != seq {
            flip.append(.deletePrefix(snapshotPrefix + Self.padded(old) + "/"))
        }
        let operations = flip
        let flipped = try await offThread { [etcd] in try etcd.txn([leads], success: operations) }
        if flipped.succeeded {
            logger.info("journal snapshot written; the log before it deleted", metadata: [
                "position": "\(seq)", "bytes": "\(bytes.count)", "chunks": "\(chunks)", "took": "\(ContinuousClock.now - started)"])
        }
    }

    /// The snapshot `snapshot/current` names (position, chunk count), if any.
    func currentSnapshot() async throws -> (seq: Int64, chunks: Int)? {
        let key = snapshotPrefix + "current"
        guard let value = try await offThread({ [etcd] in try etcd.range(key) }).kvs.first else { return nil }
        let fields = String(decoding: value.valueBytes, as: UTF8.self).split(separator: " ")
        guard fields.count == 2, let seq = Int64(fields[0]), let chunks = Int(fields[1]) else {
            throw Unusable(description: "\(key) holds \"\(String(decoding: value.valueBytes, as: UTF8.self))\", not \"SEQ CHUNKS\"")
        }
        return (seq, chunks)
    }

    func snapshotIsAhead(of position: Int64) async throws -> Bool {
        try await currentSnapshot().map { $0.seq > position } ?? false
    }

    /// Replaces the replica's content with the current snapshot; returns its position.
    func restoreSnapshot(into replica: LocalStore, below firstLogEntry: Int64) async throws -> Int64 {
        guard let snapshot = try await currentSnapshot() else {
            throw Unusable(description: "the group's log starts at \(firstLogEntry) and no snapshot covers what is before it")
        }
        let base = snapshotPrefix + Self.padded(snapshot.seq) + "/"
        var bytes: [UInt8] = []
        for index in 0..<snapshot.chunks {
            guard let part = try await offThread({ [etcd] in try etcd.range(base + String(index)) }).kvs.first else {
                throw Unusable(description: "snapshot \(snapshot.seq) lacks its chunk \(index)")
            }
            bytes += part.valueBytes
        }
        let file = "\(replica.path).restore-\(getpid())"
        defer { unlink(file) }
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        let source = try DatabaseQueue(path: file)
        try source.backup(to: replica.database)
        try source.close()
        logger.notice("replica restored from the journal snapshot", metadata: ["position": "\(snapshot.seq)", "bytes": "\(bytes.count)"])
        return snapshot.seq
    }
}
