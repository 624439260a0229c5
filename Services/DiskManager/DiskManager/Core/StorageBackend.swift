public import BynarDisks
public import BynarProto

/// One storage system's view of this host's disks and the operations that change them.
/// Implementations: ``CephDiskBackend`` (OSDs through librados and the daemon commands) and
/// ``FilesystemBackend`` (plain data disks). Their methods block (librados, external
/// tools); the service calls them off the bus's threads.
public protocol StorageBackend: Sendable {
    /// "ceph" or "filesystem": the `backend` of ``Bynar_V1_ManagedDisk``.
    var name: String { get }
    /// Which of `devices` this backend manages (by disk key), with its id there.
    func claims(_ devices: [BlockDevice]) throws -> [String: BackendClaim]
    /// Whether taking `disk` out now loses nothing; read-only.
    func safeToRemove(_ disk: BlockDevice, claim: BackendClaim) throws -> SafetyAnswer
    /// Takes `disk` out of service; with `simulate`, says what it would do and changes nothing.
    /// - Throws: ``BackendRefusal`` when nothing was changed on purpose,
    ///   ``BackendStepFailure`` when a step failed.
    func remove(_ disk: BlockDevice, claim: BackendClaim, simulate: Bool, progress: ProgressReporter) throws -> OperationResult
    /// Puts a new disk into service in place of the one removed as `reuseID` (OSD id,
    /// mountpoint).
    func add(_ disk: BlockDevice, reuseID: String, simulate: Bool, progress: ProgressReporter) throws -> OperationResult
    /// Puts a blank disk into service as a new member.
    func deploy(_ disk: BlockDevice, simulate: Bool, progress: ProgressReporter) throws -> OperationResult
}

/// A backend's hold on one disk.
public struct BackendClaim: Sendable, Equatable {
    public var backend: String
    /// OSD id, mountpoint.
    public var id: String
    public var status: Bynar_V1_ManagedDisk.Status

    public init(backend: String, id: String, status: Bynar_V1_ManagedDisk.Status) {
        self.backend = backend
        self.id = id
        self.status = status
    }
}

public struct SafetyAnswer: Sendable, Equatable {
    public var safe: Bool
    public var detail: String
    /// "HEALTH_OK" … for backends with a cluster; empty otherwise.
    public var clusterHealth: String

    public init(safe: Bool, detail: String, clusterHealth: String = "") {
        self.safe = safe
        self.detail = detail
        self.clusterHealth = clusterHealth
    }
}

public struct OperationResult: Sendable, Equatable {
    /// Steps done (or, simulated, that would be done), in order.
    public var steps: [String]
    /// The id the disk had (Remove) or now has (Add/Deploy) in the backend.
    public var backendID: String
    /// Nothing needed doing.
    public var skipped: Bool

    public init(steps: [String], backendID: String, skipped: Bool = false) {
        self.steps = steps
        self.backendID = backendID
        self.skipped = skipped
    }
}

/// Refused on purpose; nothing was changed.
public struct BackendRefusal: Error, Equatable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// A step failed. `done` lists the steps that had succeeded; `rollback` says what was done
/// to leave things as they were, if anything.
public struct BackendStepFailure: Error, Equatable, CustomStringConvertible {
    public var step: String
    public var done: [String]
    public var rollback: String?
    public var underlying: String

    public init(step: String, done: [String], rollback: String? = nil, underlying: String) {
        self.step = step
        self.done = done
        self.rollback = rollback
        self.underlying = underlying
    }

    public var description: String {
        "failed at \"\(step)\": \(underlying)" + (rollback.map { "; \($0)" } ?? "")
    }
}

/// Receives each step as a long operation starts it (for progress events).
public struct ProgressReporter: Sendable {
    let report: @Sendable (_ step: String, _ index: Int, _ count: Int) -> Void

    public init(_ report: @escaping @Sendable (_ step: String, _ index: Int, _ count: Int) -> Void) {
        self.report = report
    }

    /// Starting step `index` (1-based) of `count`.
    public func step(_ step: String, _ index: Int, of count: Int) { report(step, index, count) }

    public static let ignore = ProgressReporter { _, _, _ in }
}
