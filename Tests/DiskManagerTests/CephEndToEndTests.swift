import BynarAuth
import BynarBus
import BynarCeph
import BynarProto
import BynarTestSupport
import DiskManager
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A dying OSD disk repaired end to end on a real cluster, with every real service:
/// - a real Pacific cluster from `scripts/ceph-dev-cluster` (4 bluestore OSDs on loop
///   devices) and a fifth OSD that the real bynar-disk-manager deploys (signed Deploy) on a
///   faultfs loop device, so the kernel sees real I/O errors from it;
/// - the real bynar-detector (read probe, kernel log, the cluster's view), bynar-disk-manager
///   (Ceph backend), bynar-orchestrator, bynar-ticketing against the STAND-IN JIRA and
///   bynar-notifier against the STAND-IN Slack (no real JIRA or Slack can run here; the
///   stand-ins follow the vendors' documented APIs, see `Tests/StandIns`).
///
/// The test injects read errors on the first 300 MiB, then fails every I/O, and times each
/// step: kernel errors → FAILED → incident → removal (ok-to-stop, out, safe-to-destroy, stop,
/// destroy keeping the id) → ticket; then plays the technician (a new blank disk under the
/// same /dev name, the ticket resolved) and sees the OSD re-created with the same id, the
/// ticket commented and closed, HEALTH_OK, and every object written before the failure read
/// back identical.
@Suite(.serialized, .enabled(if: cephAvailable && FaultyDisk.available && TestBroker.available, "needs root, Ceph, faultfs (FUSE), loop devices and mosquitto"))
struct CephEndToEndTests {
    @Test(.timeLimit(.minutes(15)))
    func aDyingOSDDiskIsRepairedEndToEnd() async throws {
        let temp = try makeTemporaryDirectory(prefix: "bynar-ceph-e2e")
        var finished = false
        defer { if finished { try? FileManager.default.removeItem(atPath: temp) } }
        let t0 = ContinuousClock.now
        var timeline: [(String, String)] = []
        func mark(_ what: String) { timeline.append((what, seconds(since: t0))); print("ceph-e2e: \(seconds(since: t0)) \(what)") }

        let cluster: DevCluster
        do {
            cluster = try DevCluster(parent: temp, osds: 4, store: "bluestore")
        } catch {
            try? DevCluster.script(["stop", "\(temp)/cluster"], log: "\(temp)/cluster-script.log")
            throw error
        }
        defer { cluster.stop() }
        mark("cluster of 4 bluestore OSDs healthy")
        let rados = try RadosCluster(configPath: cluster.conf)

        // The disk that will die: a faultfs loop device, deployed as osd.4 by the disk-manager.
        let original = try FaultyDisk(sizeMB: 4096, filesystem: nil)
        defer { original.teardown() }
        let broker = try TestBroker()
        let jira = try JiraStandIn()
        defer { jira.stop() }
        let slack = try SlackStandIn()
        defer { slack.stop() }
        for name in ["det", "dm", "tic", "orc", "not"] {
            try FileManager.default.createDirectory(atPath: "\(temp)/\(name)", withIntermediateDirectories: true)
        }
        let keyFiles = try KeyFiles.generate(keyID: "orchestrator")
        let key = (path: "\(temp)/orchestrator.key", trustedLine: keyFiles.trustedKeysLine)
        try keyFiles.privateKeyFileText.write(toFile: key.path, atomically: true, encoding: .utf8)
        chmod(key.path, 0o600)
        try key.trustedLine.write(toFile: "\(temp)/trusted-keys", atomically: true, encoding: .utf8)

        print("ceph-e2e: watch the bus: BYNAR_BROKER__PORT=\(broker.port) \(packageRoot)/.build/debug/bynar tap")
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let statuses = Collector(try await tap.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
        let incidents = Collector(try await tap.subscribe(Topics.incidentEvents, as: Bynar_V1_IncidentEvent.self))
        let tickets = Collector(try await tap.subscribe(Topics.ticketEvents, as: Bynar_V1_TicketEvent.self))
        let diskEvents = Collector(try await tap.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let progress = Collector(try await tap.subscribe(Topics.diskManagerProgress(host: "h1"), as: Bynar_V1_JobProgress.self))
        func born(_ service: String) async -> Bool {
            await statuses.wait(timeout: .seconds(20)) { $0.contains { $0.payload.service == service && $0.payload.state == .birth } }
        }

        let script = DevCluster.script
        let dir = cluster.directory
        let manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, host: "h1", directory: "\(temp)/dm", extraConfig: """
            "disk_manager": {"trusted_keys_file": "\(temp)/trusted-keys", "max_disks_out": 1,
              "ceph": {"config_file": "\(cluster.conf)", "poll_interval_ms": 500, "safe_to_destroy_timeout_seconds": 300,
                       "up_timeout_seconds": 180, "command_timeout_seconds": 240, "wipe_after_destroy": true,
                       "stop_command": ["/bin/bash", "\(script)", "osd-stop", "\(dir)", "{id}"],
                       "start_command": ["/bin/bash", "\(script)", "osd-start", "\(dir)", "{id}", "--wait", "60"],
                       "create_with_id_command": ["/bin/bash", "\(script)", "osd-new", "\(dir)", "{id}", "--device", "{device}"],
                       "create_command": ["/bin/bash", "\(script)", "osd-new", "\(dir)", "--device", "{device}"]}}
            """)
        defer { manager.signal(SIGTERM) }
        #expect(await born("disk-manager"), "\(manager.log)")
        let line = try DiskManagerClient(bus: tap, privateKeyFile: key.path)
        var selector = Bynar_V1_DiskSelector()
        selector.devPath = original.device
        let deploy = try await line.send(.deploy(.with { $0.disk = selector }), to: "h1", timeout: .seconds(30))
        #expect(deploy.outcome == .accepted, "\(deploy)")
        #expect(await progress.wait(timeout: .seconds(240)) { $0.contains { $0.payload.jobID == deploy.jobID && $0.payload.state == .succeeded } },
                "\(progress.all.map(\.payload))\n\(manager.log.suffix(4000))")
        let osdID = try #require(progress.all.first { $0.payload.jobID == deploy.jobID && $0.payload.state == .succeeded }?.payload.backendID)
        #expect(osdID == "4")
        mark("osd.\(osdID) deployed on \(original.device) through the disk-manager")
        let objects = try TestObjects(cluster: cluster, rados: rados, directory: "\(temp)/objects", log: "\(temp)/commands.log", healthySeconds: 240)
        mark("pool of size 3 with 20 objects, HEALTH_OK")

        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, host: "h1", directory: "\(temp)/det", extraConfig: """
            "detector": {"check_interval_seconds": 5, "probe_timeout_seconds": 5,
                         "ceph": {"config_file": "\(cluster.conf)", "poll_seconds": 2, "cluster_name": "dev"}}
            """)
        defer { detector.signal(SIGTERM) }
        let ticketing = try ServiceProcess("bynar-ticketing", brokerPort: broker.port, host: "t1", directory: "\(temp)/tic", extraConfig: """
            "ticketing": {"jira": {"base_url": "\(jira.baseURL)", "project_key": "BYN", "issue_type_id": "3", "priority_id": "2",
                                   "user": "bynar-bot", "api_token": "api-token-1"},
                          "request_timeout_seconds": 5, "retry_min_seconds": 1, "retry_max_seconds": 2,
                          "follow": {"first_check_seconds": 1, "backoff_factor": 1.0, "max_interval_seconds": 1}}
            """)
        defer { ticketing.signal(SIGTERM) }
        let notifier = try ServiceProcess("bynar-notifier", brokerPort: broker.port, host: "n1", directory: "\(temp)/not", extraConfig: """
            "notifier": {"slack": {"webhook_url": "\(slack.webhookURL)", "quiet_seconds": 1}}
            """)
        defer { notifier.signal(SIGTERM) }
        let orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orch", directory: "\(temp)/orc", extraConfig: """
            "orchestrator": {"signing_key_file": "\(key.path)", "request_timeout_seconds": 30, "queue_recheck_seconds": 2,
                             "default_cluster": "dev",
                             "steps": {"remove": {"timeout_seconds": 600, "retries": 1}, "add": {"timeout_seconds": 600, "retries": 1}}}
            """)
        defer { orchestrator.signal(SIGTERM) }
        for (service, process) in [("detector", detector), ("ticketing", ticketing), ("notifier", notifier), ("orchestrator", orchestrator)] {
            #expect(await born(service), "\(process.log)")
        }
        func logs() -> String {
            ["detector": detector.log, "disk-manager": manager.log, "ticketing": ticketing.log, "orchestrator": orchestrator.log]
                .map { "---- \($0.key)\n\($0.value.suffix(5000))" }.joined(separator: "\n")
        }

        // The detector knows the disk as osd.4's, healthy.
        let healthTopic = Collector(try await tap.subscribe(Topics.diskHealth(host: "h1", disk: "+"), as: Bynar_V1_DiskHealth.self))
        #expect(await healthTopic.wait(timeout: .seconds(60)) {
            $0.contains { $0.payload.disk.devPath == original.device && $0.payload.state == .healthy && $0.payload.inUseBy.contains("osd.4") }
        }, "\(healthTopic.all.map { "\($0.payload.disk.devPath) \($0.payload.state) \($0.payload.inUseBy)" })\n\(logs())")
        let oldKey = try #require(healthTopic.all.first { $0.payload.disk.devPath == original.device }?.payload.disk.key)
        mark("detector: \(original.device) HEALTHY, in use by osd.4")

        // Read errors on the first 300 MiB, then every I/O fails.
        try original.control("fail-reads 0 614400")
        let firstFailure = ContinuousClock.now
        mark("read errors injected on the first 300 MiB")
        #expect(await diskEvents.wait(timeout: .seconds(60)) { $0.contains { $0.payload.disk.key == oldKey && [.suspect, .failing, .failed].contains($0.payload.toState) } }, "\(logs())")
        mark("detector: \(diskEvents.all.last { $0.payload.disk.key == oldKey }.map { "\($0.payload.toState)" } ?? "?")")
        try original.control("fail 0 8388608")
        let dead = ContinuousClock.now
        mark("every I/O fails")
        #expect(await diskEvents.wait(timeout: .seconds(60)) { $0.contains { $0.payload.disk.key == oldKey && $0.payload.toState == .failed } }, "\(logs())")
        let failedAfter = ContinuousClock.now - dead
        let failedEvent = try #require(diskEvents.all.first { $0.payload.disk.key == oldKey && $0.payload.toState == .failed }?.payload)
        mark("detector: FAILED (\(failedEvent.reasons.map(\.rule).joined(separator: ", "))), \(seconds(since: dead)) after every I/O failed, \(seconds(since: firstFailure)) after the first read error")
        #expect(failedAfter < .seconds(30), "a disk whose every I/O fails is FAILED within 30 s; took \(failedAfter)")

        // Incident, removal through Ceph, the ticket.
        #expect(await tickets.wait(timeout: .seconds(400)) { $0.contains { $0.payload.state == .opened } },
                "\(incidents.all.map { "\($0.payload.incident.state) \($0.payload.message)" })\n\(logs())")
        let ticket = try #require(tickets.all.first { $0.payload.state == .opened }?.payload)
        mark("ticket \(ticket.ticketKey) opened")
        let removeJob = progress.all.first { $0.payload.operation == "Remove" && $0.payload.state == .succeeded }?.payload
        #expect(removeJob?.backendID == "4", "\(progress.all.map(\.payload))")
        let removeSteps = Set(progress.all.filter { $0.payload.operation == "Remove" }.map(\.payload.step))
        for step in ["mark osd.4 out", "wait until osd.4 is safe to destroy", "stop the daemon of osd.4", "destroy osd.4 (id and CRUSH position kept)"] {
            #expect(removeSteps.contains(step), "Remove step \(step): \(removeSteps)")
        }
        let destroyed = try CephBackend(cluster: rados).osdState(4)
        #expect(destroyed.exists && destroyed.destroyed, "osd.4 destroyed, id kept: \(destroyed)")
        let issue = try #require(try jira.liveIssues().first { $0.key == ticket.ticketKey })
        for needle in ["h1", original.device, "loop", "/fuse/disk", "failed", "osd.4"] {
            #expect(issue.description.lowercased().contains(needle.lowercased()) || issue.summary.lowercased().contains(needle.lowercased()),
                    "the ticket names \(needle):\n\(issue.summary)\n\(issue.description)")
        }
        #expect(issue.description.contains("disk.unreadable") || issue.description.contains("ceph.osd_down_io_errors"), "the ticket says why:\n\(issue.description)")
        #expect(!issue.description.contains("Verdict:* failing"), "the ticket says the incident's verdict:\n\(issue.description)")

        // The technician: the dead disk out, a new blank one in the same slot under the same name.
        try original.control("vanish ENODEV")
        try original.detach()
        let replacement = try FaultyDisk(sizeMB: 4096, filesystem: nil, loopDevice: original.device)
        defer { replacement.teardown() }
        mark("technician: new disk in the slot as \(replacement.device)")
        #expect(await diskEvents.wait(timeout: .seconds(60)) { $0.contains { $0.payload.toState == .replaced && $0.payload.previousDisk.key == oldKey } }, "\(logs())")
        try jira.resolve(ticket.ticketKey)
        mark("technician: ticket resolved")

        // osd.4 again on the new disk; the ticket closed; the incident resolved.
        let resolved = await incidents.wait(timeout: .seconds(400)) { $0.contains { $0.payload.incident.state == .resolved } }
        #expect(resolved, "\(incidents.all.map { "\($0.payload.incident.state) \($0.payload.step) \($0.payload.message)" })\n\(logs())")
        let added = progress.all.first { $0.payload.operation == "Add" && $0.payload.state == .succeeded }?.payload
        #expect(added?.backendID == "4", "re-created with the same id: \(progress.all.map(\.payload))")
        mark("osd.4 re-created on the new disk; incident RESOLVED")
        let now = try CephBackend(cluster: rados).osdState(4)
        #expect(now.up && now.in && !now.destroyed, "\(now)")
        #expect(await tickets.wait(timeout: .seconds(60)) { $0.contains { $0.payload.state == .closed && $0.payload.ticketKey == ticket.ticketKey } }, "\(logs())")
        let closed = try #require(try jira.issues().first { $0.key == ticket.ticketKey })
        #expect(!closed.comments.isEmpty, "a comment says the disk is back")
        #expect(try jira.liveIssues().count == 1, "exactly one ticket")
        mark("ticket commented and closed")
        try cluster.waitHealthy(seconds: 300)
        mark("HEALTH_OK")
        #expect(try objects.identical() == 20, "every object written before the failure reads back identical")
        mark("20 of 20 objects read back identical")
        #expect(try slack.delivered().contains { ($0.payload?.text ?? "").contains("h1") }, "people were told on Slack")
        let jobs = Dictionary(grouping: progress.all.filter { $0.payload.state != .running }, by: \.payload.operation).mapValues(\.count)
        #expect(jobs["Remove"] == 1 && jobs["Add"] == 1, "each disk-changing job ran once: \(jobs)")
        print("ceph-e2e: incident path: \(incidents.all.map { "\($0.payload.incident.state)" }.joined(separator: " -> "))")
        print("ceph-e2e: timeline:\n" + timeline.map { "ceph-e2e:   \($0.1)\t\($0.0)" }.joined(separator: "\n"))
        await tap.shutdown()
        finished = true
    }
}
