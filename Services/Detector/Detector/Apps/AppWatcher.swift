import BynarBus
import BynarConfig
import BynarProcess
import BynarProto
import BynarRuntime
import Logging
import Metrics
#if canImport(Glibc)
import Glibc
#endif

/// The applications this host serves (`detector.apps`), checked PicoRed's way: one loop per
/// app at its interval (``AppProbe``, off the bus's threads), one for reachability (the
/// broker connection, else a TCP connect to each of `detector.app_peers`), and the
/// operators' overrides from `bynar/v1/app/{host}/+/override`. Each fact goes to the app's
/// ``AppHealthMachine``; when what it reads changes, its ``Bynar_V1_AppState`` is committed
/// retained to `bynar/v1/app/{host}/{app}` through the outbox (and at least hourly, so a
/// reader can tell a live report from a stale one). On a clean shutdown every app reads
/// STOPPED, published before the agent's own death notice.
///
/// An app's local `handler` runs when its machine says one is due (rule 7), with PicoRed's
/// contract through the runner the orchestrator's hooks use (``HookRunner``): `HANDLER <app> <ip> <up|down>` and
/// the BYNAR_* event environment, one run at a time per app, in order; its outcome is logged
/// and counted and never changes what the app reads.
actor AppWatcher {
    let apps: [AppCheckConfig]
    let peers: [String]
    /// `detector.app_address`: the handlers' `<ip>` (resolved from the host name when nil).
    let address: String?
    let bus: Bus
    let outbox: Outbox
    let host: String
    let logger: Logger
    private var machines: [String: AppHealthMachine] = [:]
    private var lastCheck: [String: (atMs: Int64, tookMs: Double)] = [:]
    private var publishedAtMs: [String: Int64] = [:]
    /// Per app with a handler: its runs waiting, in order.
    private var handlerRuns: [String: AsyncStream<HookRunner.Run>.Continuation] = [:]
    private var ip = ""

    static let refreshMs: Int64 = 3_600_000

    init(apps: [AppCheckConfig], peers: [String], address: String?, bus: Bus, outbox: Outbox, host: String, logger: Logger) {
        self.apps = apps
        self.peers = peers
        self.address = address
        self.bus = bus
        self.outbox = outbox
        self.host = host
        self.logger = logger
        let now = Bus.nowUnixMs()
        for app in apps { machines[app.name] = AppHealthMachine(tolerance: app.tolerance, recover: app.recover, nowMs: now) }
    }

    func run() async {
        for app in apps { commit(app.name, changed: true) }
        var queues: [(app: String, runs: AsyncStream<HookRunner.Run>)] = []
        if apps.contains(where: { $0.handler != nil }) {
            let (host, address) = (host, address)
            ip = (try? await offThread { HookRunner.address(of: host, configured: address) }) ?? host
            for app in apps where app.handler != nil {
                let (runs, continuation) = AsyncStream<HookRunner.Run>.makeStream()
                handlerRuns[app.name] = continuation
                queues.append((app.name, runs))
            }
        }
        let overrides: Subscription<Bynar_V1_AppOverride>?
        do {
            overrides = try await bus.subscribe(Topics.appOverride(host: host, app: "+"), as: Bynar_V1_AppOverride.self)
        } catch {
            logger.error("cannot take operators' app overrides", metadata: ["error": "\(error)"])
            overrides = nil
        }
        // A round of checks touches code that idle time does not need; the kernel maps it in
        // large blocks (fault-around, large folios: 5-6 MB of clean file pages for one round
        // on Linux 6.18). Given back a second after the checks, not at the runtime's next
        // 30-second trim (docs/performance.md, "The host agent checking applications").
        let (checked, checkDone) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in checked {
                    try? await Task.sleep(for: .seconds(1))
                    ResidentCode.release()
                }
            }
            for app in apps {
                group.addTask {
                    while !Task.isCancelled {
                        let started = ContinuousClock.now
                        let outcome = (try? await offThread { AppProbe.run(app) }) ?? AppProbe.Outcome(passed: false, detail: "the check could not run")
                        let took = ContinuousClock.now - started
                        await self.take(app.name, outcome.passed ? .checkPassed(detail: outcome.detail) : .checkFailed(detail: outcome.detail),
                                        tookMs: Double(took.components.seconds) * 1000 + Double(took.components.attoseconds) / 1e15)
                        checkDone.yield()
                        try? await Task.sleep(for: .seconds(app.intervalSeconds))
                    }
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    let isolated = await self.isolated()
                    await self.take(nil, .reachability(isolated: isolated), tookMs: nil)
                    try? await Task.sleep(for: .seconds(5))
                }
            }
            for queue in queues {
                group.addTask {
                    for await run in queue.runs { await self.runHandler(queue.app, run) }
                }
            }
            if let overrides {
                group.addTask {
                    for await message in overrides {
                        await self.take(message.payload.app, .overridden(message.payload.mode), tookMs: nil)
                    }
                }
            }
            await group.waitForAll()
        }
    }

    /// PicoRed's rule: isolated when neither the broker nor any peer answers.
    func isolated() async -> Bool {
        if bus.isConnected { return false }
        let peers = peers
        let reached = (try? await offThread {
            peers.contains(where: { peer in
                guard let target = AppCheckConfig.hostPort(peer), case .success(let fd) = AppProbe.connect(host: target.host, port: target.port, timeout: .seconds(2)) else { return false }
                close(fd)
                return true
            })
        }) ?? false
        return !reached
    }

    /// A fact about `app` (nil: about every app).
    func take(_ app: String?, _ fact: AppHealthMachine.Fact, tookMs: Double?) {
        let now = Bus.nowUnixMs()
        for name in app.map({ [$0] }) ?? apps.map(\.name) {
            guard var machine = machines[name] else {
                if app != nil { logger.warning("override of an app this host does not check", metadata: ["app": "\(name)"]) }
                continue
            }
            let changed = machine.handle(fact, nowMs: now)
            let handlerDue = handlerRuns[name] == nil ? nil : machine.takeDueHandler()
            machines[name] = machine
            if let tookMs { lastCheck[name] = (now, tookMs) }
            if changed {
                logger.notice("application changed", metadata: ["app": "\(name)", "health": "\(AppHealthMachine.name(machine.health))", "reason": "\(machine.reason)"])
            }
            if let up = handlerDue { handlerRuns[name]?.yield(handlerRun(name, up: up, nowMs: now)) }
            commit(name, changed: changed || now - (publishedAtMs[name] ?? 0) >= Self.refreshMs)
        }
    }

    /// The local handler's run for `app` going up or down.
    private func handlerRun(_ app: String, up: Bool, nowMs: Int64) -> HookRunner.Run {
        let config = apps.first { $0.name == app }
        let eventID = "\(host)/app/\(app)/local/\(up ? "up" : "down")/\(nowMs)"
        return HookRunner.Run(eventID: eventID, command: config?.handler ?? "", arguments: HookRunner.arguments(app: app, ip: ip, up: up),
                              environment: HookRunner.environment(eventID: eventID, nowMs: nowMs, host: host, service: app, up: up),
                              timeout: .seconds(config?.handlerTimeoutSeconds ?? 30))
    }

    /// Runs a local handler (off the actor: it blocks for up to its timeout), logs and counts it.
    private nonisolated func runHandler(_ app: String, _ run: HookRunner.Run) async {
        if let problem = HookRunner.unsafeArgument(app, "app") ?? HookRunner.unsafeArgument(run.arguments[1], "address") {
            logger.error("local handler not run: an argument is no host name, address or service name", metadata: ["app": "\(app)", "problem": "\(problem)"])
            return
        }
        let result = await HookRunner.run(run)
        let outcome = HookRunner.outcome(result)
        let metadata: Logger.Metadata = ["app": "\(app)", "event_id": "\(run.eventID)", "arguments": "\(run.arguments.joined(separator: " "))",
                                         "exit_status": "\(outcome)", "duration_ms": "\(result.durationMs)"]
        if outcome == "0" {
            logger.notice("local handler ran", metadata: metadata)
        } else {
            logger.warning("local handler failed", metadata: metadata.merging(["output": "\(result.stderrTail.suffix(500))"]) { $1 })
        }
        Counter(label: "bynar_detector_app_handler_runs_total", dimensions: [("app", app), ("exit_status", outcome)]).increment()
    }

    func state(_ name: String) -> Bynar_V1_AppState? {
        guard let machine = machines[name], let app = apps.first(where: { $0.name == name }) else { return nil }
        var state = Bynar_V1_AppState()
        state.app = name
        state.health = machine.health
        state.checked = machine.checked
        state.override = machine.override
        state.check = AppProbe.describe(app)
        state.reason = machine.reason
        state.consecutiveFailures = UInt32(machine.failures)
        state.tolerance = UInt32(machine.tolerance)
        state.lastCheckUnixMs = lastCheck[name]?.atMs ?? 0
        state.lastCheckMs = lastCheck[name]?.tookMs ?? 0
        state.sinceUnixMs = machine.sinceMs
        return state
    }

    private func commit(_ name: String, changed: Bool) {
        guard changed, let state = state(name) else { return }
        do {
            try outbox.commit([Outbox.Event(state, to: Topics.appState(host: host, app: name), retain: true)])
            publishedAtMs[name] = Bus.nowUnixMs()
        } catch {
            logger.error("cannot store an application's state", metadata: ["app": "\(name)", "error": "\(error)"])
        }
    }

    /// The clean shutdown: every app reads STOPPED, published directly (the outbox's sender
    /// is stopping) and awaited, so no handler takes the agent's going for an outage.
    func shutDown() async {
        for app in apps { _ = machines[app.name]?.handle(.shutDown, nowMs: Bus.nowUnixMs()) }
        for app in apps {
            guard let state = state(app.name) else { continue }
            do {
                _ = try await bus.publish(state, to: Topics.appState(host: host, app: app.name), retain: true)
            } catch {
                logger.warning("cannot say an application stopped", metadata: ["app": "\(app.name)", "error": "\(error)"])
            }
        }
    }
}
