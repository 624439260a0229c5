import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// A real broker, the real bynar-orchestrator process, and the stand-in disk-manager and
/// ticketing (see StandIns.swift), with a tap on what the orchestrator publishes.
final class OrchestratorHarness: @unchecked Sendable {
    let broker: TestBroker
    let directory: String
    let dm: DiskManagerStandIn
    let tickets: TicketingStandIn
    let tap: Bus
    let detector: DetectorVoice
    let incidents: Collector<Received<Bynar_V1_IncidentEvent>>
    let notifications: Collector<Received<Bynar_V1_Notification>>
    let births: Collector<Received<Bynar_V1_ServiceStatus>>
    let key: (path: String, trustedLine: String)
    private(set) var orchestrator: ServiceProcess?
    private var sessions: UInt64 = 0

    init(autoResolveTickets: Bool = false) async throws {
        guard TestBroker.available else { throw TestSupportError("mosquitto is not installed") }
        broker = try TestBroker()
        directory = try makeTemporaryDirectory(prefix: "bynar-orch-test")
        key = try makeSigningKey(in: directory)
        dm = try await DiskManagerStandIn(broker: broker, trustedKeysLine: key.trustedLine)
        tickets = try await TicketingStandIn(broker: broker, autoResolve: autoResolveTickets)
        tap = try await connectedBus(broker, service: "tap", host: "t")
        detector = DetectorVoice(bus: tap)
        incidents = Collector(try await tap.subscribe(Topics.incidentEvents, as: Bynar_V1_IncidentEvent.self))
        notifications = Collector(try await tap.subscribeNotifications(Topics.notifications))
        births = Collector(try await tap.subscribe(Topics.serviceStatus(host: "orch", service: "orchestrator"), as: Bynar_V1_ServiceStatus.self))
    }

    /// The orchestrator section used by ``start(orchestrator:steps:requestTimeout:)``: the
    /// test's key, quick retries and rechecks, plus `extra` members.
    func config(_ extra: String, steps: String, requestTimeout: Int) -> String {
        """
        "orchestrator": {"signing_key_file": "\(key.path)", "request_timeout_seconds": \(requestTimeout), "queue_recheck_seconds": 1,
                         "steps": {"retry_delay_seconds": 0\(steps.isEmpty ? "" : ", " + steps)}\(extra.isEmpty ? "" : ", " + extra)}
        """
    }

    /// Starts (or restarts) bynar-orchestrator as host "orch" and waits for its birth;
    /// `topLevel` is spliced into the config's top level (`"metrics": {...}`).
    func start(orchestrator extra: String = "", steps: String = "", requestTimeout: Int = 2, topLevel: String = "") async throws {
        sessions += 1
        let session = sessions
        expectNoCrash()
        orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orch", directory: directory,
                                          extraConfig: config(extra, steps: steps, requestTimeout: requestTimeout) + (topLevel.isEmpty ? "" : ",\n " + topLevel))
        let born = await births.wait(timeout: .seconds(20)) { $0.contains { $0.payload.state == .birth && $0.payload.session == session } }
        guard born else { throw TestSupportError("bynar-orchestrator did not announce session \(session); log:\n\(orchestrator?.log ?? "")") }
    }

    /// SIGTERM: a clean stop; the broker keeps its persistent session and queues for it.
    func terminate() {
        expectNoCrash()
        orchestrator?.signal(SIGTERM)
    }

    /// SIGKILL: no clean shutdown, no last words.
    func kill() {
        expectNoCrash()
        orchestrator?.process.stop(SIGKILL)
    }

    /// A crash the orchestrator logged is a failure of its own, also in a test that goes on
    /// to stop or kill it (a crash and a kill look alike from outside).
    func expectNoCrash() {
        orchestrator?.expectNoCrash("bynar-orchestrator")
    }

    /// The latest event per incident id.
    var latest: [String: Bynar_V1_IncidentEvent] {
        var result: [String: Bynar_V1_IncidentEvent] = [:]
        for event in incidents.all { result[event.payload.incident.id] = event.payload }
        return result
    }

    /// Waits until some incident's latest state is `state`; returns its id.
    @discardableResult
    func waitFor(_ state: Bynar_V1_IncidentState, timeout: Duration = .seconds(20)) async throws -> String {
        var found: String?
        _ = await incidents.wait(timeout: timeout) { _ in
            found = self.latest.first { $0.value.incident.state == state }?.key
            return found != nil
        }
        guard let found else {
            throw TestSupportError("no incident reached \(state); latest: \(latest.mapValues { "\($0.incident.state) \($0.message)" }); log:\n\(orchestrator?.log.suffix(4000) ?? "")")
        }
        return found
    }

    /// Whether a retained incident state for `id` is still on the broker.
    func retainedState(_ id: String) async throws -> Bool {
        let probe = try await connectedBus(broker, service: "probe", host: "p")
        let retained = Collector(try await probe.subscribe(Topics.incidentState(id: id), as: Bynar_V1_IncidentEvent.self))
        let found = await retained.wait(timeout: .milliseconds(500)) { !$0.isEmpty }
        await probe.shutdown()
        return found
    }

    func stop() async {
        expectNoCrash()
        orchestrator?.signal(SIGTERM)
        incidents.cancel()
        notifications.cancel()
        births.cancel()
        await dm.stop()
        await tickets.stop()
        await tap.shutdown()
        broker.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Runs `body` with a harness and always tears it down.
func withHarness(autoResolveTickets: Bool = false, _ body: (OrchestratorHarness) async throws -> Void) async throws {
    let harness = try await OrchestratorHarness(autoResolveTickets: autoResolveTickets)
    do {
        try await body(harness)
    } catch {
        await harness.stop()
        throw error
    }
    await harness.stop()
}

/// ``withHarness(autoResolveTickets:_:)`` with an operator: a ``CLIFixture`` (key pair, config,
/// the `bynar` CLI) on the harness's broker, removed afterwards.
func withOperatorHarness(_ body: (OrchestratorHarness, CLIFixture) async throws -> Void) async throws {
    try await withHarness { h in
        let cli = try CLIFixture(broker: h.broker)
        defer { cli.cleanUp() }
        try await body(h, cli)
    }
}
