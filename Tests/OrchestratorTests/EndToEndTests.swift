import BynarAuth
import BynarBus
import BynarProto
import BynarStore
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The whole repair with every real service: a real broker; the real bynar-detector watching
/// a real disk (faultfs + loop device, so the kernel sees real write errors); the real
/// bynar-disk-manager (filesystem backend: ext4 mounted by UUID, fstab kept); the real
/// bynar-ticketing against the STAND-IN JIRA (no real JIRA can run here; the stand-in follows
/// Atlassian's REST v2, see JiraStandIn); the real bynar-orchestrator. The test plays the
/// technician: it resolves the ticket and puts a new disk in the same slot.
///
/// Run again with the disk-manager killed (SIGKILL) in the middle of the repair and
/// restarted: after writing the Remove job and before answering, between Remove's steps,
/// between Add's steps (test-only pause points, `TEST_DISK_MANAGER_PAUSE_AT`). The incident
/// must still complete, each job run once, one ticket.
@Suite(.serialized, .enabled(if: FaultyDisk.available && TestBroker.available, "needs root, faultfs (FUSE), loop devices and mosquitto"))
struct EndToEndTests {
    /// The disk-manager of the test, restarted by a watcher when it reaches its pause point.
    final class Manager: @unchecked Sendable {
        let lock = NSLock()
        private var current: ServiceProcess
        let start: @Sendable ([String: String]) throws -> ServiceProcess
        private(set) var restarts = 0

        init(start: @escaping @Sendable ([String: String]) throws -> ServiceProcess) throws {
            self.start = start
            current = try start([:])
        }

        var process: ServiceProcess { lock.withLock { current } }

        func replace(environment: [String: String]) throws {
            let next: ServiceProcess
            process.signal(SIGKILL)
            next = try start(environment)
            lock.withLock {
                current = next
                restarts += 1
            }
        }
    }

    @Test(.timeLimit(.minutes(5)), arguments: [nil, "accepted", "Remove:2", "Add:3"] as [String?])
    func aFailedDiskIsRemovedTicketedReplacedAndAddedBack(killingTheDiskManagerAt pausePoint: String?) async throws {
        let broker = try TestBroker()
        let jira = try JiraStandIn()
        defer { jira.stop() }
        let directory = try makeTemporaryDirectory(prefix: "bynar-e2e")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in ["det", "dm", "tic", "orc", "srv"] {
            try FileManager.default.createDirectory(atPath: "\(directory)/\(name)", withIntermediateDirectories: true)
        }
        let mountRoot = "\(directory)/srv"
        let fstab = "\(directory)/fstab"
        try "# e2e fstab\n".write(toFile: fstab, atomically: true, encoding: .utf8)
        let key = try makeSigningKey(in: directory)
        try key.trustedLine.write(toFile: "\(directory)/trusted-keys", atomically: true, encoding: .utf8)

        // The disk that will fail: blank at first; the disk-manager deploys it.
        let original = try FaultyDisk(sizeMB: 128, filesystem: nil)
        defer { original.teardown() }

        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let statuses = Collector(try await tap.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
        let incidents = Collector(try await tap.subscribe(Topics.incidentEvents, as: Bynar_V1_IncidentEvent.self))
        let tickets = Collector(try await tap.subscribe(Topics.ticketEvents, as: Bynar_V1_TicketEvent.self))
        let diskEvents = Collector(try await tap.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let notifications = Collector(try await tap.subscribeNotifications(Topics.notifications))
        func born(_ service: String) async -> Bool {
            await statuses.wait(timeout: .seconds(20)) { $0.contains { $0.payload.service == service && $0.payload.state == .birth } }
        }

        // The run without kills also serves metrics to a real Prometheus, which is asked for
        // the repair's figures at the end.
        let metricsPorts = try Dictionary(uniqueKeysWithValues: ["detector", "disk_manager", "ticketing", "orchestrator"].map { ($0, try freeLoopbackPort()) })
        let scraped = pausePoint == nil && PrometheusServer.available
        func metrics(_ service: String) -> String {
            scraped ? ",\n\"metrics\": {\"\(service)_port\": \(metricsPorts[service]!)}" : ""
        }
        let port = broker.port
        let managerMetrics = metrics("disk_manager")
        let managers = try Manager { environment in
            try ServiceProcess("bynar-disk-manager", brokerPort: port, host: "h1", directory: "\(directory)/dm", extraConfig: """
                "disk_manager": {"trusted_keys_file": "\(directory)/trusted-keys", "max_disks_out": 1,
                  "filesystem": {"mount_root": "\(mountRoot)", "fstab": "\(fstab)", "filesystem": "ext4",
                                 "mount_options": "defaults,noatime,nofail,errors=remount-ro"}}\(managerMetrics)
                """, environment: environment)
        }
        defer { managers.process.signal(SIGTERM) }
        var manager: ServiceProcess { managers.process }
        #expect(await born("disk-manager"), "\(manager.log)")

        // Deploy the disk as a data disk (the operator's step before Bynar watches it).
        let line = try DiskManagerClient(bus: tap, privateKeyFile: key.path)
        let progress = Collector(try await tap.subscribe(Topics.diskManagerProgress(host: "h1"), as: Bynar_V1_JobProgress.self))
        var selector = Bynar_V1_DiskSelector()
        selector.devPath = original.device
        let deploy = try await line.send(.deploy(.with { $0.disk = selector }), to: "h1", timeout: .seconds(30))
        #expect(deploy.outcome == .accepted, "\(deploy)")
        #expect(await progress.wait(timeout: .seconds(60)) { $0.contains { $0.payload.jobID == deploy.jobID && $0.payload.state == .succeeded } }, "\(manager.log)")
        let mountpoint = try #require(progress.all.first { $0.payload.jobID == deploy.jobID && $0.payload.state == .succeeded }?.payload.backendID)

        // From here on the disk-manager dies at `pausePoint` once and is restarted.
        var watcher: Task<Void, Never>?
        if let pausePoint {
            try managers.replace(environment: ["TEST_DISK_MANAGER_PAUSE_AT": pausePoint])
            watcher = Task {
                let marker = "bynar-pause-point \(pausePoint) reached"
                while !Task.isCancelled {
                    if managers.process.log.contains(marker) {
                        print("e2e: disk-manager paused at \(pausePoint); kill -9 and restart")
                        try? managers.replace(environment: [:])
                        return
                    }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
        }
        defer { watcher?.cancel() }

        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, host: "h1", directory: "\(directory)/det", extraConfig: """
            "detector": {"check_interval_seconds": 2, "probe_timeout_seconds": 5}\(metrics("detector"))
            """)
        defer { detector.signal(SIGTERM) }
        let ticketing = try ServiceProcess("bynar-ticketing", brokerPort: broker.port, host: "t1", directory: "\(directory)/tic", extraConfig: """
            "ticketing": {"jira": {"base_url": "\(jira.baseURL)", "project_key": "BYN", "issue_type_id": "3", "priority_id": "2",
                                   "user": "bynar-bot", "api_token": "api-token-1"},
                          "request_timeout_seconds": 5, "retry_min_seconds": 1, "retry_max_seconds": 2,
                          "follow": {"first_check_seconds": 1, "backoff_factor": 1.0, "max_interval_seconds": 1}}\(metrics("ticketing"))
            """)
        defer { ticketing.signal(SIGTERM) }
        let orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orch", directory: "\(directory)/orc", extraConfig: """
            "orchestrator": {"signing_key_file": "\(key.path)", "request_timeout_seconds": 10, "queue_recheck_seconds": 1}\(metrics("orchestrator"))
            """)
        let prometheus: PrometheusServer? = try scraped ? PrometheusServer(targets: Dictionary(uniqueKeysWithValues: metricsPorts.map {
            ("bynar-\($0.key.replacingOccurrences(of: "_", with: "-"))", ["127.0.0.1:\($0.value)"])
        })) : nil
        defer { prometheus?.stop() }
        defer { orchestrator.signal(SIGTERM) }
        #expect(await born("detector"), "\(detector.log)")
        #expect(await born("ticketing"), "\(ticketing.log)")
        #expect(await born("orchestrator"), "\(orchestrator.log)")
        func logs() -> String {
            ["detector": detector.log, "disk-manager": manager.log, "ticketing": ticketing.log, "orchestrator": orchestrator.log]
                .map { "---- \($0.key)\n\($0.value.suffix(4000))" }.joined(separator: "\n")
        }

        // Healthy first.
        #expect(await diskEvents.wait(timeout: .seconds(30)) { $0.contains { $0.payload.disk.devPath == original.device && $0.payload.toState == .healthy } }, "\(logs())")
        let oldKey = try #require(diskEvents.all.first { $0.payload.disk.devPath == original.device }?.payload.disk.key)

        // The disk fails: writes error out, ext4 goes read-only, the detector says FAILED.
        try original.control("fail-writes 0 262144")
        try? "x".write(toFile: "\(mountpoint)/file", atomically: false, encoding: .utf8)
        _ = try? FaultyDisk.run("/bin/sync", ["-f", mountpoint])
        #expect(await diskEvents.wait(timeout: .seconds(40)) { $0.contains { $0.payload.disk.key == oldKey && $0.payload.toState == .failed } }, "\(logs())")

        // The orchestrator opens an incident, the disk-manager takes the disk out, ticketing files one ticket.
        let ticketed = await tickets.wait(timeout: .seconds(60)) { $0.contains { $0.payload.state == .opened } }
        #expect(ticketed, "\(logs())")
        let ticket = try #require(tickets.all.first { $0.payload.state == .opened }?.payload)
        #expect(incidents.all.contains { $0.payload.incident.state == .removed || $0.payload.incident.state == .ticketed }, "\(incidents.all.map(\.payload.incident.state))")
        #expect(!((try? String(contentsOfFile: fstab, encoding: .utf8)) ?? "").contains(mountpoint), "the fstab line went with the disk")
        let issue = try #require(try jira.liveIssues().first { $0.key == ticket.ticketKey })
        #expect(issue.summary.contains("h1"), "\(issue.summary)")

        // The technician: swaps the disk in the same slot, resolves the ticket.
        try original.control("vanish ENODEV")
        try original.detach()
        let replacement = try FaultyDisk(sizeMB: 128, filesystem: nil, loopDevice: original.device)
        defer { replacement.teardown() }
        #expect(await diskEvents.wait(timeout: .seconds(30)) { $0.contains { $0.payload.toState == .replaced && $0.payload.previousDisk.key == oldKey } }, "\(logs())")
        try jira.resolve(ticket.ticketKey)

        // Added back at the same mountpoint; the ticket commented and closed; the incident resolved.
        let resolved = await incidents.wait(timeout: .seconds(90)) { $0.contains { $0.payload.incident.state == .resolved } }
        #expect(resolved, "\(incidents.all.map { "\($0.payload.incident.state) \($0.payload.step) \($0.payload.message)" })\n\(logs())")
        let newUUID = try FaultyDisk.run("/sbin/blkid", ["-p", "-o", "value", "-s", "UUID", replacement.device]).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try String(contentsOfFile: fstab, encoding: .utf8) == "# e2e fstab\nUUID=\(newUUID) \(mountpoint) ext4 defaults,noatime,nofail,errors=remount-ro 0 2\n")
        #expect(FaultyDisk.mountpoints(of: replacement.device) == [mountpoint],
                "\(progress.all.filter { $0.payload.operation == "Add" }.map { "\($0.payload.state) \($0.payload.step) \($0.payload.steps)" })")
        #expect(await tickets.wait(timeout: .seconds(30)) { $0.contains { $0.payload.state == .closed && $0.payload.ticketKey == ticket.ticketKey } }, "\(logs())")
        let closed = try #require(try jira.issues().first { $0.key == ticket.ticketKey })
        #expect(!closed.comments.isEmpty, "a comment says the disk is back")
        #expect(try jira.liveIssues().count == 1, "exactly one ticket")
        // The comment and the close are sent until ticketing answers them (Outbox.Receipt):
        // the real ticketing did, so the orchestrator holds none of them any more. (No
        // notifier runs here: its notifications wait for one.)
        let orchestratorStore = try LocalStore(path: "\(directory)/orc/db/orchestrator.sqlite")
        #expect(await Collector<Int>.poll(timeout: .seconds(15)) { (try? orchestratorStore.expectsReceipts(from: "ticketing")) == false }, "\(orchestrator.log)")
        #expect(notifications.all.contains { $0.payload.incidentID == ticket.incidentID }, "people were told")
        print("e2e: incident path: \(incidents.all.map { "\($0.payload.incident.state)" }.joined(separator: " -> "))")
        if pausePoint != nil { #expect(managers.restarts == 2, "paused once and restarted: \(managers.restarts - 1) kills") }
        // Each disk-changing job ran once.
        let jobs = Dictionary(grouping: progress.all.filter { $0.payload.state != .running }, by: \.payload.operation).mapValues(\.count)
        #expect(jobs["Remove"] == 1 && jobs["Add"] == 1, "\(jobs)")
        if let prometheus { await expectRepairFigures(prometheus) }
        await tap.shutdown()
    }

    /// What Prometheus scraped from the services during the repair: every target up, one
    /// Deploy, Remove and Add job each succeeded (with its duration), one incident opened and
    /// resolved, the brake back to no disk out, JIRA answered, the detector checked disks.
    func expectRepairFigures(_ prometheus: PrometheusServer) async {
        func value(_ query: String, is expected: Double) async {
            let samples = await prometheus.wait(for: query, timeout: .seconds(15)) { $0.count == 1 && $0[0].value == expected }
            #expect(samples.count == 1 && samples.first?.value == expected, "\(query): \(samples)\n\(prometheus.log.suffix(2000))")
        }
        await value("count(up == 1)", is: 4)
        await value(#"bynar_disk_manager_jobs_total{operation="remove",outcome="succeeded"}"#, is: 1)
        await value(#"bynar_disk_manager_jobs_total{operation="add",outcome="succeeded"}"#, is: 1)
        await value(#"bynar_disk_manager_jobs_total{operation="deploy",outcome="succeeded"}"#, is: 1)
        await value(#"sum(bynar_disk_manager_job_duration_seconds_count{operation="remove"})"#, is: 1)
        await value("bynar_orchestrator_incidents_opened_total", is: 1)
        await value(#"bynar_orchestrator_incidents_closed_total{state="resolved"}"#, is: 1)
        await value(#"sum(bynar_orchestrator_incidents)"#, is: 0)
        await value(#"sum(bynar_orchestrator_disks_out)"#, is: 0)
        await value(#"count(sum by (backend) (bynar_ticketing_requests_total{backend="jira",code=~"2.."}) > 0)"#, is: 1)
        await value(#"count(bynar_detector_disks{host="h1",state="healthy"} >= 1)"#, is: 1)
        await value("count(bynar_detector_check_duration_seconds_count > 0)", is: 1)
        await value(#"bynar_outbox_messages{job="bynar-orchestrator",state="pending"}"#, is: 0)
        let published = (try? prometheus.query("bynar_bus_messages_published_total")) ?? []
        #expect(published.count == 4 && published.allSatisfy { $0.value > 0 }, "\(published)")
        print("e2e: Prometheus: \((try? prometheus.query(#"{__name__=~"bynar_disk_manager_jobs_total|bynar_orchestrator_incidents_closed_total"}"#)) ?? [])")
    }
}
