public import BynarConfig
import BynarCeph
public import BynarDisks
import BynarProto
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// The Ceph backend as the service uses it: finds which disk carries which OSD of this host
/// (`ceph osd metadata`: `devices`, `bluestore_bdev_dev_node`), and maps Remove / Add /
/// Deploy onto ``CephBackend``'s workflows and the configured daemon commands.
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

    /// Which disks serve which OSD, by stable identity (``OSDDeviceMatcher``: the BlueStore
    /// label on the disk, the metadata's serials, and the kernel name only for a live OSD
    /// whose disk cannot be read). A disk that serves several OSDs (a shared DB device) is
    /// claimed by the lowest id; its detail names them all.
    public func claims(_ devices: [BlockDevice]) throws -> [String: BackendClaim] {
        let osds = try ceph.cluster.osds().osds
        guard !osds.isEmpty else { return [:] }
        let byID = Dictionary(osds.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        var claims: [String: BackendClaim] = [:]
        var claimedByPresent: Set<Int> = []
        // Present disks first: their labels name their OSDs exactly. A vanished disk is
        // matched on what is left (its serial, or its old kernel name for a live OSD that no
        // present disk's label claims: that name may carry a new OSD by now).
        for device in devices.filter({ !$0.absent }) + devices.filter(\.absent) {
            let candidates = device.absent ? osds.filter { !claimedByPresent.contains($0.id) } : osds
            let matches = OSDDeviceMatcher.match(DeviceFacts.read(device), osds: candidates, hostname: osdHostname)
            guard let first = matches.min(by: { $0.osd < $1.osd }), let osd = byID[first.osd] else { continue }
            if !device.absent { claimedByPresent.formUnion(matches.map(\.osd)) }
            let status: Bynar_V1_ManagedDisk.Status = osd.destroyed ? .removed : .inService
            claims[device.identity.key] = BackendClaim(backend: name, id: String(osd.id), status: status)
        }
        return claims
    }

    func osdID(_ claim: BackendClaim) throws -> Int {
        guard let id = Int(claim.id), id >= 0 else { throw BackendRefusal("\"\(claim.id)\" is not an OSD id") }
        return id
    }

    public func safeToRemove(_ disk: BlockDevice, claim: BackendClaim) throws -> SafetyAnswer {
        let id = try osdID(claim)
        let health = (try? ceph.health()) ?? "unknown"
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

    public func remove(_ disk: BlockDevice, claim: BackendClaim, simulate: Bool, progress: ProgressReporter) throws -> OperationResult {
        let id = try osdID(claim)
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
                safeToDestroyTimeout: .seconds(config.safeToDestroyTimeoutSeconds),
                progress: { step in index += 1; progress.step(step, index, of: count) }
            )
            if config.wipeAfterDestroy && disk.absent {
                steps.append("\(disk.identity.devPath) is gone from the host: nothing to wipe")
            } else if config.wipeAfterDestroy {
                if simulate {
                    steps.append(wipeStep)
                } else {
                    progress.step(wipeStep, count, of: count)
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

    public func add(_ disk: BlockDevice, reuseID: String, simulate: Bool, progress: ProgressReporter) throws -> OperationResult {
        guard let id = Int(reuseID), id >= 0 else { throw BackendRefusal("reuse_osd_id \"\(reuseID)\" is not an OSD id") }
        let state = try ceph.osdState(id)
        guard state.exists, state.destroyed else {
            throw BackendRefusal("osd.\(id) is not destroyed (exists: \(state.exists), up: \(state.up)); only a destroyed id can be re-used")
        }
        if let why = DiskChecks.whyNotBlank(disk) { throw BackendRefusal(why) }
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

    public func deploy(_ disk: BlockDevice, simulate: Bool, progress: ProgressReporter) throws -> OperationResult {
        if let why = DiskChecks.whyNotBlank(disk) { throw BackendRefusal(why) }
        let device = disk.identity.devPath
        let command = CommandDaemonControl.expand(config.createCommand, id: nil, device: device)
        let createStep = "run \(command.joined(separator: " "))"
        let findStep = "find the new OSD on \(device)"
        if simulate {
            return OperationResult(steps: ["\(device) is blank", createStep, findStep, "wait until it is up and in"], backendID: "")
        }
        var done = ["\(device) is blank"]
        progress.step(createStep, 1, of: 3)
        do {
            try daemons.create(nil, device: device)
            done.append(createStep)
        } catch {
            throw BackendStepFailure(step: createStep, done: done, underlying: "\(error)")
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
