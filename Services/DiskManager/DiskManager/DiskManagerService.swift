import BynarAuth
public import BynarProto
public import BynarRuntime
public import BynarStore
import BynarBus
import BynarConfig
import BynarDisks
import BynarProcess
import Logging
import Metrics
import ServiceLifecycle

/// The disk-manager on one storage host: the only thing that changes disks, and only for
/// commands it can trust.
///
/// Every command on `bynar/v1/dm/{host}/cmd` is checked in this order: meant for this host;
/// signed by a trusted key, not expired, nonce never seen (``CommandVerifier``); a request
/// id seen before gets its first answer again (ALREADY_DONE); the disk resolves and the
/// ``RequestGate`` allows it (never a system or excluded disk, one operation per disk, the
/// host's limit on disks out, the deadline). List, SafeToRemove and JobStatus are answered
/// at once; Remove (only when its backend says it is safe), Add and Deploy are answered
/// ACCEPTED with a job id and run as jobs that report on `bynar/v1/dm/{host}/progress`.
/// Every command and its answer, and every job's end, go to the audit table.
public struct DiskManagerService: BynarService {
    public static let serviceName = "disk-manager"
    public static var migrations: [LocalStore.Migration] { CommandVerifier.migrations + AuditLog.migrations + JobStore.migrations + KnownDisks.migrations }
    let context: ServiceContext

    public init(context: ServiceContext) throws {
        self.context = context
    }

    public func run() async throws {
        let handler = try RequestHandler(context: context, backends: try Self.backends(context))
        let commands = try await context.bus.subscribe(Topics.diskManagerCommands(host: context.host), as: Bynar_V1_DiskManagerRequest.self)
        await handler.resumeInterruptedJobs()
        await context.bus.markReady()
        await cancelWhenGracefulShutdown {
            for await command in commands {
                let response = await handler.handle(command.payload, nowMs: Bus.nowUnixMs(), sentUnixMs: command.envelope.createdUnixMs)
                do {
                    try await context.bus.reply(to: command, with: response)
                } catch {
                    context.logger.error("cannot reply", metadata: ["request_id": "\(command.payload.requestID)", "error": "\(error)"])
                }
            }
        }
    }

    /// The configured backends, Ceph first (a disk carrying an OSD is Ceph's even if some
    /// filesystem on it were mounted).
    static func backends(_ context: ServiceContext) throws -> [any StorageBackend] {
        var backends: [any StorageBackend] = []
        let config = context.config.diskManager
        if let ceph = config.ceph {
            backends.append(try CephDiskBackend(config: ceph, machineHostname: localHostName()))
        }
        if let gluster = config.gluster {
            backends.append(GlusterBackend(config: gluster))
        }
        if let filesystem = config.filesystem {
            backends.append(FilesystemBackend(config: filesystem))
        }
        if let zfs = config.zfs {
            backends.append(ZFSBackend(config: zfs))
        }
        if backends.isEmpty {
            context.logger.warning("no disk_manager.ceph, .gluster, .zfs or .filesystem section: List works, every change is refused")
        }
        return backends
    }

    /// The operation's name, for logs and the audit table.
    public static func operationName(_ request: Bynar_V1_DiskManagerRequest) -> String {
        DiskManagerClient.operationName(request)
    }
}

/// Answers one command at a time (the gate and the nonce store see every command in order)
/// and runs the jobs.
actor RequestHandler {
    let context: ServiceContext
    let config: DiskManagerConfig
    let verifier: CommandVerifier?
    let audit: AuditLog
    let jobs: JobStore
    let known: KnownDisks
    let backends: [any StorageBackend]
    var gate: RequestGate
    /// The host's disks kept between commands, and List's kept `blkid -p` answers
    /// (docs/disk-manager.md, "What List keeps").
    let inventory: InventoryCache
    let signatures = SignatureCache()
    /// What the known-disks table was last written with (an unchanged host is not written
    /// again), and whether that is what the last scan found.
    var lastRemembered: [BlockDevice]?
    var knownDisksWritten = false
    /// How the command being answered read the host's disks ("kept", "scanned (...)"), for its log line.
    var inventoryRead = ""

    init(context: ServiceContext, backends: [any StorageBackend]) throws {
        self.context = context
        self.backends = backends
        config = context.config.diskManager
        if let path = config.trustedKeysFile {
            let keys = try TrustedKeysFile(path: path)
            verifier = CommandVerifier(keysFile: keys, store: context.store, maxLifetime: .seconds(config.maxCommandLifetimeSeconds),
                                       allowedSkew: .seconds(config.allowedClockSkewSeconds))
            let logger = context.logger
            context.reloader.register { why in keys.reload(field: "disk_manager.trusted_keys_file", why: why, logger: logger) }
            context.logger.info("trusting command keys", metadata: ["keys": "\(keys.keys.keyIDs)"])
        } else {
            verifier = nil
            context.logger.warning("no disk_manager.trusted_keys_file: every command will be refused")
        }
        audit = AuditLog(store: context.store)
        jobs = JobStore(store: context.store)
        known = KnownDisks(store: context.store)
        gate = RequestGate(maxDisksOut: config.maxDisksOut, disksOut: try jobs.outKeys(), allowedSkewMs: Int64(config.allowedClockSkewSeconds) * 1000)
        inventory = InventoryCache(host: context.host, excluded: config.exclude, only: config.manageOnly)
        if let error = inventory.watchError {
            context.logger.warning("cannot watch this host's disks for changes: every command scans them", metadata: ["error": "\(error)"])
        }
    }

    func handle(_ request: Bynar_V1_DiskManagerRequest, nowMs: Int64, sentUnixMs: Int64? = nil) async -> Bynar_V1_DiskManagerResponse {
        let clock = ContinuousClock()
        let started = clock.now
        inventoryRead = "none"
        let verification = verifier?.verify(request, nowMs: nowMs, sentUnixMs: sentUnixMs) ?? .failure(.unknownKey("(no trusted keys configured)"))
        let verified = clock.now
        let response = await answer(request, verification: verification, nowMs: nowMs)
        let answered = clock.now
        do {
            _ = try audit.record(AuditRecord(request: request, receivedUnixMs: nowMs, verification: verification, response: response))
        } catch {
            context.logger.error("cannot write the audit record", metadata: ["request_id": "\(request.requestID)", "error": "\(error)"])
        }
        func ms(_ duration: Duration) -> String {
            let (seconds, attoseconds) = duration.components
            return String(Double(seconds) * 1000 + Double(attoseconds) / 1e15)
        }
        Counter(label: "bynar_disk_manager_commands_total", dimensions: [("operation", snakeCase(DiskManagerService.operationName(request))), ("outcome", Self.label(response.outcome))]).increment()
        context.logger.notice("disk-manager command", metadata: [
            "request_id": "\(request.requestID)", "operation": "\(DiskManagerService.operationName(request))",
            "outcome": "\(response.outcome)", "reason": "\(response.reason)", "job": "\(response.jobID)",
            "verify_ms": "\(ms(verified - started))", "answer_ms": "\(ms(answered - verified))", "audit_ms": "\(ms(clock.now - answered))",
            "inventory": "\(inventoryRead)",
        ])
        return response
    }

    /// This host's disks and which backend holds each, read now.
    struct World {
        var devices: [BlockDevice]
        var claims: [String: (backend: any StorageBackend, claim: BackendClaim)]
    }

    /// A step of answering that failed before anything changed.
    struct Unanswerable: Error {
        var step: String
        var reason: String
    }

    /// What a disk-changing request will act on: the disk, the backend that acts, the
    /// backend's hold on the disk, and what counts as out for the host's limit.
    struct Plan {
        var device: BlockDevice
        var backend: (any StorageBackend)?
        var claim: BackendClaim?
        var outKey: String?
    }

    private func answer(_ request: Bynar_V1_DiskManagerRequest, verification: Result<VerifiedCommand, CommandRejection>, nowMs: Int64) async -> Bynar_V1_DiskManagerResponse {
        var response = Bynar_V1_DiskManagerResponse()
        response.requestID = request.requestID
        response.host = context.host
        response.simulated = request.simulate
        func refuse(_ reason: String) -> Bynar_V1_DiskManagerResponse {
            response.outcome = .refused
            response.reason = reason
            return response
        }
        guard request.host == context.host else { return refuse("the request is for host \"\(request.host)\", this is \"\(context.host)\"") }
        if case .failure(let why) = verification { return refuse("not authorised: \(why)") }
        if let again = repeated(request) { return again }
        guard let kind = Self.kind(of: request) else { return refuse("the request names no operation") }
        if case .jobStatus(let status) = request.operation {
            guard let job = try? jobs.job(id: status.jobID) else { return refuse("no job \"\(status.jobID)\" on \(context.host)") }
            response.outcome = .success
            response.job = job.progress
            return response
        }

        let selector = AuditLog.selector(of: request)
        // List answers from what is kept unless a job is changing disks right now; every other
        // command reads the world itself (docs/disk-manager.md, "What List keeps").
        let kept = kind == .list && gate.busy.isEmpty
        let world: World
        do {
            world = try await survey(nowMs: nowMs, vanished: kind == .safeToRemove || kind == .remove ? [selector] : [], kept: kept)
        } catch {
            response.outcome = .failed
            response.failedStep = error.step
            response.reason = error.reason
            return response
        }
        if kind == .list { return await list(request, world, kept: kept, into: response, nowMs: nowMs) }

        let plan: Plan
        switch Self.plan(request, selector: selector, world: world, host: context.host, reusing: backend(reusing:), deployBackend: deployBackend) {
        case .failure(let refusal): return refuse(refusal.reason)
        case .success(let planned): plan = planned
        }
        let gated = RequestGate.Request(
            requestID: request.requestID, diskKey: plan.device.identity.key, kind: kind, simulate: request.simulate,
            deadlineUnixMs: request.deadlineUnixMs, systemDisk: plan.device.isSystemDisk, excluded: plan.device.excluded, outKey: plan.outKey
        )
        switch gate.received(gated, nowMs: nowMs) {
        case .alreadyDone(let outcome):
            response.outcome = .alreadyDone
            response.originalOutcome = Self.wire(outcome)
            return response
        case .refuse(let reason):
            return refuse(reason)
        case .start:
            break
        }
        guard let backend = plan.backend else {
            response = refuse(backends.isEmpty
                ? "no storage backend is configured on \(context.host) (disk_manager.ceph / disk_manager.filesystem)"
                : "\(plan.device.identity.key) (\(plan.device.identity.devPath)) is not managed by any configured backend (\(backends.map(\.name).joined(separator: ", ")))")
            return finish(request, response, kind: kind, nowMs: nowMs)
        }
        response.backend = backend.name
        response.backendID = plan.claim?.id ?? ""
        if let answered = await checkBeforeStart(request, plan: plan, backend: backend, into: response) {
            return finish(request, answered, kind: kind, nowMs: nowMs)
        }
        if request.simulate {
            do {
                let result = try await offThread { try Self.perform(request, on: plan.device, backend: backend, claim: plan.claim, simulate: true, job: .direct) }
                response.outcome = result.skipped ? .skipped : .success
                response.steps = result.steps
                response.backendID = result.backendID
            } catch {
                response = Self.describe(error, into: response)
            }
            return finish(request, response, kind: kind, nowMs: nowMs)
        }
        return startJob(request, plan: plan, backend: backend, gated: gated, into: response, nowMs: nowMs)
    }

    /// The answer to a request id seen before, or nil: its first answer again, or, when it
    /// started a job whose answer was never kept (a crash right after the job was written),
    /// the job: ACCEPTED again, so the sender follows the job instead of being refused.
    private func repeated(_ request: Bynar_V1_DiskManagerRequest) -> Bynar_V1_DiskManagerResponse? {
        if let first = try? audit.firstResponse(requestID: request.requestID) {
            var again = first
            again.originalOutcome = first.outcome
            again.outcome = .alreadyDone
            return again
        }
        guard !request.requestID.isEmpty, let job = try? jobs.job(requestID: request.requestID) else { return nil }
        var again = Bynar_V1_DiskManagerResponse()
        again.requestID = request.requestID
        again.host = context.host
        again.outcome = .alreadyDone
        again.originalOutcome = .accepted
        again.jobID = job.id
        again.backend = job.backend
        again.job = job.progress
        return again
    }

    /// The host's disks (remembered, so a disk that drops off can still be named) and the
    /// backends' claims. `vanished`: what requests that may name a disk no longer present
    /// (SafeToRemove, Remove) select, found among the remembered disks when not present.
    /// `kept`: the disks may come from the kept inventory (List); otherwise they are scanned.
    private func survey(nowMs: Int64, vanished selectors: [Bynar_V1_DiskSelector], kept: Bool = false) async throws(Unanswerable) -> World {
        var devices: [BlockDevice]
        let unchanged: Bool
        do {
            let look = kept ? try inventory.look() : try inventory.scan()
            devices = look.devices
            unchanged = kept && look.scannedBecause.isEmpty
            inventoryRead = unchanged ? "kept" : "scanned" + (look.scannedBecause.isEmpty ? "" : " (\(look.scannedBecause))")
            // A block device came, went or changed (or that cannot be told): no kept blkid
            // answer is trusted past it (a media change, a partition table re-read).
            if !look.scannedBecause.isDisjoint(with: [.blockDevices, .lostEvents, .unwatched]) { signatures.forgetAll() }
        } catch {
            throw Unanswerable(step: "inventory", reason: "cannot list this host's disks: \(error)")
        }
        // Written when what would be written changed. Not looked at for a kept inventory once
        // the last scan's is written: nothing it rests on changed but the filesystem
        // backend's fstab, which only this service's jobs edit (their end drops the kept view).
        if !(unchanged && knownDisksWritten) {
            let remembered = backends.reduce(devices) { $1.remembered($0) }
            knownDisksWritten = remembered == lastRemembered
            if !knownDisksWritten {
                do {
                    try known.remember(remembered, nowMs: nowMs)
                    lastRemembered = remembered
                    knownDisksWritten = true
                } catch {
                    context.logger.error("cannot remember this host's disks", metadata: ["error": "\(error)"])
                }
            }
        }
        // A disk that has dropped off the host entirely: its cluster membership can still be
        // ended (SafeToRemove, Remove), from who it was.
        for selector in selectors where !devices.contains(where: { Self.matches($0, selector) }) {
            if let gone = try? known.vanished(matching: selector, present: devices, matches: Self.matches) { devices.append(gone) }
        }
        var claims: [String: (backend: any StorageBackend, claim: BackendClaim)] = [:]
        for backend in backends {
            do {
                let found = try await offThread { [devices] in try backend.claims(devices) }
                for (key, claim) in found where claims[key] == nil { claims[key] = (backend, claim) }
            } catch {
                throw Unanswerable(step: "ask the \(backend.name) backend which disks it manages", reason: "\(error)")
            }
        }
        return World(devices: devices, claims: claims)
    }

    /// What List found on an unclaimed disk: blank or not, and the signature `blkid -p`
    /// found, if it was asked (nil when partitions, mounts or holders said enough).
    struct Probed: Sendable {
        var blank: Bool
        var signature: SignatureProbe?
    }

    /// Whether each unclaimed disk is blank, and the signature `blkid -p` finds on it. With
    /// `kept`, the kept answers that still hold, and the checks that need no probe (mounts,
    /// partitions, holders), are taken here: reads of sysfs and stat(2), as a look's. The
    /// disks that must be probed again, or all without `kept`, are probed off the actor
    /// (blkid is a process and reads the disk).
    private func blankness(of unclaimed: [BlockDevice], kept: Bool) async -> [String: Probed] {
        let signatures = signatures
        var found: [String: Probed] = [:]
        var stale = unclaimed
        if kept {
            let counters = SignatureCache.writeCounters(of: Set(unclaimed.map(SignatureCache.kernelName)))
            stale = []
            for device in unclaimed {
                var signature: SignatureProbe?
                var probeAgain = false
                let whyNot = DiskChecks.whyNotBlank(device) { disk in
                    signature = signatures.keptAnswer(disk, counters: counters)
                    probeAgain = signature == nil
                    return signature ?? .none
                }
                if probeAgain { stale.append(device) } else { found[device.identity.key] = Probed(blank: whyNot == nil, signature: signature) }
            }
        }
        guard !stale.isEmpty else { return found }
        let probing = stale
        let probed: [(String, Probed)] = (try? await offThread {
            let counters = kept ? SignatureCache.writeCounters(of: Set(probing.map(SignatureCache.kernelName))) : [:]
            return probing.map { device in
                var signature: SignatureProbe?
                let whyNot = DiskChecks.whyNotBlank(device) { disk in
                    let probe = kept ? signatures.probe(disk, counters: counters) : SignatureProbe.run(disk.identity.devPath)
                    signature = probe
                    return probe
                }
                return (device.identity.key, Probed(blank: whyNot == nil, signature: signature))
            }
        }) ?? []
        return found.merging(probed, uniquingKeysWith: { first, _ in first })
    }

    /// List: every disk, with its backend's view and whether it is blank. `kept`: the
    /// signature probes may be kept answers (``SignatureCache``).
    private func list(_ request: Bynar_V1_DiskManagerRequest, _ world: World, kept: Bool, into base: Bynar_V1_DiskManagerResponse, nowMs: Int64) async -> Bynar_V1_DiskManagerResponse {
        var response = base
        guard case .start = gate.received(.init(requestID: request.requestID, diskKey: "", kind: .list, simulate: request.simulate, deadlineUnixMs: request.deadlineUnixMs), nowMs: nowMs) else {
            response.outcome = .refused
            response.reason = "request \(request.requestID) was not started (deadline passed or seen before)"
            return response
        }
        response.outcome = .success
        // An unclaimed disk is BLANK only if probing finds no signature on it (blkid -p,
        // as Deploy checks): a loop device carrying another program's data is not blank.
        let unclaimed = world.devices.filter { world.claims[$0.identity.key] == nil && !$0.isSystemDisk && !$0.absent }
        let probed = await blankness(of: unclaimed, kept: kept)
        response.diskList.disks = world.devices.map { device in
            let probe = probed[device.identity.key]
            var disk = managed(device, world.claims[device.identity.key], probedBlank: probe?.blank ?? false)
            if let signature = probe?.signature { disk.disk = Self.showing(signature, on: disk.disk) }
            return disk
        }
        response.steps = ["list \(world.devices.count) disks"]
        return finish(request, response, kind: .list, nowMs: nowMs)
    }

    /// Which disk a disk-changing request names and which backend acts on it; a refusal
    /// (nothing changed) when the request cannot apply to this host's disks as they are.
    static func plan(
        _ request: Bynar_V1_DiskManagerRequest, selector: Bynar_V1_DiskSelector, world: World, host: String,
        reusing: (String) -> (any StorageBackend)?, deployBackend: (any StorageBackend)?
    ) -> Result<Plan, BackendRefusal> {
        guard let device = world.devices.first(where: { matches($0, selector) }) ?? world.devices.first(where: \.absent) else {
            return .failure(BackendRefusal("no disk on \(host) matches \(AuditLog.selectorText(selector))"))
        }
        let claimed = world.claims[device.identity.key]
        var plan = Plan(device: device, backend: claimed?.backend, claim: claimed?.claim, outKey: nil)
        switch request.operation {
        case .safeToRemove, .remove:
            if let claimed, !device.isSystemDisk, !device.excluded { plan.outKey = "\(claimed.backend.name):\(claimed.claim.id)" }
        case .add(let add):
            guard !add.reuseOsdID.isEmpty else { return .failure(BackendRefusal("Add needs reuse_osd_id (the id the Remove answered); use Deploy for a new member")) }
            guard let backend = reusing(add.reuseOsdID) else { return .failure(BackendRefusal("no configured backend re-uses the id \"\(add.reuseOsdID)\"")) }
            // A disk that already is the member this Add makes (an earlier Add of it ran, and
            // its answer or its end was lost) goes to the backend, which checks the world and
            // finishes what is left or does nothing; a disk that is any other member is refused.
            if let claimed, !(claimed.backend.name == backend.name && claimed.claim.id == add.reuseOsdID) {
                return .failure(BackendRefusal("\(device.identity.key) is already \(claimed.backend.name) \(claimed.claim.id)"))
            }
            plan.backend = backend
            plan.outKey = "\(backend.name):\(add.reuseOsdID)"
        case .deploy:
            if let claimed { return .failure(BackendRefusal("\(device.identity.key) is already \(claimed.backend.name) \(claimed.claim.id); Deploy takes blank disks")) }
            plan.backend = deployBackend
        default:
            break
        }
        return .success(plan)
    }

    /// What is answered at once, before any job: SafeToRemove's verdict; a Remove the
    /// backend says is not safe (refused, nothing changed); an Add or Deploy on a disk that
    /// is not blank (never format over data). Nil: the operation may run.
    private func checkBeforeStart(_ request: Bynar_V1_DiskManagerRequest, plan: Plan, backend: any StorageBackend, into base: Bynar_V1_DiskManagerResponse) async -> Bynar_V1_DiskManagerResponse? {
        var response = base
        let device = plan.device
        func failed(_ error: any Error) -> Bynar_V1_DiskManagerResponse {
            response.outcome = .failed
            response.failedStep = "ask \(backend.name) whether \(device.identity.key) is safe to remove"
            response.reason = "\(error)"
            return response
        }
        switch request.operation {
        case .safeToRemove:
            guard let claim = plan.claim else { return nil }
            do {
                let answer = try await offThread { try backend.safeToRemove(device, claim: claim) }
                response.outcome = .success
                response.safeToRemove.safe = answer.safe
                response.safeToRemove.detail = answer.detail
                response.safeToRemove.clusterHealth = answer.clusterHealth
                return response
            } catch {
                return failed(error)
            }
        case .remove:
            guard let claim = plan.claim, !request.simulate else { return nil }
            do {
                let answer = try await offThread { try backend.safeToRemove(device, claim: claim) }
                guard answer.safe else {
                    response.outcome = .refused
                    response.reason = "not safe to remove: \(answer.detail)"
                    return response
                }
                return nil
            } catch {
                return failed(error)
            }
        case .add, .deploy:
            guard let why = try? await offThread({ [device] in DiskChecks.whyNotBlank(device) }) else { return nil }
            response.outcome = .refused
            response.reason = why
            return response
        default:
            return nil
        }
    }

    /// A long operation: the job is written (with the backend and place it acts on, for a
    /// resume), answered ACCEPTED now, and run in the background.
    private func startJob(_ request: Bynar_V1_DiskManagerRequest, plan: Plan, backend: any StorageBackend, gated: RequestGate.Request,
                          into base: Bynar_V1_DiskManagerResponse, nowMs: Int64) -> Bynar_V1_DiskManagerResponse {
        var response = base
        let jobID = "job-\(request.requestID)"
        var progress = Bynar_V1_JobProgress()
        progress.jobID = jobID
        progress.requestID = request.requestID
        progress.host = context.host
        progress.disk = AuditLog.selector(of: request)
        progress.operation = DiskManagerService.operationName(request)
        progress.backend = backend.name
        progress.state = .running
        progress.step = "accepted"
        progress.updatedUnixMs = nowMs
        do {
            try jobs.insert(id: jobID, request: request, diskKey: plan.device.identity.key, backend: backend.name, claimID: plan.claim?.id ?? "", progress: progress, nowMs: nowMs)
        } catch {
            response.outcome = .failed
            response.failedStep = "record the job"
            response.reason = "\(error)"
            return finish(request, response, kind: gated.kind, nowMs: nowMs)
        }
        PausePoints.reach("accepted")
        response.outcome = .accepted
        response.jobID = jobID
        response.job = progress
        remember(request, response, nowMs: nowMs)
        publish(progress)
        Task { await self.run(jobID: jobID, request: request, device: plan.device, backend: backend, claim: plan.claim, gated: gated, progress: progress) }
        return response
    }

    /// Runs one job to its end: progress events while it works, the final one with the
    /// outcome, the job record, the gate, and an audit line for the end.
    private func run(jobID: String, request: Bynar_V1_DiskManagerRequest, device: BlockDevice, backend: any StorageBackend, claim: BackendClaim?, gated: RequestGate.Request, progress start: Bynar_V1_JobProgress) async {
        let operation = start.operation
        let reporter = ProgressReporter { [weak self] step, index, count in
            PausePoints.reach("\(operation):\(index)")
            guard let self else { return }
            var progress = start
            progress.step = step
            progress.stepIndex = UInt32(index)
            progress.stepCount = UInt32(count)
            progress.updatedUnixMs = Bus.nowUnixMs()
            Task { await self.progressed(jobID: jobID, progress) }
        }
        let started = ContinuousClock.now
        var final = start
        var response = Bynar_V1_DiskManagerResponse()
        response.requestID = request.requestID
        response.host = context.host
        response.jobID = jobID
        response.backend = backend.name
        do {
            let result = try await offThread {
                let result = try Self.perform(request, on: device, backend: backend, claim: claim, simulate: false, job: JobRun(id: jobID, progress: reporter))
                PausePoints.reach("\(operation):done")
                return result
            }
            final.state = .succeeded
            final.outcome = result.skipped ? .skipped : .success
            final.steps = result.steps
            final.backendID = result.backendID
            final.step = "done"
            final.message = result.steps.last ?? ""
        } catch {
            let described = Self.describe(error, into: Bynar_V1_DiskManagerResponse())
            final.state = .failed
            final.outcome = described.outcome
            final.failedStep = described.failedStep
            final.steps = described.steps
            final.message = described.reason
            final.step = described.failedStep
        }
        // The job changed the host, not all of it visibly (a mkfs sends no uevent): the
        // Lists after its end read everything afresh.
        inventory.invalidate()
        signatures.forgetAll()
        final.updatedUnixMs = Bus.nowUnixMs()
        let succeeded = final.outcome == .success || final.outcome == .skipped
        let outKey = succeeded && (gated.kind == .remove || gated.kind == .add || gated.kind == .deploy)
            ? (gated.kind == .deploy ? "\(backend.name):\(final.backendID)" : gated.outKey) : ""
        do {
            try jobs.update(id: jobID, progress: final, outKey: outKey)
        } catch {
            context.logger.error("cannot record the end of a job", metadata: ["job": "\(jobID)", "error": "\(error)"])
        }
        gate.finished(requestID: request.requestID, outcome: Self.gateOutcome(final.outcome))
        publish(final)
        response.outcome = final.outcome
        response.reason = final.message
        response.failedStep = final.failedStep
        response.steps = final.steps
        response.backendID = final.backendID
        do {
            _ = try audit.record(AuditRecord(
                receivedUnixMs: final.updatedUnixMs, requestID: request.requestID, operation: "\(final.operation) (job end)",
                disk: AuditLog.selectorText(AuditLog.selector(of: request)), signerKeyID: request.auth.keyID, verified: true,
                rejection: "", simulate: false, outcome: response.outcome, reason: response.reason, failedStep: response.failedStep
            ))
        } catch {
            context.logger.error("cannot write the audit record", metadata: ["job": "\(jobID)", "error": "\(error)"])
        }
        recordJobEnd(final, duration: ContinuousClock.now - started)
        context.logger.notice("job finished", metadata: [
            "job": "\(jobID)", "operation": "\(final.operation)", "outcome": "\(final.outcome)",
            "failed_step": "\(final.failedStep)", "backend_id": "\(final.backendID)", "message": "\(final.message)",
        ])
    }

    private func progressed(jobID: String, _ progress: Bynar_V1_JobProgress) {
        // A late report must not overwrite the end.
        guard let job = try? jobs.job(id: jobID), job.running else { return }
        try? jobs.update(id: jobID, progress: progress)
        publish(progress)
    }

    private func publish(_ progress: Bynar_V1_JobProgress) {
        do {
            _ = try context.outbox.publish(progress, to: Topics.diskManagerProgress(host: context.host), correlationId: progress.requestID)
        } catch {
            context.logger.error("cannot queue a progress event", metadata: ["job": "\(progress.jobID)", "error": "\(error)"])
        }
    }

    /// Jobs that were running when the service stopped run again, with the backend and
    /// place they were accepted for (not whatever the disk looks like after their own
    /// half-done steps); the backends check the world before each step and skip what is
    /// done. Then the host's count of disks out is checked against the world.
    func resumeInterruptedJobs() async {
        let interrupted: [JobStore.Job]
        do {
            interrupted = try jobs.running()
        } catch {
            context.logger.error("cannot read interrupted jobs", metadata: ["error": "\(error)"])
            return
        }
        guard !interrupted.isEmpty else { return await checkDisksOutAgainstTheWorld() }
        // One look at the host for every interrupted job (a Remove's disk may have gone).
        let world: World
        do {
            world = try await survey(nowMs: Bus.nowUnixMs(), vanished: interrupted.filter { Self.kind(of: $0.request) == .remove }.map { AuditLog.selector(of: $0.request) })
        } catch {
            for job in interrupted { abandon(job, "interrupted by a restart, and \(error.step) failed: \(error.reason)") }
            return await checkDisksOutAgainstTheWorld()
        }
        for job in interrupted {
            let request = job.request
            let selector = AuditLog.selector(of: request)
            let kind = Self.kind(of: request)
            guard let kind, let device = world.devices.first(where: { Self.matches($0, selector) }) else {
                abandon(job, "interrupted by a restart, and the disk \(AuditLog.selectorText(selector)) is no longer here")
                continue
            }
            let current = world.claims[device.identity.key]
            var backend = backends.first { $0.name == job.backend }
            var claim = job.claimID.isEmpty ? current?.claim : BackendClaim(backend: job.backend, id: job.claimID, status: .inService)
            if job.backend.isEmpty {
                // A job written before the backend was kept with it: as it looks now.
                backend = current?.backend
                claim = current?.claim
                if case .add(let add) = request.operation { backend = self.backend(reusing: add.reuseOsdID) } else if case .deploy = request.operation { backend = backend ?? deployBackend }
            }
            guard let backend else {
                abandon(job, "interrupted by a restart; no configured backend \(job.backend.isEmpty ? "manages \(device.identity.key)" : "is called \"\(job.backend)\"") now")
                continue
            }
            var outKey: String?
            switch request.operation {
            case .remove: outKey = claim.map { "\(backend.name):\($0.id)" }
            case .add(let add): outKey = "\(backend.name):\(add.reuseOsdID)"
            default: break
            }
            let gated = RequestGate.Request(
                requestID: request.requestID, diskKey: device.identity.key, kind: kind, simulate: false,
                deadlineUnixMs: 0, systemDisk: device.isSystemDisk, excluded: device.excluded, outKey: outKey
            )
            gate.resumed(gated)
            context.logger.notice("resuming a job interrupted by a restart", metadata: ["job": "\(job.id)", "step": "\(job.progress.step)"])
            var start = job.progress
            start.message = "resumed after a restart"
            Task { await self.run(jobID: job.id, request: request, device: device, backend: backend, claim: claim, gated: gated, progress: start) }
        }
        await checkDisksOutAgainstTheWorld()
    }

    /// Drops from the host's count every place the job table says is out but its backend
    /// says is back in service (re-added by hand, or by a job this host no longer knows).
    /// The count is never raised from the world alone: what this host took out is what its
    /// jobs say.
    private func checkDisksOutAgainstTheWorld() async {
        for key in gate.disksOut.sorted() {
            let parts = key.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let backend = backends.first(where: { $0.name == parts[0] }) else { continue }
            let id = String(parts[1])
            do {
                if try await offThread({ try backend.isOut(id) }) { continue }
                gate.backInService(key)
                context.logger.notice("a place counted as out is back in service; no longer counted", metadata: ["place": "\(key)"])
            } catch {
                context.logger.warning("cannot tell whether a place counted as out still is; still counted", metadata: ["place": "\(key)", "error": "\(error)"])
            }
        }
    }

    /// Ends an interrupted job that cannot run again: FAILED at the step it had reached.
    private func abandon(_ job: JobStore.Job, _ message: String) {
        var final = job.progress
        final.state = .failed
        final.outcome = .failed
        final.failedStep = final.step
        final.message = message
        final.updatedUnixMs = Bus.nowUnixMs()
        try? jobs.update(id: job.id, progress: final)
        publish(final)
        recordJobEnd(final, duration: nil)
    }

    /// `bynar_disk_manager_jobs_total{operation,outcome}`, and the run's duration (an
    /// abandoned job has none) in `bynar_disk_manager_job_duration_seconds`.
    private func recordJobEnd(_ final: Bynar_V1_JobProgress, duration: Duration?) {
        let dimensions = [("operation", snakeCase(final.operation)), ("outcome", Self.label(final.outcome))]
        Counter(label: "bynar_disk_manager_jobs_total", dimensions: dimensions).increment()
        if let duration { Timer(label: "bynar_disk_manager_job_duration_seconds", dimensions: dimensions).record(duration: duration) }
    }

    /// An outcome as a metric label: `succeeded`, `skipped`, `refused`, `failed`, ...
    static func label(_ outcome: Bynar_V1_Outcome) -> String {
        switch outcome {
        case .success: "succeeded"
        case .skipped: "skipped"
        case .alreadyDone: "already_done"
        case .refused: "refused"
        case .failed: "failed"
        case .accepted: "accepted"
        case .unspecified, .UNRECOGNIZED: "unknown"
        }
    }

    /// The backend an Add re-using `id` goes to: an OSD id is Ceph's, a path the
    /// filesystem's, `zfs:POOL/VDEV` ZFS's, `VOLUME:HOST:BRICK` Gluster's.
    private func backend(reusing id: String) -> (any StorageBackend)? {
        backends.first { $0.name == "ceph" && Int(id) != nil } ?? backends.first { $0.name == "filesystem" && id.hasPrefix("/") }
            ?? backends.first { $0.name == "zfs" && id.hasPrefix("zfs:") }
            ?? backends.first { $0.name == "gluster" && !id.hasPrefix("/") && !id.hasPrefix("zfs:") && id.contains(":/") }
    }

    /// The backend Deploy uses (`disk_manager.deploy_backend`).
    private var deployBackend: (any StorageBackend)? {
        backends.first { $0.name == config.effectiveDeployBackend }
    }

    /// Ends a request answered at once: the gate, and the first-outcome table.
    private func finish(_ request: Bynar_V1_DiskManagerRequest, _ response: Bynar_V1_DiskManagerResponse, kind: RequestGate.Request.Kind, nowMs: Int64) -> Bynar_V1_DiskManagerResponse {
        gate.finished(requestID: request.requestID, outcome: Self.gateOutcome(response.outcome))
        remember(request, response, nowMs: nowMs)
        return response
    }

    private func remember(_ request: Bynar_V1_DiskManagerRequest, _ response: Bynar_V1_DiskManagerResponse, nowMs: Int64) {
        do {
            _ = try audit.remember(requestID: request.requestID, response: response, nowMs: nowMs)
        } catch {
            context.logger.error("cannot remember the outcome", metadata: ["request_id": "\(request.requestID)", "error": "\(error)"])
        }
    }

    /// The backend call for a Remove, Add or Deploy.
    static func perform(
        _ request: Bynar_V1_DiskManagerRequest, on device: BlockDevice, backend: any StorageBackend, claim: BackendClaim?,
        simulate: Bool, job: JobRun
    ) throws -> OperationResult {
        switch request.operation {
        case .remove:
            guard let claim else { throw BackendRefusal("\(device.identity.key) is not managed by \(backend.name)") }
            return try backend.remove(device, claim: claim, simulate: simulate, job: job)
        case .add(let add):
            return try backend.add(device, reuseID: add.reuseOsdID, simulate: simulate, job: job)
        case .deploy:
            return try backend.deploy(device, simulate: simulate, job: job)
        default:
            throw BackendRefusal("not a disk-changing operation")
        }
    }

    /// A backend error as an answer: REFUSED (nothing changed) or FAILED at a step.
    static func describe(_ error: any Error, into base: Bynar_V1_DiskManagerResponse) -> Bynar_V1_DiskManagerResponse {
        var response = base
        switch error {
        case let refusal as BackendRefusal:
            response.outcome = .refused
            response.reason = refusal.reason
        case let failure as BackendStepFailure:
            response.outcome = .failed
            response.failedStep = failure.step
            response.steps = failure.done
            response.reason = failure.description
        default:
            response.outcome = .failed
            response.failedStep = "backend"
            response.reason = "\(error)"
        }
        return response
    }

    /// A disk as List reports it. Unclaimed: BLANK when `probedBlank` (no partitions,
    /// holders, mounts or signatures), otherwise UNSPECIFIED (it holds something Bynar does
    /// not manage).
    func managed(_ device: BlockDevice, _ claimed: (backend: any StorageBackend, claim: BackendClaim)?, probedBlank: Bool) -> Bynar_V1_ManagedDisk {
        var disk = Bynar_V1_ManagedDisk()
        disk.disk = device.identity
        disk.systemDisk = device.isSystemDisk
        disk.excluded = device.excluded
        if let claimed {
            disk.backend = claimed.backend.name
            disk.backendID = claimed.claim.id
            disk.status = claimed.claim.status
        } else if !device.isSystemDisk && probedBlank {
            disk.status = .blank
        }
        if gate.busy[device.identity.key] != nil { disk.status = .busy }
        return disk
    }

    /// `identity` with the filesystem (or RAID/LVM member) `blkid -p` found on the whole
    /// disk, as the inventory lists one udev knows: a partition entry with the disk's own
    /// dev_path, first.
    static func showing(_ signature: SignatureProbe, on identity: Bynar_V1_DiskIdentity) -> Bynar_V1_DiskIdentity {
        guard let type = signature.type else { return identity }
        var identity = identity
        var whole = Bynar_V1_Partition()
        whole.devPath = identity.devPath
        whole.sizeBytes = identity.sizeBytes
        if let index = identity.partitions.firstIndex(where: { $0.devPath == identity.devPath }) {
            whole = identity.partitions.remove(at: index)
        }
        whole.filesystem = type
        whole.fsUuid = signature.uuid ?? ""
        identity.partitions.insert(whole, at: 0)
        return identity
    }

    static func kind(of request: Bynar_V1_DiskManagerRequest) -> RequestGate.Request.Kind? {
        switch request.operation {
        case .list: .list
        case .safeToRemove: .safeToRemove
        case .remove: .remove
        case .add: .add
        case .deploy: .deploy
        case .jobStatus: .jobStatus
        case nil: nil
        }
    }

    /// Whether every field the selector sets names `device`.
    static func matches(_ device: BlockDevice, _ selector: Bynar_V1_DiskSelector) -> Bool {
        let identity = device.identity
        let checks: [(String, String)] = [
            (selector.key, identity.key), (selector.wwn, identity.wwn), (selector.serial, identity.serial),
            (selector.byPath, identity.byPath), (selector.devPath, identity.devPath),
        ]
        let given = checks.filter { !$0.0.isEmpty }
        return !given.isEmpty && given.allSatisfy { $0.0 == $0.1 }
    }

    static func gateOutcome(_ outcome: Bynar_V1_Outcome) -> RequestGate.Outcome {
        switch outcome {
        case .success, .accepted: .success
        case .skipped: .skipped
        case .failed: .failed
        default: .refused
        }
    }

    static func wire(_ outcome: RequestGate.Outcome) -> Bynar_V1_Outcome {
        switch outcome {
        case .success: .success
        case .skipped: .skipped
        case .refused: .refused
        case .failed: .failed
        }
    }
}
