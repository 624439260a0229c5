public import BynarProto

/// One disk's repair, as a pure state machine: facts in (``Event``), commands out
/// (``Action``). No I/O, no clock, no threads: the caller passes the time, performs the
/// actions, journals the machine (it is `Codable`) and feeds the answers back as events.
///
/// The path: OPENED → CHECKING_SAFETY (SafeToRemove) → [QUEUED while the brake or the
/// cluster says wait] → REMOVING (signed Remove, follow the job) → REMOVED (ticket asked) →
/// TICKETED → [WAITING_FOR_REPLACEMENT when the ticket is resolved before the new disk is
/// seen] → ADDING (Add with the old OSD id) → RESOLVED. HEALTHY before removal → CANCELLED.
/// A step that runs out of attempts → STUCK (reported, and re-announced while it stays).
///
/// An operator (``Event/operatorRetry(_:)``, ``Event/operatorCancel(_:_:)``,
/// ``Event/operatorResolve(_:_:)``; always answered with ``Action/answerOperator(done:message:)``):
/// 1. Every operator command needs a reason; without one it is refused.
/// 2. Retry: a STUCK incident runs again from the step it stuck at, a paused step (waiting
///    to retry after a failed attempt) or a QUEUED incident at once; with fresh request ids
///    and fresh attempts. A Remove is retried through SafeToRemove and the brake again.
///    Refused when the disk was replaced by hand before Bynar removed it (nothing to
///    remove: resolve or cancel), and in every other state (nothing to retry).
/// 3. Cancel and resolve are refused while a Remove or Add may be running (REMOVING,
///    ADDING: cancelling would not stop the disk-manager), and on a closed incident.
/// 4. Cancel ends the repair (CANCELLED; a ticket gets a comment). The brake stops counting
///    the disk out only when the disk-manager reports it (or its replacement) in service; a
///    disk the brake counted out and the disk-manager reports anything else, or did not
///    answer about, stays counted out ("kept out") until a resolve finds it in service.
/// 5. Resolve ends the incident as RESOLVED (ticket closed, retained state cleared) only
///    when the disk-manager reports the disk or its replacement in service; otherwise it
///    is refused, naming what the disk-manager said. A kept-out CANCELLED incident can be
///    resolved this way.
/// 6. Forget (``Event/operatorForget(_:_:)``) lets the brake stop counting a kept-out
///    CANCELLED incident's disk when the disk-manager cannot say anything about it (its
///    host retired, or gone for good): the operator vouches for it, audited. Refused in
///    every other state, and while the disk-manager answers (then the disk really is out,
///    or in service: resolve).
///
/// Re-announcements (``Event/timePassed``): a STUCK incident, and one waiting in QUEUED,
/// TICKETED or WAITING_FOR_REPLACEMENT, is announced to people again every
/// ``Settings/reannounceStuckMs`` / ``Settings/reannounceWaitingMs`` it stays in that state.
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
        /// A STUCK incident is announced to people again this long after the last time
        /// (nil or 0: only once).
        public var reannounceStuckMs: Int64?
        /// An incident waiting (QUEUED, TICKETED, WAITING_FOR_REPLACEMENT) is announced
        /// again this long after it entered the state or was last announced (nil or 0: never).
        public var reannounceWaitingMs: Int64?

        public init(limits: [Step: Limit], retryDelayMs: Int64, queueRecheckMs: Int64, dryRun: Bool,
                    reannounceStuckMs: Int64? = nil, reannounceWaitingMs: Int64? = nil) {
            self.limits = limits
            self.retryDelayMs = retryDelayMs
            self.queueRecheckMs = queueRecheckMs
            self.dryRun = dryRun
            self.reannounceStuckMs = reannounceStuckMs
            self.reannounceWaitingMs = reannounceWaitingMs
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
        /// The backend that owns the disk ("ceph", "filesystem", ...) and its id there.
        public var backend = ""
        public var backendID = ""
        public var reason = ""
        public var failedStep = ""
        public var steps: [String] = []
        public var simulated = false
        public init(outcome: Outcome, alreadyDone: Bool = false, jobID: String = "", backend: String = "", backendID: String = "", reason: String = "", failedStep: String = "", steps: [String] = [], simulated: Bool = false) {
            self.outcome = outcome
            self.alreadyDone = alreadyDone
            self.jobID = jobID
            self.backend = backend
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
        public var backend = ""
        public var backendID = ""
        public var failedStep = ""
        public var message = ""
        public init(requestID: String, jobID: String, state: State, step: String = "", backend: String = "", backendID: String = "", failedStep: String = "", message: String = "") {
            self.requestID = requestID
            self.jobID = jobID
            self.state = state
            self.step = step
            self.backend = backend
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

    /// An operator, as the orchestrator verified them: the key that signed the command, and
    /// the reason they gave.
    public struct Operator: Sendable, Equatable {
        /// The trusted key that signed the command.
        public var keyID: String
        /// Why, as they wrote it (required).
        public var reason: String
        /// An operator as verified.
        public init(keyID: String, reason: String) {
            self.keyID = keyID
            self.reason = reason
        }
    }

    /// What the host's disk-manager says about the incident's disk and its replacement,
    /// asked right before an operator's cancel or resolve is decided.
    public enum DiskFacts: Sendable, Equatable {
        /// This disk (the incident's, or its replacement) is in service.
        case inService(key: String)
        /// The disk is listed but not in service (`status`: REMOVED, BLANK, BUSY, ...).
        case notInService(key: String, status: String)
        /// The host's disk-manager lists neither the disk nor its replacement.
        case absent
        /// The disk-manager did not answer, or refused: nothing is known.
        case unknown(reason: String)

        var words: String {
            switch self {
            case .inService(let key): "the disk-manager reports \(key) in service"
            case .notInService(let key, let status): "the disk-manager reports \(key) \(status), not in service"
            case .absent: "the disk-manager lists neither the disk nor a replacement"
            case .unknown(let reason): "the disk-manager could not say where the disk is (\(reason))"
            }
        }
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
        /// Time passed (deadlines, retries, queue rechecks, re-announcements are checked
        /// against `nowMs`).
        case timePassed
        /// An operator asked to run the repair again from where it stopped.
        case operatorRetry(Operator)
        /// An operator asked to end the repair; `DiskFacts` is what the disk-manager said.
        case operatorCancel(Operator, DiskFacts)
        /// An operator says the disk is dealt with; `DiskFacts` is what the disk-manager said.
        case operatorResolve(Operator, DiskFacts)
        /// An operator vouches that a kept-out cancelled incident's disk no longer counts.
        case operatorForget(Operator, DiskFacts)
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
        /// Answer the operator whose command this was: done, or refused and why.
        case answerOperator(done: Bool, message: String)
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
    /// What the disk served, by its backend's id (a Ceph OSD id, a mountpoint, a ZFS vdev,
    /// a Gluster brick): what the Add gives back to the new disk.
    public private(set) var osdID = ""
    /// The backend that owns `osdID` ("ceph", "filesystem", "zfs", "gluster"); empty when
    /// the disk-manager did not say (or the journal record predates it).
    public var backend: String { backendName ?? "" }
    /// Optional, so that the JSON journal records of earlier versions (still read), which
    /// have no such key, decode.
    private var backendName: String?
    public private(set) var ticketKey = ""
    public private(set) var ticketURL = ""
    public private(set) var ticketResolved = false
    public private(set) var newDisk: Disk?
    public private(set) var clusterHealth = ""
    public private(set) var detail = ""
    /// A Remove may have taken the disk out (sent and not refused): the brake counts it.
    public private(set) var mayBeOut = false
    /// The state a STUCK incident was in when it stuck (nil before it ever stuck).
    public private(set) var stuckFrom: State?
    /// An operator cancelled the incident while the disk was (or might be) out and the
    /// disk-manager did not report it in service: the brake still counts it.
    public private(set) var keptOut: Bool?
    /// When the incident entered its current state, and when people were last told about it.
    public private(set) var stateSinceMs: Int64?
    public private(set) var announcedMs: Int64?

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

    /// What the disk served, as its backend names it: `osd.4` (Ceph's own name, what an
    /// operator types into `ceph osd tree`), the filesystem at a mountpoint, a ZFS vdev, a
    /// Gluster brick; empty before a removal said.
    public var served: String { Self.served(backend: backend, id: osdID) }

    public static func served(backend: String, id: String) -> String {
        guard !id.isEmpty else { return "" }
        switch backend {
        case "ceph": return "osd.\(id)"
        case "filesystem": return "the filesystem at \(id)"
        case "zfs": return "ZFS vdev \(id.hasPrefix("zfs:") ? String(id.dropFirst(4)) : id)"
        case "gluster": return "Gluster brick \(id)"
        // A journal record from before `backend` was kept: only Ceph's ids are numbers.
        case "": return Int(id) != nil ? "osd.\(id)" : id
        default: return "\(backend) \(id)"
        }
    }

    /// The disk is (or, in dry run, would be) out of the cluster: what the brake counts.
    /// Before removal only a Remove that may have happened counts (a failed Remove job
    /// waiting to be asked again); a cancelled incident counts while kept out.
    public var countsAsOut: Bool {
        switch state {
        case .removing, .removed, .ticketed, .waitingForReplacement, .adding: true
        case .stuck, .opened, .checkingSafety, .queued: mayBeOut
        case .cancelled: keptOut ?? false
        case .resolved: false
        }
    }

    /// Over and done with: resolved, or cancelled and not kept out. The journal keeps
    /// everything else open (STUCK and kept-out incidents included: the brake counts them).
    public var isClosed: Bool { state == .resolved || (state == .cancelled && !(keptOut ?? false)) }

    /// The earliest time a ``Event/timePassed`` can change something (a deadline, a retry,
    /// a queue recheck, a re-announcement); nil when none is pending.
    public var dueMs: Int64? {
        var due: [Int64] = []
        if !state.isTerminal {
            if let at = retryAtMs { due.append(at) }
            if let at = deadlineMs { due.append(at) }
        }
        if let every = reannounceEvery, every > 0 { due.append((announcedMs ?? updatedMs) + every) }
        return due.min()
    }

    /// How often the current state is announced again (nil: it is not).
    private var reannounceEvery: Int64? {
        switch state {
        case .stuck: settings.reannounceStuckMs
        case .queued, .ticketed, .waitingForReplacement: settings.reannounceWaitingMs
        default: nil
        }
    }

    public func requestID(_ step: Step) -> String { "\(id)/\(step.rawValue)/\(generation[step] ?? 1)" }

    // MARK: Transitions

    /// Applies `event` at `nowMs` and returns what to do, in order. A terminal incident
    /// takes only operator commands (answered, mostly refused) and, when STUCK, time for
    /// its re-announcements.
    ///
    /// `brake`: what the cluster brake's limits and rate would say of this disk going out
    /// now (``ClusterBrake/holds(_:out:nowMs:)``; nil: they would let it go). A step that
    /// would ask the disk-manager whether the disk is safe to remove asks nothing while the
    /// brake would hold it anyway: the incident goes (or stays) QUEUED, said once.
    public mutating func handle(_ event: Event, nowMs: Int64, brake: Admission? = nil) -> [Action] {
        let before = self
        var actions: [Action]
        let hold: (reason: String, retryAtMs: Int64?)? = if case .hold(let reason, let at)? = brake { (reason, at) } else { nil }
        switch event {
        case .operatorRetry(let who):
            actions = operatorRetry(who, nowMs: nowMs, hold: hold)
        case .operatorCancel(let who, let facts):
            actions = operatorCancel(who, facts, nowMs: nowMs)
        case .operatorResolve(let who, let facts):
            actions = operatorResolve(who, facts, nowMs: nowMs)
        case .operatorForget(let who, let facts):
            actions = operatorForget(who, facts)
        case .timePassed where state == .stuck:
            actions = reannounce(nowMs: nowMs)
        default:
            if state.isTerminal { return [] }
            actions = transition(event, nowMs: nowMs, hold: hold)
            if event == .timePassed && state == before.state { actions += reannounce(nowMs: nowMs) }
        }
        if state != before.state {
            stateSinceMs = nowMs
            announcedMs = nowMs
        }
        if self != before { updatedMs = nowMs }
        return actions
    }

    private mutating func transition(_ event: Event, nowMs: Int64, hold: (reason: String, retryAtMs: Int64?)?) -> [Action] {
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
            return checkSafety(from: .opened, message: "disk failed (\(reasons.joined(separator: ", "))); asking the disk-manager whether it is safe to remove", nowMs: nowMs, notify: true, hold: hold)

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
            return checkSafety(from: .queued, message: "capacity came free; asking again whether it is safe to remove", nowMs: nowMs, notify: false, hold: hold)
        case (.queued, .timePassed):
            guard let at = retryAtMs, nowMs >= at else { return [] }
            return checkSafety(from: .queued, message: "asking again whether it is safe to remove", nowMs: nowMs, notify: false, hold: hold)

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

    private mutating func checkSafety(from: State, message: String, nowMs: Int64, notify: Bool, step reported: String = "safe-to-remove",
                                      hold: (reason: String, retryAtMs: Int64?)?) -> [Action] {
        if let hold {
            // The brake first: its answer would be stale by the time the disk may go, so
            // nothing is asked; QUEUED (said once) until capacity comes free or the recheck.
            var actions = queue(because: hold.reason, retryAtMs: hold.retryAtMs, nowMs: nowMs)
            if notify {
                actions.append(.notify(.warning, title: "Disk \(disk.label) failed", text: "Reasons: \(reasons.joined(separator: "; ")).",
                                       nextAction: "waiting for the cluster brake (\(hold.reason))"))
            }
            return actions
        }
        if from == .queued { generation[.safeToRemove, default: 1] += 1 }
        begin(.safeToRemove, nowMs: nowMs)
        var actions = enter(.checkingSafety, from: from, step: reported, message: message)
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
            if !answer.backend.isEmpty { backendName = answer.backend }
            // A repeated id: the job may have finished while we were away; ask.
            return answer.alreadyDone ? [.queryJob(requestID: requestID(.remove), jobID: jobID)] : []
        case .success, .skipped:
            return removed(osdID: answer.backendID, backend: answer.backend, steps: answer.steps, simulated: answer.simulated, nowMs: nowMs)
        case .refused:
            // Refused means not done: unless an earlier attempt was accepted, nothing is out.
            if jobID.isEmpty { mayBeOut = false }
            return failAttempt("Remove refused: \(answer.reason)", definite: true, nowMs: nowMs)
        case .failed, .unknown:
            return failAttempt("Remove failed\(answer.failedStep.isEmpty ? "" : " at \(answer.failedStep)"): \(answer.reason)", definite: true, nowMs: nowMs)
        }
    }

    private mutating func removed(osdID id: String, backend owner: String, steps: [String], simulated: Bool, nowMs: Int64) -> [Action] {
        osdID = id
        if !owner.isEmpty { backendName = owner }
        step = nil
        deadlineMs = nil
        jobID = ""
        if settings.dryRun {
            let what = steps.isEmpty ? "" : " (steps: \(steps.joined(separator: ", ")))"
            let message = "dry run: would have removed \(disk.label)\(osdID.isEmpty ? "" : " (\(served))")\(what); nothing was changed; would open a ticket next"
            return enter(.removed, from: .removing, step: "removed", message: message)
                + [.notify(.info, title: "dry run: would remove \(disk.label)", text: message, nextAction: "dry run: nothing more happens until the disk is replaced or healthy")]
        }
        begin(.openTicket, nowMs: nowMs)
        let message = "removed \(disk.label)\(osdID.isEmpty ? "" : " (\(served), kept for the new disk)"); asking for a ticket"
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
                return actions + transition(.ticketChanged(ticket), nowMs: nowMs, hold: nil)
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
        let message = (settings.dryRun ? "dry run: would add " : "adding ") + "the new disk \(new.key) back\(osdID.isEmpty ? "" : " as \(served)")"
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
            return resolve(backend: answer.backend, backendID: answer.backendID, nowMs: nowMs)
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
            let news = "\(step?.rawValue ?? "job") running: \(job.step) \(job.message)"
            // A job that reports progress is not stuck (a drain takes hours): the step's
            // timeout counts from its latest news, not from its start. The same report again
            // (a JobStatus answer) is no news.
            if news != detail, let step { deadlineMs = nowMs + settings.limit(step).timeoutMs }
            detail = news
            return []
        case .succeeded:
            return state == .removing
                ? removed(osdID: job.backendID, backend: job.backend, steps: [], simulated: false, nowMs: nowMs)
                : resolve(backend: job.backend, backendID: job.backendID, nowMs: nowMs)
        case .failed:
            if state == .removing { mayBeOut = true }
            jobID = ""
            return failAttempt("job \(job.jobID) failed\(job.failedStep.isEmpty ? "" : " at \(job.failedStep)"): \(job.message)", definite: true, nowMs: nowMs)
        }
    }

    private mutating func resolve(backend owner: String, backendID: String, nowMs: Int64) -> [Action] {
        step = nil
        deadlineMs = nil
        let new = newDisk ?? disk
        let osd = backendID.isEmpty ? osdID : backendID
        let what = Self.served(backend: owner.isEmpty ? backend : owner, id: osd)
        let message = settings.dryRun
            ? "dry run: would have added \(new.key) back\(osd.isEmpty ? "" : " as \(what)"); nothing was changed"
            : "new disk \(new.key) is back in service\(osd.isEmpty ? "" : " as \(what)")"
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
        stuckFrom = from
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

    // MARK: Operators

    private func refuse(_ why: String) -> [Action] { [.answerOperator(done: false, message: why)] }

    /// Rule 1, and rule 3's states: nil when an operator may end the incident now.
    private func endRefusal(_ who: Operator, verb: String) -> String? {
        if who.reason.allSatisfy(\.isWhitespace) { return "a reason is required (--reason)" }
        switch state {
        case .removing, .adding:
            let what = state == .removing ? "Remove" : "Add"
            return "\(verb) refused: a \(what) of \(disk.label) may be running (request \(requestID(state == .removing ? .remove : .add))\(jobID.isEmpty ? "" : ", job \(jobID)")); " +
                "\(verb)ing would not stop the disk-manager. Wait until it ends or the incident is STUCK"
        case .resolved:
            return "\(verb) refused: the incident is already resolved"
        case .cancelled where !(keptOut ?? false):
            return "\(verb) refused: the incident is already cancelled"
        case .cancelled where verb == "cancel":
            return "cancel refused: the incident is already cancelled (its disk still counts as out: resolve it once the disk is back in service)"
        default:
            return nil
        }
    }

    private mutating func operatorRetry(_ who: Operator, nowMs: Int64, hold: (reason: String, retryAtMs: Int64?)?) -> [Action] {
        if who.reason.allSatisfy(\.isWhitespace) { return refuse("a reason is required (--reason)") }
        let note = "operator \(who.keyID) retried: \(who.reason)"
        let from = state
        let retried: Step
        switch state {
        case .stuck:
            if let before = stuckFrom, [.opened, .checkingSafety, .queued].contains(before), let new = newDisk {
                return refuse("retry refused: a new disk (\(new.key)) replaced \(disk.key) before Bynar removed it, so there is nothing to remove; " +
                              "resolve the incident once the new disk is in service, or cancel it")
            }
            retried = step ?? .safeToRemove
        case .queued:
            retried = .safeToRemove
        case .checkingSafety, .removing, .removed, .adding:
            // A step paused after a failed attempt (waiting for its retry) runs again now.
            guard let current = step, retryAtMs != nil else {
                return refuse("retry refused: nothing to retry, the \(state.rawValue) step is in progress (\(detail))")
            }
            retried = current
        default:
            return refuse("retry refused: nothing to retry, the incident is \(state.rawValue) (\(detail))")
        }
        attemptsUsed[retried] = 0
        generation[retried, default: 1] += 1
        var actions: [Action]
        switch retried {
        case .safeToRemove, .remove:
            // A Remove goes through SafeToRemove and the brake again: the cluster may have
            // changed while the incident stood still. A fresh SafeToRemove id, too: a repeated
            // id would get the first (stale) verdict back.
            attemptsUsed[.safeToRemove] = 0
            if retried == .remove {
                generation[.safeToRemove, default: 1] += 1
                attemptsUsed[.remove] = 0
                jobID = ""
            }
            actions = checkSafety(from: from, message: note + "; asking the disk-manager again whether it is safe to remove", nowMs: nowMs, notify: false,
                                  step: "operator-retry", hold: hold)
        case .openTicket:
            begin(.openTicket, nowMs: nowMs)
            actions = enter(.removed, from: from, step: "operator-retry", message: note + "; asking for a ticket again") + [.ticket(.open, comment: "")]
        case .add:
            begin(.add, nowMs: nowMs)
            jobID = ""
            actions = enter(.adding, from: from, step: "operator-retry", message: note + "; adding \((newDisk ?? disk).key) again") + [addAction()]
        }
        return actions + [
            .notify(.info, title: "Operator \(who.keyID) retried the repair of \(disk.label)", text: note + " (from \(retried.rawValue))",
                    nextAction: "Bynar runs the \(retried.rawValue) step again"),
            .answerOperator(done: true, message: "retrying from \(retried.rawValue) (now \(state.rawValue))"),
        ]
    }

    private mutating func operatorCancel(_ who: Operator, _ facts: DiskFacts, nowMs: Int64) -> [Action] {
        if let refusal = endRefusal(who, verb: "cancel") { return refuse(refusal) }
        let from = state
        let wasOut = countsAsOut
        let inService: Bool = if case .inService = facts { true } else { false }
        keptOut = wasOut && !inService
        step = nil
        deadlineMs = nil
        retryAtMs = nil
        let brake = keptOut == true
            ? "\(facts.words): the disk still counts as out for the brake until `bynar incidents resolve` finds it in service"
            : wasOut ? "\(facts.words): the brake no longer counts it out" : "\(facts.words); nothing of it was counted out"
        let message = "operator \(who.keyID) cancelled the repair: \(who.reason). \(brake)"
        var actions = enter(.cancelled, from: from, step: "operator-cancel", message: message)
        if !ticketKey.isEmpty && !settings.dryRun {
            actions.append(.ticket(.comment, comment: "Bynar's repair was cancelled by operator \(who.keyID): \(who.reason). \(brake)."))
        }
        actions.append(.notify(keptOut == true ? .warning : .info, title: "Operator \(who.keyID) cancelled the repair of \(disk.label)", text: message,
                               nextAction: keptOut == true ? "put the disk back in service, then `bynar incidents resolve`" : "nothing: Bynar no longer repairs it"))
        if keptOut != true { actions.append(.close) }
        return actions + [.answerOperator(done: true, message: message)]
    }

    private mutating func operatorResolve(_ who: Operator, _ facts: DiskFacts, nowMs: Int64) -> [Action] {
        if let refusal = endRefusal(who, verb: "resolve") { return refuse(refusal) }
        guard case .inService(let key) = facts else {
            return refuse("resolve refused: \(facts.words); resolve only once the disk or its replacement is back in service " +
                          "(e.g. `bynar disks add`), or cancel")
        }
        let from = state
        let hadTicket = !ticketKey.isEmpty || attemptsUsed[.openTicket] != nil
        keptOut = false
        step = nil
        deadlineMs = nil
        retryAtMs = nil
        let message = "operator \(who.keyID) resolved the incident: \(who.reason) (\(facts.words))"
        var actions = enter(.resolved, from: from, step: "operator-resolve", message: message)
        if hadTicket && !settings.dryRun {
            actions.append(.ticket(.close, comment: "Resolved by operator \(who.keyID): \(who.reason). \(key) is in service. Closed by Bynar."))
        }
        actions.append(.notify(.info, title: "Operator \(who.keyID) resolved the repair of \(disk.label)", text: message, nextAction: "nothing: the incident is resolved"))
        return actions + [.close, .answerOperator(done: true, message: message)]
    }

    private mutating func operatorForget(_ who: Operator, _ facts: DiskFacts) -> [Action] {
        if who.reason.allSatisfy(\.isWhitespace) { return refuse("a reason is required (--reason)") }
        guard state == .cancelled, keptOut == true else {
            return refuse("forget refused: only a cancelled incident whose disk the brake still counts out can be forgotten; this one is \(state.rawValue)" +
                          (state == .cancelled ? " and no longer counted" : " (cancel it first)"))
        }
        guard case .unknown = facts else {
            return refuse("forget refused: \(facts.words); while the disk-manager can say where the disk is, the brake follows it " +
                          "(resolve once the disk or its replacement is in service)")
        }
        keptOut = false
        let message = "operator \(who.keyID) forgot the incident: \(who.reason). \(facts.words); the brake no longer counts \(disk.label) out"
        return [
            .report(from: .cancelled, step: "operator-forget", message: message),
            .notify(.warning, title: "Operator \(who.keyID) told the brake to forget \(disk.label)", text: message,
                    nextAction: "nothing: the incident is closed; make sure the disk is out of its cluster for good"),
            .close,
            .answerOperator(done: true, message: message),
        ]
    }

    // MARK: Re-announcements

    private mutating func reannounce(nowMs: Int64) -> [Action] {
        guard let every = reannounceEvery, every > 0 else { return [] }
        let last = announcedMs ?? updatedMs
        guard nowMs - last >= every else { return [] }
        announcedMs = nowMs
        let since = stateSinceMs ?? updatedMs
        let hours = Double(nowMs - since) / 3_600_000
        let howLong = hours >= 1 ? "\(Int(hours)) h" : "\(max(1, (nowMs - since) / 60_000)) min"
        switch state {
        case .stuck:
            return [.notify(.error, title: "Repair of \(disk.label) is still stuck (\(howLong))", text: detail + (mayBeOut ? " The disk may be out of the cluster." : ""),
                            nextAction: "a person must look: `bynar incidents show|retry|cancel|resolve \(id)`")]
        case .queued:
            return [.notify(.warning, title: "Repair of \(disk.label) still queued (\(howLong))", text: detail, nextAction: "waiting for the cluster brake or the cluster to allow removal")]
        case .ticketed:
            return [.notify(.warning, title: "Disk \(disk.label) still waiting for a technician (\(howLong), ticket \(ticketKey))", text: detail + (ticketURL.isEmpty ? "" : " (\(ticketURL))"),
                            nextAction: "replace the disk and resolve ticket \(ticketKey)")]
        case .waitingForReplacement:
            return [.notify(.warning, title: "Disk \(disk.label) still waiting for its replacement (\(howLong))", text: detail,
                            nextAction: "put the new disk in the slot; Bynar adds it when the detector sees it")]
        default:
            return []
        }
    }
}

// MARK: Journal record

/// A journal record that cannot be a machine (a state or step this version does not know).
public struct JournalRecordError: Error, CustomStringConvertible {
    public let incidentID: String
    public let problem: String
    public var description: String { "the journal's record of incident \(incidentID) is unreadable: \(problem)" }
}

extension IncidentMachine {
    /// The machine as the journal stores it (proto/bynar/v1/journal.proto).
    public var journalRecord: Bynar_V1_IncidentRecord {
        var record = Bynar_V1_IncidentRecord()
        record.id = id
        record.disk = disk.journalDisk
        record.cluster = cluster
        record.rack = rack
        record.openedMs = openedMs
        record.reasons = reasons
        record.settings.limits = Dictionary(uniqueKeysWithValues: settings.limits.map { step, limit in
            var value = Bynar_V1_IncidentSettings.Limit()
            value.timeoutMs = limit.timeoutMs
            value.retries = Int64(limit.retries)
            return (step.rawValue, value)
        })
        record.settings.retryDelayMs = settings.retryDelayMs
        record.settings.queueRecheckMs = settings.queueRecheckMs
        record.settings.dryRun = settings.dryRun
        if let ms = settings.reannounceStuckMs { record.settings.reannounceStuckMs = ms }
        if let ms = settings.reannounceWaitingMs { record.settings.reannounceWaitingMs = ms }
        record.state = state.rawValue
        record.updatedMs = updatedMs
        record.step = step?.rawValue ?? ""
        record.attempt = Int64(attempt)
        if let deadlineMs { record.deadlineMs = deadlineMs }
        if let retryAtMs { record.retryAtMs = retryAtMs }
        record.generation = Dictionary(uniqueKeysWithValues: generation.map { ($0.key.rawValue, Int64($0.value)) })
        record.attemptsUsed = Dictionary(uniqueKeysWithValues: attemptsUsed.map { ($0.key.rawValue, Int64($0.value)) })
        record.jobID = jobID
        record.osdID = osdID
        record.backend = backend
        record.ticketKey = ticketKey
        record.ticketURL = ticketURL
        record.ticketResolved = ticketResolved
        if let newDisk { record.newDisk = newDisk.journalDisk }
        record.clusterHealth = clusterHealth
        record.detail = detail
        record.mayBeOut = mayBeOut
        record.stuckFrom = stuckFrom?.rawValue ?? ""
        if let keptOut { record.keptOut = keptOut }
        if let stateSinceMs { record.stateSinceMs = stateSinceMs }
        if let announcedMs { record.announcedMs = announcedMs }
        return record
    }

    /// The machine a journal record holds; throws naming the incident and the field this
    /// version cannot read.
    public init(journalRecord record: Bynar_V1_IncidentRecord) throws(JournalRecordError) {
        func fail(_ problem: String) -> JournalRecordError { JournalRecordError(incidentID: record.id, problem: problem) }
        func step(_ raw: String, _ field: String) throws(JournalRecordError) -> Step {
            guard let step = Step(rawValue: raw) else { throw fail("\(field) names an unknown step \"\(raw)\"") }
            return step
        }
        func steps<Value>(_ map: [String: Value], _ field: String, _ value: (Value) -> Int) throws(JournalRecordError) -> [Step: Int] {
            var result: [Step: Int] = [:]
            for (raw, count) in map { result[try step(raw, field)] = value(count) }
            return result
        }
        guard let state = State(rawValue: record.state) else { throw fail("unknown state \"\(record.state)\"") }
        var limits: [Step: Settings.Limit] = [:]
        for (raw, limit) in record.settings.limits {
            limits[try step(raw, "settings.limits")] = Settings.Limit(timeoutMs: limit.timeoutMs, retries: Int(limit.retries))
        }
        let settings = Settings(limits: limits, retryDelayMs: record.settings.retryDelayMs, queueRecheckMs: record.settings.queueRecheckMs,
                                dryRun: record.settings.dryRun,
                                reannounceStuckMs: record.settings.hasReannounceStuckMs ? record.settings.reannounceStuckMs : nil,
                                reannounceWaitingMs: record.settings.hasReannounceWaitingMs ? record.settings.reannounceWaitingMs : nil)
        self.init(id: record.id, disk: Disk(record.disk), cluster: record.cluster, rack: record.rack, reasons: record.reasons,
                  settings: settings, nowMs: record.openedMs)
        self.state = state
        updatedMs = record.updatedMs
        self.step = record.step.isEmpty ? nil : try step(record.step, "step")
        attempt = Int(record.attempt)
        deadlineMs = record.hasDeadlineMs ? record.deadlineMs : nil
        retryAtMs = record.hasRetryAtMs ? record.retryAtMs : nil
        generation = try steps(record.generation, "generation") { Int($0) }
        attemptsUsed = try steps(record.attemptsUsed, "attempts_used") { Int($0) }
        jobID = record.jobID
        osdID = record.osdID
        backendName = record.backend.isEmpty ? nil : record.backend
        ticketKey = record.ticketKey
        ticketURL = record.ticketURL
        ticketResolved = record.ticketResolved
        newDisk = record.hasNewDisk ? Disk(record.newDisk) : nil
        clusterHealth = record.clusterHealth
        detail = record.detail
        mayBeOut = record.mayBeOut
        if record.stuckFrom.isEmpty {
            stuckFrom = nil
        } else {
            guard let from = State(rawValue: record.stuckFrom) else { throw fail("stuck_from names an unknown state \"\(record.stuckFrom)\"") }
            stuckFrom = from
        }
        keptOut = record.hasKeptOut ? record.keptOut : nil
        stateSinceMs = record.hasStateSinceMs ? record.stateSinceMs : nil
        announcedMs = record.hasAnnouncedMs ? record.announcedMs : nil
    }
}

extension IncidentMachine.Disk {
    var journalDisk: Bynar_V1_JournalDisk {
        var disk = Bynar_V1_JournalDisk()
        disk.host = host
        disk.key = key
        disk.serial = serial
        disk.devPath = devPath
        disk.byPath = byPath
        return disk
    }

    init(_ disk: Bynar_V1_JournalDisk) {
        self.init(host: disk.host, key: disk.key, serial: disk.serial, devPath: disk.devPath, byPath: disk.byPath)
    }
}
