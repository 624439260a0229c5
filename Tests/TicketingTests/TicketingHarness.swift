import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// A real broker, the STAND-IN JIRA (no real JIRA can run here; see JiraStandIn) and a
/// watcher on the bus, for running real bynar-ticketing processes against them.
final class TicketingHarness: @unchecked Sendable {
    let broker: TestBroker
    let jira: JiraStandIn
    let watcher: Bus
    let directory: String
    let events: Collector<Received<Bynar_V1_TicketEvent>>
    let notifications: Collector<Received<Bynar_V1_Notification>>
    let statuses: Collector<Received<Bynar_V1_ServiceStatus>>
    private var processes: [ServiceProcess] = []

    init(jira: JiraStandIn? = nil) async throws {
        broker = try TestBroker()
        self.jira = try jira ?? JiraStandIn()
        directory = try makeTemporaryDirectory(prefix: "bynar-ticketing")
        watcher = try await connectedBus(broker, service: "watcher")
        events = Collector(try await watcher.subscribe(Topics.ticketEvents, as: Bynar_V1_TicketEvent.self))
        notifications = Collector(try await watcher.subscribeNotifications(Topics.notifications))
        statuses = Collector(try await watcher.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
    }

    /// The `"ticketing"` section pointing at the stand-in, with fast schedules for tests;
    /// `jira` entries replace or add JIRA settings, `extra` adds section keys.
    func ticketingConfig(jira overrides: [String: String] = [:], extra: String = "") -> String {
        var jiraFields: [String: String] = [
            "base_url": "\"\(jira.baseURL)\"", "project_key": "\"BYN\"", "issue_type_id": "\"3\"", "priority_id": "\"2\"",
            "assignee": "\"dc-tech\"", "components": "[\"Ceph\"]", "labels": "[\"bynar\", \"disk\"]",
            "user": "\"bynar-bot\"", "api_token": "\"api-token-1\"",
        ]
        jiraFields.merge(overrides) { $1 }
        let jiraText = jiraFields.filter { $0.value != "null" }.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ")
        return """
        "ticketing": {"jira": {\(jiraText)}, "request_timeout_seconds": 5, "retry_min_seconds": 1, "retry_max_seconds": 2,
          "follow": {"first_check_seconds": 1, "backoff_factor": 1.0, "max_interval_seconds": 1}\(extra.isEmpty ? "" : ", " + extra)}
        """
    }

    /// Starts bynar-ticketing as `host` (its own store under the harness directory) and waits
    /// for its birth. `config` is spliced into the top level of its config.
    @discardableResult
    func start(host: String = "t1", config: String? = nil, environment: [String: String] = [:]) async throws -> ServiceProcess {
        let instanceDirectory = directory + "/" + host
        try FileManager.default.createDirectory(atPath: instanceDirectory, withIntermediateDirectories: true)
        let births = statuses.all.filter { $0.payload.host == host && $0.payload.service == "ticketing" && $0.payload.state == .birth }.count
        let process = try ServiceProcess("bynar-ticketing", brokerPort: broker.port, host: host, directory: instanceDirectory, extraConfig: config ?? ticketingConfig(), environment: environment)
        processes.append(process)
        let born = await statuses.wait(timeout: .seconds(20)) { all in
            all.filter { $0.payload.host == host && $0.payload.service == "ticketing" && $0.payload.state == .birth }.count > births
        }
        guard born else { throw TestSupportError("bynar-ticketing \(host) did not announce itself; log:\n\(process.log)") }
        return process
    }

    /// A failed disk's health, as the orchestrator passes it on.
    static func health(host: String = "storage-07", serial: String = "Z1Z3ABCD") -> Bynar_V1_DiskHealth {
        var health = Bynar_V1_DiskHealth()
        health.disk.host = host
        health.disk.serial = serial
        health.disk.model = "ST4000NM0033"
        health.disk.vendor = "Seagate"
        health.disk.wwn = "0x5000c500a1b2c3d4"
        health.disk.byPath = "pci-0000:3b:00.0-sas-phy4-lun-0"
        health.disk.devPath = "/dev/sdc"
        health.disk.location = "row 3, rack 12, U20, slot 4"
        health.disk.sizeBytes = 4_000_787_030_016
        health.disk.key = "0x5000c500a1b2c3d4"
        health.state = .failed
        var reason = Bynar_V1_HealthReason()
        reason.rule = "smart.overall_failing"
        reason.severity = .failed
        reason.detail = "SMART overall self-assessment: FAILED"
        health.reasons = [reason]
        health.smart.available = true
        health.smart.overallPassed = false
        health.smart.overall = "BAD_SECTOR_MANY"
        health.smart.reallocated = 1200
        health.smart.pending = 16
        health.smart.temperatureC = 41
        health.smart.powerOnHours = 31_000
        return health
    }

    static func request(_ action: Bynar_V1_TicketRequest.Action, incident: String, comment: String = "", serial: String = "Z1Z3ABCD") -> Bynar_V1_TicketRequest {
        var request = Bynar_V1_TicketRequest()
        request.incidentID = incident
        request.action = action
        if action == .open { request.health = health(serial: serial) }
        request.comment = comment
        return request
    }

    /// Publishes a request without waiting for an answer (as a fire-and-forget sender would).
    func send(_ action: Bynar_V1_TicketRequest.Action, incident: String, comment: String = "") async throws {
        try await watcher.publish(Self.request(action, incident: incident, comment: comment), to: Topics.ticketCommands, correlationId: incident)
    }

    /// Sends a request and waits for its TicketResponse.
    func ask(_ action: Bynar_V1_TicketRequest.Action, incident: String, comment: String = "", timeout: Duration = .seconds(15)) async throws -> Bynar_V1_TicketResponse {
        try await watcher.request(Self.request(action, incident: incident, comment: comment), to: Topics.ticketCommands,
                                  expecting: Bynar_V1_TicketResponse.self, timeout: timeout, correlationId: incident).payload
    }

    /// Waits until an event in `state` for `incident` arrived; returns it.
    func event(_ state: Bynar_V1_TicketState, incident: String, timeout: Duration = .seconds(15)) async -> Bynar_V1_TicketEvent? {
        await events.wait(timeout: timeout) { $0.contains { $0.payload.incidentID == incident && $0.payload.state == state } }
        return events.all.first { $0.payload.incidentID == incident && $0.payload.state == state }?.payload
    }

    /// The retained ticket state of `incident`, read by a fresh subscriber (as the CLI does).
    func retainedState(incident: String) async throws -> Bynar_V1_TicketEvent? {
        let reader = try await connectedBus(broker, service: "reader")
        defer { Task { await reader.shutdown() } }
        let states = Collector(try await reader.subscribe(Topics.ticketState(incident: incident), as: Bynar_V1_TicketEvent.self))
        await states.wait(for: 1, timeout: .seconds(3))
        return states.all.last?.payload
    }

    /// Logs of every process started, for failure messages.
    var logs: String { processes.map { "--- \($0.directory)\n\($0.log)" }.joined(separator: "\n") }

    func stopAll() async {
        for process in processes {
            process.expectNoCrash("bynar-ticketing in \(process.directory)")
            process.signal(SIGTERM)
        }
        await watcher.shutdown()
        jira.stop()
        broker.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Runs `body` with a fresh harness and stops everything it started, also when it throws.
func withHarness(jira: JiraStandIn? = nil, _ body: (TicketingHarness) async throws -> Void) async throws {
    let harness = try await TicketingHarness(jira: jira)
    do {
        try await body(harness)
    } catch {
        await harness.stopAll()
        throw error
    }
    await harness.stopAll()
}
