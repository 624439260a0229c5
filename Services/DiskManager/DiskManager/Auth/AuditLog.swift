public import BynarAuth
public import BynarProto
public import BynarStore
import GRDB
import SwiftProtobuf
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif

/// One command the disk-manager received, as the audit log keeps it.
public struct AuditRecord: Sendable, Equatable {
    /// When it was received (unix ms).
    public var receivedUnixMs: Int64
    /// The request's own id.
    public var requestID: String
    /// Operation name, as ``DiskManagerService/operationName(_:)`` gives it.
    public var operation: String
    /// The target disk selector as text (``AuditLog/selectorText(_:)``); empty when none.
    public var disk: String
    /// The key id the command claims to be signed with; empty when unsigned.
    public var signerKeyID: String
    /// Whether the signature (and the other checks) passed.
    public var verified: Bool
    /// Why verification failed; empty when verified.
    public var rejection: String
    /// Whether the request asked only to say what would be done.
    public var simulate: Bool
    /// The outcome answered.
    public var outcome: Bynar_V1_Outcome
    /// The answer's reason, in words.
    public var reason: String
    /// The step that failed, for FAILED.
    public var failedStep: String

    /// A record from its fields.
    public init(
        receivedUnixMs: Int64, requestID: String, operation: String, disk: String, signerKeyID: String,
        verified: Bool, rejection: String, simulate: Bool, outcome: Bynar_V1_Outcome, reason: String, failedStep: String
    ) {
        self.receivedUnixMs = receivedUnixMs
        self.requestID = requestID
        self.operation = operation
        self.disk = disk
        self.signerKeyID = signerKeyID
        self.verified = verified
        self.rejection = rejection
        self.simulate = simulate
        self.outcome = outcome
        self.reason = reason
        self.failedStep = failedStep
    }

    /// The record for `request`, received at `receivedUnixMs`, after `verification`,
    /// answered with `response`.
    public init(
        request: Bynar_V1_DiskManagerRequest, receivedUnixMs: Int64,
        verification: Result<VerifiedCommand, CommandRejection>, response: Bynar_V1_DiskManagerResponse
    ) {
        let rejection: String
        switch verification {
        case .success: rejection = ""
        case .failure(let why): rejection = why.description
        }
        self.init(
            receivedUnixMs: receivedUnixMs, requestID: request.requestID, operation: DiskManagerService.operationName(request),
            disk: AuditLog.selectorText(AuditLog.selector(of: request)), signerKeyID: request.hasAuth ? request.auth.keyID : "",
            verified: rejection.isEmpty, rejection: rejection, simulate: request.simulate,
            outcome: response.outcome, reason: response.reason, failedStep: response.failedStep
        )
    }
}

/// The disk-manager's record of what it was asked and what it answered, in its own store.
///
/// The audit table is append-only: SQLite triggers refuse UPDATE and DELETE on it, so a
/// bug cannot rewrite history (someone with the file can, of course). The request table
/// keeps the first response to each request id, so a repeated id can be answered with the
/// first outcome instead of acting twice; consult it only after the command verified, or
/// an unsigned caller could read other callers' answers.
public struct AuditLog: Sendable {
    /// Store migrations for the audit and request tables.
    public static let migrations: [LocalStore.Migration] = [
        LocalStore.Migration("disk-manager-audit-v1") { db in
            try db.create(table: "dm_audit") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("received_unix_ms", .integer).notNull()
                table.column("request_id", .text).notNull().indexed()
                table.column("operation", .text).notNull()
                table.column("disk", .text).notNull()
                table.column("signer_key_id", .text).notNull()
                table.column("verified", .boolean).notNull()
                table.column("rejection", .text).notNull()
                table.column("simulate", .boolean).notNull()
                table.column("outcome", .text).notNull()
                table.column("reason", .text).notNull()
                table.column("failed_step", .text).notNull()
            }
            try db.execute(sql: """
                CREATE TRIGGER dm_audit_no_update BEFORE UPDATE ON dm_audit
                BEGIN SELECT RAISE(ABORT, 'dm_audit is append-only'); END;
                CREATE TRIGGER dm_audit_no_delete BEFORE DELETE ON dm_audit
                BEGIN SELECT RAISE(ABORT, 'dm_audit is append-only'); END;
                """)
        },
        LocalStore.Migration("disk-manager-requests-v1") { db in
            try db.create(table: "dm_request_outcome") { table in
                table.primaryKey("request_id", .text)
                table.column("response", .blob).notNull()
                table.column("recorded_unix_ms", .integer).notNull()
            }
        },
    ]

    /// The disk-manager's store holding the tables.
    public let store: LocalStore

    /// The log in `store`, which must have been opened with ``migrations``.
    public init(store: LocalStore) {
        self.store = store
    }

    /// Appends `record`; returns its row id.
    @discardableResult
    public func record(_ record: AuditRecord) throws -> Int64 {
        try store.database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO dm_audit(received_unix_ms, request_id, operation, disk, signer_key_id, verified, rejection,
                                         simulate, outcome, reason, failed_step)
                    VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    record.receivedUnixMs, record.requestID, record.operation, record.disk, record.signerKeyID, record.verified,
                    record.rejection, record.simulate, record.outcome.name, record.reason, record.failedStep,
                ]
            )
            return db.lastInsertedRowID
        }
    }

    /// The newest `limit` records, newest first.
    public func recent(limit: Int) throws -> [AuditRecord] {
        try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM dm_audit ORDER BY id DESC LIMIT ?", arguments: [limit]).map { row in
                AuditRecord(
                    receivedUnixMs: row["received_unix_ms"], requestID: row["request_id"], operation: row["operation"],
                    disk: row["disk"], signerKeyID: row["signer_key_id"], verified: row["verified"], rejection: row["rejection"],
                    simulate: row["simulate"], outcome: Self.outcome(named: row["outcome"]), reason: row["reason"],
                    failedStep: row["failed_step"]
                )
            }
        }
    }

    // MARK: Request ids

    /// The serialized ``Bynar_V1_DiskManagerResponse`` first given for `requestID`, if any.
    public func firstOutcome(requestID: String) throws -> [UInt8]? {
        guard !requestID.isEmpty else { return nil }
        return try store.database.read { db in
            try Data.fetchOne(db, sql: "SELECT response FROM dm_request_outcome WHERE request_id = ?", arguments: [requestID]).map { [UInt8]($0) }
        }
    }

    /// The first response given for `requestID`, decoded.
    public func firstResponse(requestID: String) throws -> Bynar_V1_DiskManagerResponse? {
        guard let bytes = try firstOutcome(requestID: requestID) else { return nil }
        return try Bynar_V1_DiskManagerResponse(serializedBytes: bytes)
    }

    /// Keeps `response` as the outcome of `requestID` unless one is kept already (the first
    /// wins). Returns whether this one was kept. An empty request id is never kept.
    @discardableResult
    public func remember(requestID: String, response: Bynar_V1_DiskManagerResponse, nowMs: Int64) throws -> Bool {
        guard !requestID.isEmpty else { return false }
        let bytes: [UInt8] = try response.serializedBytes()
        return try store.database.write { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO dm_request_outcome(request_id, response, recorded_unix_ms) VALUES(?, ?, ?)",
                arguments: [requestID, Data(bytes), nowMs]
            )
            return db.changesCount == 1
        }
    }

    // MARK: Text forms

    /// The disk a request targets, or an empty selector for List and JobStatus.
    public static func selector(of request: Bynar_V1_DiskManagerRequest) -> Bynar_V1_DiskSelector {
        switch request.operation {
        case .safeToRemove(let op): op.disk
        case .remove(let op): op.disk
        case .add(let op): op.disk
        case .deploy(let op): op.disk
        case .list, .jobStatus, nil: Bynar_V1_DiskSelector()
        }
    }

    /// `selector`'s set fields as `name=value`, space-separated, in schema order
    /// (`key= wwn= serial= by_path= dev_path=`); empty when none is set.
    public static func selectorText(_ selector: Bynar_V1_DiskSelector) -> String {
        [("key", selector.key), ("wwn", selector.wwn), ("serial", selector.serial), ("by_path", selector.byPath), ("dev_path", selector.devPath)]
            .filter { !$0.1.isEmpty }
            .map { "\($0.0)=\($0.1)" }
            .joined(separator: " ")
    }

    static func outcome(named name: String) -> Bynar_V1_Outcome {
        for outcome in Bynar_V1_Outcome.allCases where outcome.name == name { return outcome }
        if name.hasPrefix("UNRECOGNIZED("), let value = Int(name.dropFirst(13).dropLast()) { return .UNRECOGNIZED(value) }
        return .unspecified
    }
}
