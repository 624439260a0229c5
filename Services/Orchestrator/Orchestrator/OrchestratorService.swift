public import BynarRuntime
public import BynarStore
import BynarAuth
import BynarBus
import Synchronization
public import BynarConfig
import BynarProto
public import Logging
import Metrics
import ServiceLifecycle
#if canImport(Glibc)
import Glibc
#endif

/// The orchestrator: decides what happens to failed disks, across the cluster, and keeps
/// track of which services run where.
///
/// - Repair workflow: every disk the detector declares FAILED (not a system or excluded
///   disk) gets an incident, driven by ``IncidentMachine`` through the disk-manager
///   (SafeToRemove, signed Remove and Add), ticketing and the notifier, journaled in SQLite
///   so a restart resumes without acting twice (``RepairEngine``).
/// - Cluster brake: ``ClusterBrake`` limits disks out per cluster, rack and host, the removal
///   rate, and holds removals while the cluster is HEALTH_ERR. `dry_run` decides and reports
///   only.
/// - Membership: every service's birth and death → retained HostState per host; operator
///   hooks on host or service up/down, each event handled by one orchestrator.
/// - Operators: signed commands on `bynar/v1/operator/cmd` (keys in
///   `orchestrator.operator_keys_file`) retry, cancel, resolve or show an incident and put
///   hosts or disks in maintenance; every one is audited and answered.
/// - Status page: a read-only page and JSON API beside the metrics (``StatusPage``).
public struct OrchestratorService: CoordinatedService {
    public static let serviceName = "orchestrator"
    /// The journal's tables, and the nonce table operator commands' replay protection uses.
    public static var migrations: [LocalStore.Migration] { IncidentJournal.migrations + CommandVerifier.migrations }
    let context: ServiceContext

    public init(context: ServiceContext) throws {
        self.context = context
    }

    /// With `orchestrator.coordination.etcd`: stands by until this process leads the group
    /// (``EtcdCoordination``). Without it: nil, this orchestrator runs alone.
    public static func coordinate(config: BynarConfig, host: String, storePath: String, logger: Logger) async throws -> ServiceTerm?? {
        guard let etcd = config.orchestrator.coordination.etcd else { return nil }
        let coordination = try EtcdCoordination(config: etcd, host: host, logger: logger)
        return .some(try await coordination.lead(storePath: storePath, migrations: migrations))
    }

    public func run() async throws {
        let config = context.config.orchestrator
        let bus = context.bus
        let journal = IncidentJournal(store: context.store)
        var client: DiskManagerClient?
        if let keyFile = config.signingKeyFile {
            client = try DiskManagerClient(bus: bus, privateKeyFile: keyFile, commandLifetime: .seconds(max(60, config.requestTimeoutSeconds * 2)))
            if let term = context.term {
                // Fencing: every command carries this leader's epoch; a disk-manager that saw
                // a later leader's refuses it.
                let fence = CommandSigner.Fence(group: term.fenceGroup, epoch: term.epoch)
                client?.signer.fence = { fence }
            }
            client?.beforeSend = Self.testStop(logger: context.logger)
        } else {
            context.logger.warning("no orchestrator.signing_key_file: disk-manager steps will fail and incidents end STUCK")
        }
        if config.dryRun { context.logger.notice("dry run: deciding and reporting only; nothing that changes a disk is sent") }
        let operatorVerifier = try CommandVerifier.operatorKeys(
            config.operatorKeysFile, field: "orchestrator.operator_keys_file", store: context.store, logger: context.logger,
            unset: "no orchestrator.operator_keys_file: every operator command (bynar incidents retry|cancel|resolve|show, bynar maintenance) will be refused",
            register: context.reloader.register)
        let board = StatusBoard()
        let engine = try await RepairEngine(config: config, journal: journal, bus: bus, outbox: context.outbox, client: client, operatorVerifier: operatorVerifier,
                                            board: board, logger: context.logger)
        let inputs = engine.inputs
        let hardware = try HardwareEngine(journal: journal, outbox: context.outbox, healthySeconds: config.hardwareHealthySeconds,
                                          ticketReceiptSeconds: config.ticketReceiptSeconds, logger: context.logger)
        let hardwareInputs = hardware.inputs

        let diskEvents = try await bus.subscribe(Topics.diskEvents(host: "+"), as: Bynar_V1_DiskHealthEvent.self)
        let diskHealth = try await bus.subscribe(Topics.diskHealth(host: "+", disk: "+"), as: Bynar_V1_DiskHealth.self)
        let progress = try await bus.subscribe(Topics.diskManagerProgress(host: "+"), as: Bynar_V1_JobProgress.self)
        let ticketEvents = try await bus.subscribe(Topics.ticketEvents, as: Bynar_V1_TicketEvent.self)
        let ticketStates = try await bus.subscribe(Topics.allTicketStates, as: Bynar_V1_TicketEvent.self)
        let statuses = try await bus.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self)
        let appStates = try await bus.subscribe(Topics.allAppStates, as: Bynar_V1_AppState.self)
        let hardwareStates = try await bus.subscribe(Topics.allHardwareStates, as: Bynar_V1_HardwareState.self)
        let hardwareEvents = try await bus.subscribe(Topics.allHardwareEvents, as: Bynar_V1_HardwareEvent.self)
        let operatorCommands = try await bus.subscribe(Topics.operatorCommands, as: Bynar_V1_OperatorCommand.self)
        let keeper = MembershipKeeper()
        let hostStates = Mailbox<String>()
        StatusPage.serve(on: context.routes, board: board, database: try context.store.readOnlyConnection(), config: config,
                         host: context.host, logger: context.logger)
        let hooks = try await HookDispatcher.start(context: context, journal: journal, keeper: keeper, hostStates: hostStates, board: board)
        await bus.markReady()
        context.logger.info("orchestrator ready", metadata: [
            "dry_run": "\(config.dryRun)", "hooks": "\(config.hooks.count)", "signing": "\(client != nil)"])

        let reconnects = bus.reconnects()
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await engine.run() }
                group.addTask { await hardware.run() }
                group.addTask {
                    var ticks = 0
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .milliseconds(250))
                        inputs.post(.tick)
                        ticks += 1
                        if ticks % 4 == 0 { hardwareInputs.post(.tick) }
                    }
                }
                // The host of a hardware report is the topic's (the broker checked it).
                group.addTask { for await state in hardwareStates { hardwareInputs.post(.state(host: Topics.hostLevel(ofTopic: state.topic), state.payload)) } }
                group.addTask { for await event in hardwareEvents { hardwareInputs.post(.event(host: Topics.hostLevel(ofTopic: event.topic), event.payload)) } }
                group.addTask { for await event in diskEvents { inputs.post(.diskEvent(event.payload)) } }
                group.addTask { for await health in diskHealth { inputs.post(.diskHealth(health.payload, retained: health.retained)) } }
                group.addTask { for await job in progress { inputs.post(.jobProgress(job.payload)) } }
                // Each workflow takes the ticket events of its own incidents and ignores the rest.
                group.addTask { for await ticket in ticketEvents { inputs.post(.ticket(ticket.payload)); hardwareInputs.post(.ticket(ticket.payload)) } }
                group.addTask { for await ticket in ticketStates { inputs.post(.ticket(ticket.payload)); hardwareInputs.post(.ticket(ticket.payload)) } }
                group.addTask { for await command in operatorCommands { inputs.post(.operatorCommand(command)) } }
                group.addTask {
                    for await status in statuses {
                        let changed = await keeper.observe(status.payload, messageID: status.envelope.messageID, nowMs: Bus.nowUnixMs())
                        hostStates.post(contentsOf: Array(changed))
                    }
                }
                group.addTask {
                    for await state in appStates {
                        await keeper.observe(app: state.payload, host: Topics.hostLevel(ofTopic: state.topic), messageID: state.envelope.messageID, nowMs: Bus.nowUnixMs())
                    }
                }
                group.addTask { await Self.publishHostStates(hostStates, keeper: keeper, bus: bus, board: board, gate: context.term?.mayPublish, logger: context.logger) }
                group.addTask {
                    // A broker back from an older save may retain host states changed since
                    // (the outbox says the orchestrator's other retained messages again).
                    for await _ in reconnects { hostStates.post(contentsOf: await keeper.hosts) }
                }
                if let hooks { group.addTask { await hooks.run() } }
                await group.next()
                group.cancelAll()
            }
        }
        await hooks?.shutdown()
    }

    /// Test only: `TEST_ORCHESTRATOR_STOP_BEFORE_SENDING=Remove` stops this process
    /// (SIGSTOP, once) with the first signed Remove in hand, before it goes out, so a test
    /// can let another orchestrator take over and then wake this one (fencing). A
    /// production service has no such variable; it is logged loudly when set.
    static func testStop(logger: Logger) -> (@Sendable (Bynar_V1_DiskManagerRequest) -> Void)? {
        guard let value = getenv("TEST_ORCHESTRATOR_STOP_BEFORE_SENDING") else { return nil }
        let operation = String(cString: value)
        logger.critical("TEST_ORCHESTRATOR_STOP_BEFORE_SENDING is set: this process stops itself before its first signed command of that kind", metadata: ["operation": "\(operation)"])
        let once = Mutex(false)
        return { request in
            guard DiskManagerClient.operationName(request) == operation, once.withLock({ done in defer { done = true }; return !done }) else { return }
            let line = Array("bynar-stop-point \(operation) \(request.requestID) epoch \(request.auth.fenceEpoch)\n".utf8)
            _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            raise(SIGSTOP)
        }
    }

    /// Publishes the retained HostState of every host whose membership changed, coalesced.
    static func publishHostStates(_ dirty: Mailbox<String>, keeper: MembershipKeeper, bus: Bus, board: StatusBoard, gate: (@Sendable () -> Bool)? = nil, logger: Logger) async {
        while !Task.isCancelled {
            let hosts = Array(Set(await dirty.next())).sorted()
            // A coordinated leader not sure it still leads says no retained state.
            while let gate, !gate(), !Task.isCancelled { try? await Task.sleep(for: .milliseconds(100)) }
            var batch: [(bytes: [UInt8], topic: String, retain: Bool)] = []
            for host in hosts {
                guard let state = await keeper.hostState(host) else { continue }
                board.noteHost(state)
                guard let bytes = try? Bus.serialize(bus.envelope(state)) else { continue }
                batch.append((bytes, Topics.hostState(host: host), true))
            }
            var start = 0
            while start < batch.count {
                let slice = Array(batch[start..<min(batch.count, start + Bus.maxBatch)])
                do {
                    _ = try await bus.publish(batch: slice)
                } catch {
                    logger.warning("cannot publish host states", metadata: ["hosts": "\(slice.count)", "error": "\(error)"])
                }
                start += Bus.maxBatch
            }
        }
    }
}

/// Hooks on host, service and application up/down: a second connection with shared
/// subscriptions on the service statuses and the applications' states (`bynar/v1/app/+/+`),
/// so each live birth, death or application change goes to one orchestrator of the group
/// (MQTT 5 sends no retained messages to shared subscriptions: start-up is not an event);
/// the journal of handled event ids keeps a redelivery from running a hook twice.
final class HookDispatcher: Sendable {
    let context: ServiceContext
    let journal: IncidentJournal
    let keeper: MembershipKeeper
    let hostStates: Mailbox<String>
    let board: StatusBoard
    let bus: Bus
    let subscription: Subscription<Bynar_V1_ServiceStatus>
    let apps: Subscription<Bynar_V1_AppState>
    let addresses: [String: String]
    /// Hook events per minute (``HookRateLimit``), across this orchestrator's handlers.
    let limit: Mutex<HookRateLimit>

    private init(context: ServiceContext, journal: IncidentJournal, keeper: MembershipKeeper, hostStates: Mailbox<String>, board: StatusBoard, bus: Bus,
                 subscription: Subscription<Bynar_V1_ServiceStatus>, apps: Subscription<Bynar_V1_AppState>) {
        self.context = context
        self.journal = journal
        self.keeper = keeper
        self.hostStates = hostStates
        self.board = board
        self.bus = bus
        self.subscription = subscription
        self.apps = apps
        var addresses: [String: String] = [:]
        for placement in context.config.orchestrator.hosts { if let address = placement.address { addresses[placement.host] = address } }
        self.addresses = addresses
        let caps = context.config.orchestrator.hookLimit
        limit = Mutex(HookRateLimit(perMinute: caps.perMinute, perHostPerMinute: caps.perHostPerMinute))
    }

    /// Connects the hook subscription; nil when no hooks are configured.
    static func start(context: ServiceContext, journal: IncidentJournal, keeper: MembershipKeeper, hostStates: Mailbox<String>, board: StatusBoard) async throws -> HookDispatcher? {
        let config = context.config.orchestrator
        guard !config.hooks.isEmpty else { return nil }
        var broker = context.config.broker
        // A connection of its own: on one connection the bus hands every copy of a status
        // to every matching subscription, which would undo the sharing.
        broker.clientId = (broker.clientId ?? "\(OrchestratorService.serviceName)-\(context.host)") + "-hooks"
        // No session kept after a disconnect: a dead orchestrator's session would stay in
        // the shared group and take its share of the events, queued for nobody (found with
        // a leader killed under etcd coordination: the next host down ran no hook).
        broker.sessionExpirySeconds = 0
        let bus = try Bus(config: broker, identity: context.bus.identity, logger: context.logger, announce: false)
        bus.start()
        let filters = [Topics.shared(group: config.hookGroup, Topics.allServiceStatus), Topics.shared(group: config.hookGroup, Topics.allAppStates)]
        let subscription = try await bus.subscribe(filters[0], as: Bynar_V1_ServiceStatus.self)
        let apps = try await bus.subscribe(filters[1], as: Bynar_V1_AppState.self)
        // The orchestrator's birth (after this returns) says its hooks are live. This
        // connection comes up on its own: a subscribe sent before it did is only registered
        // and goes out at its CONNACK, so a host born right after the birth could reach no
        // hook (found in CI: the first of two hosts born ran none). Wait for the broker's
        // SUBACKs, bounded: with the broker away, the birth cannot go out either.
        let missing = { Set(filters).subtracting(bus.subscriptionsConfirmed) }
        let deadline = ContinuousClock.now + .seconds(10)
        while !missing().isEmpty, ContinuousClock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
        }
        if !missing().isEmpty, !Task.isCancelled {
            context.logger.warning("hook subscriptions not confirmed after 10 s; going on, they are retried", metadata: ["missing": "\(missing().sorted())"])
        }
        return HookDispatcher(context: context, journal: journal, keeper: keeper, hostStates: hostStates, board: board, bus: bus, subscription: subscription, apps: apps)
    }

    func run() async {
        _ = try? journal.pruneHookEvents(beforeMs: Bus.nowUnixMs() - 7 * 86_400_000)
        await withDiscardingTaskGroup { group in
            group.addTask { await self.reportSuppressed() }
            group.addTask {
                for await state in self.apps where !state.retained {
                    let now = Bus.nowUnixMs()
                    let transitions = await self.keeper.claim(app: state.payload, host: Topics.hostLevel(ofTopic: state.topic), messageID: state.envelope.messageID, nowMs: now)
                    for transition in transitions {
                        await self.handle(transition, session: 0, messageID: state.envelope.messageID, nowMs: now)
                    }
                }
            }
            for await status in subscription {
                // Retained statuses are the past (the spec sends none to shared subscriptions;
                // this holds even for a broker that would).
                if status.retained { continue }
                let now = Bus.nowUnixMs()
                let (transitions, changed) = await keeper.claim(status.payload, messageID: status.envelope.messageID, nowMs: now)
                if changed { hostStates.post(status.payload.host) }
                for transition in transitions {
                    group.addTask { await self.handle(transition, session: status.payload.session, messageID: status.envelope.messageID, nowMs: now) }
                }
            }
            group.cancelAll()
        }
    }

    /// Once a minute, says how many hook events the limit refused (a log line and an
    /// operator notification, not one per event: that would be the flood again).
    private func reportSuppressed() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(60))
            let suppressed = limit.withLock { $0.takeSuppressed() }
            guard !suppressed.isEmpty else { continue }
            let total = suppressed.values.reduce(0, +)
            let worst = suppressed.sorted { $0.value > $1.value }.prefix(10).map { "\($0.key): \($0.value)" }.joined(separator: ", ")
            context.logger.warning("hook events not run: over the rate limit", metadata: ["refused": "\(total)", "hosts": "\(worst)"])
            var note = Bynar_V1_Notification()
            note.severity = .warning
            note.title = "\(total) hook events not run in the last minute: over orchestrator.hook_limit"
            note.text = "Refused per host (most first): \(worst). A host is flapping, or someone publishes statuses for it."
            do { try context.outbox.commit([Outbox.notification(note)]) } catch {
                context.logger.error("cannot store a notification", metadata: ["error": "\(error)"])
            }
        }
    }

    func shutdown() async { await bus.shutdown() }

    private func handle(_ transition: Membership.Transition, session: UInt64, messageID: String, nowMs: Int64) async {
        let host: String, app: String, up: Bool, eventID: String
        switch transition {
        case .service(let name, let service, let isUp):
            (host, app, up) = (name, service, isUp)
            eventID = "\(name)/\(service)/s\(session)/\(isUp ? "up" : "down")/\(messageID)"
        case .app(let name, let application, let isUp):
            (host, app, up) = (name, application, isUp)
            eventID = "\(name)/app/\(application)/\(isUp ? "up" : "down")/\(messageID)"
        case .host(let name, let isUp):
            (host, app, up) = (name, "host", isUp)
            eventID = "\(name)/host/\(isUp ? "up" : "down")/\(messageID)"
        }
        do {
            guard try journal.claimHookEvent(eventID, host: host, service: app, up: up, nowMs: nowMs) else {
                context.logger.info("hook event already handled", metadata: ["event_id": "\(eventID)"])
                return
            }
        } catch {
            context.logger.error("cannot journal a hook event; hooks not run", metadata: ["event_id": "\(eventID)", "error": "\(error)"])
            return
        }
        let ip = HookRunner.address(of: host, configured: addresses[host])
        if let problem = HookRunner.unsafeArgument(app, "app") ?? HookRunner.unsafeArgument(ip, "address") ?? HookRunner.unsafeArgument(host, "host") {
            context.logger.error("hook event refused: an argument is no host name, address or service name", metadata: ["event_id": "\(eventID)", "problem": "\(problem)"])
            try? journal.finishHookEvent(eventID)
            return
        }
        if case .refuse(let why) = limit.withLock({ $0.admit(host: host, nowMs: nowMs) }) {
            context.logger.debug("hook event not run", metadata: ["event_id": "\(eventID)", "reason": "\(why)"])
            try? journal.finishHookEvent(eventID)
            return
        }
        let environment = HookRunner.environment(eventID: eventID, nowMs: nowMs, host: host, service: app == "host" ? "" : app, up: up)
        for hook in context.config.orchestrator.hooks {
            let result = await HookRunner.run(.init(eventID: eventID, command: hook.command, arguments: HookRunner.arguments(app: app, ip: ip, up: up),
                                                    environment: environment, timeout: .seconds(hook.timeoutSeconds)))
            context.logger.notice("hook ran", metadata: [
                "event_id": "\(eventID)", "hook": "\(hook.command)", "exit_status": "\(result.exitStatus)", "timed_out": "\(result.timedOut)"])
            Counter(label: "bynar_orchestrator_hook_runs_total", dimensions: [("exit_status", HookRunner.outcome(result))]).increment()
            board.noteHook(result)
            // The result and, for a failure, the notification: one transaction.
            var events = [Outbox.Event(result, to: Topics.hookEvents, correlationId: eventID)]
            if let note = HookRunner.failureNotification(result, host: host) {
                events.append(Outbox.notification(note, correlationId: eventID))
            }
            do {
                try context.outbox.commit(events)
            } catch {
                context.logger.error("cannot store a hook result", metadata: ["event_id": "\(eventID)", "error": "\(error)"])
            }
        }
        try? journal.finishHookEvent(eventID)
    }
}
