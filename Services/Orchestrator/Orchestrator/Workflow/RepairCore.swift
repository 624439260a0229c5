import BynarBus
import BynarConfig
import BynarProto
import BynarRuntime
import Logging

/// The orchestrator's decisions across incidents, as a pure core: the incident machines,
/// the cluster brake, the maintenance windows and what the detector said of each disk, and
/// ``handle(_:nowMs:)``, which takes one input at a time and returns what to do about it
/// (``Effects``: incidents changed, messages to send, disk-manager commands, questions for
/// the disk-manager, operator answers, audit entries, log lines). It does no I/O: no bus,
/// no journal, no clock. ``RepairEngine`` is its shell: it verifies operator commands, looks
/// up closed incidents, commits the effects with the changed incidents in one transaction
/// (``Outbox/commit(_:state:)``), then sends commands and answers, whose results come back
/// as inputs. `IncidentMachine` is the core of one incident; this is the core of all of them.
///
/// Memory is bounded by design: every open incident has a small entry here
/// (``OpenIncidents``), but only the machines used last (`orchestrator.incidents_in_memory`)
/// are held whole; the others are in the journal. An event for an incident whose machine is
/// not in memory is handed back (``Effects/load``): the shell reads the machine from the
/// journal and gives the event again, in the same batch, before anything else.
struct RepairCore: Sendable {
    /// Everything that can happen to the workflow.
    enum Input: Sendable {
        /// At start: resume the open incidents (re-sending what was in flight with the same
        /// request ids) and say the maintenance windows again.
        case resume
        case diskEvent(Bynar_V1_DiskHealthEvent)
        case diskHealth(Bynar_V1_DiskHealth, retained: Bool)
        case jobProgress(Bynar_V1_JobProgress)
        case ticket(Bynar_V1_TicketEvent)
        /// An answer (or a failure) for a command the shell sent.
        case event(incident: String, IncidentMachine.Event)
        /// An operator's command, verified by the shell (`rejection`: why it was not), with
        /// what the journal knows of the incident it names.
        case operatorCommand(OperatorRequest, rejection: String?, known: Known)
        /// What the disk-manager said about an incident's disk, for a verified cancel,
        /// resolve or forget.
        case operatorDiskFacts(OperatorRequest, IncidentMachine.DiskFacts, known: Known)
        case tick
    }

    /// What the journal knows of the incident an operator command names: the incident if it
    /// is closed (open ones are here), and its audit trail so far.
    struct Known: Sendable {
        var closed: IncidentMachine?
        var audit: [IncidentJournal.AuditEntry] = []
    }

    /// A line for the log, written by the shell.
    struct LogLine: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    /// What to do about an input (the shell merges a batch's).
    struct Effects: Sendable {
        /// Incidents changed: journaled with the messages, in one transaction.
        var dirty: Set<String> = []
        var messages: [Outbox.Event] = []
        /// Disk-manager commands, sent after the commit.
        var commands: [(incident: String, action: IncidentMachine.Action)] = []
        /// Cancels, resolves and forgets that need the disk-manager's List first.
        var askDiskFacts: [(OperatorRequest, IncidentMachine)] = []
        var bucketChanged = false
        var maintenanceChanged = false
        var audits: [IncidentJournal.AuditEntry] = []
        var unrepaired: [IncidentJournal.Unrepaired] = []
        /// Operator answers, sent after the commit (`late`: after a delay).
        var replies: [(Received<Bynar_V1_OperatorCommand>, Bynar_V1_OperatorResponse, late: Bool)] = []
        var logs: [LogLine] = []
        /// The detector's latest health of each disk remembered ("host/key"; nil: forgotten,
        /// the disk left its slot), in order: what the status page shows of the disks.
        var disks: [(key: String, health: Bynar_V1_DiskHealth?)] = []
        /// Incidents opened.
        var opened = 0
        /// Events for open incidents whose machines are not in memory: the shell reads them
        /// from the journal (``RepairCore/load(_:)``) and hands each event back as
        /// ``Input/event(incident:_:)`` at the same time, before its next input.
        var load: [(incident: String, event: IncidentMachine.Event)] = []

        var isEmpty: Bool {
            dirty.isEmpty && messages.isEmpty && commands.isEmpty && askDiskFacts.isEmpty && audits.isEmpty && unrepaired.isEmpty
                && replies.isEmpty && !bucketChanged && !maintenanceChanged && load.isEmpty
        }
    }

    let config: OrchestratorConfig
    let settings: IncidentMachine.Settings
    private(set) var brake: ClusterBrake
    /// The open incidents: an entry each, and the machines in memory.
    private(set) var incidents: OpenIncidents
    /// The machines in memory (open ones, and those closed in the batch being committed);
    /// a copy, for tests: the shell asks for one with ``machine(_:)``.
    var machines: [String: IncidentMachine] { incidents.machines }

    /// `id`'s machine when it is in memory.
    func machine(_ id: String) -> IncidentMachine? { incidents.machine(id) }
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
    /// Missing disks whose slot another disk took before their flags were known (since when).
    private var awaitingFlags: [String: (missing: (identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], sinceMs: Int64), sinceMs: Int64)] = [:]
    /// How long such a disk waits for its flags.
    static let flagsWaitMs: Int64 = 2_000
    private var placements: [String: OrchestratorConfig.HostPlacement] = [:]
    /// Which disks may be remembered at all (bounded per host).
    private var memory: DiskMemory
    /// Maintenance windows (journaled with the batch that changes them).
    private(set) var maintenance: MaintenanceBook
    /// Failed disks a maintenance window kept from being repaired (told once per window),
    /// decided again when the window ends.
    private var heldByMaintenance: [String: (identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], flags: Bynar_V1_DiskHealth)] = [:]

    /// The input being handled: its time, what the journal knows for an operator command,
    /// and the operator command whose event is being applied (its answer goes to them).
    private var now: Int64 = 0
    private var known = Known()
    private var answering: OperatorRequest?
    /// What the input being handled decided.
    private var effects = Effects()

    /// The core as the journal left it: open incidents, the brake's bucket, the latest
    /// opening per disk, the maintenance windows.
    init(config: OrchestratorConfig, openIncidents: [IncidentMachine], bucket: ClusterBrake.Bucket?, latestOpenings: [String: Int64],
         maintenance: MaintenanceBook, nowMs: Int64) {
        self.config = config
        incidents = OpenIncidents(capacity: config.incidentsInMemory)
        let steps = config.steps
        func limit(_ step: OrchestratorConfig.StepLimit) -> IncidentMachine.Settings.Limit {
            .init(timeoutMs: Int64(step.timeoutSeconds) * 1000, retries: step.retries)
        }
        settings = IncidentMachine.Settings(
            limits: [.safeToRemove: limit(steps.safeToRemove), .remove: limit(steps.remove), .openTicket: limit(steps.openTicket), .add: limit(steps.add)],
            retryDelayMs: Int64(steps.retryDelaySeconds) * 1000, queueRecheckMs: Int64(config.queueRecheckSeconds) * 1000, dryRun: config.dryRun,
            reannounceStuckMs: Int64(config.reannounceStuckSeconds) * 1000, reannounceWaitingMs: Int64(config.reannounceWaitingSeconds) * 1000)
        let limits = ClusterBrake.Limits(
            maxOutPerCluster: config.brake.maxOutPerCluster, maxOutPerRack: config.brake.maxOutPerRack,
            maxOutPerHost: config.brake.maxOutPerHost, removalsPerHour: config.brake.removalsPerHour,
            burst: config.brake.removalBurst, allowHealthErr: config.brake.allowRemovalWhenHealthErr)
        brake = ClusterBrake(limits: limits, bucket: bucket, nowMs: nowMs)
        latestOpening = latestOpenings
        self.maintenance = maintenance
        memory = DiskMemory(maxDisksPerHost: config.maxDisksPerHost, maxHosts: config.maxHosts)
        for placement in config.hosts { placements[placement.host] = placement }
        load(openIncidents)
        incidents.trim()
    }

    /// Open incidents read from the journal: at start (every one, in pages: each is indexed
    /// and its disk remembered) and when an event needs one (``Effects/load``).
    mutating func load(_ machines: [IncidentMachine]) {
        for machine in machines where !machine.isClosed && incidents.entries[machine.id] == nil {
            _ = memory.admit(host: machine.disk.host, key: machine.disk.key)
        }
        incidents.load(machines)
    }

    /// Whether `id` is open with its machine only in the journal (the shell reads it back
    /// before an operator command that names it).
    func needsLoading(_ id: String) -> Bool { incidents.needsLoading(id) }

    /// The incident a request id (`<incident>/<step>/<generation>`) belongs to.
    static func incident(ofRequest requestID: String) -> String {
        String(requestID.split(separator: "/", maxSplits: 1).first ?? "")
    }

    /// The open incidents `input` is about, as far as the core knows before deciding it:
    /// the shell reads those not in memory back in one go for a whole batch (any other the
    /// decision needs comes back in ``Effects/load``).
    func incidentsNamed(by input: Input) -> [String] {
        func holding(_ disk: Bynar_V1_DiskIdentity) -> String? { incidents.byDisk[RepairEngine.diskKey(disk.host, disk.key)] }
        switch input {
        case .event(let incident, _): return [incident]
        case .jobProgress(let progress): return [Self.incident(ofRequest: progress.requestID)]
        case .ticket(let ticket): return [ticket.incidentID]
        case .diskHealth(let health, _): return [holding(health.disk)].compactMap { $0 }
        case .diskEvent(let event):
            var previous = event.previousDisk
            if previous.host.isEmpty { previous.host = event.disk.host }
            return [holding(event.disk), holding(previous)].compactMap { $0 }
        case .resume, .operatorCommand, .operatorDiskFacts, .tick: return []
        }
    }

    /// After the shell committed: machines beyond `incidents_in_memory` leave memory, those
    /// waiting for nothing first, then those used longest ago (``OpenIncidents/trim()``;
    /// the journal has them as they are).
    mutating func trimMemory() { incidents.trim() }

    /// Handles one input at `nowMs` and returns what it decided.
    @discardableResult
    mutating func handle(_ input: Input, nowMs: Int64) -> Effects {
        now = nowMs
        effects = Effects()
        known = Known()
        dispatch(input)
        defer { effects = Effects(); known = Known() }
        return effects
    }

    /// After the shell committed: closed incidents leave memory (the journal has them).
    mutating func forget(closed ids: [String]) {
        incidents.forget(closed: ids)
    }

    private mutating func log(_ level: Logger.Level, _ message: String, _ metadata: [String: String] = [:]) {
        effects.logs.append(LogLine(level: level, message: message, metadata: metadata))
    }

    // MARK: Inputs → events

    private mutating func dispatch(_ input: Input) {
        switch input {
        case .resume:
            let resumed = incidents.entries.filter { !$0.value.state.isTerminal }.keys.sorted()
            if !resumed.isEmpty { log(.notice, "resuming open incidents", ["count": "\(resumed.count)"]) }
            for id in resumed { apply(.resumed, to: id) }
            // The retained windows, in case the broker lost them.
            publishMaintenance()
        case .diskEvent(let event):
            diskEvent(event)
        case .diskHealth(let health, let retained):
            diskHealth(health, retained: retained)
        case .jobProgress(let progress):
            apply(.jobMoved(RepairEngine.job(progress)), to: Self.incident(ofRequest: progress.requestID))
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
        case .operatorCommand(let request, let rejection, let known):
            self.known = known
            operatorCommand(request, rejection: rejection)
        case .operatorDiskFacts(let request, let facts, let known):
            self.known = known
            operatorDecide(request, facts: facts)
        case .tick:
            for (key, waiting) in awaitingFlags where now - waiting.sinceMs >= Self.flagsWaitMs {
                awaitingFlags[key] = nil
                if incidents.byDisk[key] == nil { openMissing(key, waiting.missing, why: "missing, and another disk took its slot (its flags never came)") }
            }
            missingGraceCheck()
            expireMaintenance()
            adoptReplacements()
            for id in incidents.due(nowMs: now) { apply(.timePassed, to: id) }
        }
    }

    /// Whether the disk may be remembered; a refusal is logged at the first and every
    /// 1000th time per host.
    private mutating func remembers(_ disk: Bynar_V1_DiskIdentity) -> Bool {
        let (admitted, refused) = memory.admit(host: disk.host, key: disk.key)
        if !admitted && (refused == 1 || refused % 1000 == 0) {
            log(.warning, "disk not remembered: its host reports more disks than orchestrator.max_disks_per_host (or too many hosts)", [
                "host": "\(disk.host.prefix(256))", "disk": "\(disk.key.prefix(256))", "refused_so_far": "\(refused)",
                "max_disks_per_host": "\(memory.maxDisksPerHost)", "max_hosts": "\(memory.maxHosts)"])
        }
        return admitted
    }

    private mutating func diskEvent(_ event: Bynar_V1_DiskHealthEvent) {
        let host = event.disk.host
        let key = RepairEngine.diskKey(host, event.disk.key)
        if event.toState == .replaced, !event.previousDisk.key.isEmpty {
            let previousHost = event.previousDisk.host.isEmpty ? host : event.previousDisk.host
            let previous = RepairEngine.diskKey(previousHost, event.previousDisk.key)
            // A disk missing within its grace period whose slot now holds another: it is gone
            // for good, decided now and with what was known of it (an excluded or system
            // disk is never a repair candidate; before, its flags were dropped here first and
            // the grace check later opened an incident for it with none).
            if let missing = missingSince.removeValue(forKey: previous), incidents.byDisk[previous] == nil {
                if health[previous] == nil {
                    // Its flags (system, excluded) come with its health, on another
                    // subscription, and may be a step behind this event: decided when they
                    // arrive, or after a short wait with what is known.
                    awaitingFlags[previous] = (missing, now)
                } else {
                    openMissing(previous, missing, why: "missing, and another disk took its slot")
                }
            }
            // The old disk left its slot: forget it (its incident keeps its own copy).
            forget(previous, host: previousHost, key: event.previousDisk.key)
        }
        guard remembers(event.disk) else { return }
        switch event.toState {
        case .failed:
            guard incidents.byDisk[key] == nil else { return }
            if let known = health[key] {
                open(event.disk, reasons: event.reasons, flags: known, why: "FAILED event")
            } else {
                waitingForHealth[key] = event
            }
        case .healthy:
            waitingForHealth[key] = nil
            missingSince[key] = nil
            heldByMaintenance[key] = nil
            if let id = incidents.byDisk[key] { apply(.diskHealthy, to: id) }
        case .missing:
            guard incidents.byDisk[key] == nil, missingSince[key] == nil else { return }
            let observed = event.reasons.map(\.observedUnixMs).max() ?? 0
            missingSince[key] = (event.disk, event.reasons, observed > 0 ? observed : now)
            log(.notice, "disk missing; repaired unless it is back within the grace period", [
                "disk": "\(key)", "grace_seconds": "\(config.missingGraceSeconds)"])
            missingGraceCheck()
        case .replaced:
            missingSince[key] = nil
            let previous = RepairEngine.diskKey(event.previousDisk.host.isEmpty ? host : event.previousDisk.host, event.previousDisk.key)
            if !event.previousDisk.key.isEmpty, let id = incidents.byDisk[previous] {
                apply(.newDiskSeen(RepairEngine.disk(event.disk)), to: id)
            }
        default:
            break
        }
    }

    private mutating func diskHealth(_ latest: Bynar_V1_DiskHealth, retained: Bool) {
        let key = RepairEngine.diskKey(latest.disk.host, latest.disk.key)
        guard remembers(latest.disk) else { return }
        // One copy, shared with the status page's.
        let kept = DiskMemory.bounded(latest)
        health[key] = kept
        effects.disks.append((key, kept))
        if let waiting = awaitingFlags.removeValue(forKey: key) {
            // A missing disk whose slot another disk took: decided now, with its flags.
            if incidents.byDisk[key] == nil { openMissing(key, waiting.missing, why: "missing, and another disk took its slot") }
            forget(key, host: latest.disk.host, key: latest.disk.key)
            return
        }
        if let event = waitingForHealth.removeValue(forKey: key), incidents.byDisk[key] == nil {
            open(event.disk, reasons: event.reasons, flags: latest, why: "FAILED event")
            return
        }
        if latest.state != .missing { missingSince[key] = nil }
        switch latest.state {
        case .missing where incidents.byDisk[key] == nil && missingSince[key] == nil:
            // Missing while the orchestrator was away (retained health): the grace counts
            // from when the detector saw it go, not from now.
            if let opened = latestOpening[key], opened >= latest.stateSinceUnixMs { return }
            missingSince[key] = (latest.disk, latest.reasons, latest.stateSinceUnixMs > 0 ? latest.stateSinceUnixMs : now)
            missingGraceCheck()
        case .failed where incidents.byDisk[key] == nil:
            // Missed the event (orchestrator was away): the retained health says failed.
            // The same failure as an incident already opened is not a new one.
            if let opened = latestOpening[key], opened >= latest.stateSinceUnixMs { return }
            open(latest.disk, reasons: latest.reasons, flags: latest, why: retained ? "retained FAILED health" : "FAILED health")
        case .healthy:
            heldByMaintenance[key] = nil
            if let id = incidents.byDisk[key] { apply(.diskHealthy, to: id) }
        default:
            break
        }
    }

    /// An incident waiting for its new disk whose slot already holds one the detector says is
    /// there (healthy, or just replaced): that is its new disk. The REPLACED event that says so
    /// can be lost: a broker that crashes after acknowledging it and before delivering it comes
    /// back without it (its last save), while the new disk's retained health comes back (the
    /// detector says it again after the reconnect). Found by scripts/chaos (a broker kill in
    /// the same second as the swap: the incident waited for a replacement for ever).
    private mutating func adoptReplacements() {
        for (id, old) in incidents.awaitingNewDisk.sorted(by: { $0.key < $1.key }) {
            // The disks the detector reports on the same host.
            let found = (memory.disksByHost[old.host] ?? []).compactMap { health[RepairEngine.diskKey(old.host, $0)] }.filter { latest in
                let disk = latest.disk
                guard disk.host == old.host, disk.key != old.key, !latest.systemDisk, !latest.excluded,
                      latest.state == .healthy || latest.state == .replaced, latest.stateSinceUnixMs >= old.openedMs
                else { return false }
                // The same slot: its by-path name when both have one, else the device path.
                if !disk.byPath.isEmpty || !old.byPath.isEmpty { return disk.byPath == old.byPath }
                return !disk.devPath.isEmpty && disk.devPath == old.devPath
            }
            // Exactly one candidate, or nothing is decided.
            guard found.count == 1, let new = found.first else { continue }
            log(.notice, "new disk found in the failed disk's slot from its health (its REPLACED event never came)", ["incident": id, "disk": new.disk.key])
            apply(.newDiskSeen(RepairEngine.disk(new.disk)), to: id)
        }
    }

    /// A disk that left its slot: no longer remembered, its health dropped (and off the
    /// status page).
    private mutating func forget(_ diskKey: String, host: String, key: String) {
        memory.forget(host: host, key: key)
        health[diskKey] = nil
        effects.disks.append((diskKey, nil))
    }

    /// Opens an incident for every disk missing longer than the grace period.
    private mutating func missingGraceCheck() {
        let now = now
        let graceMs = Int64(config.missingGraceSeconds) * 1000
        for (key, missing) in missingSince where now - missing.sinceMs >= graceMs {
            missingSince[key] = nil
            guard incidents.byDisk[key] == nil else { continue }
            openMissing(key, missing, why: "missing for \((now - missing.sinceMs) / 1000) s")
        }
    }

    /// Opens the incident of a missing disk with its last known flags and reasons.
    private mutating func openMissing(_ key: String, _ missing: (identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], sinceMs: Int64), why: String) {
        let flags = health[key] ?? Bynar_V1_DiskHealth.with { $0.disk = missing.identity }
        var reasons = missing.reasons
        if reasons.isEmpty {
            reasons = [Bynar_V1_HealthReason.with { $0.rule = "disk.missing"; $0.detail = "the device is gone from this slot" }]
        }
        open(missing.identity, reasons: reasons, flags: flags, why: why)
    }

    mutating func open(_ identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], flags: Bynar_V1_DiskHealth, why: String) {
        let key = RepairEngine.diskKey(identity.host, identity.key)
        guard !flags.systemDisk, !flags.excluded else {
            log(.notice, "failed disk is not a repair candidate", [
                "disk": "\(key)", "system_disk": "\(flags.systemDisk)", "excluded": "\(flags.excluded)"])
            return
        }
        let now = now
        if let window = maintenance.covering(host: identity.host, disk: identity.key, nowMs: now) {
            holdForMaintenance(identity, reasons: reasons, flags: flags, window: window, nowMs: now)
            return
        }
        let placement = placements[identity.host]
        let id = "\(identity.host).\(identity.key).\(now)"
        let machine = IncidentMachine(
            id: id, disk: RepairEngine.disk(identity), cluster: placement?.cluster ?? config.defaultCluster, rack: placement?.rack ?? "",
            reasons: reasons.map { $0.detail.isEmpty ? $0.rule : "\($0.rule): \($0.detail)" }, settings: settings, nowMs: now)
        incidents.update(machine)
        latestOpening[key] = now
        log(.notice, "incident opened", ["incident": "\(id)", "why": "\(why)"])
        effects.opened += 1
        apply(.started, to: id)
    }

    // MARK: Events → actions

    mutating func apply(_ event: IncidentMachine.Event, to id: String) {
        guard var machine = incidents.machine(id) else {
            // Open, its machine in the journal only: the shell reads it and hands the event back.
            if incidents.entries[id] != nil { effects.load.append((id, event)) }
            return
        }
        incidents.touch(id)
        let before = machine
        let actions = machine.handle(event, nowMs: now, brake: brakeFirst(machine))
        guard actions.isEmpty ? machine != before : true else { return }
        incidents.update(machine)
        effects.dirty.insert(id)
        for action in actions { perform(action, for: id) }
        if let after = incidents.machine(id), before.countsAsOut && !after.countsAsOut { capacityFreed(in: after.cluster) }
    }

    /// What the brake's limits and rate would say of `machine`'s disk going out now, for a
    /// machine that may be about to ask whether it is safe to remove (nil otherwise).
    private func brakeFirst(_ machine: IncidentMachine) -> IncidentMachine.Admission? {
        guard [.opened, .queued, .stuck].contains(machine.state) else { return nil }
        return brakeHold(machine)
    }

    /// The hold the brake's limits and rate put on `machine`'s disk going out now, the
    /// other disks out in the cluster counted (nil: they would let it go).
    private func brakeHold(_ machine: IncidentMachine) -> IncidentMachine.Admission? {
        brake.holds(RepairEngine.placement(machine), out: incidents.outPlacements(except: machine.id), nowMs: now)
    }

    private mutating func capacityFreed(in cluster: String) {
        for id in incidents.queued(in: cluster) {
            apply(.capacityFreed, to: id)
        }
    }

    private mutating func perform(_ action: IncidentMachine.Action, for id: String) {
        guard let machine = incidents.machine(id) else { return }
        switch action {
        case .askBrake(let clusterHealth):
            let out = incidents.outPlacements(except: id)
            let decision = brake.decide(RepairEngine.placement(machine), clusterHealth: clusterHealth, out: out, nowMs: now)
            effects.bucketChanged = true
            apply(.brakeDecided(decision), to: id)
        case .report(let from, let step, let message):
            let event = RepairEngine.incidentEvent(machine, from: from, step: step, message: message)
            // On the incident stream and, the same envelope, as the incident's retained state.
            effects.messages.append(Outbox.Event(event, to: Topics.incidentEvents, correlationId: id, retainedCopy: Topics.incidentState(id: id)))
        case .notify(let severity, let title, let text, let nextAction):
            var note = Bynar_V1_Notification()
            note.severity = severity == .info ? .info : severity == .warning ? .warning : .error
            note.title = title
            note.text = text
            note.host = machine.disk.host
            note.disk = RepairEngine.identity(machine.disk)
            note.nextAction = nextAction
            note.incidentID = id
            note.ticketURL = machine.ticketURL
            note.incidentState = RepairEngine.wire(machine.state)
            note.incidentUpdatedUnixMs = machine.updatedMs
            queueNotification(note, incident: id)
        case .ticket(let what, let comment):
            var request = Bynar_V1_TicketRequest()
            request.incidentID = id
            request.action = what == .open ? .open : what == .comment ? .comment : .close
            request.comment = comment
            request.ticketKey = machine.ticketKey
            request.health = RepairEngine.ticketHealth(of: machine, latest: health[RepairEngine.diskKey(machine.disk.host, machine.disk.key)])
            // An OPEN is confirmed by its ticket event (the step times out and asks again);
            // a comment or close by nothing else: it is sent until ticketing answers it.
            let receipt = what == .open ? nil : Outbox.Receipt(from: "ticketing", resendAfter: .seconds(config.ticketReceiptSeconds))
            queue(request, to: Topics.ticketCommands, incident: id, receipt: receipt)
        case .close:
            effects.messages.append(.clearRetained(Topics.incidentState(id: id)))
        case .answerOperator(let done, let message):
            answerOperator(machine, done: done, message: message)
        case .checkSafety:
            // The brake first: an incident its limits or rate would hold anyway is queued
            // without asking the disk-manager (a flood of failures is not a flood of
            // SafeToRemoves, and a queued incident asks again only when it may go). The
            // machine was told before it stepped (``brakeFirst(_:)``); a step that asks again
            // from CHECKING_SAFETY (a restart, a timeout's retry) is checked here.
            if let hold = brakeHold(machine) {
                apply(.brakeDecided(hold), to: id)
            } else {
                effects.commands.append((id, action))
            }
        case .remove, .add, .queryJob:
            effects.commands.append((id, action))
        }
    }

    /// A notification, sent until a notifier answers it (``Outbox/notification(_:correlationId:)``).
    mutating func queueNotification(_ note: Bynar_V1_Notification, incident: String) {
        effects.messages.append(Outbox.notification(note, correlationId: incident))
    }

    mutating func queue<P: BusPayload>(_ payload: P, to topic: String, incident: String, retain: Bool = false, receipt: Outbox.Receipt? = nil) {
        effects.messages.append(Outbox.Event(payload, to: topic, retain: retain, correlationId: incident, receipt: receipt))
    }

}

/// Operator commands and maintenance windows (`bynar incidents ...`, `bynar maintenance`).
extension RepairCore {
    /// Starts what a command asks once the shell verified it (`rejection`: why it was not
    /// authorised); refusals are audited and answered.
    mutating func operatorCommand(_ request: OperatorRequest, rejection: String?) {
        if let rejection {
            refuse(request, rejection)
            return
        }
        let command = request.received.payload
        switch command.action {
        case nil:
            refuse(request, "the command names no action")
        case .show:
            show(request)
        case .retry:
            guard let machine = openMachine(request) else { return }
            answering = request
            apply(.operatorRetry(.init(keyID: request.keyID, reason: request.reason)), to: machine.id)
            answering = nil
        case .cancel, .resolve, .forget:
            guard let machine = openMachine(request) else { return }
            effects.askDiskFacts.append((request, machine))
        case .maintenanceOn(let on):
            let window = MaintenanceBook.Window(host: on.host, disk: on.disk, untilMs: on.untilUnixMs > 0 ? on.untilUnixMs : nil,
                                                reason: command.reason, by: request.keyID, sinceMs: now)
            switch maintenance.switchOn(window, nowMs: now) {
            case .failure(let refusal):
                refuse(request, "maintenance on refused: \(refusal)")
            case .success(let what):
                effects.maintenanceChanged = true
                publishMaintenance()
                notifyOperator("Operator \(request.keyID): \(what)", text: "No repair is opened there while it lasts; failures are recorded and reported.",
                               host: on.host, nextAction: "`bynar maintenance off --host \(on.host)\(on.disk.isEmpty ? "" : " --disk \(on.disk)")` ends it")
                answer(request, done: true, message: what, incident: nil)
            }
        case .maintenanceOff(let off):
            switch maintenance.switchOff(host: off.host, disk: off.disk) {
            case .failure(let refusal):
                refuse(request, "maintenance off refused: \(refusal)")
            case .success(let ended):
                effects.maintenanceChanged = true
                publishMaintenance()
                let what = "maintenance of \(ended.map(\.scope).joined(separator: ", ")) ended by operator \(request.keyID): \(command.reason)"
                notifyOperator("Operator \(request.keyID) ended maintenance of \(OperatorRequest.scope(host: off.host, disk: off.disk))", text: what, host: off.host,
                               nextAction: "failures held back there are repaired now")
                answer(request, done: true, message: what, incident: nil)
                maintenanceEnded(ended)
            }
        }
    }

    /// The open incident a retry, cancel or resolve names; nil (refused) when there is none.
    private mutating func openMachine(_ request: OperatorRequest) -> IncidentMachine? {
        if let machine = incidents.machine(request.incidentID) { return machine }
        if let closed = known.closed {
            refuse(request, "\(request.action) refused: incident \(request.incidentID) is already \(closed.state.rawValue)", machine: closed)
        } else {
            refuse(request, "\(request.action) refused: no incident \(request.incidentID.prefix(200))", late: true)
        }
        return nil
    }

    private mutating func show(_ request: OperatorRequest) {
        let machine = incidents.machine(request.incidentID) ?? known.closed
        guard let machine else {
            refuse(request, "show refused: no incident \(request.incidentID.prefix(200))", late: true)
            return
        }
        answer(request, done: true, message: "shown", incident: machine)
    }


    /// Decides a verified cancel, resolve or forget once the disk-manager answered (or did not).
    mutating func operatorDecide(_ request: OperatorRequest, facts: IncidentMachine.DiskFacts) {
        guard incidents.machine(request.incidentID) != nil else {
            _ = openMachine(request)
            return
        }
        let who = IncidentMachine.Operator(keyID: request.keyID, reason: request.reason)
        answering = request
        let event: IncidentMachine.Event = switch request.action {
        case "cancel": .operatorCancel(who, facts)
        case "forget": .operatorForget(who, facts)
        default: .operatorResolve(who, facts)
        }
        apply(event, to: request.incidentID)
        answering = nil
    }


    // MARK: Answers, audit, announcements

    /// The machine's answer to the command being applied.
    mutating func answerOperator(_ machine: IncidentMachine, done: Bool, message: String) {
        guard let request = answering else { return }
        if done {
            answer(request, done: true, message: message, incident: machine)
        } else {
            refuse(request, message, machine: machine)
        }
    }

    /// Refuses `request`: audited, announced (an IncidentEvent when it names a known
    /// incident, else a notification), answered REFUSED; `late`: the answer waits
    /// ``unknownIncidentAnswerDelay`` (another orchestrator on the broker may own the incident,
    /// and the requester takes the first answer).
    mutating func refuse(_ request: OperatorRequest, _ why: String, machine: IncidentMachine? = nil, late: Bool = false) {
        log(.notice, "operator command refused", [
            "by": "\(request.who)", "action": "\(request.action)", "incident": "\(request.incidentID.prefix(200))", "reason": "\(why)"])
        let known = machine ?? incidents.machine(request.incidentID)
        let text = "operator \(request.who)'s \(request.action)\(request.target.isEmpty ? "" : " of \(request.target)") refused: \(why) (their reason: \(request.reason.isEmpty ? "none given" : String(request.reason.prefix(500))))"
        if let known {
            queue(RepairEngine.incidentEvent(known, from: known.state, step: "operator-refused", message: text), to: Topics.incidentEvents, incident: known.id)
        } else if request.action != "show" && !late {
            notifyOperator("Operator command refused: \(request.action)\(request.target.isEmpty ? "" : " of \(request.target)")", text: text, host: "", nextAction: "")
        }
        answer(request, done: false, message: why, incident: known, late: late)
    }

    /// How long "no such incident" waits before it is sent.
    static var unknownIncidentAnswerDelay: Duration { .seconds(2) }

    /// Audits `request` with its outcome and queues its answer (sent after the commit).
    mutating func answer(_ request: OperatorRequest, done: Bool, message: String, incident: IncidentMachine?, late: Bool = false) {
        effects.audits.append(.init(atMs: now, requestID: String(request.received.payload.requestID.prefix(200)), keyID: String(request.keyID.prefix(200)),
                            verified: request.verified, action: request.action, incidentID: String(request.incidentID.prefix(200)),
                            target: request.target, reason: String(request.reason.prefix(2000)), outcome: (done ? "done: " : "refused: ") + message))
        var response = Bynar_V1_OperatorResponse()
        response.requestID = request.received.payload.requestID
        response.outcome = done ? .success : .refused
        response.reason = message
        if let incident {
            response.incident = RepairEngine.incident(incident)
            if request.action == "show" {
                let entries = known.audit + effects.audits.dropLast().filter { $0.incidentID == incident.id }
                response.audit = entries.map(RepairEngine.auditEntry)
            }
        }
        if request.action.hasPrefix("maintenance") { response.maintenance = maintenance.windows.map(RepairEngine.window) }
        effects.replies.append((request.received, response, late))
    }


    mutating func notifyOperator(_ title: String, text: String, host: String, nextAction: String) {
        var note = Bynar_V1_Notification()
        note.severity = .info
        note.title = title
        note.text = text
        note.host = host
        note.nextAction = nextAction
        queueNotification(note, incident: "")
    }


    /// Queues the retained MaintenanceState (every window in force).
    mutating func publishMaintenance() {
        var state = Bynar_V1_MaintenanceState()
        state.windows = maintenance.windows.map(RepairEngine.window)
        state.updatedUnixMs = now
        queue(state, to: Topics.maintenance, incident: "", retain: true)
    }

    /// A failed disk under a maintenance window: recorded, people told once per window, and
    /// decided again when the window ends.
    mutating func holdForMaintenance(_ identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], flags: Bynar_V1_DiskHealth,
                            window: MaintenanceBook.Window, nowMs: Int64) {
        let key = RepairEngine.diskKey(identity.host, identity.key)
        guard heldByMaintenance[key] == nil else { return }
        heldByMaintenance[key] = (identity, reasons, flags)
        let words = reasons.map { $0.detail.isEmpty ? $0.rule : "\($0.rule): \($0.detail)" }
        let end = window.untilMs.map { " until \(UTCTime.iso8601(unixMs: $0))" } ?? ""
        let why = "\(window.scope) is in maintenance\(end) (operator \(window.by): \(window.reason))"
        effects.unrepaired.append(.init(atMs: nowMs, host: identity.host, diskKey: identity.key, reasons: words, why: why))
        log(.notice, "failed disk not repaired: maintenance", ["disk": "\(key)", "why": "\(why)"])
        var note = Bynar_V1_Notification()
        note.severity = .warning
        note.title = "Disk \(identity.key) on \(identity.host) failed; not repaired: \(window.scope) is in maintenance"
        note.text = "Reasons: \(words.joined(separator: "; ")). \(why)."
        note.host = identity.host
        note.disk = identity
        note.nextAction = "Bynar repairs it when the maintenance ends, if the disk is still failed"
        queueNotification(note, incident: "")
    }

    /// Ends the windows whose time is up.
    mutating func expireMaintenance() {
        let ended = maintenance.expire(nowMs: now)
        guard !ended.isEmpty else { return }
        effects.maintenanceChanged = true
        publishMaintenance()
        for window in ended {
            notifyOperator("Maintenance of \(window.scope) ended (its time was up)", text: "Switched on by \(window.by): \(window.reason).", host: window.host,
                           nextAction: "failures held back there are repaired now")
        }
        maintenanceEnded(ended)
    }

    /// Opens the incidents maintenance held back, for disks no window covers any more and
    /// that are still failed or missing as far as the detector last said.
    mutating func maintenanceEnded(_ ended: [MaintenanceBook.Window]) {
        let now = now
        for (key, held) in heldByMaintenance.sorted(by: { $0.key < $1.key })
        where ended.contains(where: { $0.host == held.identity.host }) && maintenance.covering(host: held.identity.host, disk: held.identity.key, nowMs: now) == nil {
            heldByMaintenance[key] = nil
            let latest = health[key]?.state ?? held.flags.state
            guard latest == .failed || latest == .missing || latest == .unspecified, incidents.byDisk[key] == nil else { continue }
            open(held.identity, reasons: held.reasons, flags: held.flags, why: "maintenance ended")
        }
    }

}

extension RepairCore.Effects {
    mutating func merge(_ other: Self) {
        dirty.formUnion(other.dirty)
        messages += other.messages
        commands += other.commands
        askDiskFacts += other.askDiskFacts
        bucketChanged = bucketChanged || other.bucketChanged
        maintenanceChanged = maintenanceChanged || other.maintenanceChanged
        audits += other.audits
        unrepaired += other.unrepaired
        replies += other.replies
        logs += other.logs
        disks += other.disks
        opened += other.opened
        load += other.load
    }
}
