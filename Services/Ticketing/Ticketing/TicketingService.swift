import BynarAuth
import BynarBus
import BynarConfig
import BynarProto
public import BynarRuntime
public import BynarStore
import Logging
import ServiceLifecycle
import Synchronization

/// The ticketing service: files a ticket per incident, follows it, and says when it is
/// resolved; comments and closes it when asked.
///
/// Takes ``Bynar_V1_TicketRequest``s from `$share/ticketing/bynar/v1/ticket/cmd` (so several
/// instances share the work), stores each in SQLite before answering, and works through
/// them with ``TicketEngine``. Publishes ``Bynar_V1_TicketEvent``s on
/// `bynar/v1/ticket/events` and, retained, on `bynar/v1/ticket/state/{incident}`, and
/// notifications (configuration problems, refused tickets) on `bynar/v1/notify`, all through
/// the outbox.
///
/// Without the settings its backend needs (no JIRA URL, no credentials) it still runs: it
/// says what is missing (log, a Notification, a FAILED event per request), and stores every
/// request, so they are filed once it is restarted with complete settings.
public struct TicketingService: BynarService {
    public static let serviceName = "ticketing"
    public static var migrations: [LocalStore.Migration] { TicketStore.migrations + LocalBackend.migrations + CommandVerifier.migrations }
    let context: ServiceContext
    let settings: Result<TicketingSettings, ConfigError>

    public init(context: ServiceContext) throws {
        self.context = context
        do {
            settings = .success(try context.config.ticketingSettings())
        } catch {
            settings = .failure(error)
        }
    }

    public func run() async throws {
        switch settings {
        case .success(let settings): try await run(settings)
        case .failure(let problems): try await runUnconfigured(problems)
        }
    }

    private func run(_ settings: TicketingSettings) async throws {
        let backend: any TicketBackend = switch settings.backend {
        case .jira(let jira): JiraBackend(jira, settings: settings)
        case .webhook(let webhook): WebhookBackend(webhook, settings: settings)
        case .local(let local): LocalBackend(local, store: context.store)
        }
        let waiting = WaitingRequesters()
        let context = context
        let output = TicketOutput(
            event: { event, retain in try Self.commit(event, retainAsState: retain, to: context.outbox) },
            notify: { note in
                try context.outbox.commit([Outbox.notification(note, correlationId: note.incidentID)])
            },
            reply: { messageId, response in
                guard let request = waiting.requests.withLock({ $0.removeValue(forKey: messageId) }) else { return }
                do { try await context.bus.reply(to: request, with: response) } catch {
                    context.logger.warning("cannot answer a ticket request", metadata: ["incident": "\(response.incidentID)", "error": "\(error)"])
                }
            }
        )
        let engine = TicketEngine(store: TicketStore(store: context.store), backend: backend, settings: settings, output: output, logger: context.logger)
        try engine.prepare()
        let desk = TicketOperatorDesk(verifier: try operatorVerifier(), backend: backend, engine: engine, bus: context.bus, logger: context.logger)
        let requests = try await context.bus.subscribe(Topics.shared(group: "ticketing", Topics.ticketCommands), as: Bynar_V1_TicketRequest.self)
        let operatorCommands = try await context.bus.subscribe(Topics.shared(group: "ticketing", Topics.ticketOperatorCommands), as: Bynar_V1_TicketOperatorCommand.self)
        await context.bus.markReady()
        context.logger.info("ticketing ready", metadata: ["backend": "\(backend.name)", "parallel_incidents": "\(settings.parallelIncidents)"])

        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await engine.runQueue() }
                group.addTask { await engine.runFollower() }
                group.addTask { for await command in operatorCommands { await desk.handle(command) } }
                for await received in requests {
                    await take(received, engine: engine, waiting: waiting)
                }
                group.cancelAll()
            }
        }
        await backend.shutdown()
    }

    /// The verifier of operators' commands (`bynar tickets resolve`), reading
    /// `ticketing.operator_keys_file` again when it changes; nil when none is configured.
    private func operatorVerifier() throws -> CommandVerifier? {
        let path = context.config.ticketing.operatorKeysFile
        var local = false
        if case .success(let settings) = settings, case .local = settings.backend { local = true }
        // Without a file, only the local backend's tickets miss it: said only then.
        guard path != nil || local else { return nil }
        return try CommandVerifier.operatorKeys(path, field: "ticketing.operator_keys_file", store: context.store, logger: context.logger,
                                                unset: "no ticketing.operator_keys_file: bynar tickets resolve will be refused",
                                                register: context.reloader.register)
    }

    /// Stores a TicketEvent for everyone on `bynar/v1/ticket/events` and, with
    /// `retainAsState`, as the incident's retained ticket state, in one outbox commit (one
    /// transaction): a crash or a failed write keeps both or neither, never a state whose
    /// event was lost. The retained state goes first (the outbox keeps order), so whoever
    /// hears the event and then reads the state finds it current. Two envelopes, not one
    /// with a retained copy (`Outbox.Event(retainedCopy:)` sends the copy after its event).
    static func commit(_ event: Bynar_V1_TicketEvent, retainAsState: Bool, to outbox: Outbox) throws {
        var events: [Outbox.Event] = []
        if retainAsState {
            events.append(Outbox.Event(event, to: Topics.ticketState(incident: event.incidentID), retain: true, correlationId: event.incidentID))
        }
        events.append(Outbox.Event(event, to: Topics.ticketEvents, correlationId: event.incidentID))
        try outbox.commit(events)
    }

    /// Stores requests and reports the configuration problem, until shutdown.
    private func runUnconfigured(_ problems: ConfigError) async throws {
        let store = TicketStore(store: context.store)
        let missing = problems.problems.map(\.description).joined(separator: "; ")
        context.logger.critical("ticketing is not configured: requests are stored, and filed after a restart with complete settings", metadata: ["problems": "\(missing)"])
        var note = Bynar_V1_Notification()
        note.severity = .error
        note.title = "Ticketing is not configured: no tickets can be filed"
        note.text = missing
        note.nextAction = "Set the named fields in bynar.json and restart bynar-ticketing; requests received meanwhile are kept and filed then."
        try context.outbox.commit([Outbox.notification(note)])
        let requests = try await context.bus.subscribe(Topics.shared(group: "ticketing", Topics.ticketCommands), as: Bynar_V1_TicketRequest.self)
        await context.bus.markReady()
        await cancelWhenGracefulShutdown {
            for await received in requests {
                let request = received.payload
                var response = Bynar_V1_TicketResponse()
                response.incidentID = request.incidentID
                if let problem = TicketEngine.problem(with: request) {
                    response.error = "unusable ticket request: \(problem)"
                } else {
                    do {
                        if try store.accept(messageId: received.envelope.messageID, request: request, nowMs: Bus.nowUnixMs()) != nil {
                            var event = Bynar_V1_TicketEvent()
                            event.incidentID = request.incidentID
                            event.state = .failed
                            event.detail = "ticketing is not configured (\(missing)); the request is kept and done after a restart with complete settings"
                            event.changedUnixMs = Bus.nowUnixMs()
                            try Self.commit(event, retainAsState: true, to: context.outbox)
                        }
                        response.error = "stored, but ticketing is not configured: \(missing)"
                    } catch {
                        response.error = "cannot store the request: \(error)"
                    }
                }
                try? await context.bus.reply(to: received, with: response)
            }
        }
    }

    /// Stores one request (answering at once only when it is unusable, cannot be stored,
    /// or cannot be worked on until the configuration is fixed).
    private func take(_ received: Received<Bynar_V1_TicketRequest>, engine: TicketEngine, waiting: WaitingRequesters) async {
        let request = received.payload
        func answer(_ error: String) async {
            var response = Bynar_V1_TicketResponse()
            response.incidentID = request.incidentID
            response.error = error
            try? await context.bus.reply(to: received, with: response)
        }
        if let problem = TicketEngine.problem(with: request) {
            context.logger.warning("unusable ticket request", metadata: ["incident": "\(request.incidentID)", "problem": "\(problem)", "message_id": "\(received.envelope.messageID)"])
            await answer("unusable ticket request: \(problem)")
            return
        }
        let messageId = received.envelope.messageID
        Self.dieBeforeStoring.count(messageId: messageId, logger: context.logger)
        // Registered before the request is stored: the queue may finish it at once.
        if received.responseTopic != nil { waiting.requests.withLock { $0[messageId] = received } }
        do {
            guard try engine.accept(messageId: messageId, request: request) != nil else {
                context.logger.debug("ticket request delivered again; stored once", metadata: ["message_id": "\(messageId)"])
                // Its sender may not have heard the answer (and sends until it does): a copy
                // of finished work is answered again; one of waiting work when it is done.
                if let response = try engine.answer(toCopyOf: messageId, request),
                   waiting.requests.withLock({ $0.removeValue(forKey: messageId) }) != nil {
                    try? await context.bus.reply(to: received, with: response)
                }
                return
            }
            if let blocked = engine.blockedReason, waiting.requests.withLock({ $0.removeValue(forKey: messageId) }) != nil {
                await answer("stored, but ticketing is stopped by a configuration problem (\(blocked)); it is done after a restart with fixed settings")
            }
        } catch {
            waiting.requests.withLock { _ = $0.removeValue(forKey: messageId) }
            context.logger.error("cannot store a ticket request", metadata: ["incident": "\(request.incidentID)", "error": "\(error)"])
            await answer("cannot store the request: \(error)")
        }
    }
}

/// Requests whose requester waits for an answer, by message id (only while this process
/// runs: an answer carries the request's correlation data, which is not stored).
final class WaitingRequesters: Sendable {
    let requests = Mutex<[String: Received<Bynar_V1_TicketRequest>]>([:])
}

extension TicketingService {
    static let dieBeforeStoring = DieBeforeStoring(variable: "TEST_TICKETING_DIE_BEFORE_STORING")
}
