import BynarAuth
import BynarBus
import BynarConfig
import BynarProto
import BynarRuntime
import Logging
import Metrics
import SwiftProtobuf

/// The shell around the incident machines, the brake and the maintenance windows: turns bus
/// messages (and operators' commands, `RepairEngine+Operator.swift`) into events, journals
/// every change with the messages it sends (one transaction per batch), performs the
/// commands, and feeds the answers back. One task runs it, so the machines and the brake see
/// every event in one order.
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
    private var brake: ClusterBrake
    private(set) var machines: [String: IncidentMachine] = [:]
    /// Open incident per disk ("host/key").
    private var openByDisk: [String: String] = [:]
    /// When the latest incident of each disk was opened (open or closed).
    private var latestOpening: [String: Int64]
    /// The detector's latest health per disk (flags, reasons, SMART for the ticket).
    private(set) var health: [String: Bynar_V1_DiskHealth] = [:]
    /// FAILED events for disks whose flags (system, excluded) are not known yet: decided
    /// when the health (which the detector publishes right after the event) arrives.
    private var waitingForHealth: [String: Bynar_V1_DiskHealthEvent] = [:]
    /// Disks reported MISSING, since when (the detector's `state_since`), with what it said:
    /// repaired once missing for `missing_grace_seconds`.
    private var missingSince: [String: (identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], sinceMs: Int64)] = [:]
    private var placements: [String: OrchestratorConfig.HostPlacement] = [:]
    /// Which disks may be remembered at all (bounded per host).
    private var memory: DiskMemory
    /// Incidents changed in the batch being processed, and what they send.
    private var dirty: Set<String> = []
    private var messages: [Outbox.Event] = []
    private var commands: [(String, IncidentMachine.Action)] = []
    private var bucketChanged = false
    /// Maintenance windows (journaled with the batch that changes them).
    var maintenance: MaintenanceBook
    var maintenanceChanged = false
    /// Failed disks a maintenance window kept from being repaired (told once per window),
    /// decided again when the window ends.
    var heldByMaintenance: [String: (identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], flags: Bynar_V1_DiskHealth)] = [:]
    /// Audit entries, unrepaired failures and operator answers of the batch: journaled with
    /// it, answers sent after the commit.
    var audits: [IncidentJournal.AuditEntry] = []
    var unrepaired: [IncidentJournal.Unrepaired] = []
    var replies: [(Received<Bynar_V1_OperatorCommand>, Bynar_V1_OperatorResponse, late: Bool)] = []
    /// The operator command whose event is being applied (its answer goes to them).
    var answering: OperatorRequest?

    init(config: OrchestratorConfig, journal: IncidentJournal, bus: Bus, outbox: Outbox, client: DiskManagerClient?, operatorVerifier: CommandVerifier?, logger: Logger,
         clock: @escaping @Sendable () -> Int64 = Bus.nowUnixMs) async throws {
        self.config = config
        self.journal = journal
        self.bus = bus
        self.client = client
        self.operatorVerifier = operatorVerifier
        maintenance = try journal.maintenance()
        self.logger = logger
        self.clock = clock
        self.outbox = outbox
        let now = clock()
        let limits = ClusterBrake.Limits(
            maxOutPerCluster: config.brake.maxOutPerCluster, maxOutPerRack: config.brake.maxOutPerRack,
            maxOutPerHost: config.brake.maxOutPerHost, removalsPerHour: config.brake.removalsPerHour,
            burst: config.brake.removalBurst, allowHealthErr: config.brake.allowRemovalWhenHealthErr)
        brake = ClusterBrake(limits: limits, bucket: try journal.bucket(), nowMs: now)
        latestOpening = try journal.latestOpenings()
        memory = DiskMemory(maxDisksPerHost: config.maxDisksPerHost, maxHosts: config.maxHosts)
        for placement in config.hosts { placements[placement.host] = placement }
        for machine in try journal.openIncidents() {
            machines[machine.id] = machine
            _ = memory.admit(host: machine.disk.host, key: machine.disk.key)
            // Stuck and kept-out incidents hold their disk: no second incident for it.
            openByDisk[Self.diskKey(machine.disk.host, machine.disk.key)] = machine.id
        }
    }

    static func diskKey(_ host: String, _ key: String) -> String { "\(host)/\(key)" }

    var settings: IncidentMachine.Settings {
        let steps = config.steps
        func limit(_ step: OrchestratorConfig.StepLimit) -> IncidentMachine.Settings.Limit {
            .init(timeoutMs: Int64(step.timeoutSeconds) * 1000, retries: step.retries)
        }
        return IncidentMachine.Settings(
            limits: [.safeToRemove: limit(steps.safeToRemove), .remove: limit(steps.remove), .openTicket: limit(steps.openTicket), .add: limit(steps.add)],
            retryDelayMs: Int64(steps.retryDelaySeconds) * 1000, queueRecheckMs: Int64(config.queueRecheckSeconds) * 1000, dryRun: config.dryRun,
            reannounceStuckMs: Int64(config.reannounceStuckSeconds) * 1000, reannounceWaitingMs: Int64(config.reannounceWaitingSeconds) * 1000)
    }

    /// Resumes the open incidents (re-sends what was in flight, with the same request ids),
    /// then handles inputs until cancelled.
    func run() async {
        let resumed = machines.values.filter { !$0.state.isTerminal }.map(\.id).sorted()
        if !resumed.isEmpty { logger.notice("resuming open incidents", metadata: ["count": "\(resumed.count)"]) }
        for id in resumed { apply(.resumed, to: id) }
        // The retained windows, in case the broker lost them.
        publishMaintenance()
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
    func snapshot() -> [IncidentMachine] { Array(machines.values) }

    // MARK: Inputs → events

    private func handle(_ input: Input) {
        switch input {
        case .diskEvent(let event):
            diskEvent(event)
        case .diskHealth(let health, let retained):
            diskHealth(health, retained: retained)
        case .jobProgress(let progress):
            let incident = String(progress.requestID.split(separator: "/").first ?? "")
            apply(.jobMoved(Self.job(progress)), to: incident)
        case .ticket(let ticket):
            let state: IncidentMachine.Ticket.State
            switch ticket.state {
            case .opened: state = .opened
            case .resolved: state = .resolved
            case .closed: state = .closed
            case .failed: state = .failed
            default: return
            }
            apply(.ticketChanged(.init(state: state, key: ticket.ticketKey, url: ticket.url, detail: ticket.detail)), to: ticket.incidentID)
        case .event(let incident, let event):
            apply(event, to: incident)
        case .operatorCommand(let command):
            operatorCommand(command)
        case .operatorDiskFacts(let request, let facts):
            operatorDecide(request, facts: facts)
        case .tick:
            missingGraceCheck()
            expireMaintenance()
            let now = clock()
            for (id, machine) in machines where !machine.isClosed {
                if let at = machine.dueMs, now >= at { apply(.timePassed, to: id) }
            }
        }
    }

    /// Whether the disk may be remembered; a refusal is logged at the first and every
    /// 1000th time per host.
    private func remembers(_ disk: Bynar_V1_DiskIdentity) -> Bool {
        let (admitted, refused) = memory.admit(host: disk.host, key: disk.key)
        if !admitted && (refused == 1 || refused % 1000 == 0) {
            logger.warning("disk not remembered: its host reports more disks than orchestrator.max_disks_per_host (or too many hosts)", metadata: [
                "host": "\(disk.host.prefix(256))", "disk": "\(disk.key.prefix(256))", "refused_so_far": "\(refused)",
                "max_disks_per_host": "\(memory.maxDisksPerHost)", "max_hosts": "\(memory.maxHosts)"])
        }
        return admitted
    }

    private func diskEvent(_ event: Bynar_V1_DiskHealthEvent) {
        let host = event.disk.host
        let key = Self.diskKey(host, event.disk.key)
        if event.toState == .replaced, !event.previousDisk.key.isEmpty {
            let previousHost = event.previousDisk.host.isEmpty ? host : event.previousDisk.host
            let previous = Self.diskKey(previousHost, event.previousDisk.key)
            // A disk missing within its grace period whose slot now holds another: it is gone
            // for good, decided now and with what was known of it (an excluded or system
            // disk is never a repair candidate; before, its flags were dropped here first and
            // the grace check later opened an incident for it with none).
            if let missing = missingSince.removeValue(forKey: previous), openByDisk[previous] == nil {
                openMissing(previous, missing, why: "missing, and another disk took its slot")
            }
            // The old disk left its slot: forget it (its incident keeps its own copy).
            memory.forget(host: previousHost, key: event.previousDisk.key)
            health[previous] = nil
        }
        guard remembers(event.disk) else { return }
        switch event.toState {
        case .failed:
            guard openByDisk[key] == nil else { return }
            if let known = health[key] {
                open(event.disk, reasons: event.reasons, flags: known, why: "FAILED event")
            } else {
                waitingForHealth[key] = event
            }
        case .healthy:
            waitingForHealth[key] = nil
            missingSince[key] = nil
            heldByMaintenance[key] = nil
            if let id = openByDisk[key] { apply(.diskHealthy, to: id) }
        case .missing:
            guard openByDisk[key] == nil, missingSince[key] == nil else { return }
            let observed = event.reasons.map(\.observedUnixMs).max() ?? 0
            missingSince[key] = (event.disk, event.reasons, observed > 0 ? observed : clock())
            logger.notice("disk missing; repaired unless it is back within the grace period", metadata: [
                "disk": "\(key)", "grace_seconds": "\(config.missingGraceSeconds)"])
            missingGraceCheck()
        case .replaced:
            missingSince[key] = nil
            let previous = Self.diskKey(event.previousDisk.host.isEmpty ? host : event.previousDisk.host, event.previousDisk.key)
            if !event.previousDisk.key.isEmpty, let id = openByDisk[previous] {
                apply(.newDiskSeen(Self.disk(event.disk)), to: id)
            }
        default:
            break
        }
    }

    private func diskHealth(_ latest: Bynar_V1_DiskHealth, retained: Bool) {
        let key = Self.diskKey(latest.disk.host, latest.disk.key)
        guard remembers(latest.disk) else { return }
        health[key] = DiskMemory.compact(latest)
        if let event = waitingForHealth.removeValue(forKey: key), openByDisk[key] == nil {
            open(event.disk, reasons: event.reasons, flags: latest, why: "FAILED event")
            return
        }
        if latest.state != .missing { missingSince[key] = nil }
        switch latest.state {
        case .missing where openByDisk[key] == nil && missingSince[key] == nil:
            // Missing while the orchestrator was away (retained health): the grace counts
            // from when the detector saw it go, not from now.
            if let opened = latestOpening[key], opened >= latest.stateSinceUnixMs { return }
            missingSince[key] = (latest.disk, latest.reasons, latest.stateSinceUnixMs > 0 ? latest.stateSinceUnixMs : clock())
            missingGraceCheck()
        case .failed where openByDisk[key] == nil:
            // Missed the event (orchestrator was away): the retained health says failed.
            // The same failure as an incident already opened is not a new one.
            if let opened = latestOpening[key], opened >= latest.stateSinceUnixMs { return }
            open(latest.disk, reasons: latest.reasons, flags: latest, why: retained ? "retained FAILED health" : "FAILED health")
        case .healthy:
            heldByMaintenance[key] = nil
            if let id = openByDisk[key] { apply(.diskHealthy, to: id) }
        default:
            break
        }
    }

    /// Opens an incident for every disk missing longer than the grace period.
    private func missingGraceCheck() {
        let now = clock()
        let graceMs = Int64(config.missingGraceSeconds) * 1000
        for (key, missing) in missingSince where now - missing.sinceMs >= graceMs {
            missingSince[key] = nil
            guard openByDisk[key] == nil else { continue }
            openMissing(key, missing, why: "missing for \((now - missing.sinceMs) / 1000) s")
        }
    }

    /// Opens the incident of a missing disk with its last known flags and reasons.
    private func openMissing(_ key: String, _ missing: (identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], sinceMs: Int64), why: String) {
        let flags = health[key] ?? Bynar_V1_DiskHealth.with { $0.disk = missing.identity }
        var reasons = missing.reasons
        if reasons.isEmpty {
            reasons = [Bynar_V1_HealthReason.with { $0.rule = "disk.missing"; $0.detail = "the device is gone from this slot" }]
        }
        open(missing.identity, reasons: reasons, flags: flags, why: why)
    }

    func open(_ identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], flags: Bynar_V1_DiskHealth, why: String) {
        let key = Self.diskKey(identity.host, identity.key)
        guard !flags.systemDisk, !flags.excluded else {
            logger.notice("failed disk is not a repair candidate", metadata: [
                "disk": "\(key)", "system_disk": "\(flags.systemDisk)", "excluded": "\(flags.excluded)"])
            return
        }
        let now = clock()
        if let window = maintenance.covering(host: identity.host, disk: identity.key, nowMs: now) {
            holdForMaintenance(identity, reasons: reasons, flags: flags, window: window, nowMs: now)
            return
        }
        let placement = placements[identity.host]
        let id = "\(identity.host).\(identity.key).\(now)"
        let machine = IncidentMachine(
            id: id, disk: Self.disk(identity), cluster: placement?.cluster ?? config.defaultCluster, rack: placement?.rack ?? "",
            reasons: reasons.map { $0.detail.isEmpty ? $0.rule : "\($0.rule): \($0.detail)" }, settings: settings, nowMs: now)
        machines[id] = machine
        openByDisk[key] = id
        latestOpening[key] = now
        logger.notice("incident opened", metadata: ["incident": "\(id)", "why": "\(why)"])
        Counter(label: "bynar_orchestrator_incidents_opened_total").increment()
        apply(.started, to: id)
    }

    // MARK: Events → actions

    func apply(_ event: IncidentMachine.Event, to id: String) {
        guard var machine = machines[id] else { return }
        let wasOut = machine.countsAsOut
        let actions = machine.handle(event, nowMs: clock())
        guard actions.isEmpty ? machine != machines[id] : true else { return }
        machines[id] = machine
        dirty.insert(id)
        for action in actions { perform(action, for: id) }
        if let after = machines[id] {
            if after.isClosed { openByDisk[Self.diskKey(after.disk.host, after.disk.key)] = nil }
            if wasOut && !after.countsAsOut { capacityFreed(in: after.cluster) }
        }
    }

    private func capacityFreed(in cluster: String) {
        for (id, machine) in machines where machine.state == .queued && machine.cluster == cluster {
            apply(.capacityFreed, to: id)
        }
    }

    private func perform(_ action: IncidentMachine.Action, for id: String) {
        guard let machine = machines[id] else { return }
        switch action {
        case .askBrake(let clusterHealth):
            let out = machines.values.filter { $0.countsAsOut && $0.id != id }.map(Self.placement)
            let decision = brake.decide(Self.placement(machine), clusterHealth: clusterHealth, out: out, nowMs: clock())
            bucketChanged = true
            apply(.brakeDecided(decision), to: id)
        case .report(let from, let step, let message):
            let event = Self.incidentEvent(machine, from: from, step: step, message: message)
            queue(event, to: Topics.incidentEvents, incident: id)
            queue(event, to: Topics.incidentState(id: id), incident: id, retain: true)
        case .notify(let severity, let title, let text, let nextAction):
            var note = Bynar_V1_Notification()
            note.severity = severity == .info ? .info : severity == .warning ? .warning : .error
            note.title = title
            note.text = text
            note.host = machine.disk.host
            note.disk = Self.identity(machine.disk)
            note.nextAction = nextAction
            note.incidentID = id
            note.ticketURL = machine.ticketURL
            note.incidentState = Self.wire(machine.state)
            note.incidentUpdatedUnixMs = machine.updatedMs
            queueNotification(note, incident: id)
        case .ticket(let what, let comment):
            var request = Bynar_V1_TicketRequest()
            request.incidentID = id
            request.action = what == .open ? .open : what == .comment ? .comment : .close
            request.comment = comment
            request.ticketKey = machine.ticketKey
            request.health = Self.ticketHealth(of: machine, latest: health[Self.diskKey(machine.disk.host, machine.disk.key)])
            // An OPEN is confirmed by its ticket event (the step times out and asks again);
            // a comment or close by nothing else: it is sent until ticketing answers it.
            let receipt = what == .open ? nil : Outbox.Receipt(from: "ticketing", resendAfter: .seconds(config.ticketReceiptSeconds))
            queue(request, to: Topics.ticketCommands, incident: id, receipt: receipt)
        case .close:
            messages.append(.clearRetained(Topics.incidentState(id: id)))
        case .answerOperator(let done, let message):
            answerOperator(machine, done: done, message: message)
        case .checkSafety, .remove, .add, .queryJob:
            commands.append((id, action))
        }
    }

    /// A notification, sent until a notifier answers it (``Outbox/notification(_:correlationId:)``).
    func queueNotification(_ note: Bynar_V1_Notification, incident: String) {
        messages.append(Outbox.notification(note, correlationId: incident))
    }

    func queue<P: BusPayload>(_ payload: P, to topic: String, incident: String, retain: Bool = false, receipt: Outbox.Receipt? = nil) {
        messages.append(Outbox.Event(payload, to: topic, retain: retain, correlationId: incident, receipt: receipt))
    }

    /// Commits the batch's changes and messages in one transaction, then sends commands.
    private func flush() {
        guard !dirty.isEmpty || !messages.isEmpty || !audits.isEmpty || !unrepaired.isEmpty || !replies.isEmpty || maintenanceChanged else { return }
        let changed = dirty.compactMap { machines[$0] }
        let extras = IncidentJournal.Extras(bucket: bucketChanged ? brake.bucket : nil, maintenance: maintenanceChanged ? maintenance : nil,
                                            audit: audits, unrepaired: unrepaired)
        let answers = replies
        defer {
            dirty = []
            messages = []
            audits = []
            unrepaired = []
            replies = []
            bucketChanged = false
            maintenanceChanged = false
        }
        do {
            try outbox.commit(messages, state: try journal.changes(changed, extras: extras))
        } catch {
            // Without the journal nothing may be sent: a restart must find what was done.
            logger.critical("cannot write the incident journal; commands held back", metadata: ["error": "\(error)", "incidents": "\(changed.count)"])
            commands = []
            sendReplies(answers.map { command, response, _ in
                var failed = response
                failed.outcome = .failed
                failed.reason = "the orchestrator could not write its journal (\(error)); nothing was done"
                return (command, failed, false)
            })
            return
        }
        for machine in changed where machine.isClosed {
            machines[machine.id] = nil
            Counter(label: "bynar_orchestrator_incidents_closed_total", dimensions: [("state", snakeCase(machine.state.rawValue))]).increment()
        }
        recordFigures()
        sendReplies(answers)
        let batch = commands
        commands = []
        for (id, action) in batch { send(action, for: id) }
    }

    /// The incidents by state, since when the oldest of each state waits, and the disks out
    /// per cluster against the brake's limits (docs/metrics.md), after every committed batch.
    private func recordFigures() {
        recordStateCounts("bynar_orchestrator_incidents", of: machines.values.map(\.state))
        var oldest: [IncidentMachine.State: Int64] = [:]
        for machine in machines.values {
            let since = machine.stateSinceMs ?? machine.openedMs
            oldest[machine.state] = min(oldest[machine.state] ?? since, since)
        }
        for state in IncidentMachine.State.allCases {
            Gauge(label: "bynar_orchestrator_incident_oldest_state_entered_timestamp_seconds", dimensions: [("state", snakeCase(state.rawValue))])
                .record(Double(oldest[state] ?? 0) / 1000)
        }
        var out = Dictionary(uniqueKeysWithValues: ([config.defaultCluster] + config.hosts.compactMap(\.cluster)).map { ($0, 0) })
        for machine in machines.values where machine.countsAsOut { out[machine.cluster, default: 0] += 1 }
        for (cluster, count) in out { Gauge(label: "bynar_orchestrator_disks_out", dimensions: [("cluster", cluster)]).record(count) }
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "cluster")]).record(brake.limits.maxOutPerCluster)
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "rack")]).record(brake.limits.maxOutPerRack)
        Gauge(label: "bynar_orchestrator_brake_max_out", dimensions: [("per", "host")]).record(brake.limits.maxOutPerHost)
        Gauge(label: "bynar_orchestrator_brake_removal_tokens").record(brake.bucket.tokens)
    }

    // MARK: Commands

    private func send(_ action: IncidentMachine.Action, for id: String) {
        guard let machine = machines[id] else { return }
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
