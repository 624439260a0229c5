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
///
/// A batch is at most ``batchLimit`` inputs: one transaction for all of them (group commit:
/// one fsync for hundreds of incidents), small enough that the outbox sends one batch's
/// messages while the next is decided. Incidents whose machines are not in memory are read
/// back from the journal when the core asks (``RepairCore/Effects/load``).
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
        indirect case operatorCommand(Received<Bynar_V1_OperatorCommand>)
        /// What the disk-manager said about an incident's disk, for a verified cancel or resolve.
        indirect case operatorDiskFacts(OperatorRequest, IncidentMachine.DiskFacts)
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
    /// When the oldest-incident-per-state figures were last recorded (they scan every open
    /// incident, so at most once a second), and whether a commit changed them since.
    private var oldestRecordedMs: Int64 = 0
    private var oldestChanged = true

    /// Most inputs decided and committed in one transaction.
    static let batchLimit = 512
    /// After this many inputs, the heap and clean code pages are given back the next time
    /// the engine has nothing waiting (``ResidentCode/release()``).
    static let trimAfterInputs = 10_000
    /// Most disk-manager requests awaiting their answers at once (``sendCommands()``): a
    /// bound on the memory of a flood's requests (about 3 kB each while suspended), and high
    /// enough that hosts that do not answer (each holding a slot for its
    /// `request_timeout_seconds`) leave room for the others.
    static let commandsInFlight = 1024
    /// Committed disk-manager commands, in the order decided.
    let commands = Mailbox<Command>()

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
        var core = RepairCore(config: config, openIncidents: [], bucket: try journal.bucket(), latestOpenings: try journal.latestOpenings(),
                              maintenance: try journal.maintenance(), nowMs: clock())
        // Every open incident is indexed; only the last `incidents_in_memory` stay whole.
        try journal.openIncidents(pageSize: 500) { page in
            core.load(page)
            core.trimMemory()
        }
        self.core = core
    }

    static func diskKey(_ host: String, _ key: String) -> String { "\(host)/\(key)" }

    /// Resumes the open incidents (re-sends what was in flight, with the same request ids),
    /// then handles inputs until cancelled.
    func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.sendCommands() }
            decide(.resume)
            flush()
            recordFigures()
            recordOldest()
            // Inputs handled since the heap was last trimmed here.
            var sinceTrim = 0
            while !Task.isCancelled {
                let batch = await inputs.next(upTo: Self.batchLimit)
                if batch.isEmpty { continue }
                prefetch(batch)
                for input in batch { handle(input) }
                flush()
                recordOldest()
                sinceTrim += batch.count
                if sinceTrim >= Self.trimAfterInputs && batch.count < Self.batchLimit {
                    // Thousands of inputs (a flood, its answers) worked through and none
                    // waiting: their buffers and the machines read back are freed. Give
                    // the heap and the code pages the burst touched back now rather than
                    // at the next periodic trim (a few ms, once per this many inputs).
                    ResidentCode.release()
                    sinceTrim = 0
                }
            }
            group.cancelAll()
        }
    }

    /// The core's input for `input` (operator commands verified here, with what the journal
    /// knows of their incident), handled.
    private func handle(_ input: Input) {
        switch input {
        case .diskEvent, .diskHealth, .jobProgress, .ticket, .event:
            if let fact = Self.fact(input) { decide(fact) }
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

    /// Hands `input` to the core; the events it hands back for incidents whose machines are
    /// in the journal only are read back and handed to it again, at the same time, before
    /// the next input.
    private func decide(_ input: RepairCore.Input) {
        let now = clock()
        var effects = core.handle(input, nowMs: now)
        var waiting = effects.load[...]
        effects.load = []
        pending.merge(effects)
        while !waiting.isEmpty {
            let chunk = waiting.prefix(config.incidentsInMemory)
            waiting = waiting.dropFirst(chunk.count)
            readBack(chunk.map(\.incident))
            for (id, event) in chunk {
                guard !core.needsLoading(id) else {
                    logger.error("an open incident could not be read back from the journal; event dropped", metadata: ["incident": "\(id)", "event": "\(event)"])
                    continue
                }
                var more = core.handle(.event(incident: id, event), nowMs: now)
                waiting += more.load
                more.load = []
                pending.merge(more)
            }
            // Very many at once (every open incident resumed at start, a long queue asked
            // again): committed a memory's worth at a time, each incident with its messages.
            if !waiting.isEmpty && core.incidents.inMemory > config.incidentsInMemory { flush() }
        }
    }

    /// Reads back the open incidents `batch` is about whose machines are not in memory, in
    /// one read for the whole batch.
    private func prefetch(_ batch: [Input]) {
        readBack(batch.compactMap(Self.fact).flatMap { core.incidentsNamed(by: $0) })
    }

    /// The core's input for a fact from the bus or an answer to a command (nil for operator
    /// commands, which are verified first, and the tick).
    private static func fact(_ input: Input) -> RepairCore.Input? {
        switch input {
        case .diskEvent(let event): .diskEvent(event)
        case .diskHealth(let health, let retained): .diskHealth(health, retained: retained)
        case .jobProgress(let progress): .jobProgress(progress)
        case .ticket(let ticket): .ticket(ticket)
        case .event(let incident, let event): .event(incident: incident, event)
        case .operatorCommand, .operatorDiskFacts, .tick: nil
        }
    }

    /// Reads the open incidents `ids` whose machines are not in memory from the journal
    /// into the core.
    func readBack(_ ids: [String]) {
        var seen = Set<String>()
        let wanted = ids.filter { core.needsLoading($0) && seen.insert($0).inserted }
        guard !wanted.isEmpty else { return }
        do {
            core.load(try journal.openIncidents(ids: wanted))
        } catch {
            logger.error("cannot read incidents back from the journal", metadata: ["incidents": "\(wanted.count)", "error": "\(error)"])
        }
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
        let changed = effects.dirty.compactMap { core.machine($0) }
        let extras = IncidentJournal.Extras(bucket: effects.bucketChanged ? core.brake.bucket : nil, maintenance: effects.maintenanceChanged ? core.maintenance : nil,
                                            audit: effects.audits, unrepaired: effects.unrepaired)
        do {
            try outbox.commit(effects.messages, state: try journal.changes(changed, extras: extras))
        } catch {
            // Without the journal nothing may be sent: a restart must find what was done.
            logger.critical("cannot write the incident journal; commands held back", metadata: ["error": "\(error)", "incidents": "\(changed.count)"])
            // The changed incidents stay in memory and are written with the next batch.
            pending.dirty.formUnion(effects.dirty)
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
        // Sent: the machines used longest ago leave memory (the journal has them now).
        core.trimMemory()
    }

    /// The incidents by state and the disks out per cluster against the brake's limits
    /// (docs/metrics.md), after every committed batch; counted as the core goes, so this
    /// reads no incident.
    private func recordFigures() {
        let incidents = core.incidents
        for state in IncidentMachine.State.allCases {
            Gauge(label: "bynar_orchestrator_incidents", dimensions: [("state", snakeCase(state.rawValue))]).record(incidents.countByState[state] ?? 0)
        }
        var out = Dictionary(uniqueKeysWithValues: ([config.defaultCluster] + config.hosts.compactMap(\.cluster)).map { ($0, 0) })
        for (cluster, count) in incidents.outByCluster { out[cluster, default: 0] += count }
        for (cluster, count) in out { Gauge(label: "bynar_orchestrator_disks_out", dimensions: [("cluster", cluster)]).record(count) }
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "cluster")]).record(core.brake.limits.maxOutPerCluster)
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "rack")]).record(core.brake.limits.maxOutPerRack)
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "host")]).record(core.brake.limits.maxOutPerHost)
        Gauge(label: "bynar_orchestrator_brake_removal_tokens").record(core.brake.bucket.tokens)
        oldestChanged = true
    }

    /// Since when the oldest incident of each state waits (docs/metrics.md): at most once a
    /// second, and only after a commit changed something (it looks at every open incident).
    private func recordOldest() {
        let now = clock()
        guard oldestChanged, now - oldestRecordedMs >= 1000 else { return }
        oldestChanged = false
        oldestRecordedMs = now
        var oldest: [IncidentMachine.State: Int64] = [:]
        for entry in core.incidents.entries.values {
            oldest[entry.state] = min(oldest[entry.state] ?? entry.sinceMs, entry.sinceMs)
        }
        for state in IncidentMachine.State.allCases {
            Gauge(label: "bynar_orchestrator_incident_oldest_state_entered_timestamp_seconds", dimensions: [("state", snakeCase(state.rawValue))])
                .record(Double(oldest[state] ?? 0) / 1000)
        }
    }

    // MARK: Commands

    private func send(_ action: IncidentMachine.Action, for id: String) {
        guard let machine = core.machine(id) else { return }
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
        guard client != nil else {
            inputs.post(.event(incident: id, .commandFailed(step, reason: "no orchestrator.signing_key_file configured: cannot sign disk-manager commands")))
            return
        }
        commands.post(Command(incident: id, host: host, operation: operation, requestID: requestID, simulate: simulate, step: step, isStatus: isStatus))
    }

    /// A disk-manager command decided and committed, waiting to go out.
    struct Command: Sendable {
        var incident: String
        var host: String
        var operation: Bynar_V1_DiskManagerRequest.OneOf_Operation
        var requestID: String
        var simulate: Bool
        var step: IncidentMachine.Step
        var isStatus: Bool
    }

    /// Sends the committed commands in order, at most ``commandsInFlight`` awaiting their
    /// answers at once (a flood of incidents queues small ``Command``s here, not thousands
    /// of suspended requests); each answer, or the failure, comes back as an input.
    nonisolated func sendCommands() async {
        guard let client else { return }
        let slots = AsyncSemaphore(permits: Self.commandsInFlight)
        let timeout = Duration.seconds(config.requestTimeoutSeconds)
        let (inputs, logger) = (self.inputs, self.logger)
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                for command in await commands.next() {
                    await slots.acquire()
                    group.addTask {
                        defer { slots.release() }
                        let event: IncidentMachine.Event
                        do {
                            let response = try await client.send(command.operation, to: command.host, requestID: command.requestID, simulate: command.simulate,
                                                                 timeout: timeout, correlationID: command.incident)
                            event = Self.event(for: response, step: command.step, isStatus: command.isStatus)
                        } catch {
                            logger.warning("disk-manager command failed", metadata: ["incident": "\(command.incident)", "request_id": "\(command.requestID)", "error": "\(error)"])
                            event = .commandFailed(command.step, reason: "\(command.requestID): \(error)")
                        }
                        inputs.post(.event(incident: command.incident, event))
                    }
                }
            }
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
        var answer = IncidentMachine.Answer(outcome: answerOutcome(outcome), alreadyDone: alreadyDone, jobID: response.jobID, backend: response.backend, backendID: response.backendID,
                                            reason: response.reason, failedStep: response.failedStep, steps: response.steps, simulated: response.simulated)
        if case .job(let job)? = response.result {
            if answer.backendID.isEmpty { answer.backendID = job.backendID }
            if answer.backend.isEmpty { answer.backend = job.backend }
        }
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
                     backend: progress.backend, backendID: progress.backendID, failedStep: progress.failedStep, message: progress.message)
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
            if !machine.osdID.isEmpty { bare.inUseBy = servedInCluster(machine) }
            return bare
        }
        ticket.state = verdict.state
        ticket.reasons = verdict.reasons
        if ticket.disk.key.isEmpty { ticket.disk = verdict.disk }
        if ticket.inUseBy.isEmpty && !machine.osdID.isEmpty {
            ticket.inUseBy = servedInCluster(machine)
        } else if !machine.osdID.isEmpty && !ticket.inUseBy.contains(machine.served) {
            ticket.inUseBy += "; removed as " + servedInCluster(machine)
        }
        return ticket
    }

    /// What a removed disk served, by its backend's own name (``IncidentMachine/served``),
    /// whether or not the detector could still read the disk's label when the ticket was
    /// asked for.
    static func servedInCluster(_ machine: IncidentMachine) -> String {
        "\(machine.served) in cluster \(machine.cluster)"
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
        incident.backend = machine.backend
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
