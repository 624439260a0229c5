import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The orchestrator's side of the local ticket backend: the real bynar-orchestrator and the
/// real bynar-ticketing (backend "local") on a real broker, the real `bynar` CLI, and the
/// stand-in disk-manager (StandIns.swift; the real one with real disks runs in
/// scripts/demo-selftest). The ticket the orchestrator asks for is filed in ticketing's own
/// store; `bynar tickets resolve` moves the incident on exactly as a JIRA resolution does
/// (WAITING_FOR_REPLACEMENT), and the repair ends with the local ticket closed.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct LocalTicketRepairTests {
    static let failed = DetectorVoice.identity(host: "stor5", key: "serial-LT1")
    static let replacement = DetectorVoice.identity(host: "stor5", key: "serial-LT2")

    @Test func bynarTicketsResolveMovesTheRepairOnLikeAJiraResolution() async throws {
        let broker = try TestBroker()
        defer { broker.stop() }
        let directory = try makeTemporaryDirectory(prefix: "bynar-local-ticket")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cli = try CLIFixture(broker: broker)
        defer { cli.cleanUp() }
        let key = try makeSigningKey(in: directory)
        let dm = try await DiskManagerStandIn(broker: broker, trustedKeysLine: key.trustedLine)
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let incidents = Collector(try await tap.subscribe(Topics.incidentEvents, as: Bynar_V1_IncidentEvent.self))
        let tickets = Collector(try await tap.subscribe(Topics.ticketEvents, as: Bynar_V1_TicketEvent.self))
        let births = Collector(try await tap.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
        for name in ["orc", "tic"] { try FileManager.default.createDirectory(atPath: "\(directory)/\(name)", withIntermediateDirectories: true) }
        let ticketing = try ServiceProcess("bynar-ticketing", brokerPort: broker.port, host: "central", directory: "\(directory)/tic", extraConfig: """
            "ticketing": {"backend": "local", "operator_keys_file": "\(cli.trustedKeysPath)"}
            """)
        defer { ticketing.signal(SIGTERM) }
        let orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orch", directory: "\(directory)/orc", extraConfig: """
            "orchestrator": {"signing_key_file": "\(key.path)", "request_timeout_seconds": 2, "queue_recheck_seconds": 1}
            """)
        defer { orchestrator.signal(SIGTERM) }
        for service in ["ticketing", "orchestrator"] {
            let born = await births.wait(timeout: .seconds(20)) { $0.contains { $0.payload.service == service && $0.payload.state == .birth } }
            #expect(born, "\(service) did not start:\n\(ticketing.log.suffix(2000))\n\(orchestrator.log.suffix(2000))")
        }
        func logs() -> String { "---- ticketing\n\(ticketing.log.suffix(3000))\n---- orchestrator\n\(orchestrator.log.suffix(3000))" }
        func reached(_ state: Bynar_V1_IncidentState, timeout: Duration = .seconds(30)) async -> Bynar_V1_Incident? {
            _ = await incidents.wait(timeout: timeout) { $0.contains { $0.payload.incident.state == state } }
            return incidents.all.last { $0.payload.incident.state == state }?.payload.incident
        }

        let detector = DetectorVoice(bus: tap)
        try await detector.say(Self.failed, from: .failing, to: .failed)
        let ticketed = await reached(.ticketed)
        #expect(ticketed?.ticketKey == "BYNAR-1", "\(incidents.all.map { "\($0.payload.incident.state) \($0.payload.message)" })\n\(logs())")

        // The technician resolves the local ticket: the orchestrator hears RESOLVED and waits for the disk.
        let resolve = try await cli.run(["tickets", "resolve", "BYNAR-1", "--reason", "disk swapped", "--key", cli.keyPath] + cli.connection)
        #expect(resolve.exitCode == 0 && resolve.stdout.contains("BYNAR-1 resolved by operator-1"), "\(resolve.stdout) \(resolve.stderr)\n\(logs())")
        #expect(await reached(.waitingForReplacement) != nil, "\(logs())")

        // The new disk in the slot: added back, the incident resolved, the local ticket closed.
        try await detector.say(Self.replacement, from: .unspecified, to: .replaced, previous: Self.failed)
        #expect(await reached(.resolved) != nil, "\(logs())")
        #expect(await tickets.wait(timeout: .seconds(30)) { $0.contains { $0.payload.state == .closed && $0.payload.ticketKey == "BYNAR-1" } }, "\(logs())")
        #expect(tickets.all.map(\.payload.state).filter { $0 != .closed } == [.opened, .resolved], "\(tickets.all.map(\.payload.state))")
        #expect(dm.seen("Remove").count == 1 && dm.seen("Add").count == 1)
        await dm.stop()
        await tap.shutdown()
    }
}
