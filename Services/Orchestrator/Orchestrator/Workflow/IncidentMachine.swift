/// One disk's repair, as a pure state machine: facts in (``Event``), commands out
/// (``Action``). No I/O, no clock, no threads: the caller passes the time, performs the
/// actions, journals the machine (it is `Codable`) and feeds the answers back as events.
///
/// The path: OPENED → CHECKING_SAFETY (SafeToRemove) → [QUEUED while the brake or the
/// cluster says wait] → REMOVING (signed Remove, follow the job) → REMOVED (ticket asked) →
/// TICKETED → [WAITING_FOR_REPLACEMENT when the ticket is resolved before the new disk is
/// seen] → ADDING (Add with the old OSD id) → RESOLVED. HEALTHY before removal → CANCELLED.
/// A step that runs out of attempts → STUCK (terminal, reported).
///
/// Request ids are `<incident>/<step>/<generation>`: a resend after a timeout or a restart
/// reuses the id (the disk-manager answers ALREADY_DONE and nothing happens twice); only a
/// definite failure (REFUSED, FAILED) moves to the next generation.
public struct IncidentMachine: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable, CaseIterable {
        case opened, checkingSafety, queued, removing, removed, ticketed, waitingForReplacement, adding, resolved, cancelled, stuck

        /// No event changes a terminal incident.
        public var isTerminal: Bool { self == .resolved || self == .cancelled || self == .stuck }
    }

    /// The steps that talk to another service and can time out.
    public enum Step: String, Codable, Sendable, CaseIterable {
        case safeToRemove = "safe", remove, openTicket = "ticket", add
    }

    /// Timeouts and attempts per step, and the pause before a retry.
    public struct Settings: Codable, Sendable, Equatable {
        public struct Limit: Codable, Sendable, Equatable {
            public var timeoutMs: Int64
            public var retries: Int
            public init(timeoutMs: Int64, retries: Int) {
                self.timeoutMs = timeoutMs
                self.retries = retries
            }
        }
        public var limits: [Step: Limit]
        public var retryDelayMs: Int64
        public var queueRecheckMs: Int64
        public var dryRun: Bool

        public init(limits: [Step: Limit], retryDelayMs: Int64, queueRecheckMs: Int64, dryRun: Bool) {
            self.limits = limits
            self.retryDelayMs = retryDelayMs
            self.queueRecheckMs = queueRecheckMs
            self.dryRun = dryRun
        }

        func limit(_ step: Step) -> Limit { limits[step] ?? Limit(timeoutMs: 60_000, retries: 0) }
    }

    /// The disk, as far as the workflow needs it.
    public struct Disk: Codable, Sendable, Equatable {
        public var host: String
        public var key: String
        public var serial: String
        public var devPath: String
        public var byPath: String
        public init(host: String, key: String, serial: String = "", devPath: String = "", byPath: String = "") {
            self.host = host
            self.key = key
            self.serial = serial
            self.devPath = devPath
            self.byPath = byPath
        }

        /// "serial-X (/dev/sdc) on stor1"
        public var label: String {
            var text = key
            if !devPath.isEmpty { text += " (\(devPath))" }
            return text + " on \(host)"
        }
    }

    /// What a disk-manager answered (the parts the workflow reads).
    public struct Answer: Sendable, Equatable {
        public enum Outcome: Sendable, Equatable { case success, skipped, accepted, refused, failed, unknown }
        public var outcome: Outcome
        /// For ALREADY_DONE: the first run's outcome (and `outcome` is that one).
        public var alreadyDone = false
        public var jobID = ""
        public var backendID = ""
        public var reason = ""
        public var failedStep = ""
        public var steps: [String] = []
        public var simulated = false
        public init(outcome: Outcome, alreadyDone: Bool = false, jobID: String = "", backendID: String = "", reason: String = "", failedStep: String = "", steps: [String] = [], simulated: Bool = false) {
            self.outcome = outcome
            self.alreadyDone = alreadyDone
            self.jobID = jobID
            self.backendID = backendID
            self.reason = reason
            self.failedStep = failedStep
            self.steps = steps
            self.simulated = simulated
        }
    }

    /// A disk-manager job's progress (JobProgress, or JobStatus's answer).
    public struct Job: Sendable, Equatable {
        public enum State: Sendable, Equatable { case running, succeeded, failed }
        public var requestID: String
        public var jobID: String
        public var state: State
        public var step = ""
        public var backendID = ""
        public var failedStep = ""
        public var message = ""
        public init(requestID: String, jobID: String, state: State, step: String = "", backendID: String = "", failedStep: String = "", message: String = "") {
            self.requestID = requestID
            self.jobID = jobID
            self.state = state
            self.step = step
            self.backendID = backendID
            self.failedStep = failedStep
            self.message = message
        }
    }

    /// A ticket event for this incident.
    public struct Ticket: Sendable, Equatable {
        public enum State: Sendable, Equatable { case opened, resolved, closed, failed }
        public var state: State
        public var key = ""
        public var url = ""
        public var detail = ""
        public init(state: State, key: String = "", url: String = "", detail: String = "") {
            self.state = state
            self.key = key
            self.url = url
            self.detail = detail
        }
    }

    /// What the cluster brake said.
    public enum Admission: Sendable, Equatable {
        case admit
        /// Wait; `retryAtMs` is when asking again may help (the rate limit's next token), or
        /// nil for the regular queue recheck.
        case hold(reason: String, retryAtMs: Int64?)
    }

    /// Facts, named as facts.
    public enum Event: Sendable, Equatable {
        /// The incident was just opened.
        case started
        /// The orchestrator restarted: re-issue whatever was in flight (same request ids).
        case resumed
        /// SafeToRemove answered.
        case safetyAnswered(safe: Bool, detail: String, clusterHealth: String)
        /// The brake decided on an ``Action/askBrake(clusterHealth:)``.
        case brakeDecided(Admission)
        /// A disk-manager command of `step` was answered (for SafeToRemove: answered without
        /// a verdict, e.g. REFUSED).
        case answered(Step, Answer)
        /// A disk-manager job of this incident moved.
        case jobMoved(Job)
        /// A command of `step` could not be sent or got no answer in time.
        case commandFailed(Step, reason: String)
        case ticketChanged(Ticket)
        /// The detector says the disk is healthy again.
        case diskHealthy
        /// The detector saw a new disk (new serial) in this disk's slot.
        case newDiskSeen(Disk)
        /// Capacity came free: a queued incident may ask again now.
        case capacityFreed
        /// Time passed (deadlines, retries, queue rechecks are checked against `nowMs`).
        case timePassed
    }

    public enum TicketAction: String, Sendable, Equatable { case open, comment, close }
    public enum Severity: Sendable, Equatable { case info, warning, error }

    /// Commands, named as commands.
    public enum Action: Sendable, Equatable {
        case checkSafety(requestID: String)
        /// Ask the cluster brake whether this disk may go out now; answer with
        /// ``Event/brakeDecided(_:)``.
        case askBrake(clusterHealth: String)
        case remove(requestID: String, simulate: Bool)
        case add(requestID: String, disk: Disk, reuseOsdID: String, simulate: Bool)
        case queryJob(requestID: String, jobID: String)
        case ticket(TicketAction, comment: String)
        /// Publish an IncidentEvent (and the retained state) for a change.
        case report(from: State, step: String, message: String)
        case notify(Severity, title: String, text: String, nextAction: String)
        /// The incident is over and reported: its retained state may be cleared.
        case close
    }

    // MARK: State

    public let id: String
    public let disk: Disk
    public let cluster: String
    public let rack: String
    public let openedMs: Int64
    public let reasons: [String]
    public let settings: Settings
    public private(set) var state: State = .opened
    public private(set) var updatedMs: Int64
    /// The step in flight and its attempt (1-based), and when it gives up.
    public private(set) var step: Step?
    public private(set) var attempt = 0
    public private(set) var deadlineMs: Int64?
    /// When a paused step is tried again, or a queued incident asks again.
    public private(set) var retryAtMs: Int64?
    /// Request-id generation per step; grows after a definite failure.
    public private(set) var generation: [Step: Int] = [:]
    /// Attempts used per step over the incident's life (a removal re-queued counts on).
    public private(set) var attemptsUsed: [Step: Int] = [:]
    public private(set) var jobID = ""
    public private(set) var osdID = ""
    public private(set) var ticketKey = ""
    public private(set) var ticketURL = ""
    public private(set) var ticketResolved = false
    public private(set) var newDisk: Disk?
    public private(set) var clusterHealth = ""
    public private(set) var detail = ""
    /// A Remove may have taken the disk out (sent and not refused): the brake counts it.
    public private(set) var mayBeOut = false

    public init(id: String, disk: Disk, cluster: String, rack: String, reasons: [String], settings: Settings, nowMs: Int64) {
        self.id = id
        self.disk = disk
        self.cluster = cluster
        self.rack = rack
        self.reasons = reasons
        self.settings = settings
        self.openedMs = nowMs
        self.updatedMs = nowMs
    }

    /// The disk is (or, in dry run, would be) out of the cluster: what the brake counts.
    public var countsAsOut: Bool {
        switch state {
        case .removing, .removed, .ticketed, .waitingForReplacement, .adding: true
        case .stuck: mayBeOut
        default: false
        }
    }

    public func requestID(_ step: Step) -> String { "\(id)/\(step.rawValue)/\(generation[step] ?? 1)" }

    // MARK: Transitions

    /// Applies `event` at `nowMs` and returns what to do, in order.
    public mutating func handle(_ event: Event, nowMs: Int64) -> [Action] {
        if state.isTerminal { return [] }
        let before = self
        let actions = transition(event, nowMs: nowMs)
        if self != before { updatedMs = nowMs }
        return actions
    }

    private mutating func transition(_ event: Event, nowMs: Int64) -> [Action] {
        switch (state, event) {
        // Healthy before anything was removed: nothing to do.
        case (.opened, .diskHealthy), (.checkingSafety, .diskHealthy), (.queued, .diskHealthy):
            return cancel("the disk is healthy again before removal", nowMs: nowMs)
        case (.removed, .diskHealthy) where settings.dryRun:
            return cancel("dry run: the disk is healthy again; nothing was removed", nowMs: nowMs)
        case (.opened, .newDiskSeen(let new)), (.checkingSafety, .newDiskSeen(let new)), (.queued, .newDiskSeen(let new)):
            newDisk = new
            return stick("a new disk (\(new.key)) replaced \(disk.key) before Bynar removed it; check the storage backend by hand", nowMs: nowMs)

        case (.opened, .started), (.opened, .resumed):
            return checkSafety(from: .opened, message: "disk failed (\(reasons.joined(separator: ", "))); asking the disk-manager whether it is safe to remove", nowMs: nowMs, notify: true)

        // CHECKING_SAFETY
        case (.checkingSafety, .resumed):
            return [.checkSafety(requestID: requestID(.safeToRemove))]
        case (.checkingSafety, .safetyAnswered(let safe, let why, let health)):
            clusterHealth = health
            if safe { return [.askBrake(clusterHealth: health)] }
            attemptsUsed[.safeToRemove] = 0
            return queue(because: "not safe to remove yet: \(why)", retryAtMs: nil, nowMs: nowMs)
        case (.checkingSafety, .brakeDecided(.admit)):
            return startRemoval(nowMs: nowMs)
        case (.checkingSafety, .brakeDecided(.hold(let reason, let at))):
            return queue(because: reason, retryAtMs: at, nowMs: nowMs)
        case (.checkingSafety, .answered(.safeToRemove, let answer)):
            return failAttempt("SafeToRemove answered \(answer.outcome): \(answer.reason)", definite: true, nowMs: nowMs)
        case (.checkingSafety, .commandFailed(.safeToRemove, let reason)):
            return failAttempt(reason, definite: false, nowMs: nowMs)
        case (.checkingSafety, .timePassed):
            return checkTimers(nowMs: nowMs) { [.checkSafety(requestID: $0.requestID(.safeToRemove))] }

        // QUEUED
        case (.queued, .capacityFreed):
            return checkSafety(from: .queued, message: "capacity came free; asking again whether it is safe to remove", nowMs: nowMs, notify: false)
        case (.queued, .timePassed):
            guard let at = retryAtMs, nowMs >= at else { return [] }
            return checkSafety(from: .queued, message: "asking again whether it is safe to remove", nowMs: nowMs, notify: false)

        // REMOVING
        case (.removing, .resumed):
            return jobID.isEmpty ? [removeAction()] : [.queryJob(requestID: requestID(.remove), jobID: jobID)]
        case (.removing, .answered(.remove, let answer)):
            return removalAnswered(answer, nowMs: nowMs)
        case (.removing, .jobMoved(let job)) where job.requestID == requestID(.remove):
            return jobMoved(job, nowMs: nowMs)
        case (.removing, .commandFailed(.remove, let reason)):
            return failAttempt(reason, definite: false, nowMs: nowMs)
        case (.removing, .timePassed):
            return checkTimers(nowMs: nowMs) { $0.jobID.isEmpty ? [$0.removeAction()] : [.queryJob(requestID: $0.requestID(.remove), jobID: $0.jobID)] }
        case (.removing, .newDiskSeen(let new)):
            newDisk = new
            detail = "new disk \(new.key) seen in the slot"
            return []
        case (.removed, .newDiskSeen(let new)):
            newDisk = new
            // In a dry run no ticket is opened: the new disk alone ends the story.
            if settings.dryRun { return startAdd(from: .removed, nowMs: nowMs) }
            detail = "new disk \(new.key) seen in the slot; the ticket is still being opened"
            return []

        // REMOVED: the ticket is being opened.
        case (.removed, .resumed) where !settings.dryRun:
            return [.ticket(.open, comment: "")]
        case (.removed, .ticketChanged(let ticket)):
            return ticketWhileOpening(ticket, nowMs: nowMs)
        case (.removed, .timePassed) where !settings.dryRun:
            return checkTimers(nowMs: nowMs) { _ in [.ticket(.open, comment: "")] }

        // TICKETED / WAITING_FOR_REPLACEMENT
        case (.ticketed, .newDiskSeen(let new)):
            newDisk = new
            return [.report(from: .ticketed, step: "new-disk", message: "new disk \(new.key) seen in the slot; waiting for ticket \(ticketKey) to be resolved")]
        case (.ticketed, .ticketChanged(let ticket)) where ticket.state == .resolved || ticket.state == .closed:
            ticketResolved = true
            if newDisk != nil { return startAdd(from: .ticketed, nowMs: nowMs) }
            return enter(.waitingForReplacement, from: .ticketed, step: "ticket-resolved", message: "ticket \(ticketKey) resolved; waiting for the detector to see the new disk")
        case (.waitingForReplacement, .newDiskSeen(let new)):
            newDisk = new
            return startAdd(from: .waitingForReplacement, nowMs: nowMs)

        // ADDING
        case (.adding, .resumed):
            return jobID.isEmpty ? [addAction()] : [.queryJob(requestID: requestID(.add), jobID: jobID)]
        case (.adding, .answered(.add, let answer)):
            return addAnswered(answer, nowMs: nowMs)
        case (.adding, .jobMoved(let job)) where job.requestID == requestID(.add):
            return jobMoved(job, nowMs: nowMs)
        case (.adding, .commandFailed(.add, let reason)):
            return failAttempt(reason, definite: false, nowMs: nowMs)
        case (.adding, .timePassed):
            return checkTimers(nowMs: nowMs) { $0.jobID.isEmpty ? [$0.addAction()] : [.queryJob(requestID: $0.requestID(.add), jobID: $0.jobID)] }

        default:
            // Everything else is stale, duplicate or irrelevant in this state (a late answer
            // to an earlier attempt, a job of another step, a second HEALTHY after removal).
            return []
        }
    }

    // MARK: Steps

    private mutating func begin(_ step: Step, nowMs: Int64) {
        self.step = step
        attemptsUsed[step, default: 0] += 1
        attempt = attemptsUsed[step] ?? 1
        deadlineMs = nowMs + settings.limit(step).timeoutMs
        retryAtMs = nil
    }

    private mutating func enter(_ next: State, from: State, step: String, message: String) -> [Action] {
        state = next
        detail = message
        return [.report(from: from, step: step, message: message)]
    }

    private mutating func checkSafety(from: State, message: String, nowMs: Int64, notify: Bool) -> [Action] {
        if from == .queued { generation[.safeToRemove, default: 1] += 1 }
        begin(.safeToRemove, nowMs: nowMs)
        var actions = enter(.checkingSafety, from: from, step: "safe-to-remove", message: message)
        if notify {
            actions.append(.notify(.warning, title: "Disk \(disk.label) failed", text: "Reasons: \(reasons.joined(separator: "; ")).",
                                   nextAction: "checking with the disk-manager whether it is safe to remove"))
        }
        return actions + [.checkSafety(requestID: requestID(.safeToRemove))]
    }

    private mutating func queue(because reason: String, retryAtMs at: Int64?, nowMs: Int64) -> [Action] {
        step = nil
        deadlineMs = nil
        retryAtMs = at ?? nowMs + settings.queueRecheckMs
        let wasQueued = state == .queued
        let from = state
        state = .queued
        detail = "queued: \(reason)"
        return wasQueued ? [] : [.report(from: from, step: "queued", message: detail)]
    }

    private func removeAction() -> Action { .remove(requestID: requestID(.remove), simulate: settings.dryRun) }

    private mutating func startRemoval(nowMs: Int64) -> [Action] {
        begin(.remove, nowMs: nowMs)
        jobID = ""
        mayBeOut = !settings.dryRun
        let message = settings.dryRun
            ? "dry run: would remove \(disk.label) now (asking the disk-manager to simulate)"
            : "removing \(disk.label) (cluster \(clusterHealth.isEmpty ? "health unknown" : clusterHealth))"
        var actions = enter(.removing, from: .checkingSafety, step: "remove", message: message)
        if !settings.dryRun {
            actions.append(.notify(.info, title: "Removing failed disk \(disk.label)", text: message, nextAction: "the disk-manager takes it out of the storage cluster"))
        }
        return actions + [removeAction()]
    }

    private mutating func removalAnswered(_ answer: Answer, nowMs: Int64) -> [Action] {
        switch answer.outcome {
        case .accepted:
            jobID = answer.jobID
            // A repeated id: the job may have finished while we were away; ask.
            return answer.alreadyDone ? [.queryJob(requestID: requestID(.remove), jobID: jobID)] : []
        case .success, .skipped:
            return removed(osdID: answer.backendID, steps: answer.steps, simulated: answer.simulated, nowMs: nowMs)
        case .refused:
            // Refused means not done: unless an earlier attempt was accepted, nothing is out.
            if jobID.isEmpty { mayBeOut = false }
            return failAttempt("Remove refused: \(answer.reason)", definite: true, nowMs: nowMs)
        case .failed, .unknown:
            return failAttempt("Remove failed\(answer.failedStep.isEmpty ? "" : " at \(answer.failedStep)"): \(answer.reason)", definite: true, nowMs: nowMs)
        }
    }

    private mutating func removed(osdID id: String, steps: [String], simulated: Bool, nowMs: Int64) -> [Action] {
        osdID = id
        step = nil
        deadlineMs = nil
        jobID = ""
        if settings.dryRun {
            let what = steps.isEmpty ? "" : " (steps: \(steps.joined(separator: ", ")))"
            let message = "dry run: would have removed \(disk.label)\(osdID.isEmpty ? "" : " (OSD \(osdID))")\(what); nothing was changed; would open a ticket next"
            return enter(.removed, from: .removing, step: "removed", message: message)
                + [.notify(.info, title: "dry run: would remove \(disk.label)", text: message, nextAction: "dry run: nothing more happens until the disk is replaced or healthy")]
        }
        begin(.openTicket, nowMs: nowMs)
        let message = "removed \(disk.label)\(osdID.isEmpty ? "" : " (OSD \(osdID), kept for the new disk)"); asking for a ticket"
        return enter(.removed, from: .removing, step: "removed", message: message) + [
            .notify(.info, title: "Removed failed disk \(disk.label)", text: message, nextAction: "opening a ticket for a technician"),
            .ticket(.open, comment: ""),
        ]
    }

    private mutating func ticketWhileOpening(_ ticket: Ticket, nowMs: Int64) -> [Action] {
        switch ticket.state {
        case .failed:
            return failAttempt("ticket could not be opened: \(ticket.detail)", definite: true, nowMs: nowMs)
        case .opened, .resolved, .closed:
            ticketKey = ticket.key
            ticketURL = ticket.url
            step = nil
            deadlineMs = nil
            retryAtMs = nil
            let message = "ticket \(ticket.key) opened; waiting for a technician to replace the disk and resolve it"
            var actions = enter(.ticketed, from: .removed, step: "ticketed", message: message)
            actions.append(.notify(.info, title: "Ticket \(ticket.key) for disk \(disk.label)", text: message + (ticket.url.isEmpty ? "" : " (\(ticket.url))"),
                                   nextAction: "waiting for the disk to be replaced"))
            if ticket.state != .opened {
                // Opened and resolved before we heard of the opening.
                return actions + transition(.ticketChanged(ticket), nowMs: nowMs)
            }
            return actions
        }
    }

    private func addAction() -> Action {
        .add(requestID: requestID(.add), disk: newDisk ?? disk, reuseOsdID: osdID, simulate: settings.dryRun)
    }

    private mutating func startAdd(from: State, nowMs: Int64) -> [Action] {
        begin(.add, nowMs: nowMs)
        jobID = ""
        let new = newDisk ?? disk
        let message = (settings.dryRun ? "dry run: would add " : "adding ") + "the new disk \(new.key) back\(osdID.isEmpty ? "" : " as OSD \(osdID)")"
        var actions = enter(.adding, from: from, step: "add", message: message)
        if !settings.dryRun { actions.append(.ticket(.comment, comment: "New disk \(new.key) seen; \(message).")) }
        return actions + [addAction()]
    }

    private mutating func addAnswered(_ answer: Answer, nowMs: Int64) -> [Action] {
        switch answer.outcome {
        case .accepted:
            jobID = answer.jobID
            return answer.alreadyDone ? [.queryJob(requestID: requestID(.add), jobID: jobID)] : []
        case .success, .skipped:
            return resolve(backendID: answer.backendID, nowMs: nowMs)
        case .refused:
            return failAttempt("Add refused: \(answer.reason)", definite: true, nowMs: nowMs)
        case .failed, .unknown:
            return failAttempt("Add failed\(answer.failedStep.isEmpty ? "" : " at \(answer.failedStep)"): \(answer.reason)", definite: true, nowMs: nowMs)
        }
    }

    private mutating func jobMoved(_ job: Job, nowMs: Int64) -> [Action] {
        if jobID.isEmpty { jobID = job.jobID }
        switch job.state {
        case .running:
            detail = "\(step?.rawValue ?? "job") running: \(job.step) \(job.message)"
            return []
        case .succeeded:
            return state == .removing ? removed(osdID: job.backendID, steps: [], simulated: false, nowMs: nowMs) : resolve(backendID: job.backendID, nowMs: nowMs)
        case .failed:
            if state == .removing { mayBeOut = true }
            jobID = ""
            return failAttempt("job \(job.jobID) failed\(job.failedStep.isEmpty ? "" : " at \(job.failedStep)"): \(job.message)", definite: true, nowMs: nowMs)
        }
    }

    private mutating func resolve(backendID: String, nowMs: Int64) -> [Action] {
        step = nil
        deadlineMs = nil
        let new = newDisk ?? disk
        let osd = backendID.isEmpty ? osdID : backendID
        let message = settings.dryRun
            ? "dry run: would have added \(new.key) back\(osd.isEmpty ? "" : " as OSD \(osd)"); nothing was changed"
            : "new disk \(new.key) is back in service\(osd.isEmpty ? "" : " as OSD \(osd)")"
        var actions = enter(.resolved, from: .adding, step: "resolved", message: message)
        if !settings.dryRun { actions.append(.ticket(.close, comment: "Disk replaced: \(message). Closed by Bynar.")) }
        actions.append(.notify(.info, title: "Disk \(disk.label) replaced", text: message, nextAction: "nothing: the incident is resolved"))
        return actions + [.close]
    }

    private mutating func cancel(_ why: String, nowMs: Int64) -> [Action] {
        let from = state
        step = nil
        deadlineMs = nil
        retryAtMs = nil
        return enter(.cancelled, from: from, step: "cancelled", message: why) + [
            .notify(.info, title: "Disk \(disk.label) recovered", text: why, nextAction: "nothing: the incident is closed without action"),
            .close,
        ]
    }

    private mutating func stick(_ why: String, nowMs: Int64) -> [Action] {
        let from = state
        let stuckStep = step
        deadlineMs = nil
        retryAtMs = nil
        let message = "stuck\(stuckStep.map { " at \($0.rawValue)" } ?? ""): \(why)"
        return enter(.stuck, from: from, step: "stuck", message: message) + [
            .notify(.error, title: "Repair of \(disk.label) is stuck", text: message + (mayBeOut ? " The disk may be out of the cluster." : ""),
                    nextAction: "a person must look; Bynar will not retry"),
        ]
    }

    /// An attempt of the current step failed. `definite`: the other side said no (the next
    /// try gets a new request id); otherwise we do not know (the same id is sent again).
    private mutating func failAttempt(_ reason: String, definite: Bool, nowMs: Int64) -> [Action] {
        guard let current = step else { return [] }
        detail = reason
        let limit = settings.limit(current)
        if attempt > limit.retries { return stick("\(reason) (after \(attempt) attempt\(attempt == 1 ? "" : "s"))", nowMs: nowMs) }
        if definite {
            generation[current, default: 1] += 1
            if current == .remove || current == .add { jobID = "" }
        }
        if current == .remove && definite {
            // Back through safety and the brake: the cluster may have changed.
            attemptsUsed[.safeToRemove] = 0
            return queue(because: "Remove attempt \(attempt) failed: \(reason); will ask again", retryAtMs: nowMs + settings.retryDelayMs * Int64(attempt), nowMs: nowMs)
        }
        deadlineMs = nil
        retryAtMs = nowMs + settings.retryDelayMs * Int64(attempt)
        return []
    }

    /// On time passing: a paused step is retried (`resend` builds the command); a step past
    /// its deadline counts as a failed attempt.
    private mutating func checkTimers(nowMs: Int64, resend: (IncidentMachine) -> [Action]) -> [Action] {
        guard let current = step else { return [] }
        if let at = retryAtMs, nowMs >= at {
            begin(current, nowMs: nowMs)
            return resend(self)
        }
        if let deadline = deadlineMs, nowMs >= deadline {
            let timeout = settings.limit(current).timeoutMs
            return failAttempt("no outcome within \(timeout / 1000) s", definite: false, nowMs: nowMs)
        }
        return []
    }
}
