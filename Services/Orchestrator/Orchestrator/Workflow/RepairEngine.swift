import BynarAuth
import BynarBus
import BynarConfig
import BynarProto
import BynarRuntime
import Logging
import Metrics
import SwiftProtobuf

/// The shell around ``RepairCore``: turns bus messages (and operators' commands,
/// `RepairEngine+Operator.swift`) into the core's inputs, one batch at a time, commits what
/// the core decided (the changed incidents, the brake's bucket, the maintenance windows, the
/// audit, with the messages, in one transaction), then sends the disk-manager commands and
/// the operators' answers; their results come back as inputs. One task runs it, so the core
/// sees every input in one order.
actor RepairEngine {
    /// Everything that can happen to the workflow, as it arrives.
    enum Input: Sendable {
        case diskEvent(Bynar_V1_DiskHealthEvent)
        case diskHealth(Bynar_V1_DiskHealth, retained: Bool)
        case jobProgress(Bynar_V1_JobProgress)
        case ticket(Bynar_V1_TicketEvent)
        /// An answer (or a failure) for a command this engine sent.
        case event(incident: String, IncidentMachine.Event)
        /// An operator's command from bynar/v1/operator/cmd (not yet verified).
        case operatorCommand(Received<Bynar_V1_OperatorCommand>)
        /// What the disk-manager said about an incident's disk, for a verified cancel or resolve.
        case operatorDiskFacts(OperatorRequest, IncidentMachine.DiskFacts)
        case tick
    }

    let config: OrchestratorConfig
    let journal: IncidentJournal
    let bus: Bus
    let client: DiskManagerClient?
    /// Checks operator commands against `orchestrator.operator_keys_file` (nil: none trusted).
    let operatorVerifier: CommandVerifier?
    let logger: Logger
    let inputs = Mailbox<Input>()
    /// Where committed messages leave from (the service's shared outbox).
    let outbox: Outbox
    let clock: @Sendable () -> Int64
    /// What the status page shows besides the journal.
    let board: StatusBoard
    /// The decisions.
    private(set) var core: RepairCore
    /// What the core decided in the batch being handled.
    private(set) var pending = RepairCore.Effects()

    init(config: OrchestratorConfig, journal: IncidentJournal, bus: Bus, outbox: Outbox, client: DiskManagerClient?, operatorVerifier: CommandVerifier?,
         board: StatusBoard, logger: Logger, clock: @escaping @Sendable () -> Int64 = Bus.nowUnixMs) async throws {
        self.board = board
        self.config = config
        self.journal = journal
        self.bus = bus
        self.client = client
        self.operatorVerifier = operatorVerifier
        self.logger = logger
        self.clock = clock
        self.outbox = outbox
        core = RepairCore(config: config, openIncidents: try journal.openIncidents(), bucket: try journal.bucket(), latestOpenings: try journal.latestOpenings(),
                          maintenance: try journal.maintenance(), nowMs: clock())
    }

    static func diskKey(_ host: String, _ key: String) -> String { "\(host)/\(key)" }

    /// Resumes the open incidents (re-sends what was in flight, with the same request ids),
    /// then handles inputs until cancelled.
    func run() async {
        decide(.resume)
        flush()
        recordFigures()
        while !Task.isCancelled {
            let batch = await inputs.next()
            if batch.isEmpty { continue }
            for input in batch { handle(input) }
            flush()
        }
    }

    /// Open incidents (for tests and logs).
    func snapshot() -> [IncidentMachine] { Array(core.machines.values) }

    /// The core's input for `input` (operator commands verified here, with what the journal
    /// knows of their incident), handled.
    private func handle(_ input: Input) {
        switch input {
        case .diskEvent(let event): decide(.diskEvent(event))
        case .diskHealth(let health, let retained): decide(.diskHealth(health, retained: retained))
        case .jobProgress(let progress): decide(.jobProgress(progress))
        case .ticket(let ticket): decide(.ticket(ticket))
        case .event(let incident, let event): decide(.event(incident: incident, event))
        case .operatorCommand(let received):
            if received.retained {
                logger.warning("a retained operator command was ignored (commands are never retained)", metadata: ["request_id": "\(received.payload.requestID.prefix(200))"])
                return
            }
            let (request, rejection) = verify(received)
            decide(.operatorCommand(request, rejection: rejection, known: known(request)))
        case .operatorDiskFacts(let request, let facts):
            decide(.operatorDiskFacts(request, facts, known: known(request)))
        case .tick:
            decide(.tick)
        }
    }

    private func decide(_ input: RepairCore.Input) {
        pending.merge(core.handle(input, nowMs: clock()))
    }

    /// Commits the batch's changes and messages in one transaction, then sends commands,
    /// questions and answers, and writes the batch's log lines.
    private func flush() {
        let effects = pending
        pending = RepairCore.Effects()
        for line in effects.logs {
            logger.log(level: line.level, "\(line.message)", metadata: line.metadata.mapValues { .string($0) })
        }
        if effects.opened > 0 { Counter(label: "bynar_orchestrator_incidents_opened_total").increment(by: effects.opened) }
        if !effects.disks.isEmpty { board.noteDisks(effects.disks) }
        guard !effects.isEmpty else { return }
        let changed = effects.dirty.compactMap { core.machines[$0] }
        let extras = IncidentJournal.Extras(bucket: effects.bucketChanged ? core.brake.bucket : nil, maintenance: effects.maintenanceChanged ? core.maintenance : nil,
                                            audit: effects.audits, unrepaired: effects.unrepaired)
        do {
            try outbox.commit(effects.messages, state: try journal.changes(changed, extras: extras))
        } catch {
            // Without the journal nothing may be sent: a restart must find what was done.
            logger.critical("cannot write the incident journal; commands held back", metadata: ["error": "\(error)", "incidents": "\(changed.count)"])
            sendReplies(effects.replies.map { command, response, _ in
                var failed = response
                failed.outcome = .failed
                failed.reason = "the orchestrator could not write its journal (\(error)); nothing was done"
                return (command, failed, false)
            })
            return
        }
        let closed = changed.filter(\.isClosed)
        core.forget(closed: closed.map(\.id))
        for machine in closed {
            Counter(label: "bynar_orchestrator_incidents_closed_total", dimensions: [("state", snakeCase(machine.state.rawValue))]).increment()
        }
        recordFigures()
        sendReplies(effects.replies)
        for (request, machine) in effects.askDiskFacts { askDiskFacts(request, machine: machine) }
        for (id, action) in effects.commands { send(action, for: id) }
    }

    /// The incidents by state, since when the oldest of each state waits, and the disks out
    /// per cluster against the brake's limits (docs/metrics.md), after every committed batch.
    private func recordFigures() {
        recordStateCounts("bynar_orchestrator_incidents", of: core.machines.values.map(\.state))
        var oldest: [IncidentMachine.State: Int64] = [:]
        for machine in core.machines.values {
            let since = machine.stateSinceMs ?? machine.openedMs
            oldest[machine.state] = min(oldest[machine.state] ?? since, since)
        }
        for state in IncidentMachine.State.allCases {
            Gauge(label: "bynar_orchestrator_incident_oldest_state_entered_timestamp_seconds", dimensions: [("state", snakeCase(state.rawValue))])
                .record(Double(oldest[state] ?? 0) / 1000)
        }
        var out = Dictionary(uniqueKeysWithValues: ([config.defaultCluster] + config.hosts.compactMap(\.cluster)).map { ($0, 0) })
        for machine in core.machines.values where machine.countsAsOut { out[machine.cluster, default: 0] += 1 }
        for (cluster, count) in out { Gauge(label: "bynar_orchestrator_disks_out", dimensions: [("cluster", cluster)]).record(count) }
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "cluster")]).record(core.brake.limits.maxOutPerCluster)
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "rack")]).record(core.brake.limits.maxOutPerRack)
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "host")]).record(core.brake.limits.maxOutPerHost)
        Gauge(label: "bynar_orchestrator_brake_removal_tokens").record(core.brake.bucket.tokens)
    }

    // MARK: Commands

    private func send(_ action: IncidentMachine.Action, for id: String) {
        guard let machine = core.machines[id] else { return }
        let host = machine.disk.host
        let selector = Bynar_V1_DiskSelector.key(machine.disk.key)
        let step: IncidentMachine.Step
        let operation: Bynar_V1_DiskManagerRequest.OneOf_Operation
        let requestID: String
        var simulate = false
        switch action {
        case .checkSafety(let request):
            step = .safeToRemove
            requestID = request
            var safe = Bynar_V1_DiskManagerRequest.SafeToRemove()
            safe.disk = selector
            operation = .safeToRemove(safe)
        case .remove(let request, let simulated):
            step = .remove
            requestID = request
            simulate = simulated
            var remove = Bynar_V1_DiskManagerRequest.Remove()
            remove.disk = selector
            operation = .remove(remove)
        case .add(let request, let disk, let reuse, let simulated):
            step = .add
            requestID = request
            simulate = simulated
            var add = Bynar_V1_DiskManagerRequest.Add()
            add.disk = .key(disk.key)
            add.reuseOsdID = reuse
            operation = .add(add)
        case .queryJob(let request, let job):
            step = machine.state == .adding ? .add : .remove
            // A status query gets its own id: the job's request id stays the job's.
            requestID = "\(request)/status/\(clock())"
            var status = Bynar_V1_DiskManagerRequest.JobStatus()
            status.jobID = job
            operation = .jobStatus(status)
        default:
            return
        }
        let isStatus: Bool = if case .queryJob = action { true } else { false }
        guard let client else {
            inputs.post(.event(incident: id, .commandFailed(step, reason: "no orchestrator.signing_key_file configured: cannot sign disk-manager commands")))
            return
        }
        let timeout = Duration.seconds(config.requestTimeoutSeconds)
        let inputs = self.inputs
        let logger = self.logger
        Task {
            let event: IncidentMachine.Event
            do {
                let response = try await client.send(operation, to: host, requestID: requestID, simulate: simulate, timeout: timeout, correlationID: id)
                event = Self.event(for: response, step: step, isStatus: isStatus)
            } catch {
                logger.warning("disk-manager command failed", metadata: ["incident": "\(id)", "request_id": "\(requestID)", "error": "\(error)"])
                event = .commandFailed(step, reason: "\(requestID): \(error)")
            }
            inputs.post(.event(incident: id, event))
        }
    }

    static func event(for response: Bynar_V1_DiskManagerResponse, step: IncidentMachine.Step, isStatus: Bool) -> IncidentMachine.Event {
        let alreadyDone = response.outcome == .alreadyDone
        let outcome = alreadyDone ? response.originalOutcome : response.outcome
        if isStatus {
            if case .job(let job)? = response.result { return .jobMoved(Self.job(job)) }
            return .commandFailed(step, reason: "JobStatus answered \(response.outcome): \(response.reason)")
        }
        if step == .safeToRemove, case .safeToRemove(let verdict)? = response.result, outcome == .success {
            return .safetyAnswered(safe: verdict.safe, detail: verdict.detail, clusterHealth: verdict.clusterHealth)
        }
        var answer = IncidentMachine.Answer(outcome: answerOutcome(outcome), alreadyDone: alreadyDone, jobID: response.jobID, backendID: response.backendID,
                                            reason: response.reason, failedStep: response.failedStep, steps: response.steps, simulated: response.simulated)
        if case .job(let job)? = response.result, answer.backendID.isEmpty { answer.backendID = job.backendID }
        return .answered(step, answer)
    }

    static func answerOutcome(_ outcome: Bynar_V1_Outcome) -> IncidentMachine.Answer.Outcome {
        switch outcome {
        case .success: .success
        case .skipped: .skipped
        case .accepted: .accepted
        case .refused: .refused
        case .failed: .failed
        default: .unknown
        }
    }

    // MARK: Conversions

    static func job(_ progress: Bynar_V1_JobProgress) -> IncidentMachine.Job {
        let state: IncidentMachine.Job.State = switch progress.state {
        case .succeeded: .succeeded
        case .failed: .failed
        default: .running
        }
        return .init(requestID: progress.requestID, jobID: progress.jobID, state: state, step: progress.step,
                     backendID: progress.backendID, failedStep: progress.failedStep, message: progress.message)
    }

    static func disk(_ identity: Bynar_V1_DiskIdentity) -> IncidentMachine.Disk {
        .init(host: identity.host, key: identity.key, serial: identity.serial, devPath: identity.devPath, byPath: identity.byPath)
    }

    static func identity(_ disk: IncidentMachine.Disk) -> Bynar_V1_DiskIdentity {
        var identity = Bynar_V1_DiskIdentity()
        identity.host = disk.host
        identity.key = disk.key
        identity.serial = disk.serial
        identity.devPath = disk.devPath
        identity.byPath = disk.byPath
        return identity
    }

    static func placement(_ machine: IncidentMachine) -> ClusterBrake.Placement {
        .init(cluster: machine.cluster, rack: machine.rack, host: machine.disk.host)
    }

    static func health(of machine: IncidentMachine) -> Bynar_V1_DiskHealth {
        var health = Bynar_V1_DiskHealth()
        health.disk = identity(machine.disk)
        health.state = machine.reasons.contains { $0.hasPrefix("disk.missing") } ? .missing : .failed
        health.reasons = machine.reasons.map { text in
            var reason = Bynar_V1_HealthReason()
            let parts = text.split(separator: ":", maxSplits: 1)
            reason.rule = String(parts.first ?? "")
            reason.detail = parts.count > 1 ? String(parts[1].drop { $0 == " " }) : text
            reason.severity = health.state
            return reason
        }
        return health
    }

    /// What the ticket says about the disk: the incident's verdict and the reasons it was
    /// opened for (the detector's latest health may have moved on: a disk judged FAILED
    /// reads as "failing" once its errors age), with the detector's latest facts (identity,
    /// SMART, filesystems) and what the disk served (the OSD the disk-manager removed, and
    /// the cluster).
    static func ticketHealth(of machine: IncidentMachine, latest: Bynar_V1_DiskHealth?) -> Bynar_V1_DiskHealth {
        let verdict = health(of: machine)
        guard var ticket = latest else {
            var bare = verdict
            if !machine.osdID.isEmpty { bare.inUseBy = "OSD \(machine.osdID) in cluster \(machine.cluster)" }
            return bare
        }
        ticket.state = verdict.state
        ticket.reasons = verdict.reasons
        if ticket.disk.key.isEmpty { ticket.disk = verdict.disk }
        if ticket.inUseBy.isEmpty && !machine.osdID.isEmpty {
            ticket.inUseBy = "OSD \(machine.osdID) in cluster \(machine.cluster)"
        } else if !machine.osdID.isEmpty && !ticket.inUseBy.contains("osd.\(machine.osdID)") {
            ticket.inUseBy += "; removed as OSD \(machine.osdID) in cluster \(machine.cluster)"
        }
        return ticket
    }

    static func incidentEvent(_ machine: IncidentMachine, from: IncidentMachine.State, step: String, message: String) -> Bynar_V1_IncidentEvent {
        var event = Bynar_V1_IncidentEvent()
        event.incident = incident(machine)
        event.fromState = wire(from)
        event.step = step
        event.message = message
        return event
    }

    static func incident(_ machine: IncidentMachine) -> Bynar_V1_Incident {
        var incident = Bynar_V1_Incident()
        incident.id = machine.id
        incident.disk = identity(machine.disk)
        incident.state = wire(machine.state)
        incident.reasons = health(of: machine).reasons
        incident.ticketKey = machine.ticketKey
        incident.osdID = machine.osdID
        incident.openedUnixMs = machine.openedMs
        incident.updatedUnixMs = machine.updatedMs
        incident.detail = machine.detail
        incident.cluster = machine.cluster
        incident.failureDomain = machine.rack.isEmpty ? "host:\(machine.disk.host)" : "rack:\(machine.rack)"
        incident.countsAsOut = machine.countsAsOut
        return incident
    }

    static func wire(_ state: IncidentMachine.State) -> Bynar_V1_IncidentState {
        switch state {
        case .opened: .opened
        case .checkingSafety: .checkingSafety
        case .queued: .queued
        case .removing: .removing
        case .removed: .removed
        case .ticketed: .ticketed
        case .waitingForReplacement: .waitingForReplacement
        case .adding: .adding
        case .resolved: .resolved
        case .cancelled: .cancelled
        case .stuck: .stuck
        }
    }
}
