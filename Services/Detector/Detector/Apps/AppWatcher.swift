import BynarBus
import BynarConfig
import BynarProcess
import BynarProto
import BynarRuntime
import Logging
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
actor AppWatcher {
    let apps: [AppCheckConfig]
    let peers: [String]
    let bus: Bus
    let outbox: Outbox
    let host: String
    let logger: Logger
    private var machines: [String: AppHealthMachine] = [:]
    private var lastCheck: [String: (atMs: Int64, tookMs: Double)] = [:]
    private var publishedAtMs: [String: Int64] = [:]

    static let refreshMs: Int64 = 3_600_000

    init(apps: [AppCheckConfig], peers: [String], bus: Bus, outbox: Outbox, host: String, logger: Logger) {
        self.apps = apps
        self.peers = peers
        self.bus = bus
        self.outbox = outbox
        self.host = host
        self.logger = logger
        let now = Bus.nowUnixMs()
        for app in apps { machines[app.name] = AppHealthMachine(tolerance: app.tolerance, recover: app.recover, nowMs: now) }
    }

    func run() async {
        for app in apps { commit(app.name, changed: true) }
        let overrides: Subscription<Bynar_V1_AppOverride>?
        do {
            overrides = try await bus.subscribe(Topics.appOverride(host: host, app: "+"), as: Bynar_V1_AppOverride.self)
        } catch {
            logger.error("cannot take operators' app overrides", metadata: ["error": "\(error)"])
            overrides = nil
        }
        await withTaskGroup(of: Void.self) { group in
            for app in apps {
                group.addTask {
                    while !Task.isCancelled {
                        let started = ContinuousClock.now
                        let outcome = (try? await offThread { AppProbe.run(app) }) ?? AppProbe.Outcome(passed: false, detail: "the check could not run")
                        let took = ContinuousClock.now - started
                        await self.take(app.name, outcome.passed ? .checkPassed(detail: outcome.detail) : .checkFailed(detail: outcome.detail),
                                        tookMs: Double(took.components.seconds) * 1000 + Double(took.components.attoseconds) / 1e15)
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
            machines[name] = machine
            if let tookMs { lastCheck[name] = (now, tookMs) }
            if changed {
                logger.notice("application changed", metadata: ["app": "\(name)", "health": "\(AppHealthMachine.name(machine.health))", "reason": "\(machine.reason)"])
            }
            commit(name, changed: changed || now - (publishedAtMs[name] ?? 0) >= Self.refreshMs)
        }
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
