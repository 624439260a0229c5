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
///   faultfs loop device, so the kernel sees real I/O errors from it; OSDs are created the
///   way a host without LVM does it: `ceph-volume raw prepare` + `raw activate`
///   (`ceph-dev-cluster volume-create`, which starts the daemon by hand: no systemd here);
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
/// Everything both repairs need, started in order and stopped in reverse by ``stop()``:
/// the cluster with osd.4 deployed through the disk-manager on a faultfs disk, 20 objects,
/// the broker, the stand-ins, every service, and collectors on the bus.
final class CephRepairRig: @unchecked Sendable {
    let temp: String
    let t0 = ContinuousClock.now
    private(set) var timeline: [(String, String)] = []
    let cluster: DevCluster
    let rados: RadosCluster
    let original: FaultyDisk
    var replacement: FaultyDisk?
    let broker: TestBroker
    let jira: JiraStandIn
    let slack: SlackStandIn
    let tap: Bus
    let window: RepairTap
    var incidents: Collector<Received<Bynar_V1_IncidentEvent>> { window.incidents }
    var tickets: Collector<Received<Bynar_V1_TicketEvent>> { window.tickets }
    var diskEvents: Collector<Received<Bynar_V1_DiskHealthEvent>> { window.diskEvents }
    var progress: Collector<Received<Bynar_V1_JobProgress>> { window.progress }
    let healths: Collector<Received<Bynar_V1_DiskHealth>>
    private(set) var processes: [(String, ServiceProcess)] = []
    private(set) var objects: TestObjects!
    private(set) var oldKey = ""
    private var stopped = false

    func mark(_ what: String) {
        timeline.append((what, seconds(since: t0)))
        print("ceph-e2e: \(seconds(since: t0)) \(what)")
    }

    init(prefix: String, missingGraceSeconds: Int = 300) async throws {
        temp = try makeTemporaryDirectory(prefix: prefix)
        cluster = try DevCluster(parent: temp, osds: 4, store: "bluestore")
        do {
            rados = try RadosCluster(configPath: cluster.conf)
            original = try FaultyDisk(sizeMB: 4096, filesystem: nil)
        } catch {
            cluster.stop()
            throw error
        }
        broker = try TestBroker()
        jira = try JiraStandIn()
        slack = try SlackStandIn()
        tap = try await connectedBus(broker, service: "tap", host: "t")
        window = try await RepairTap(tap, host: "h1")
        healths = Collector(try await tap.subscribe(Topics.diskHealth(host: "h1", disk: "+"), as: Bynar_V1_DiskHealth.self))
        mark("cluster of 4 bluestore OSDs healthy")
        print("ceph-e2e: watch the bus: BYNAR_BROKER__PORT=\(broker.port) \(packageRoot)/.build/debug/bynar tap")
        try await startServices(missingGraceSeconds: missingGraceSeconds)
    }

    private func born(_ service: String) async -> Bool {
        await window.born(service)
    }

    private func startServices(missingGraceSeconds: Int) async throws {
        for name in ["det", "dm", "tic", "orc", "not"] {
            try FileManager.default.createDirectory(atPath: "\(temp)/\(name)", withIntermediateDirectories: true)
        }
        let keyFiles = try KeyFiles.generate(keyID: "orchestrator")
        let keyPath = "\(temp)/orchestrator.key"
        try keyFiles.privateKeyFileText.write(toFile: keyPath, atomically: true, encoding: .utf8)
        chmod(keyPath, 0o600)
        try keyFiles.trustedKeysLine.write(toFile: "\(temp)/trusted-keys", atomically: true, encoding: .utf8)

        let manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, host: "h1", directory: "\(temp)/dm",
                                         extraConfig: cluster.diskManagerConfig(trustedKeys: "\(temp)/trusted-keys", create: "volume-create",
                                                                                safeToDestroySeconds: 300, upSeconds: 180, commandSeconds: 240))
        processes.append(("disk-manager", manager))
        #expect(await born("disk-manager"), "\(manager.log)")

        // osd.4 on the faultfs disk, deployed through the bus like any new disk.
        let line = try DiskManagerClient(bus: tap, privateKeyFile: keyPath)
        var selector = Bynar_V1_DiskSelector()
        selector.devPath = original.device
        let deploy = try await line.send(.deploy(.with { $0.disk = selector }), to: "h1", timeout: .seconds(30))
        #expect(deploy.outcome == .accepted, "\(deploy)")
        #expect(await progress.wait(timeout: .seconds(240)) { $0.contains { $0.payload.jobID == deploy.jobID && $0.payload.state == .succeeded } },
                "\(progress.all.map(\.payload))\n\(manager.log.suffix(4000))")
        let osdID = try #require(progress.all.first { $0.payload.jobID == deploy.jobID && $0.payload.state == .succeeded }?.payload.backendID)
        #expect(osdID == "4")
        mark("osd.\(osdID) deployed on \(original.device) through the disk-manager")
        objects = try TestObjects(cluster: cluster, rados: rados, directory: "\(temp)/objects", log: "\(temp)/commands.log", healthySeconds: 240)
        mark("pool of size 3 with 20 objects, HEALTH_OK")

        processes.append(("detector", try ServiceProcess("bynar-detector", brokerPort: broker.port, host: "h1", directory: "\(temp)/det", extraConfig: """
            "detector": {"check_interval_seconds": 5, "probe_timeout_seconds": 5,
                         "ceph": {"config_file": "\(cluster.conf)", "poll_seconds": 2, "cluster_name": "dev"}}
            """)))
        processes.append(("ticketing", try ServiceProcess("bynar-ticketing", brokerPort: broker.port, host: "t1", directory: "\(temp)/tic", extraConfig: """
            "ticketing": {"jira": {"base_url": "\(jira.baseURL)", "project_key": "BYN", "issue_type_id": "3", "priority_id": "2",
                                   "user": "bynar-bot", "api_token": "api-token-1"},
                          "request_timeout_seconds": 5, "retry_min_seconds": 1, "retry_max_seconds": 2,
                          "follow": {"first_check_seconds": 1, "backoff_factor": 1.0, "max_interval_seconds": 1}}
            """)))
        processes.append(("notifier", try ServiceProcess("bynar-notifier", brokerPort: broker.port, host: "n1", directory: "\(temp)/not", extraConfig: """
            "notifier": {"slack": {"webhook_url": "\(slack.webhookURL)", "quiet_seconds": 1}}
            """)))
        processes.append(("orchestrator", try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orch", directory: "\(temp)/orc", extraConfig: """
            "orchestrator": {"signing_key_file": "\(keyPath)", "request_timeout_seconds": 30, "queue_recheck_seconds": 2,
                             "default_cluster": "dev", "missing_grace_seconds": \(missingGraceSeconds),
                             "steps": {"remove": {"timeout_seconds": 600, "retries": 1}, "add": {"timeout_seconds": 600, "retries": 1}}}
            """)))
        for (service, process) in processes.dropFirst() {
            #expect(await born(service), "\(process.log)")
        }

        // The detector knows the disk as osd.4's, healthy.
        #expect(await healths.wait(timeout: .seconds(60)) {
            $0.contains { $0.payload.disk.devPath == self.original.device && $0.payload.state == .healthy && $0.payload.inUseBy.contains("osd.4") }
        }, "\(healths.all.map { "\($0.payload.disk.devPath) \($0.payload.state) \($0.payload.inUseBy)" })\n\(logs())")
        oldKey = try #require(healths.all.first { $0.payload.disk.devPath == original.device }?.payload.disk.key)
        mark("detector: \(original.device) HEALTHY, in use by osd.4")
    }

    func logs() -> String {
        processes.filter { $0.0 != "notifier" }.map { "---- \($0.0)\n\($0.1.log.suffix(5000))" }.joined(separator: "\n")
    }

    /// Waits for the ticket and checks what Ceph and JIRA now say; returns the ticket.
    func ticketAfterRemoval(naming needles: [String]) async throws -> Bynar_V1_TicketEvent {
        #expect(await tickets.wait(timeout: .seconds(400)) { $0.contains { $0.payload.state == .opened } },
                "\(incidents.all.map { "\($0.payload.incident.state) \($0.payload.message)" })\n\(logs())")
        let ticket = try #require(tickets.all.first { $0.payload.state == .opened }?.payload)
        mark("ticket \(ticket.ticketKey) opened")
        let removeJob = progress.all.first { $0.payload.operation == "Remove" && $0.payload.state == .succeeded }?.payload
        #expect(removeJob?.backendID == "4" && removeJob?.backend == "ceph", "\(progress.all.map(\.payload))")
        let removeSteps = Set(progress.all.filter { $0.payload.operation == "Remove" }.map(\.payload.step))
        for step in ["mark osd.4 out", "wait until osd.4 is safe to destroy", "stop the daemon of osd.4", "destroy osd.4 (id and CRUSH position kept)"] {
            #expect(removeSteps.contains(step), "Remove step \(step): \(removeSteps)")
        }
        let destroyed = try CephBackend(cluster: rados).osdState(4)
        #expect(destroyed.exists && destroyed.destroyed, "osd.4 destroyed, id kept: \(destroyed)")
        let issue = try #require(try jira.liveIssues().first { $0.key == ticket.ticketKey })
        for needle in ["h1", original.device, "loop", "/fuse/disk", "osd.4"] + needles {
            #expect(issue.description.contains(needle) || issue.summary.contains(needle),
                    "the ticket names \(needle):\n\(issue.summary)\n\(issue.description)")
        }
        return ticket
    }

    /// The technician puts a new blank disk in the slot (same /dev name) and resolves the
    /// ticket; then osd.4 must come back on it, the ticket close, the cluster heal and every
    /// object read back, each disk-changing job having run once.
    func technicianReplacesTheDisk(ticket: Bynar_V1_TicketEvent) async throws {
        let new = try FaultyDisk(sizeMB: 4096, filesystem: nil, loopDevice: original.device)
        replacement = new
        mark("technician: new disk in the slot as \(new.device)")
        #expect(await diskEvents.wait(timeout: .seconds(60)) { $0.contains { $0.payload.toState == .replaced && $0.payload.previousDisk.key == self.oldKey } }, "\(logs())")
        try jira.resolve(ticket.ticketKey)
        mark("technician: ticket resolved")
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
        let jobs = Dictionary(grouping: progress.all.filter { $0.payload.state != .running && $0.payload.operation != "Deploy" }, by: \.payload.operation).mapValues(\.count)
        #expect(jobs["Remove"] == 1 && jobs["Add"] == 1, "each disk-changing job ran once: \(jobs)")
        print("ceph-e2e: incident path: \(incidents.all.map { "\($0.payload.incident.state)" }.joined(separator: " -> "))")
        print("ceph-e2e: timeline:\n" + timeline.map { "ceph-e2e:   \($0.1)\t\($0.0)" }.joined(separator: "\n"))
    }

    /// Stops everything in reverse order; removes the files when the test passed.
    func stop(passed: Bool) async {
        guard !stopped else { return }
        stopped = true
        for (_, process) in processes.reversed() { process.signal(SIGTERM) }
        await tap.shutdown()
        slack.stop()
        jira.stop()
        broker.stop()
        replacement?.teardown()
        original.teardown()
        cluster.stop()
        if passed { try? FileManager.default.removeItem(atPath: temp) }
    }
}

@Suite(.serialized, .enabled(if: cephAvailable && FaultyDisk.available && TestBroker.available, "needs root, Ceph, faultfs (FUSE), loop devices and mosquitto"))
struct CephEndToEndTests {
    @Test(.timeLimit(.minutes(15)))
    func aDyingOSDDiskIsRepairedEndToEnd() async throws {
        let rig = try await CephRepairRig(prefix: "bynar-ceph-e2e")
        var passed = false
        do {
            // Read errors on the first 300 MiB, then every I/O fails.
            try rig.original.control("fail-reads 0 614400")
            let firstFailure = ContinuousClock.now
            rig.mark("read errors injected on the first 300 MiB")
            #expect(await rig.diskEvents.wait(timeout: .seconds(60)) {
                $0.contains { $0.payload.disk.key == rig.oldKey && [.suspect, .failing, .failed].contains($0.payload.toState) }
            }, "\(rig.logs())")
            rig.mark("detector: \(rig.diskEvents.all.last { $0.payload.disk.key == rig.oldKey }.map { "\($0.payload.toState)" } ?? "?")")
            try rig.original.control("fail 0 8388608")
            let dead = ContinuousClock.now
            rig.mark("every I/O fails")
            #expect(await rig.diskEvents.wait(timeout: .seconds(60)) { $0.contains { $0.payload.disk.key == rig.oldKey && $0.payload.toState == .failed } }, "\(rig.logs())")
            let failedAfter = ContinuousClock.now - dead
            let failedEvent = try #require(rig.diskEvents.all.first { $0.payload.disk.key == rig.oldKey && $0.payload.toState == .failed }?.payload)
            rig.mark("detector: FAILED (\(failedEvent.reasons.map(\.rule).joined(separator: ", "))), \(seconds(since: dead)) after every I/O failed, \(seconds(since: firstFailure)) after the first read error")
            #expect(failedAfter < .seconds(30), "a disk whose every I/O fails is FAILED within 30 s; took \(failedAfter)")

            let ticket = try await rig.ticketAfterRemoval(naming: ["failed"])
            let issue = try #require(try rig.jira.liveIssues().first { $0.key == ticket.ticketKey })
            #expect(issue.description.contains("disk.unreadable") || issue.description.contains("ceph.osd_down_io_errors"), "the ticket says why:\n\(issue.description)")
            #expect(!issue.description.contains("Verdict:* failing"), "the ticket says the incident's verdict:\n\(issue.description)")

            // The dead disk out, a new blank one in the same slot under the same name.
            try rig.original.control("vanish ENODEV")
            try rig.original.detach()
            try await rig.technicianReplacesTheDisk(ticket: ticket)
            passed = true
        } catch {
            Issue.record(error)
        }
        await rig.stop(passed: passed)
    }

    /// The two ways Ceph itself shows a failing disk, recognised for what they are and named
    /// (OSD and disk): scrub errors (reads of one object's sectors fail on a replica: the OSD
    /// stays up, `PG_DAMAGED ... inconsistent`) make the disk FAILING; then writes fail, the
    /// OSD aborts on the EIO and is marked down, and the disk is FAILED.
    @Test(.timeLimit(.minutes(10)))
    func scrubErrorsAndAnOSDThatCrashesOnEIOAreRecognised() async throws {
        let rig = try await CephRepairRig(prefix: "bynar-ceph-faults")
        var passed = false
        do {
            // An object with osd.4 in its acting set but not its primary (a replica's read
            // error is found by deep scrub; the primary's is repaired silently on read).
            struct Mapping: Decodable { var pgid: String; var acting: [Int]; var acting_primary: Int }
            var chosen: (name: String, pg: String)?
            for index in (1...20).reversed() where chosen == nil {
                let reply = try rig.rados.checkedMonCommand(#"{"prefix":"osd map","pool":"bynar","object":"obj-\#(index)","format":"json"}"#)
                let mapping = try JSONDecoder().decode(Mapping.self, from: Data(reply.output))
                if mapping.acting.contains(4) && mapping.acting_primary != 4 { chosen = ("obj-\(index)", mapping.pgid) }
            }
            let object = try #require(chosen, "an object with a replica on osd.4")
            let finder = "\(packageRoot)/scripts/ceph-volume-notes/find-object-sectors.py"
            let found = try FaultyDisk.run("/usr/bin/python3", [finder, rig.original.image, "\(rig.objects.directory)/\(object.name)"])
            let rule = try #require(found.split(separator: "\n").first { $0.contains("fail-reads") }.map { line in
                String(line.split(separator: "#")[0]).split(separator: " ").dropFirst().joined(separator: " ")
            }, "sectors of \(object.name): \(found)")
            try rig.original.control(rule)
            rig.mark("reads of \(object.name) (pg \(object.pg)) fail on osd.4: \(rule)")
            let scrub = ContinuousClock.now
            try DevCluster.run("/usr/bin/ceph", ["-c", rig.cluster.conf, "pg", "deep-scrub", object.pg], log: "\(rig.temp)/commands.log")
            #expect(await rig.healths.wait(timeout: .seconds(90)) {
                $0.contains { $0.payload.disk.key == rig.oldKey && $0.payload.reasons.contains { $0.rule == "ceph.scrub_errors" && $0.detail.contains(object.pg) && $0.detail.contains("osd.4") } }
            }, "\(rig.healths.all.filter { $0.payload.disk.key == rig.oldKey }.map { "\($0.payload.state) \($0.payload.reasons.map(\.rule))" })\n\(rig.logs())")
            let scrubbed = try #require(rig.healths.all.last { $0.payload.disk.key == rig.oldKey }?.payload)
            #expect(scrubbed.state == .failing, "scrub errors with read errors on the disk: failing, \(scrubbed.reasons.map(\.rule))")
            #expect(scrubbed.inUseBy.contains("osd.4"))
            rig.mark("detector: \(scrubbed.state) (\(scrubbed.reasons.map(\.rule).joined(separator: ", "))), \(seconds(since: scrub)) after the deep scrub was asked for")

            // Writes fail: bluestore aborts ("Unexpected IO error"), the mon marks osd.4 down.
            try rig.original.control("clear\nfail-writes 0 8388608")
            let crash = ContinuousClock.now
            rig.mark("writes fail on osd.4's disk")
            let writer = Task.detached {
                for index in 1...20 {
                    let path = "\(rig.temp)/objects/crash-\(index)"
                    try? Data(repeating: UInt8(index), count: 65536).write(to: URL(fileURLWithPath: path))
                    try? rig.cluster.rados(["-p", "bynar", "put", "crash-\(index)", path], log: "\(rig.temp)/commands.log")
                }
            }
            #expect(await rig.diskEvents.wait(timeout: .seconds(90)) { $0.contains { $0.payload.disk.key == rig.oldKey && $0.payload.toState == .failed } }, "\(rig.logs())")
            let failed = try #require(rig.diskEvents.all.first { $0.payload.disk.key == rig.oldKey && $0.payload.toState == .failed }?.payload)
            #expect(failed.reasons.contains { $0.rule == "ceph.osd_down_io_errors" && $0.detail.contains("osd.4") }, "\(failed.reasons.map { "\($0.rule): \($0.detail)" })")
            rig.mark("detector: FAILED (\(failed.reasons.map(\.rule).joined(separator: ", "))), \(seconds(since: crash)) after writes started failing")
            let state = try CephBackend(cluster: rig.rados).osdState(4)
            #expect(!state.up, "osd.4 crashed and is down: \(state)")
            writer.cancel()
            passed = true
        } catch {
            Issue.record(error)
        }
        await rig.stop(passed: passed)
    }

    /// The commonest death: the disk drops off the host entirely. The OSD crashes (the test
    /// kills it: a loop device stays while a process holds it open, a real disk does not),
    /// the device goes; the detector says MISSING; after the grace period the orchestrator
    /// repairs it like a failed one, and the disk-manager takes osd.4 out from who the disk
    /// was (nothing is written to its old /dev name).
    @Test(.timeLimit(.minutes(15)))
    func aDiskThatDropsOffTheHostIsRepaired() async throws {
        let rig = try await CephRepairRig(prefix: "bynar-ceph-gone", missingGraceSeconds: 5)
        var passed = false
        do {
            try rig.original.control("vanish ENODEV")
            let pid = try String(contentsOfFile: "\(rig.cluster.directory)/run/osd.4.pid", encoding: .utf8).filter(\.isNumber)
            if let pid = Int32(pid) { kill(pid, SIGKILL) }
            try rig.original.detach()
            let gone = ContinuousClock.now
            rig.mark("disk gone from the host (osd.4 crashed, \(rig.original.device) detached)")
            #expect(await rig.diskEvents.wait(timeout: .seconds(60)) { $0.contains { $0.payload.disk.key == rig.oldKey && $0.payload.toState == .missing } }, "\(rig.logs())")
            rig.mark("detector: MISSING, \(seconds(since: gone)) after the disk went")
            let ticket = try await rig.ticketAfterRemoval(naming: ["Missing", "disk.missing"])
            try await rig.technicianReplacesTheDisk(ticket: ticket)
            passed = true
        } catch {
            Issue.record(error)
        }
        await rig.stop(passed: passed)
    }
}
