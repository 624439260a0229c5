import BynarBus
import BynarConfig
import BynarProto
import Logging
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Where the engine's results go: events and notifications into the outbox, answers to
/// whoever is waiting for one.
struct TicketOutput: Sendable {
    /// A TicketEvent for everyone; `retainAsState` also makes it the incident's retained
    /// ticket state.
    var event: @Sendable (_ event: Bynar_V1_TicketEvent, _ retainAsState: Bool) throws -> Void
    var notify: @Sendable (Bynar_V1_Notification) throws -> Void
    /// The answer to the request that came in message `messageId`, when its requester is
    /// still listening.
    var reply: @Sendable (_ messageId: String, Bynar_V1_TicketResponse) async -> Void
}

/// Works through the stored ticket requests and follows open tickets.
///
/// - Requests run in the order they were stored; each incident's one after another, up to
///   `parallel_incidents` incidents at once.
/// - OPEN: a ticket already recorded for the incident answers at once. Otherwise the
///   backend is searched for the incident's label (a ticket filed before a crash, or by
///   another instance, is adopted); only when none exists is one created. After creating,
///   the search runs again: when an older ticket for the incident shows up (another
///   instance filed it at the same moment), this one is discarded and the oldest kept, so
///   every instance ends on the same, single ticket. The first follow check repeats that
///   search, for searches that lag behind creates.
/// - 401/403 stop all work (a configuration problem: a FAILED event and a notification say
///   so); the requests stay stored and are worked on after a restart with fixed settings.
///   429 waits for Retry-After; 5xx and network errors back off (capped); any of these
///   pause every request, as they say something about the backend, not one request.
///   Other refusals (400) fail that request with the backend's messages (FAILED event and a
///   notification); it is kept and tried once more on the next start.
final class TicketEngine: Sendable {
    let store: TicketStore
    let backend: any TicketBackend
    let settings: TicketingSettings
    let output: TicketOutput
    let logger: Logger
    let follow: FollowPlan
    private let queueWake = WakeSignal()
    private let followWake = WakeSignal()
    private let state: Mutex<State>
    private let clock: @Sendable () -> Int64

    private struct State {
        var inFlight: Set<String> = []
        var pausedUntil: ContinuousClock.Instant?
        var backoff: RetryBackoff
        /// Why work stopped (a configuration problem), once it has.
        var blocked: String?
    }

    init(store: TicketStore, backend: any TicketBackend, settings: TicketingSettings, output: TicketOutput, logger: Logger,
         clock: @escaping @Sendable () -> Int64 = Bus.nowUnixMs) {
        self.store = store
        self.backend = backend
        self.settings = settings
        self.output = output
        self.logger = logger
        self.clock = clock
        follow = FollowPlan(schedule: settings.follow)
        state = Mutex(State(backoff: RetryBackoff(minimumSeconds: settings.retryMinSeconds, maximumSeconds: settings.retryMaxSeconds)))
    }

    /// Why work has stopped for a configuration problem, or nil while it runs.
    var blockedReason: String? { state.withLock { $0.blocked } }

    // MARK: Start-up

    /// Before the first request: announces ticket states a crash kept from the outbox,
    /// puts failed requests back in the queue (the configuration may have been fixed) and
    /// forgets finished work older than a week.
    func prepare() throws {
        for ticket in try store.unannounced() { try announce(ticket) }
        let requeued = try store.requeueFailed()
        if requeued > 0 { logger.notice("failed ticket requests queued again", metadata: ["count": "\(requeued)"]) }
        try store.pruneDone(beforeMs: clock() - 7 * 86_400_000)
    }

    // MARK: Taking requests in

    /// Why `request` cannot be worked on, or nil when it can.
    static func problem(with request: Bynar_V1_TicketRequest) -> String? {
        if request.incidentID.isEmpty { return "incident_id is empty" }
        if request.incidentID.utf8.count > 200 { return "incident_id is longer than 200 bytes" }
        switch request.action {
        case .open:
            if request.hasHardware {
                if request.hardware.host.isEmpty { return "OPEN of a hardware ticket needs hardware.host" }
                if request.hardware.finding.part.id.isEmpty { return "OPEN of a hardware ticket needs hardware.finding.part.id" }
            } else if !request.hasHealth || request.health.disk.host.isEmpty {
                return "OPEN needs health.disk with at least the host (or hardware, for a server part)"
            }
        case .comment:
            if request.comment.trimmedWhitespace.isEmpty { return "COMMENT needs a comment" }
        case .close:
            break
        default:
            return "action must be OPEN, COMMENT or CLOSE, got \(request.action)"
        }
        return nil
    }

    /// Stores a request (once per message id) and wakes the queue; returns its work id,
    /// or nil when the message was stored before.
    func accept(messageId: String, request: Bynar_V1_TicketRequest) throws -> Int64? {
        let id = try store.accept(messageId: messageId, request: request, nowMs: clock())
        if id != nil { queueWake.signal() }
        return id
    }

    /// The answer to a copy of a request already done (its sender did not hear the first
    /// answer and sent it again, see `Outbox.Receipt`); nil while the request waits: it is
    /// answered when done.
    func answer(toCopyOf messageId: String, _ request: Bynar_V1_TicketRequest) throws -> Bynar_V1_TicketResponse? {
        guard let outcome = try store.outcome(messageId: messageId) else { return nil }
        return response(request, ticket: try store.ticket(incident: request.incidentID)?.ref, error: outcome)
    }

    // MARK: The queue

    /// Works through stored requests until cancelled.
    func runQueue() async {
        await withTaskGroup(of: Void.self) { group in
            while !Task.isCancelled {
                if let pause = currentPause() {
                    try? await Task.sleep(for: pause)
                    continue
                }
                if blockedReason != nil {
                    await queueWake.wait(upTo: .seconds(3600))
                    continue
                }
                let launched: [TicketStore.Work]
                do {
                    launched = try pickWork()
                } catch {
                    logger.error("cannot read the ticket work queue", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .seconds(1))
                    continue
                }
                for work in launched {
                    group.addTask {
                        await self.process(work)
                        self.state.withLock { _ = $0.inFlight.remove(work.request.incidentID) }
                        self.queueWake.signal()
                    }
                }
                if launched.isEmpty { await queueWake.wait(upTo: .seconds(60)) }
            }
        }
    }

    /// The pause still to wait after a backend failure, if any.
    private func currentPause() -> Duration? {
        state.withLock { state in
            guard let until = state.pausedUntil else { return nil }
            let now = ContinuousClock.now
            if until <= now {
                state.pausedUntil = nil
                return nil
            }
            return until - now
        }
    }

    /// The oldest pending requests that may start now: the first of each incident not in
    /// flight, as many as free slots allow.
    private func pickWork() throws -> [TicketStore.Work] {
        let slots = settings.parallelIncidents - state.withLock { $0.inFlight.count }
        guard slots > 0 else { return [] }
        let candidates = try store.pendingWorkHeads(limit: max(64, settings.parallelIncidents * 16))
        var chosen: [Int64] = []
        state.withLock { state in
            var seen = state.inFlight
            for (id, incident) in candidates where chosen.count < slots {
                guard !seen.contains(incident) else { continue }
                seen.insert(incident)
                state.inFlight.insert(incident)
                chosen.append(id)
            }
        }
        return try chosen.compactMap { try store.work(id: $0) }
    }

    /// Runs one stored request and records the outcome.
    func process(_ work: TicketStore.Work) async {
        let request = work.request
        var log = logger
        log[metadataKey: "incident"] = "\(request.incidentID)"
        log[metadataKey: "action"] = "\(request.action)"
        do {
            let response: Bynar_V1_TicketResponse
            switch request.action {
            case .open: response = try await open(request)
            case .comment: response = try await comment(request)
            case .close: response = try await close(request)
            default: throw TicketBackendError.rejected(status: 0, detail: "unknown action \(request.action)")
            }
            state.withLock { $0.backoff.succeeded() }
            try store.finish(workId: work.id, error: nil, nowMs: clock())
            log.info("ticket request done", metadata: ["ticket": "\(response.ticketKey)", "created": "\(response.created)"])
            await output.reply(work.messageId, response)
        } catch let error as TicketBackendError {
            await failed(work, error, log: log)
        } catch {
            // The local store failed: keep the request and try again after a pause.
            log.error("ticket request interrupted; will retry", metadata: ["error": "\(error)"])
            try? store.recordAttempt(workId: work.id, error: "\(error)")
            pause(retryAfter: nil)
        }
    }

    private func failed(_ work: TicketStore.Work, _ error: TicketBackendError, log: Logger) async {
        let request = work.request
        switch error {
        case .rateLimited(let retryAfter, _):
            let delay = pause(retryAfter: retryAfter)
            log.warning("backend asks to slow down; waiting", metadata: ["seconds": "\(delay.components.seconds)", "error": "\(error)"])
            try? store.recordAttempt(workId: work.id, error: "\(error)")
        case .unavailable:
            let delay = pause(retryAfter: nil)
            log.warning("backend unavailable; will retry", metadata: ["seconds": "\(delay.components.seconds)", "attempt": "\(work.attempts + 1)", "error": "\(error)"])
            try? store.recordAttempt(workId: work.id, error: "\(error)")
        case .notAuthorized:
            try? store.recordAttempt(workId: work.id, error: "\(error)")
            block(error, incident: request.incidentID)
            await output.reply(work.messageId, response(request, error: "\(configurationProblem(error)); the request is kept and done after a restart with fixed settings"))
        case .rejected:
            log.error("backend refused the request", metadata: ["error": "\(error)"])
            try? store.finish(workId: work.id, error: "\(error)", nowMs: clock())
            let retain = (try? store.ticket(incident: request.incidentID)) == nil
            report(failedEvent(request.incidentID, detail: "\(backend.name) refused \(actionName(request.action)): \(error)"), retainAsState: retain)
            var note = notification(.error, title: "\(backendTitle) refused to \(actionName(request.action)) the ticket for incident \(request.incidentID)", request: request)
            note.text = "\(error)"
            note.nextAction = "Check the ticketing settings the message names; the request is kept and tried again when bynar-ticketing restarts."
            reportNotification(note)
            await output.reply(work.messageId, response(request, error: "\(error)"))
        }
    }

    /// Pauses all backend work for the backoff (or `retryAfter`); returns the pause.
    @discardableResult
    private func pause(retryAfter: Duration?) -> Duration {
        state.withLock { state in
            let delay = state.backoff.failed(retryAfter: retryAfter)
            let until = ContinuousClock.now + delay
            state.pausedUntil = max(state.pausedUntil ?? until, until)
            return delay
        }
    }

    /// Stops all work for a configuration problem; says so once.
    private func block(_ error: TicketBackendError, incident: String?) {
        let first = state.withLock { state -> Bool in
            guard state.blocked == nil else { return false }
            state.blocked = "\(error)"
            return true
        }
        let problem = configurationProblem(error)
        if let incident {
            let retain = (try? store.ticket(incident: incident)) == nil
            report(failedEvent(incident, detail: problem), retainAsState: retain)
        }
        guard first else { return }
        let kept = (try? store.pendingCount()) ?? 0
        logger.critical("ticketing stopped: configuration problem", metadata: ["error": "\(error)", "requests_kept": "\(kept)"])
        var note = Bynar_V1_Notification()
        note.severity = .error
        note.title = "Ticketing stopped: \(problem)"
        note.text = "\(error). \(kept) ticket request(s) are kept and nothing is filed until this is fixed."
        note.nextAction = "Fix the \(backend.name) credentials or permissions in the ticketing settings (ticketing.\(backend.name).*, or Bynar's jira_user / jira_password) and restart bynar-ticketing; the kept requests are filed then."
        note.incidentID = incident ?? ""
        reportNotification(note)
    }

    private func configurationProblem(_ error: TicketBackendError) -> String {
        guard case .notAuthorized(let status, _) = error else { return "\(error)" }
        return status == 401
            ? "configuration problem: \(backendTitle) does not accept Bynar's credentials (HTTP 401)"
            : "configuration problem: \(backendTitle) denies Bynar's user the permission (HTTP 403)"
    }

    private var backendTitle: String { backend.name == "jira" ? "JIRA" : backend.name }

    // MARK: Actions

    private func open(_ request: Bynar_V1_TicketRequest) async throws -> Bynar_V1_TicketResponse {
        let incident = request.incidentID
        if let known = try store.ticket(incident: incident) {
            return response(request, ticket: known.ref, created: false)
        }
        if let earlier = try await backend.find(incidentID: incident).first {
            // Filed before a crash kept it from being recorded, or by another instance.
            logger.notice("adopting the ticket already filed for the incident", metadata: ["incident": "\(incident)", "ticket": "\(earlier.key)"])
            try announce(try recordOpen(incident, earlier, duplicatesChecked: false))
            return response(request, ticket: earlier, created: false)
        }
        var labels = (backend.name == "jira" ? jiraLabels : [])
        labels.append(TicketText.incidentLabel(incident))
        let ticket = NewTicket(
            incidentID: incident,
            summary: request.hasHardware ? TicketText.summary(request.hardware) : TicketText.summary(request.health),
            description: request.hasHardware
                ? TicketText.description(incidentID: incident, hardware: request.hardware)
                : TicketText.description(incidentID: incident, health: request.health),
            labels: labels, health: request.health, hardware: request.hasHardware ? request.hardware : nil
        )
        let created = try await backend.create(ticket)
        // Recorded at once: the window in which a crash loses the key is this one write.
        var record = try recordOpen(incident, created, duplicatesChecked: false)
        var kept = created
        if backend.canSearch {
            do {
                let all = try await backend.find(incidentID: incident)
                if let oldest = all.first, oldest.number < created.number {
                    logger.notice("another instance filed this incident at the same moment; keeping the older ticket", metadata: [
                        "incident": "\(incident)", "kept": "\(oldest.key)", "discarded": "\(created.key)",
                    ])
                    try await backend.discard(duplicate: created, kept: oldest)
                    kept = oldest
                    record = try recordOpen(incident, oldest, duplicatesChecked: false)
                }
            } catch let error as TicketBackendError {
                // Filed and recorded; the first follow check looks for duplicates again.
                logger.warning("cannot check for a duplicate ticket now; the first follow check will", metadata: ["incident": "\(incident)", "error": "\(error)"])
            }
        }
        try announce(record)
        return response(request, ticket: kept, created: kept == created)
    }

    private var jiraLabels: [String] {
        if case .jira(let jira) = settings.backend { return jira.labels }
        return []
    }

    private func recordOpen(_ incident: String, _ ref: TicketRef, duplicatesChecked: Bool) throws -> TicketStore.Ticket {
        let now = clock()
        let ticket = TicketStore.Ticket(
            incidentId: incident, ref: ref, state: .open, detail: "", backend: backend.name, announced: false, changedUnixMs: now,
            nextCheckUnixMs: backend.canFollow ? now + Int64(follow.firstIntervalSeconds) * 1000 : nil,
            checkIntervalSeconds: follow.firstIntervalSeconds, duplicatesChecked: duplicatesChecked
        )
        try store.record(ticket)
        followWake.signal()
        return ticket
    }

    /// The ticket key for a COMMENT or CLOSE: recorded, else given in the request, else found.
    private func ticketKey(for request: Bynar_V1_TicketRequest) async throws -> (TicketRef, TicketStore.Ticket?) {
        if let known = try store.ticket(incident: request.incidentID) { return (known.ref, known) }
        if !request.ticketKey.isEmpty { return (TicketRef(key: request.ticketKey, number: 0, url: ""), nil) }
        if let found = try await backend.find(incidentID: request.incidentID).first { return (found, nil) }
        throw TicketBackendError.rejected(status: 0, detail: "no ticket is known for incident \(request.incidentID) (none recorded, none given in ticket_key, none found by its label)")
    }

    private func comment(_ request: Bynar_V1_TicketRequest) async throws -> Bynar_V1_TicketResponse {
        let (ref, _) = try await ticketKey(for: request)
        try await backend.comment(key: ref.key, text: request.comment)
        return response(request, ticket: ref, created: false)
    }

    private func close(_ request: Bynar_V1_TicketRequest) async throws -> Bynar_V1_TicketResponse {
        let (ref, known) = try await ticketKey(for: request)
        if known?.state == .closed { return response(request, ticket: ref, created: false) }
        if !request.comment.trimmedWhitespace.isEmpty {
            try await backend.comment(key: ref.key, text: request.comment)
        }
        try await backend.close(key: ref.key)
        let ticket = TicketStore.Ticket(
            incidentId: request.incidentID, ref: ref, state: .closed, detail: request.comment, backend: backend.name, announced: false,
            changedUnixMs: clock(), nextCheckUnixMs: nil, checkIntervalSeconds: known?.checkIntervalSeconds ?? 0, duplicatesChecked: true
        )
        try store.record(ticket)
        try announce(ticket)
        return response(request, ticket: ref, created: false)
    }

    // MARK: Following open tickets

    /// Checks open tickets when they are due, until cancelled.
    func runFollower() async {
        while !Task.isCancelled {
            if let pause = currentPause() {
                try? await Task.sleep(for: pause)
                continue
            }
            if blockedReason != nil {
                await followWake.wait(upTo: .seconds(3600))
                continue
            }
            let now = clock()
            let due: [TicketStore.Ticket]
            do {
                due = try store.dueForCheck(nowMs: now, limit: 50)
            } catch {
                logger.error("cannot read followed tickets", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            if due.isEmpty {
                let next = try? store.nextCheckDue()
                let wait = next.map { Duration.milliseconds(max(10, min($0 - now, 300_000))) } ?? .seconds(300)
                await followWake.wait(upTo: wait)
                continue
            }
            for ticket in due where !Task.isCancelled && blockedReason == nil && currentPause() == nil {
                await check(ticket)
            }
        }
    }

    /// One follow check: duplicates (first time), then the status.
    func check(_ ticket: TicketStore.Ticket) async {
        var ticket = ticket
        do {
            if backend.canSearch && !ticket.duplicatesChecked {
                let all = try await backend.find(incidentID: ticket.incidentId)
                if let oldest = all.first, oldest.number < ticket.ref.number {
                    logger.notice("an older ticket exists for the incident; keeping it", metadata: ["incident": "\(ticket.incidentId)", "kept": "\(oldest.key)", "discarded": "\(ticket.ref.key)"])
                    try await backend.discard(duplicate: ticket.ref, kept: oldest)
                    ticket = try recordOpen(ticket.incidentId, oldest, duplicatesChecked: true)
                    try announce(ticket)
                }
                try store.schedule(incident: ticket.incidentId, nextCheckUnixMs: ticket.nextCheckUnixMs, intervalSeconds: ticket.checkIntervalSeconds, duplicatesChecked: true)
                ticket.duplicatesChecked = true
            }
            switch try await backend.status(key: ticket.ref.key) {
            case .open(let status):
                let interval = follow.intervalAfter(ticket.checkIntervalSeconds)
                logger.debug("ticket still open", metadata: ["ticket": "\(ticket.ref.key)", "status": "\(status)", "next_check_s": "\(interval)"])
                try store.schedule(incident: ticket.incidentId, nextCheckUnixMs: clock() + Int64(interval) * 1000, intervalSeconds: interval, duplicatesChecked: true)
            case .resolved(let status, let resolution):
                logger.notice("ticket resolved", metadata: ["incident": "\(ticket.incidentId)", "ticket": "\(ticket.ref.key)", "status": "\(status)", "resolution": "\(resolution)"])
                ticket.state = .resolved
                ticket.detail = "status \(status)" + (resolution.isEmpty ? "" : ", resolution \(resolution)")
                try finishFollowing(ticket)
            case .gone:
                if let other = try await backend.find(incidentID: ticket.incidentId).first {
                    ticket = try recordOpen(ticket.incidentId, other, duplicatesChecked: true)
                    try announce(ticket)
                } else {
                    logger.warning("ticket no longer exists", metadata: ["incident": "\(ticket.incidentId)", "ticket": "\(ticket.ref.key)"])
                    ticket.state = .closed
                    ticket.detail = "\(ticket.ref.key) no longer exists in \(backendTitle) (deleted by someone)"
                    try finishFollowing(ticket)
                }
            }
            state.withLock { $0.backoff.succeeded() }
        } catch let error as TicketBackendError {
            switch error {
            case .notAuthorized: block(error, incident: nil)
            case .rateLimited(let retryAfter, _): pause(retryAfter: retryAfter)
            case .unavailable: pause(retryAfter: nil)
            case .rejected:
                // Cannot ask about this ticket: keep asking, but as rarely as the schedule allows.
                logger.error("cannot check the ticket", metadata: ["ticket": "\(ticket.ref.key)", "error": "\(error)"])
                let interval = follow.schedule.maxIntervalSeconds
                try? store.schedule(incident: ticket.incidentId, nextCheckUnixMs: clock() + Int64(interval) * 1000, intervalSeconds: interval, duplicatesChecked: ticket.duplicatesChecked)
            }
        } catch {
            logger.error("cannot record a follow check", metadata: ["ticket": "\(ticket.ref.key)", "error": "\(error)"])
            pause(retryAfter: nil)
        }
    }

    /// Makes the incident's followed ticket due for its check now (an operator resolved it
    /// in the local backend): the follow loop reports it as it would a JIRA resolution.
    func followNow(incident: String) {
        do {
            guard let ticket = try store.ticket(incident: incident), ticket.state == .open else { return }
            try store.schedule(incident: incident, nextCheckUnixMs: clock(), intervalSeconds: ticket.checkIntervalSeconds, duplicatesChecked: ticket.duplicatesChecked)
            followWake.signal()
        } catch {
            logger.error("cannot schedule a follow check", metadata: ["incident": "\(incident)", "error": "\(error)"])
        }
    }

    private func finishFollowing(_ ticket: TicketStore.Ticket) throws {
        var ticket = ticket
        ticket.changedUnixMs = clock()
        ticket.nextCheckUnixMs = nil
        ticket.announced = false
        try store.record(ticket)
        try announce(ticket)
    }

    // MARK: Telling others

    /// Puts the TicketEvent for the ticket's current state in the outbox, then notes that.
    private func announce(_ ticket: TicketStore.Ticket) throws {
        var event = Bynar_V1_TicketEvent()
        event.incidentID = ticket.incidentId
        event.ticketKey = ticket.ref.key
        event.url = ticket.ref.url
        event.backend = ticket.backend
        event.detail = ticket.detail
        event.changedUnixMs = ticket.changedUnixMs
        switch ticket.state {
        case .open: event.state = .opened
        case .resolved: event.state = .resolved
        case .closed: event.state = .closed
        }
        try output.event(event, true)
        try store.markAnnounced(incident: ticket.incidentId, changedUnixMs: ticket.changedUnixMs)
    }

    private func failedEvent(_ incident: String, detail: String) -> Bynar_V1_TicketEvent {
        var event = Bynar_V1_TicketEvent()
        event.incidentID = incident
        event.state = .failed
        event.backend = backend.name
        event.detail = detail
        event.changedUnixMs = clock()
        if let known = try? store.ticket(incident: incident) {
            event.ticketKey = known.ref.key
            event.url = known.ref.url
        }
        return event
    }

    private func report(_ event: Bynar_V1_TicketEvent, retainAsState: Bool) {
        do { try output.event(event, retainAsState) } catch {
            logger.error("cannot store a ticket event", metadata: ["incident": "\(event.incidentID)", "error": "\(error)"])
        }
    }

    private func reportNotification(_ note: Bynar_V1_Notification) {
        do { try output.notify(note) } catch {
            logger.error("cannot store a notification", metadata: ["title": "\(note.title)", "error": "\(error)"])
        }
    }

    private func notification(_ severity: Bynar_V1_Notification.Severity, title: String, request: Bynar_V1_TicketRequest) -> Bynar_V1_Notification {
        var note = Bynar_V1_Notification()
        note.severity = severity
        note.title = title
        note.incidentID = request.incidentID
        if request.hasHealth {
            note.host = request.health.disk.host
            note.disk = request.health.disk
        } else if request.hasHardware {
            note.host = request.hardware.host
        }
        return note
    }

    private func response(_ request: Bynar_V1_TicketRequest, ticket: TicketRef? = nil, created: Bool = false, error: String = "") -> Bynar_V1_TicketResponse {
        var response = Bynar_V1_TicketResponse()
        response.incidentID = request.incidentID
        response.ticketKey = ticket?.key ?? ""
        response.url = ticket?.url ?? ""
        response.created = created
        response.error = error
        return response
    }

    private func actionName(_ action: Bynar_V1_TicketRequest.Action) -> String {
        switch action {
        case .open: "open"
        case .comment: "comment on"
        case .close: "close"
        default: "handle"
        }
    }
}
