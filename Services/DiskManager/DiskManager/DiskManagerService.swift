import BynarAuth
public import BynarProto
public import BynarRuntime
public import BynarStore
import BynarBus
import BynarConfig
import BynarDisks
import BynarProcess
import Logging
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
        if let filesystem = config.filesystem {
            backends.append(FilesystemBackend(config: filesystem))
        }
        if backends.isEmpty {
            context.logger.warning("no disk_manager.ceph or disk_manager.filesystem section: List works, every change is refused")
        }
        return backends
    }

    /// The operation's name, for logs and the audit table.
    public static func operationName(_ request: Bynar_V1_DiskManagerRequest) -> String {
        switch request.operation {
        case .list: "List"
        case .safeToRemove: "SafeToRemove"
        case .remove: "Remove"
        case .add: "Add"
        case .deploy: "Deploy"
        case .jobStatus: "JobStatus"
        case nil: "(none)"
        }
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

    init(context: ServiceContext, backends: [any StorageBackend]) throws {
        self.context = context
        self.backends = backends
        config = context.config.diskManager
        if let path = config.trustedKeysFile {
            let keys = try TrustedKeys(path: path)
            verifier = CommandVerifier(trustedKeys: keys, store: context.store, maxLifetime: .seconds(config.maxCommandLifetimeSeconds),
                                       allowedSkew: .seconds(config.allowedClockSkewSeconds))
            context.logger.info("trusting command keys", metadata: ["keys": "\(keys.keyIDs)"])
        } else {
            verifier = nil
            context.logger.warning("no disk_manager.trusted_keys_file: every command will be refused")
        }
        audit = AuditLog(store: context.store)
        jobs = JobStore(store: context.store)
        known = KnownDisks(store: context.store)
        gate = RequestGate(maxDisksOut: config.maxDisksOut, disksOut: try jobs.outKeys(), allowedSkewMs: Int64(config.allowedClockSkewSeconds) * 1000)
    }

    func handle(_ request: Bynar_V1_DiskManagerRequest, nowMs: Int64, sentUnixMs: Int64? = nil) async -> Bynar_V1_DiskManagerResponse {
        let clock = ContinuousClock()
        let started = clock.now
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
        context.logger.notice("disk-manager command", metadata: [
            "request_id": "\(request.requestID)", "operation": "\(DiskManagerService.operationName(request))",
            "outcome": "\(response.outcome)", "reason": "\(response.reason)", "job": "\(response.jobID)",
            "verify_ms": "\(ms(verified - started))", "answer_ms": "\(ms(answered - verified))", "audit_ms": "\(ms(clock.now - answered))",
        ])
        return response
    }

    /// A disk as the backends see it.
    struct Resolved {
        var device: BlockDevice
        var backend: (any StorageBackend)?
        var claim: BackendClaim?
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
        func fail(_ step: String, _ reason: String) -> Bynar_V1_DiskManagerResponse {
            response.outcome = .failed
            response.failedStep = step
            response.reason = reason
            return response
        }
        guard request.host == context.host else { return refuse("the request is for host \"\(request.host)\", this is \"\(context.host)\"") }
        if case .failure(let why) = verification { return refuse("not authorised: \(why)") }
        if let first = try? audit.firstResponse(requestID: request.requestID) {
            var again = first
            again.originalOutcome = first.outcome
            again.outcome = .alreadyDone
            return again
        }
        guard let kind = Self.kind(of: request) else { return refuse("the request names no operation") }
        if case .jobStatus(let status) = request.operation {
            guard let job = try? jobs.job(id: status.jobID) else { return refuse("no job \"\(status.jobID)\" on \(context.host)") }
            response.outcome = .success
            response.job = job.progress
            return response
        }

        var devices: [BlockDevice]
        do {
            devices = try Inventory.scan(host: context.host, excluded: config.exclude, only: config.manageOnly)
        } catch {
            return fail("inventory", "cannot list this host's disks: \(error)")
        }
        do {
            try known.remember(devices, nowMs: nowMs)
        } catch {
            context.logger.error("cannot remember this host's disks", metadata: ["error": "\(error)"])
        }
        // A disk that has dropped off the host entirely: its cluster membership can still be
        // ended (SafeToRemove, Remove), from who it was.
        let selector = AuditLog.selector(of: request)
        if kind == .safeToRemove || kind == .remove, !devices.contains(where: { Self.matches($0, selector) }),
           let vanished = try? known.vanished(matching: selector, present: devices, matches: Self.matches) {
            devices.append(vanished)
        }
        var claims: [String: (backend: any StorageBackend, claim: BackendClaim)] = [:]
        for backend in backends {
            do {
                let found = try await offThread { [devices] in try backend.claims(devices) }
                for (key, claim) in found where claims[key] == nil { claims[key] = (backend, claim) }
            } catch {
                return fail("ask the \(backend.name) backend which disks it manages", "\(error)")
            }
        }

        if kind == .list {
            guard case .start = gate.received(.init(requestID: request.requestID, diskKey: "", kind: .list, simulate: request.simulate, deadlineUnixMs: request.deadlineUnixMs), nowMs: nowMs) else {
                return refuse("request \(request.requestID) was not started (deadline passed or seen before)")
            }
            response.outcome = .success
            // An unclaimed disk is BLANK only if probing finds no signature on it (blkid -p,
            // as Deploy checks): a loop device carrying another program's data is not blank.
            let unclaimed = devices.filter { claims[$0.identity.key] == nil && !$0.isSystemDisk && !$0.absent }
            let blank = (try? await offThread { Set(unclaimed.filter { DiskChecks.whyNotBlank($0) == nil }.map(\.identity.key)) }) ?? []
            response.diskList.disks = devices.map { managed($0, claims[$0.identity.key], probedBlank: blank.contains($0.identity.key)) }
            response.steps = ["list \(devices.count) disks"]
            return finish(request, response, kind: .list, nowMs: nowMs)
        }

        guard let device = devices.first(where: { Self.matches($0, selector) }) ?? devices.first(where: \.absent) else {
            return refuse("no disk on \(context.host) matches \(AuditLog.selectorText(selector))")
        }
        let claimed = claims[device.identity.key]
        var backend = claimed?.backend
        var outKey: String?
        switch request.operation {
        case .safeToRemove, .remove:
            guard let claimed, !device.isSystemDisk, !device.excluded else { break }
            outKey = "\(claimed.backend.name):\(claimed.claim.id)"
        case .add(let add):
            guard !add.reuseOsdID.isEmpty else { return refuse("Add needs reuse_osd_id (the id the Remove answered); use Deploy for a new member") }
            if let claimed { return refuse("\(device.identity.key) is already \(claimed.backend.name) \(claimed.claim.id)") }
            backend = self.backend(reusing: add.reuseOsdID)
            guard let backend else { return refuse("no configured backend re-uses the id \"\(add.reuseOsdID)\"") }
            outKey = "\(backend.name):\(add.reuseOsdID)"
        case .deploy:
            if let claimed { return refuse("\(device.identity.key) is already \(claimed.backend.name) \(claimed.claim.id); Deploy takes blank disks") }
            backend = deployBackend
        default:
            break
        }

        let gated = RequestGate.Request(
            requestID: request.requestID, diskKey: device.identity.key, kind: kind, simulate: request.simulate,
            deadlineUnixMs: request.deadlineUnixMs, systemDisk: device.isSystemDisk, excluded: device.excluded, outKey: outKey
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
        guard let backend else {
            response.outcome = .refused
            response.reason = backends.isEmpty
                ? "no storage backend is configured on \(context.host) (disk_manager.ceph / disk_manager.filesystem)"
                : "\(device.identity.key) (\(device.identity.devPath)) is not managed by any configured backend (\(backends.map(\.name).joined(separator: ", ")))"
            return finish(request, response, kind: kind, nowMs: nowMs)
        }
        response.backend = backend.name
        response.backendID = claimed?.claim.id ?? ""

        if case .safeToRemove = request.operation, let claim = claimed?.claim {
            do {
                let answer = try await offThread { try backend.safeToRemove(device, claim: claim) }
                response.outcome = .success
                response.safeToRemove.safe = answer.safe
                response.safeToRemove.detail = answer.detail
                response.safeToRemove.clusterHealth = answer.clusterHealth
            } catch {
                response = fail("ask \(backend.name) whether \(device.identity.key) is safe to remove", "\(error)")
            }
            return finish(request, response, kind: kind, nowMs: nowMs)
        }

        if case .remove = request.operation, let claim = claimed?.claim, !request.simulate {
            // Refuse at once, changing nothing, unless the backend says it is safe.
            do {
                let answer = try await offThread { try backend.safeToRemove(device, claim: claim) }
                guard answer.safe else {
                    response = refuse("not safe to remove: \(answer.detail)")
                    return finish(request, response, kind: kind, nowMs: nowMs)
                }
            } catch {
                response = fail("ask \(backend.name) whether \(device.identity.key) is safe to remove", "\(error)")
                return finish(request, response, kind: kind, nowMs: nowMs)
            }
        }

        if gated.kind == .add || gated.kind == .deploy {
            // Never format over data: refuse at once, before any job exists.
            if let why = try? await offThread({ [device] in DiskChecks.whyNotBlank(device) }) {
                response = refuse(why)
                return finish(request, response, kind: kind, nowMs: nowMs)
            }
        }

        if request.simulate {
            do {
                let result = try await offThread { try Self.perform(request, on: device, backend: backend, claim: claimed?.claim, simulate: true, progress: .ignore) }
                response.outcome = result.skipped ? .skipped : .success
                response.steps = result.steps
                response.backendID = result.backendID
            } catch {
                response = Self.describe(error, into: response)
            }
            return finish(request, response, kind: kind, nowMs: nowMs)
        }

        // A long operation: answer ACCEPTED now, report progress, finish later.
        let jobID = "job-\(request.requestID)"
        var progress = Bynar_V1_JobProgress()
        progress.jobID = jobID
        progress.requestID = request.requestID
        progress.host = context.host
        progress.disk = selector
        progress.operation = DiskManagerService.operationName(request)
        progress.state = .running
        progress.step = "accepted"
        progress.updatedUnixMs = nowMs
        do {
            try jobs.insert(id: jobID, request: request, diskKey: device.identity.key, progress: progress, nowMs: nowMs)
        } catch {
            response = fail("record the job", "\(error)")
            return finish(request, response, kind: kind, nowMs: nowMs)
        }
        response.outcome = .accepted
        response.jobID = jobID
        response.job = progress
        remember(request, response, nowMs: nowMs)
        publish(progress)
        let claim = claimed?.claim
        Task { await self.run(jobID: jobID, request: request, device: device, backend: backend, claim: claim, gated: gated, progress: progress) }
        return response
    }

    /// Runs one job to its end: progress events while it works, the final one with the
    /// outcome, the job record, the gate, and an audit line for the end.
    private func run(jobID: String, request: Bynar_V1_DiskManagerRequest, device: BlockDevice, backend: any StorageBackend, claim: BackendClaim?, gated: RequestGate.Request, progress start: Bynar_V1_JobProgress) async {
        let reporter = ProgressReporter { [weak self] step, index, count in
            guard let self else { return }
            var progress = start
            progress.step = step
            progress.stepIndex = UInt32(index)
            progress.stepCount = UInt32(count)
            progress.updatedUnixMs = Bus.nowUnixMs()
            Task { await self.progressed(jobID: jobID, progress) }
        }
        var final = start
        var response = Bynar_V1_DiskManagerResponse()
        response.requestID = request.requestID
        response.host = context.host
        response.jobID = jobID
        response.backend = backend.name
        do {
            let result = try await offThread { try Self.perform(request, on: device, backend: backend, claim: claim, simulate: false, progress: reporter) }
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

    /// Jobs that were running when the service stopped run again from the start; the
    /// backends' operations skip what is already done.
    func resumeInterruptedJobs() async {
        let interrupted: [JobStore.Job]
        do {
            interrupted = try jobs.running()
        } catch {
            context.logger.error("cannot read interrupted jobs", metadata: ["error": "\(error)"])
            return
        }
        guard !interrupted.isEmpty else { return }
        let devices = (try? Inventory.scan(host: context.host, excluded: config.exclude, only: config.manageOnly)) ?? []
        for job in interrupted {
            let request = job.request
            let selector = AuditLog.selector(of: request)
            guard let kind = Self.kind(of: request), let device = devices.first(where: { Self.matches($0, selector) }) else {
                abandon(job, "interrupted by a restart, and the disk \(AuditLog.selectorText(selector)) is no longer here")
                continue
            }
            var claimed: (backend: any StorageBackend, claim: BackendClaim)?
            for backend in backends {
                if let claim = try? await offThread({ [device] in try backend.claims([device]) })[device.identity.key] {
                    claimed = (backend, claim)
                    break
                }
            }
            var backend = claimed?.backend
            var outKey = claimed.map { "\($0.backend.name):\($0.claim.id)" }
            if case .add(let add) = request.operation {
                backend = self.backend(reusing: add.reuseOsdID)
                outKey = backend.map { "\($0.name):\(add.reuseOsdID)" }
            } else if case .deploy = request.operation {
                backend = backend ?? deployBackend
            }
            guard let backend else {
                abandon(job, "interrupted by a restart; no configured backend manages \(device.identity.key) now")
                continue
            }
            let gated = RequestGate.Request(
                requestID: request.requestID, diskKey: device.identity.key, kind: kind, simulate: false,
                deadlineUnixMs: 0, systemDisk: device.isSystemDisk, excluded: device.excluded, outKey: outKey
            )
            gate.resumed(gated)
            context.logger.notice("resuming a job interrupted by a restart", metadata: ["job": "\(job.id)", "step": "\(job.progress.step)"])
            let claim = claimed?.claim
            var start = job.progress
            start.message = "resumed after a restart"
            Task { await self.run(jobID: job.id, request: request, device: device, backend: backend, claim: claim, gated: gated, progress: start) }
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
    }

    /// The backend an Add re-using `id` goes to: an OSD id is Ceph's, a path the filesystem's.
    private func backend(reusing id: String) -> (any StorageBackend)? {
        backends.first { $0.name == "ceph" && Int(id) != nil } ?? backends.first { $0.name == "filesystem" && id.hasPrefix("/") }
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
        simulate: Bool, progress: ProgressReporter
    ) throws -> OperationResult {
        switch request.operation {
        case .remove:
            guard let claim else { throw BackendRefusal("\(device.identity.key) is not managed by \(backend.name)") }
            return try backend.remove(device, claim: claim, simulate: simulate, progress: progress)
        case .add(let add):
            return try backend.add(device, reuseID: add.reuseOsdID, simulate: simulate, progress: progress)
        case .deploy:
            return try backend.deploy(device, simulate: simulate, progress: progress)
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
