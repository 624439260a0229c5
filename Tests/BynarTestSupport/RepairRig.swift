import BynarAuth
public import BynarBus
public import BynarProto
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Every real service of one storage host's repair, for a backend's end-to-end test: a real
/// broker; the real bynar-detector, bynar-disk-manager, bynar-ticketing (against the STAND-IN
/// JIRA, `JiraStandIn`: no real JIRA can run here; it follows Atlassian's REST v2) and
/// bynar-orchestrator, on host `h1`; a tap on the bus that collects what the repair says.
/// The caller gives each service's backend settings; the test plays the technician.
public final class RepairRig: @unchecked Sendable {
    public let broker: TestBroker
    public let jira: JiraStandIn
    public let directory: String
    public let tap: Bus
    public let key: (path: String, trustedLine: String)
    public let window: RepairTap
    public let notifications: Collector<Received<Bynar_V1_Notification>>
    private let lock = NSLock()
    private var running: [String: ServiceProcess] = [:]
    private var services: [String: ServiceProcess] { lock.withLock { running } }
    private var killer: Task<Void, Never>?
    /// How many times the disk-manager was killed at its pause point and started again.
    public var diskManagerRestarts: Int { lock.withLock { restarts } }
    private var restarts = 0
    private var restartOrchestrator: (@Sendable () throws -> ServiceProcess)?

    public init(prefix: String) async throws {
        broker = try TestBroker()
        jira = try JiraStandIn()
        directory = try makeTemporaryDirectory(prefix: prefix)
        key = try makeSigningKey(in: directory)
        try key.trustedLine.write(toFile: "\(directory)/trusted-keys", atomically: true, encoding: .utf8)
        tap = try await connectedBus(broker, service: "tap", host: "t")
        window = try await RepairTap(tap, host: "h1")
        notifications = Collector(try await tap.subscribeNotifications(Topics.notifications))
    }

    /// A rig for `body`, stopped afterwards (services, stand-in, tap, directory), also when
    /// `body` throws.
    public static func with(prefix: String, _ body: (RepairRig) async throws -> Void) async throws {
        let rig = try await RepairRig(prefix: prefix)
        do {
            try await body(rig)
        } catch {
            await rig.stop()
            throw error
        }
        await rig.stop()
    }

    /// Starts the four services; `detector` and `diskManager` are the JSON members of their
    /// sections after the rig's own. With `killingTheDiskManagerAt`, the disk-manager stops
    /// dead at that pause point (`TEST_DISK_MANAGER_PAUSE_AT`, e.g. `Remove:done`) once, is
    /// killed there with SIGKILL and started again without it.
    /// `orchestrator`: JSON members of its section after the rig's own (empty: none).
    public func start(detector: String, diskManager: String, orchestrator: String = "", killingTheDiskManagerAt pausePoint: String? = nil) async throws {
        for name in ["det", "dm", "tic", "orc"] {
            try FileManager.default.createDirectory(atPath: "\(directory)/\(name)", withIntermediateDirectories: true)
        }
        let port = broker.port, directory = directory
        let startManager: @Sendable ([String: String]) throws -> ServiceProcess = { environment in
            try ServiceProcess("bynar-disk-manager", brokerPort: port, host: "h1", directory: "\(directory)/dm", extraConfig: """
                "disk_manager": {"trusted_keys_file": "\(directory)/trusted-keys", "max_disks_out": 1, \(diskManager)}
                """, environment: environment)
        }
        let manager = try startManager(pausePoint.map { ["TEST_DISK_MANAGER_PAUSE_AT": $0] } ?? [:])
        lock.withLock { running["disk-manager"] = manager }
        if let pausePoint {
            killer = Task { [weak self] in
                let marker = "bynar-pause-point \(pausePoint) reached"
                while !Task.isCancelled {
                    guard let self else { return }
                    if let current = self.services["disk-manager"], current.log.contains(marker) {
                        print("\(directory): disk-manager paused at \(pausePoint); kill -9 and start again")
                        current.signal(SIGKILL)
                        guard let next = try? startManager([:]) else { return }
                        self.lock.withLock {
                            self.running["disk-manager"] = next
                            self.restarts += 1
                        }
                        return
                    }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
        }
        var others: [String: ServiceProcess] = [:]
        others["detector"] = try ServiceProcess("bynar-detector", brokerPort: broker.port, host: "h1", directory: "\(directory)/det", extraConfig: """
            "detector": {"check_interval_seconds": 2, "probe_timeout_seconds": 5, \(detector)}
            """)
        others["ticketing"] = try ServiceProcess("bynar-ticketing", brokerPort: broker.port, host: "t1", directory: "\(directory)/tic", extraConfig: """
            "ticketing": {"jira": {"base_url": "\(jira.baseURL)", "project_key": "BYN", "issue_type_id": "3", "priority_id": "2",
                                   "user": "bynar-bot", "api_token": "api-token-1"},
                          "request_timeout_seconds": 5, "retry_min_seconds": 1, "retry_max_seconds": 2,
                          "follow": {"first_check_seconds": 1, "backoff_factor": 1.0, "max_interval_seconds": 1}}
            """)
        let key = key
        let startOrchestrator: @Sendable () throws -> ServiceProcess = {
            try ServiceProcess("bynar-orchestrator", brokerPort: port, host: "orch", directory: "\(directory)/orc", extraConfig: """
                "orchestrator": {"signing_key_file": "\(key.path)", "request_timeout_seconds": 10, "queue_recheck_seconds": 1\(orchestrator.isEmpty ? "" : ", " + orchestrator)}
                """)
        }
        lock.withLock { restartOrchestrator = startOrchestrator }
        others["orchestrator"] = try startOrchestrator()
        lock.withLock { running.merge(others) { $1 } }
        for service in services.keys.sorted() {
            #expect(await window.born(service, timeout: .seconds(30)), "\(service) was not born\n\(logs())")
        }
    }

    /// Kills the orchestrator with SIGKILL (a crash) and starts it again on the same journal;
    /// returns once its new session is born.
    public func crashOrchestrator() async throws {
        let (old, start) = lock.withLock { (running["orchestrator"], restartOrchestrator) }
        guard let old, let start else { throw TestSupportError("the rig's orchestrator was never started") }
        let births = window.statuses.all.filter { $0.payload.service == "orchestrator" && $0.payload.state == .birth }.count
        old.signal(SIGKILL)
        let next = try start()
        lock.withLock { running["orchestrator"] = next }
        #expect(await window.statuses.wait(timeout: .seconds(30)) { $0.filter { $0.payload.service == "orchestrator" && $0.payload.state == .birth }.count > births },
                "the orchestrator was not born again\n\(next.log)")
    }

    /// The tail of every service's log, for a failed expectation.
    public func logs(_ tail: Int = 4000) -> String {
        services.sorted { $0.key < $1.key }.map { "---- \($0.key)\n\($0.value.log.suffix(tail))" }.joined(separator: "\n")
    }

    /// The incident's path so far, for a failed expectation.
    public var incidentPath: String {
        window.incidents.all.map { "\($0.payload.incident.state) \($0.payload.step) \($0.payload.message)" }.joined(separator: "\n")
    }

    /// The technician's part once the disk is out: the one ticket the repair opened, after
    /// `swap` put a new disk in the failed one's slot and the detector saw it replace `oldKey`,
    /// is resolved; then the incident must end RESOLVED and the ticket closed. Returns the ticket.
    public func technicianSwaps(oldKey: String, swap: () throws -> Void) async throws -> Bynar_V1_TicketEvent {
        #expect(await window.tickets.wait(timeout: .seconds(60)) { $0.contains { $0.payload.state == .opened } }, "\(incidentPath)\n\(logs())")
        let ticket = try #require(window.tickets.all.first { $0.payload.state == .opened }?.payload)
        try swap()
        #expect(await window.diskEvents.wait(timeout: .seconds(40)) { $0.contains { $0.payload.toState == .replaced && $0.payload.previousDisk.key == oldKey } }, "\(logs())")
        try jira.resolve(ticket.ticketKey)
        let resolved = await window.incidents.wait(timeout: .seconds(120)) { $0.contains { $0.payload.incident.state == .resolved } }
        #expect(resolved, "\(incidentPath)\n\(logs())")
        #expect(await window.tickets.wait(timeout: .seconds(30)) { $0.contains { $0.payload.state == .closed && $0.payload.ticketKey == ticket.ticketKey } }, "\(logs())")
        return ticket
    }

    /// One incident, one ticket, each disk-changing job once (no Deploy here), people told.
    public func expectOneOfEach(_ ticket: Bynar_V1_TicketEvent) throws {
        #expect(Set(window.incidents.all.map(\.payload.incident.id)).count == 1, "\(incidentPath)")
        #expect(try jira.liveIssues().count == 1, "exactly one ticket")
        let jobs = Dictionary(grouping: window.progress.all.filter { $0.payload.state != .running }, by: \.payload.operation).mapValues(\.count)
        #expect(jobs["Remove"] == 1 && jobs["Add"] == 1 && jobs.count == 2, "\(jobs)")
        #expect(notifications.all.contains { $0.payload.incidentID == ticket.incidentID }, "people were told")
        print("\(directory): incident path: \(window.incidents.all.map { "\($0.payload.incident.state)" }.joined(separator: " -> "))")
    }

    /// Stops every service and the stand-in; removes the directory.
    public func stop() async {
        killer?.cancel()
        for service in services.values { service.signal(SIGTERM) }
        jira.stop()
        await tap.shutdown()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A signing key for the orchestrator (`orchestrator.key` in `directory`, mode 0600) and the
/// trusted-keys line a disk-manager needs to accept it.
public func makeSigningKey(in directory: String) throws -> (path: String, trustedLine: String) {
    let files = try KeyFiles.generate(keyID: "orchestrator-test")
    let path = directory + "/orchestrator.key"
    try files.privateKeyFileText.write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o600)
    return (path, files.trustedKeysLine)
}
