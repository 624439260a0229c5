public import BynarDisks
public import BynarProto

/// One storage system's view of this host's disks and the operations that change them.
/// Implementations: ``CephDiskBackend`` (OSDs through librados and the daemon commands) and
/// ``FilesystemBackend`` (plain data disks). Their methods block (librados, external
/// tools); the service calls them off the bus's threads.
///
/// Every operation checks the world before each step and skips what is already so, so a
/// job resumed after a crash (the same ``JobRun/id``) runs to the true end state instead of
/// being refused for the half it had done.
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
    func remove(_ disk: BlockDevice, claim: BackendClaim, simulate: Bool, job: JobRun) throws -> OperationResult
    /// Puts a new disk into service in place of the one removed as `reuseID` (OSD id,
    /// mountpoint). A disk that is no longer blank only because this job (`job.id`) already
    /// began on it is this job's to finish.
    func add(_ disk: BlockDevice, reuseID: String, simulate: Bool, job: JobRun) throws -> OperationResult
    /// Puts a blank disk into service as a new member (the same resumption rule as Add).
    func deploy(_ disk: BlockDevice, simulate: Bool, job: JobRun) throws -> OperationResult
    /// Whether the place `id` (an OSD id, a mountpoint) this backend took out is still out
    /// of service now (asked at start, so the host's count of disks out follows the world,
    /// not only the job table). Throws when it cannot be told.
    func isOut(_ id: String) throws -> Bool
    /// The present disks as the disk-manager should remember them (``KnownDisks``): what
    /// this backend will need to recognise a disk once it has vanished, filled in.
    func remembered(_ devices: [BlockDevice]) -> [BlockDevice]
}

extension StorageBackend {
    public func remembered(_ devices: [BlockDevice]) -> [BlockDevice] { devices }
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

/// One run of an operation: the job it belongs to (empty for a direct call or a simulation)
/// and where its steps are reported.
public struct JobRun: Sendable {
    /// The disk-manager's job id; the same when a job is resumed after a restart.
    public var id: String
    public var progress: ProgressReporter

    public init(id: String, progress: ProgressReporter) {
        self.id = id
        self.progress = progress
    }

    /// A call outside any job (tests, simulations): nothing to resume, steps not reported.
    public static let direct = JobRun(id: "", progress: .ignore)

    /// A UUID that only this job gives a filesystem it makes (RFC 4122 layout, derived from
    /// the job id by two FNV-1a hashes): on resume, a disk carrying it was formatted by this
    /// job and nobody else. Nil outside a job.
    public var filesystemUUID: String? {
        guard !id.isEmpty else { return nil }
        func fnv(_ seed: UInt64) -> UInt64 {
            var hash = seed
            for byte in id.utf8 {
                hash ^= UInt64(byte)
                hash = hash &* 0x100_0000_01b3
            }
            return hash
        }
        var bytes = withUnsafeBytes(of: fnv(0xcbf2_9ce4_8422_2325).bigEndian, Array.init) + withUnsafeBytes(of: fnv(0x84222325_cbf29ce4).bigEndian, Array.init)
        bytes[6] = (bytes[6] & 0x0f) | 0x40  // version 4 layout
        bytes[8] = (bytes[8] & 0x3f) | 0x80  // RFC 4122 variant
        let digits = Array("0123456789abcdef")
        var text = ""
        for (index, byte) in bytes.enumerated() {
            if [4, 6, 8, 10].contains(index) { text.append("-") }
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0f)])
        }
        return text
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
