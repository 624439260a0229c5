public import BynarConfig
public import BynarDisks
import BynarProcess
import BynarProto
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Disks that are vdevs of this host's imported ZFS pools (zfs-fuse or OpenZFS), found in
/// `zpool status` by device path or /dev/disk/by-id name. The id of a disk here is
/// `zfs:POOL/VDEV` (VDEV as zpool prints it): pool names cannot hold a "/".
///
/// - SafeToRemove: ``ZFSSafety/judge(_:vdev:)`` — the vdev's top-level vdev keeps its
///   redundancy without it, and no resilver is running in the pool.
/// - Remove: `zpool offline POOL /dev/...` (zfs-fuse wants the full path). A vdev already
///   OFFLINE, or no longer in the pool, is left as it is.
/// - Add: `zpool replace POOL OLD NEW` onto a blank disk, or `zpool replace POOL OLD` when
///   the new disk sits in the old one's slot under the same name, then the resilver followed
///   to its end, its percentage reported as progress. A new disk already in the pool (a
///   resumed job) is not replaced again; its resilver is followed.
/// - Deploy: refused (growing a pool is a decision about its layout, not a repair).
/// Each step reads `zpool status` first, so running it twice changes nothing the second time.
public struct ZFSBackend: StorageBackend {
    public let name = "zfs"
    public let config: ZFSBackendConfig

    public init(config: ZFSBackendConfig) {
        self.config = config
    }

    var zpool: ZpoolTool { ZpoolTool(path: config.zpoolPath, timeout: .seconds(config.commandTimeoutSeconds)) }

    static let idPrefix = "zfs:"

    /// `zfs:POOL/VDEV`.
    static func id(pool: String, vdev: String) -> String { "\(idPrefix)\(pool)/\(vdev)" }

    /// The pool and vdev of an id, or nil when it is not one of this backend's.
    static func parse(_ id: String) -> (pool: String, vdev: String)? {
        guard id.hasPrefix(idPrefix) else { return nil }
        let rest = id.dropFirst(idPrefix.count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let pool = String(rest[..<slash]), vdev = String(rest[rest.index(after: slash)...])
        return pool.isEmpty || vdev.isEmpty ? nil : (pool, vdev)
    }

    public func claims(_ devices: [BlockDevice]) throws -> [String: BackendClaim] {
        let status = try zpool.status()
        var claims: [String: BackendClaim] = [:]
        for device in devices {
            guard let (pool, leaf) = ZpoolStatus.find(device, in: status) else { continue }
            claims[device.identity.key] = BackendClaim(backend: name, id: Self.id(pool: pool.name, vdev: leaf.name), status: leaf.state == "OFFLINE" ? .removed : .inService)
        }
        return claims
    }

    public func safeToRemove(_ disk: BlockDevice, claim: BackendClaim) throws -> SafetyAnswer {
        guard let (poolName, vdev) = Self.parse(claim.id) else { throw BackendRefusal("\"\(claim.id)\" is not a ZFS vdev id") }
        guard let pool = try zpool.status(poolName).pool(poolName) else { return SafetyAnswer(safe: false, detail: "pool \(poolName) is not imported") }
        return ZFSSafety.judge(pool, vdev: vdev)
    }

    public func remove(_ disk: BlockDevice, claim: BackendClaim, simulate: Bool, job: JobRun) throws -> OperationResult {
        guard let (poolName, vdev) = Self.parse(claim.id) else { throw BackendRefusal("\"\(claim.id)\" is not a ZFS vdev id") }
        guard let pool = try zpool.status(poolName).pool(poolName) else { throw BackendRefusal("pool \(poolName) is not imported") }
        guard let leaf = pool.leaf(vdev)?.vdev else {
            return OperationResult(steps: ["\(vdev) is no longer a vdev of \(poolName)"], backendID: claim.id, skipped: true)
        }
        if leaf.state == "OFFLINE" {
            return OperationResult(steps: ["\(vdev) is already OFFLINE in \(poolName)"], backendID: claim.id, skipped: true)
        }
        let safety = ZFSSafety.judge(pool, vdev: vdev)
        guard safety.safe else { throw BackendRefusal(safety.detail) }
        let path = ZpoolStatus.fullPath(vdev)
        let step = "zpool offline \(poolName) \(path)"
        if simulate { return OperationResult(steps: [safety.detail, step], backendID: claim.id) }
        job.progress.step(step, 1, of: 1)
        do {
            try zpool.change(["offline", poolName, path])
        } catch {
            throw BackendStepFailure(step: step, done: [], underlying: "\(error)")
        }
        let after = try? zpool.status(poolName).pool(poolName)?.leaf(vdev)?.vdev.state
        guard after == "OFFLINE" else {
            throw BackendStepFailure(step: step, done: [], underlying: "\(vdev) is \(after ?? "not listed") in \(poolName) after zpool offline")
        }
        return OperationResult(steps: [safety.detail, step], backendID: claim.id)
    }

    public func add(_ disk: BlockDevice, reuseID: String, simulate: Bool, job: JobRun) throws -> OperationResult {
        guard let (poolName, old) = Self.parse(reuseID) else { throw BackendRefusal("\"\(reuseID)\" is not a ZFS vdev id (zfs:POOL/VDEV)") }
        let status = try zpool.status(poolName)
        guard let pool = status.pool(poolName) else { throw BackendRefusal("pool \(poolName) is not imported") }
        let newPath = disk.identity.devPath
        let resilverStep = "resilver \(poolName) onto \(newPath)"
        // A new disk in the old one's slot has the name the pool still lists the old vdev
        // under (the same /dev node, by-path or by-vdev name): `zpool replace POOL VDEV`. A
        // vdev named by its GUID has no path for zpool to reopen: the new one is named.
        let sameSlot = !ZpoolStatus.isGUID(old) && ZpoolStatus.find(disk, in: ZpoolStatus(pools: [pool]), labelled: { _ in nil })?.leaf.name == old
        if let (_, already) = ZpoolStatus.find(disk, in: ZpoolStatus(pools: [pool])) {
            // Already in the pool: this job's replace ran before a restart, or the disk was
            // put in by hand. Follow a running resilver; otherwise nothing to do.
            guard pool.resilvering else {
                return OperationResult(steps: ["\(already.name) is already a vdev of \(poolName) (\(already.state))"], backendID: Self.id(pool: poolName, vdev: already.name), skipped: true)
            }
            if simulate { return OperationResult(steps: ["\(already.name) is already in \(poolName)", "follow the running resilver"], backendID: Self.id(pool: poolName, vdev: already.name)) }
            var done = ["\(already.name) is already in \(poolName); a resilver is running"]
            try followResilver(poolName, step: resilverStep, done: &done, progress: job.progress) { true }
            return OperationResult(steps: done, backendID: Self.id(pool: poolName, vdev: ZpoolStatus.find(disk, in: try zpool.status(poolName))?.leaf.name ?? already.name))
        }
        guard let oldLeaf = pool.leaf(old)?.vdev else { throw BackendRefusal("\(old) is not a vdev of \(poolName); nothing to replace") }
        guard oldLeaf.state != "ONLINE" else { throw BackendRefusal("\(old) is ONLINE in \(poolName); take it out (Remove) before replacing it") }
        if pool.resilvering { throw BackendRefusal("a resilver is running in \(poolName); replacing \(old) must wait for it") }
        if let why = DiskChecks.whyNotBlank(disk) { throw BackendRefusal(why) }
        let replace = ["replace", poolName, ZpoolStatus.fullPath(old)] + (sameSlot ? [] : [newPath])
        let replaceStep = "zpool " + replace.joined(separator: " ")
        if simulate { return OperationResult(steps: ["\(newPath) is blank", "\(old) is \(oldLeaf.state) in \(poolName)", replaceStep, resilverStep], backendID: Self.id(pool: poolName, vdev: newPath)) }
        var done = ["\(newPath) is blank"]
        job.progress.step(replaceStep, 1, of: 2)
        // zfs-fuse's replace returns only when the resilver has ended, OpenZFS's at once: it
        // runs on a thread of its own while this one reads the progress.
        let command = CommandOutcome()
        let zpool = zpool
        let resilverTimeout = Duration.seconds(config.resilverTimeoutSeconds)
        let thread = try startThread(joinable: true) {
            do {
                try zpool.change(replace, timeout: resilverTimeout)
                command.end(nil)
            } catch {
                command.end("\(error)")
            }
        }
        defer { pthread_join(thread, nil) }
        try followResilver(poolName, step: resilverStep, done: &done, progress: job.progress) { command.ended }
        if let error = command.failure { throw BackendStepFailure(step: replaceStep, done: done, underlying: error) }
        done.insert(replaceStep, at: 1)
        let after = try zpool.status(poolName)
        guard let (_, leaf) = ZpoolStatus.find(disk, in: after), leaf.state == "ONLINE" else {
            throw BackendStepFailure(step: resilverStep, done: done, underlying: "\(newPath) is not ONLINE in \(poolName) after the replace")
        }
        return OperationResult(steps: done, backendID: Self.id(pool: poolName, vdev: leaf.name))
    }

    /// Reads the pool until `commandEnded` (the replace on the other thread) and no resilver
    /// runs, reporting the percentage as step 2 of 2.
    func followResilver(_ poolName: String, step: String, done: inout [String], progress: ProgressReporter, commandEnded ended: () -> Bool) throws {
        let deadline = ContinuousClock.now + .seconds(config.resilverTimeoutSeconds)
        var lastPercent: Double?
        while true {
            let commandEnded = ended()
            let pool = try? zpool.status(poolName).pool(poolName)
            if case .resilverRunning(let percent) = pool?.scan, let percent, percent != lastPercent {
                lastPercent = percent
                progress.step("\(step): \(percent)% done", 2, of: 2)
            }
            if commandEnded, let pool, !pool.resilvering {
                done.append("\(step): \(pool.scan.summary); \(poolName) is \(pool.state)")
                return
            }
            guard ContinuousClock.now < deadline else {
                throw BackendStepFailure(step: step, done: done, underlying: "the resilver did not end within \(config.resilverTimeoutSeconds) s (it goes on)")
            }
            // Short waits while zfs-fuse's replace runs; the configured interval otherwise.
            usleep(UInt32(min(config.progressIntervalSeconds * 1_000_000, commandEnded ? config.progressIntervalSeconds * 1_000_000 : 500_000)))
        }
    }

    public func deploy(_ disk: BlockDevice, simulate: Bool, job: JobRun) throws -> OperationResult {
        throw BackendRefusal("the ZFS backend does not grow pools; add a vdev with zpool add by hand")
    }

    /// A vdev is out while its pool lists it in any state but ONLINE; once replaced (no
    /// longer listed) its place is back in service.
    public func isOut(_ id: String) throws -> Bool {
        guard let (poolName, vdev) = Self.parse(id) else { throw BackendRefusal("\"\(id)\" is not a ZFS vdev id") }
        guard let pool = try zpool.status(poolName).pool(poolName) else { throw BackendRefusal("pool \(poolName) is not imported") }
        return pool.leaf(vdev).map { $0.vdev.state != "ONLINE" } ?? false
    }
}

/// How a command run on another thread ended.
final class CommandOutcome: Sendable {
    private let state = Mutex<(ended: Bool, failure: String?)>((false, nil))
    func end(_ failure: String?) { state.withLock { $0 = (true, failure) } }
    var ended: Bool { state.withLock { $0.ended } }
    var failure: String? { state.withLock { $0.failure } }
}

/// Whether a vdev can be taken out without the pool losing data. Pure.
public enum ZFSSafety {
    /// 1. A vdev the pool does not list is refused (nothing of this pool to take out).
    /// 2. While a resilver runs (or a `replacing` group is unfinished) nothing is taken out:
    ///    the pool is rebuilding redundancy and a second loss may be one too many.
    /// 3. A cache or spare device holds no pool data: safe.
    /// 4. A vdev already not ONLINE serves no data: taking it out loses nothing more.
    /// 5. Otherwise its top-level vdev (mirror: all members but one; raidzN: N) must be able to
    ///    lose it on top of the members already not working. A single-disk vdev never can.
    public static func judge(_ pool: ZFSPool, vdev: String) -> SafetyAnswer {
        guard let (leaf, top) = pool.leaf(vdev) else { return SafetyAnswer(safe: false, detail: "\(vdev) is not a vdev of \(pool.name)", clusterHealth: pool.state) }
        if pool.resilvering { return SafetyAnswer(safe: false, detail: "a resilver is running in \(pool.name) (\(pool.scan.summary))", clusterHealth: pool.state) }
        if top.section == "cache" || top.section == "spares" { return SafetyAnswer(safe: true, detail: "\(vdev) is a \(top.section) device of \(pool.name); it holds no pool data", clusterHealth: pool.state) }
        if leaf.state != "ONLINE" { return SafetyAnswer(safe: true, detail: "\(vdev) is already \(leaf.state) in \(pool.name); taking it out loses nothing more", clusterHealth: pool.state) }
        guard top.name != leaf.name else { return SafetyAnswer(safe: false, detail: "\(vdev) is a top-level vdev of \(pool.name) on its own; the pool has no redundancy for it", clusterHealth: pool.state) }
        let others = top.children.filter { !$0.allLeaves.contains { $0.name == vdev } }
        let down = others.filter { !$0.working }
        let can = top.redundancy
        if down.count + 1 > can {
            return SafetyAnswer(safe: false, detail: "\(top.name) of \(pool.name) can lose \(can) member\(can == 1 ? "" : "s") and \(down.count) already \(down.count == 1 ? "is" : "are") not working (\(down.map { "\($0.name) \($0.state)" }.joined(separator: ", "))); taking \(vdev) out would lose data", clusterHealth: pool.state)
        }
        return SafetyAnswer(safe: true, detail: "\(top.name) of \(pool.name) can lose \(can) member\(can == 1 ? "" : "s"); \(down.count) other\(down.count == 1 ? " is" : "s are") not working", clusterHealth: pool.state)
    }
}

