public import BynarConfig
import BynarCeph
public import BynarDisks
import BynarProto
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// The Ceph backend as the service uses it: finds which disk serves which OSDs of this host
/// (``OSDDeviceMatcher``: BlueStore labels, then `ceph osd metadata`), and maps Remove /
/// Add / Deploy onto ``CephBackend``'s workflows and the configured daemon commands.
///
/// A disk that backs more than one OSD, or the DB/WAL of any live OSD, is never removed as
/// if it were one OSD's (``CephDeviceRemoval``), and no disk is wiped while it still backs a
/// live OSD: the world is read again right before the wipe.
public struct CephDiskBackend: StorageBackend {
    public let name = "ceph"
    public let ceph: CephBackend
    public let config: CephBackendConfig
    public let daemons: CommandDaemonControl
    /// Ceph's name for this host (OSD metadata "hostname").
    public let osdHostname: String

    public init(config: CephBackendConfig, machineHostname: String) throws {
        self.config = config
        let cluster = try RadosCluster(configPath: config.configFile, clientName: config.clientName)
        ceph = CephBackend(cluster: cluster, pollInterval: .milliseconds(config.pollIntervalMs))
        daemons = CommandDaemonControl(
            stop: config.stopCommand, start: config.startCommand, create: config.createCommand,
            createWithID: config.createWithIdCommand, timeout: .seconds(config.commandTimeoutSeconds)
        )
        osdHostname = config.osdHostname ?? machineHostname
    }

    /// Which disks serve which OSDs, by stable identity (``OSDDeviceMatcher``: the BlueStore
    /// labels on the disk and its partitions, the metadata's serials, and the kernel name
    /// only for a live OSD whose disk cannot be read). The claim's id names every OSD the
    /// disk serves (``CephClaimID``): "4" for the data disk of osd.4, "1:db,2:db,3:db" for
    /// a disk holding three OSDs' DBs. It is IN_SERVICE while any of them is live, REMOVED
    /// when all are destroyed.
    public func claims(_ devices: [BlockDevice]) throws -> [String: BackendClaim] {
        let osds = try ceph.cluster.osds().osds
        guard !osds.isEmpty else { return [:] }
        var claims: [String: BackendClaim] = [:]
        var foundOnPresent: Set<Dependency> = []
        // Present disks first: their labels name their OSDs exactly. A vanished disk is
        // matched on what is left (its serial, or its old kernel name for a live OSD whose
        // device in that role no present disk's label claims: that name may carry a new OSD
        // by now).
        for device in devices.filter({ !$0.absent }) + devices.filter(\.absent) {
            var matches = OSDDeviceMatcher.match(DeviceFacts.read(device), osds: osds, hostname: osdHostname)
            if device.absent {
                matches.removeAll { foundOnPresent.contains(Dependency($0)) }
            } else {
                foundOnPresent.formUnion(matches.map(Dependency.init))
            }
            guard !matches.isEmpty else { continue }
            let live = CephDeviceRemoval.liveDependents(matches, osds: osds)
            claims[device.identity.key] = BackendClaim(backend: name, id: CephClaimID.encode(matches), status: live.isEmpty ? .removed : .inService)
        }
        return claims
    }

    /// One OSD in one role, for telling which devices a present disk already accounts for.
    private struct Dependency: Hashable {
        let osd: Int
        let role: OSDDeviceMatch.Role
        init(_ match: OSDDeviceMatch) {
            osd = match.osd
            role = match.role
        }
    }

    /// Every OSD `disk` serves now, read again: the labels of a present disk against the
    /// current osdmap and metadata; for a disk that is gone (whose old /dev name is never
    /// read), the OSDs its claim named.
    func dependents(of disk: BlockDevice, claim: BackendClaim, osds: [CephOSD]) throws -> [OSDDeviceMatch] {
        if disk.absent {
            guard let named = CephClaimID.decode(claim.id) else { throw BackendRefusal("\"\(claim.id)\" is not a Ceph claim (OSD ids)") }
            return named
        }
        return OSDDeviceMatcher.match(DeviceFacts.read(disk), osds: osds, hostname: osdHostname)
    }

    /// What removing `disk` means now (``CephDeviceRemoval``), from the world read again. A
    /// disk that serves one OSD now but another than when it was claimed is refused.
    func removal(of disk: BlockDevice, claim: BackendClaim) throws -> CephDeviceRemoval {
        let osds = try ceph.cluster.osds().osds
        let decision = CephDeviceRemoval.decide(device: disk.identity.devPath, dependents: try dependents(of: disk, claim: claim, osds: osds), osds: osds)
        if case .remove(let id) = decision, !(CephClaimID.decode(claim.id) ?? []).contains(where: { $0.osd == id && $0.role == .main }) {
            return .refuse("\(disk.identity.devPath) is the data disk of osd.\(id) now, not what it was when the request was checked (\(claim.id))")
        }
        return decision
    }

    public func safeToRemove(_ disk: BlockDevice, claim: BackendClaim) throws -> SafetyAnswer {
        let health = (try? ceph.health()) ?? "unknown"
        let id: Int
        switch try removal(of: disk, claim: claim) {
        case .refuse(let reason):
            return SafetyAnswer(safe: false, detail: reason, clusterHealth: health)
        case .alreadyDestroyed(let osd), .remove(let osd):
            id = osd
        }
        let state = try ceph.osdState(id)
        if state.destroyed { return SafetyAnswer(safe: true, detail: "osd.\(id) is already destroyed", clusterHealth: health) }
        let stop = try ceph.okToStop(id)
        guard stop.ok else { return SafetyAnswer(safe: false, detail: "osd.\(id): ok-to-stop says no: \(stop.detail)", clusterHealth: health) }
        // Safe to take out: stopping loses no availability. Remove then waits, after marking
        // it out, until safe-to-destroy says its data lives elsewhere.
        let destroy = try ceph.safeToDestroy(id)
        let detail = "osd.\(id) is ok to stop" + (destroy.safe ? " and safe to destroy" : "; once out, its data must move before destroy (\(destroy.detail))")
        return SafetyAnswer(safe: true, detail: detail, clusterHealth: health)
    }

    public func remove(_ disk: BlockDevice, claim: BackendClaim, simulate: Bool, job: JobRun) throws -> OperationResult {
        let progress = job.progress
        // Done already (a resumed job, or the same removal asked twice): the OSD the claim
        // named is destroyed. Only the wipe may be left, if the disk still carries its label.
        if let main = CephClaimID.decode(claim.id)?.first(where: { $0.role == .main })?.osd, case let state = try ceph.osdState(main), state.exists && state.destroyed {
            var steps = ["osd.\(main) is already destroyed"]
            if config.wipeAfterDestroy, !disk.absent, !simulate, Self.label(of: disk)?.whoami == main {
                let wipeStep = "wipe the labels of \(disk.identity.devPath)"
                progress.step(wipeStep, 5, of: 5)
                if let why = whyNotWipe(disk) { throw BackendStepFailure(step: wipeStep, done: steps, underlying: "\(why); nothing was wiped") }
                do {
                    try DiskChecks.wipeLabels(disk.identity.devPath)
                    steps.append(wipeStep)
                } catch {
                    steps.append("\(wipeStep): not done (\(error)); the disk is out of the cluster")
                }
            }
            return OperationResult(steps: steps, backendID: String(main), skipped: steps.count == 1)
        }
        let id: Int
        switch try removal(of: disk, claim: claim) {
        case .refuse(let reason):
            throw BackendRefusal(reason)
        case .alreadyDestroyed(let osd), .remove(let osd):
            id = osd
        }
        let state = try ceph.osdState(id)
        if state.exists && state.destroyed {
            return OperationResult(steps: ["osd.\(id) is already destroyed"], backendID: String(id), skipped: true)
        }
        let wipeStep = "wipe the labels of \(disk.identity.devPath)"
        let count = 5
        var index = 0
        do {
            var steps = try ceph.remove(
                osd: id, stopDaemon: { try daemons.stop(id) }, simulate: simulate,
                safeToDestroyTimeout: config.safeToDestroyTimeoutSeconds > 0 ? .seconds(config.safeToDestroyTimeoutSeconds) : nil,
                stallTimeout: .seconds(config.safeToDestroyStallSeconds),
                progress: { step in index += 1; progress.step(step, index, of: count) },
                waiting: { news in progress.step(news, index, of: count) }
            )
            if config.wipeAfterDestroy && disk.absent {
                steps.append("\(disk.identity.devPath) is gone from the host: nothing to wipe")
            } else if config.wipeAfterDestroy {
                if simulate {
                    steps.append(wipeStep)
                } else {
                    progress.step(wipeStep, count, of: count)
                    // Never wipe a disk that still backs a live OSD: read the world again
                    // right before, whatever was decided before the OSD went.
                    if let why = whyNotWipe(disk) {
                        throw BackendStepFailure(step: wipeStep, done: steps, underlying: "\(why); nothing was wiped")
                    }
                    do {
                        try DiskChecks.wipeLabels(disk.identity.devPath)
                        steps.append(wipeStep)
                    } catch {
                        // The OSD is destroyed and its data safe elsewhere; a dying disk that
                        // refuses writes is no reason to call the removal failed.
                        steps.append("\(wipeStep): not done (\(error)); the disk is out of the cluster")
                    }
                }
            }
            return OperationResult(steps: steps, backendID: String(id))
        } catch let refusal as CephRefusal {
            throw BackendRefusal(refusal.reason)
        } catch let failure as CephStepFailure {
            throw BackendStepFailure(step: failure.step, done: failure.done, rollback: failure.rollback, underlying: failure.underlying)
        }
    }

    /// An OSD place is out while the OSD is destroyed or gone from the osdmap.
    public func isOut(_ id: String) throws -> Bool {
        guard let osd = CephClaimID.decode(id)?.first(where: { $0.role == .main })?.osd ?? Int(id) else { return false }
        let state = try ceph.osdState(osd)
        return !state.exists || state.destroyed
    }

    /// Whether `label` is an OSD's of this cluster (a label naming no cluster counts).
    func isOfThisCluster(_ label: BluestoreLabel?) -> Bool {
        guard let label else { return false }
        return label.clusterFSID == nil || label.clusterFSID == (try? ceph.cluster.fsid())
    }

    /// The BlueStore label on the disk itself, if it carries one.
    static func label(of disk: BlockDevice) -> BluestoreLabel? {
        guard !disk.absent, case .bluestore(let label) = DeviceLabel.read(disk.identity.devPath) else { return nil }
        return label
    }

    /// Why `disk` must not be wiped now, or nil: it still backs a live OSD (its labels and
    /// the metadata read again), or the cluster could not be asked.
    public func whyNotWipe(_ disk: BlockDevice) -> String? {
        let osds: [CephOSD]
        do {
            osds = try ceph.cluster.osds().osds
        } catch {
            return "cannot ask the cluster which OSDs \(disk.identity.devPath) still backs (\(error))"
        }
        let live = CephDeviceRemoval.liveDependents(OSDDeviceMatcher.match(DeviceFacts.read(disk), osds: osds, hostname: osdHostname), osds: osds)
        return live.isEmpty ? nil : "\(disk.identity.devPath) still \(CephDeviceRemoval.describe(live))"
    }

    public func add(_ disk: BlockDevice, reuseID: String, simulate: Bool, job: JobRun) throws -> OperationResult {
        let progress = job.progress
        guard let id = Int(reuseID), id >= 0 else { throw BackendRefusal("reuse_osd_id \"\(reuseID)\" is not an OSD id") }
        let state = try ceph.osdState(id)
        let label = Self.label(of: disk)
        let ownLabel = label?.whoami == id && isOfThisCluster(label)
        // Resumed after the OSD was re-created on this disk: only the waits are left.
        if !job.id.isEmpty, !simulate, state.exists, !state.destroyed, ownLabel {
            var index = 1
            do {
                let steps = try ceph.readd(osd: id, startDaemon: nil, timeout: .seconds(config.upTimeoutSeconds),
                                           progress: { step in index += 1; progress.step(step, index, of: 3) })
                return OperationResult(steps: ["osd.\(id) was already re-created on \(disk.identity.devPath)"] + steps, backendID: String(id))
            } catch let failure as CephStepFailure {
                throw BackendStepFailure(step: failure.step, done: failure.done, rollback: failure.rollback, underlying: failure.underlying)
            }
        }
        guard state.exists, state.destroyed else {
            throw BackendRefusal("osd.\(id) is not destroyed (exists: \(state.exists), up: \(state.up)); only a destroyed id can be re-used")
        }
        if let why = DiskChecks.whyNotBlank(disk) {
            // A prepare this job began and a crash cut short leaves the destroyed id's label
            // on the new disk: this job's to redo. Anything else is data, never formatted over.
            guard !job.id.isEmpty, !simulate, ownLabel else { throw BackendRefusal(why) }
            do {
                try DiskChecks.wipeLabels(disk.identity.devPath)
            } catch {
                throw BackendStepFailure(step: "wipe the half-made osd.\(id) from \(disk.identity.devPath)", done: [], underlying: "\(error)")
            }
        }
        let command = CommandDaemonControl.expand(config.createWithIdCommand, id: id, device: disk.identity.devPath)
        if simulate {
            return OperationResult(
                steps: ["\(disk.identity.devPath) is blank", "run \(command.joined(separator: " "))", "wait until osd.\(id) is up", "wait until osd.\(id) is in"],
                backendID: String(id)
            )
        }
        var index = 0
        do {
            let steps = try ceph.readd(
                osd: id, startDaemon: { try daemons.create(id, device: disk.identity.devPath) }, timeout: .seconds(config.upTimeoutSeconds),
                progress: { step in index += 1; progress.step(step, index, of: 3) }
            )
            return OperationResult(steps: ["\(disk.identity.devPath) is blank"] + steps, backendID: String(id))
        } catch let refusal as CephRefusal {
            throw BackendRefusal(refusal.reason)
        } catch let failure as CephStepFailure {
            throw BackendStepFailure(step: failure.step, done: failure.done, rollback: failure.rollback, underlying: failure.underlying)
        }
    }

    public func deploy(_ disk: BlockDevice, simulate: Bool, job: JobRun) throws -> OperationResult {
        let progress = job.progress
        let device = disk.identity.devPath
        // Resumed after the OSD was made: the disk was blank when this job was accepted and
        // one job at a time owns a disk, so an OSD of this cluster on it is this job's.
        let label = Self.label(of: disk)
        let madeByThisJob = !job.id.isEmpty && !simulate && label?.whoami != nil && isOfThisCluster(label)
        if !madeByThisJob, let why = DiskChecks.whyNotBlank(disk) { throw BackendRefusal(why) }
        let command = CommandDaemonControl.expand(config.createCommand, id: nil, device: device)
        let createStep = "run \(command.joined(separator: " "))"
        let findStep = "find the new OSD on \(device)"
        if simulate {
            return OperationResult(steps: ["\(device) is blank", createStep, findStep, "wait until it is up and in"], backendID: "")
        }
        var done = ["\(device) is blank"]
        progress.step(createStep, 1, of: 3)
        if madeByThisJob {
            done = ["\(device) already carries osd.\(label?.whoami ?? -1) (made by this job before a restart)"]
        } else {
            do {
                try daemons.create(nil, device: device)
                done.append(createStep)
            } catch {
                throw BackendStepFailure(step: createStep, done: done, underlying: "\(error)")
            }
        }
        progress.step(findStep, 2, of: 3)
        var found: Int?
        let located = try ceph.waitUntil(timeout: .seconds(config.upTimeoutSeconds)) {
            let osds = try ceph.cluster.osds().osds.filter { $0.exists && !$0.destroyed }
            found = OSDDeviceMatcher.match(DeviceFacts.read(disk), osds: osds, hostname: osdHostname).first?.osd
            return found != nil
        }
        guard located, let id = found else {
            throw BackendStepFailure(step: findStep, done: done, underlying: "no OSD names \(device) (BlueStore label, or metadata of host \(osdHostname)) after \(config.upTimeoutSeconds) s")
        }
        done.append("\(findStep): osd.\(id)")
        let upStep = "wait until osd.\(id) is up and in"
        progress.step(upStep, 3, of: 3)
        var last = OSDState(exists: false, up: false, in: false, destroyed: false)
        let upIn = try ceph.waitUntil(timeout: .seconds(config.upTimeoutSeconds)) {
            last = try ceph.osdState(id)
            return last.up && last.in
        }
        guard upIn else { throw BackendStepFailure(step: upStep, done: done, underlying: "osd.\(id) is \(last) after \(config.upTimeoutSeconds) s") }
        done.append(upStep)
        return OperationResult(steps: done, backendID: String(id))
    }
}
