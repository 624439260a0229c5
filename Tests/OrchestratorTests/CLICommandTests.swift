import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Orchestrator
import Testing

/// Every `bynar` command as an operator runs it: the built executable against a real
/// broker, with simulated disk-managers (``DiskManagerSimulator``, the real protocol) or
/// the real bynar-disk-manager; stdout, --json and exit codes checked.
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct CLICommandTests {
    @Test func anUnreachableBrokerIsNamedAndExits69() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        defer { broker.stop(); fixture.cleanUp() }
        let port = try freeLoopbackPort()
        let hosts = try fixture.file("hosts", ["h1"])
        let key = ["--key", fixture.keyPath]
        for command in [["disks", "list", "--host", "h1"] + key, ["incidents"], ["tickets"], ["cluster", "status"],
                        ["disks", "remove", "--host", "h1", "--disk", "x"] + key, ["deploy", "osds", "--hosts", hosts, "--devices", "*"] + key] {
            let run = try await fixture.run(command + ["--config", fixture.configPath, "--broker", "127.0.0.1:\(port)", "--timeout", "1"])
            #expect(run.exitCode == 69, "\(command): \(run.stderr)")
            #expect(run.stderr.contains("cannot reach MQTT broker 127.0.0.1:\(port)"), "\(command): \(run.stderr)")
            #expect(run.stdout.isEmpty)
        }
    }

    @Test func disksListFindsDiskManagersFromTheirBirthsAndPrintsTableAndJSON() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        let (simulator, simulatorBus) = try await fixture.simulator(hosts: ["h1", "h2"], disksPerHost: 3, jobDuration: .milliseconds(100))
        let bus = try await connectedBus(broker, service: "test", host: "t")
        defer { simulator.stop(); Task { await bus.shutdown(); await simulatorBus.shutdown(); broker.stop(); fixture.cleanUp() } }
        for host in ["h1", "h2"] {
            var birth = Bynar_V1_ServiceStatus()
            birth.service = "disk-manager"
            birth.host = host
            birth.state = .birth
            try await bus.publish(birth, to: Topics.serviceStatus(host: host, service: "disk-manager"), retain: true)
        }
        let table = try await fixture.run(["disks", "list", "--key", fixture.keyPath] + fixture.connection)
        #expect(table.exitCode == 0, "\(table.stderr)")
        let lines = table.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("HOST") == true)
        #expect(lines.count == 1 + 2 * 4, "\(table.stdout)")
        #expect(lines.contains { $0.hasPrefix("h2") && $0.contains("/dev/sdd") && $0.contains("BLANK") })
        #expect(lines.contains { $0.hasPrefix("h1") && $0.contains("/dev/sda") && $0.contains("system") })

        let json = try await fixture.run(["disks", "list", "--host", "h2", "--json", "--key", fixture.keyPath] + fixture.connection)
        #expect(json.exitCode == 0)
        let objects = json.stdout.split(separator: "\n").compactMap(jsonObject)
        #expect(objects.count == 4)
        #expect(objects.allSatisfy { (($0["disk"] as? [String: Any])?["host"] as? String) == "h2" })
        #expect(objects.filter { ($0["status"] as? String) == "STATUS_BLANK" }.count == 3)

        // A host nobody serves: named, exit 69; the others still listed.
        let partly = try await fixture.run(["disks", "list", "--host", "h1", "--host", "nowhere", "--request-timeout", "1", "--key", fixture.keyPath] + fixture.connection)
        #expect(partly.exitCode == 69)
        #expect(partly.stderr.contains("disk-manager on nowhere: no answer"), "\(partly.stderr)")
        #expect(partly.stdout.contains("h1"))
    }

    @Test func addSafeToRemoveRemoveAndAddBackFollowTheirJobs() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        let (simulator, simulatorBus) = try await fixture.simulator(hosts: ["h1"], disksPerHost: 2, jobDuration: .milliseconds(300))
        defer { simulator.stop(); Task { await simulatorBus.shutdown(); broker.stop(); fixture.cleanUp() } }
        let disk = simulator.disks(of: "h1")[1].disk
        let common = ["--host", "h1", "--key", fixture.keyPath] + fixture.connection

        // Not an OSD yet: not safe (exit 3); Remove refused with the reason (exit 1).
        let notSafe = try await fixture.run(["disks", "safe-to-remove", "--disk", disk.key] + common)
        #expect(notSafe.exitCode == 3, "\(notSafe.stderr)")
        #expect(notSafe.stdout.hasPrefix("NOT safe to remove \(disk.key) on h1"))
        let refused = try await fixture.run(["disks", "remove", "--disk", disk.devPath] + common)
        #expect(refused.exitCode == 1)
        #expect(refused.stderr.contains("Remove on h1 REFUSED: \(disk.devPath) is not an OSD in service"), "\(refused.stderr)")

        // Add without the id a Remove answered: refused, as the real disk-manager does.
        let unnamed = try await fixture.run(["disks", "add", "--disk", disk.key] + common)
        #expect(unnamed.exitCode == 1)
        #expect(unnamed.stderr.contains("Add needs reuse_osd_id"), "\(unnamed.stderr)")

        // A new OSD comes from Deploy.
        let inventory = fixture.directory + "/deploy-one"
        try "h1 \(disk.devPath)\n".write(toFile: inventory, atomically: true, encoding: .utf8)
        let deployed = try await fixture.run(["deploy", "osds", "--inventory", inventory, "--key", fixture.keyPath] + fixture.connection)
        #expect(deployed.exitCode == 0, "\(deployed.stderr)")
        #expect(simulator.disks(of: "h1")[1].backendID == "0")

        let safe = try await fixture.run(["disks", "safe-to-remove", "--disk", disk.key, "--json"] + common)
        #expect(safe.exitCode == 0)
        let safeJSON = try #require(jsonObject(safe.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect((safeJSON["safeToRemove"] as? [String: Any])?["safe"] as? Bool == true)

        let dryRun = try await fixture.run(["disks", "remove", "--disk", disk.key, "--simulate"] + common)
        #expect(dryRun.exitCode == 0)
        #expect(dryRun.stdout.contains("would do (simulated, nothing changed)") && dryRun.stdout.contains("ceph osd out"))
        #expect(simulator.disks(of: "h1")[1].status == .inService)

        let removed = try await fixture.run(["disks", "remove", "--disk", disk.key, "--request-id", "op/remove-1"] + common)
        #expect(removed.exitCode == 0, "\(removed.stderr)")
        #expect(removed.stdout.contains("succeeded: osd 0 (re-add with --reuse-osd-id 0)"), "\(removed.stdout)")
        // The same request id again: ALREADY_DONE, followed to the same job; nothing twice.
        let again = try await fixture.run(["disks", "remove", "--disk", disk.key, "--request-id", "op/remove-1"] + common)
        #expect(again.exitCode == 0, "\(again.stderr)")
        #expect(again.stderr.contains("(sent before)"))
        #expect(simulator.jobsStarted(host: "h1", disk: disk.key) == 2)

        let readded = try await fixture.run(["disks", "add", "--disk", disk.key, "--reuse-osd-id", "0", "--json"] + common)
        #expect(readded.exitCode == 0, "\(readded.stderr)")
        let final = try #require(jsonObject(readded.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(final["state"] as? String == "STATE_SUCCEEDED")
        #expect(final["backendId"] as? String == "0")

        // Failing job: exit 1 with the failed step.
        simulator.failJobs(host: "h1")
        let failed = try await fixture.run(["disks", "remove", "--disk", disk.key] + common)
        #expect(failed.exitCode == 1)
        #expect(failed.stderr.contains("FAILED at step \"wait for safe-to-destroy\""), "\(failed.stderr)")
    }

    @Test func theRealDiskManagerRefusesAnUntrustedKeyAndTheCLISaysWhy() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        let directory = try makeTemporaryDirectory(prefix: "bynar-cli-dm")
        let watcher = try await connectedBus(broker, service: "watcher")
        defer { Task { await watcher.shutdown(); broker.stop(); fixture.cleanUp(); try? FileManager.default.removeItem(atPath: directory) } }
        let births = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        // The disk-manager trusts some other key, not the operator's.
        let other = try KeyFiles.generate(keyID: "someone-else")
        try other.trustedKeysLine.write(toFile: directory + "/trusted", atomically: true, encoding: .utf8)
        let manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: directory,
                                         extraConfig: #""disk_manager": {"trusted_keys_file": "\#(directory)/trusted"}"#)
        defer { manager.signal(SIGTERM) }
        #expect(await births.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } })
        let run = try await fixture.run(["disks", "list", "--key", fixture.keyPath] + fixture.connection)
        #expect(run.exitCode == 1)
        #expect(run.stderr.contains("List on h1 REFUSED: not authorised: command signed with unknown key \"operator-1\""), "\(run.stderr)")
        let remove = try await fixture.run(["disks", "remove", "--host", "h1", "--disk", "/dev/sdz", "--key", fixture.keyPath] + fixture.connection)
        #expect(remove.exitCode == 1)
        #expect(remove.stderr.contains("Remove on h1 REFUSED: not authorised"), "\(remove.stderr)")

        // A missing key file is named, with what to do.
        let noKey = try await fixture.run(["disks", "list", "--host", "h1", "--key", directory + "/none.key"] + fixture.connection)
        #expect(noKey.exitCode == 78)
        #expect(noKey.stderr.contains("cannot use the signing key \(directory)/none.key"), "\(noKey.stderr)")
    }

    @Test func incidentsTicketsAndClusterStatusReadRetainedState() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        let bus = try await connectedBus(broker, service: "test", host: "t")
        defer { Task { await bus.shutdown(); broker.stop(); fixture.cleanUp() } }
        for (id, state) in [("inc-1", Bynar_V1_IncidentState.queued), ("inc-2", .resolved)] {
            var event = Bynar_V1_IncidentEvent()
            event.incident.id = id
            event.incident.state = state
            event.incident.disk.host = "h1"
            event.incident.disk.key = "serial-\(id)"
            event.incident.openedUnixMs = Bus.nowUnixMs()
            event.incident.detail = "held by the brake"
            try await bus.publish(event, to: Topics.incidentState(id: id), retain: true)
        }
        var ticket = Bynar_V1_TicketEvent()
        ticket.incidentID = "inc-1"
        ticket.ticketKey = "OPS-7"
        ticket.state = .opened
        ticket.backend = "jira"
        try await bus.publish(ticket, to: Topics.ticketState(incident: "inc-1"), retain: true)
        for (host, service, state) in [("h1", "detector", Bynar_V1_ServiceStatus.State.birth), ("h1", "disk-manager", .birth), ("h2", "disk-manager", .death)] {
            var status = Bynar_V1_ServiceStatus()
            status.host = host
            status.service = service
            status.state = state
            try await bus.publish(status, to: Topics.serviceStatus(host: host, service: service), retain: true)
        }
        for (disk, state) in [("d1", Bynar_V1_DiskState.healthy), ("d2", .healthy), ("d3", .failed)] {
            var health = Bynar_V1_DiskHealth()
            health.disk.host = "h1"
            health.disk.key = disk
            health.state = state
            try await bus.publish(health, to: Topics.diskHealth(host: "h1", disk: disk), retain: true)
        }

        let open = try await fixture.run(["incidents"] + fixture.connection)
        #expect(open.exitCode == 0)
        #expect(open.stdout.contains("inc-1") && open.stdout.contains("QUEUED") && !open.stdout.contains("inc-2"), "\(open.stdout)")
        let all = try await fixture.run(["incidents", "--all", "--json"] + fixture.connection)
        let incidents = all.stdout.split(separator: "\n").compactMap(jsonObject)
        #expect(incidents.count == 2)

        let tickets = try await fixture.run(["tickets"] + fixture.connection)
        #expect(tickets.stdout.contains("inc-1") && tickets.stdout.contains("OPS-7") && tickets.stdout.contains("OPENED"), "\(tickets.stdout)")

        let status = try await fixture.run(["cluster", "status"] + fixture.connection)
        #expect(status.exitCode == 0)
        let lines = status.stdout.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("h1") && $0.contains("up") && $0.contains("detector,disk-manager") && $0.contains("1 failed, 2 healthy") }, "\(status.stdout)")
        #expect(lines.contains { $0.hasPrefix("h2") && $0.contains("DOWN") }, "\(status.stdout)")
        let statusJSON = try await fixture.run(["cluster", "status", "--json"] + fixture.connection)
        let hosts = statusJSON.stdout.split(separator: "\n").compactMap(jsonObject)
        #expect(hosts.count == 2)
        #expect((hosts.first?["disks"] as? [String: Int])?["FAILED"] == 1)

        // The orchestrator's membership, when retained, is what the host's state says.
        var membership = Bynar_V1_HostState()
        membership.host = "h1"
        membership.up = false
        try await bus.publish(membership, to: Topics.hostState(host: "h1"), retain: true)
        let later = try await fixture.run(["cluster", "status"] + fixture.connection)
        #expect(later.stdout.split(separator: "\n").contains { $0.hasPrefix("h1") && $0.contains("DOWN") }, "\(later.stdout)")
    }

    @Test func tapPrintsLiveMessagesAsJSONLines() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        let bus = try await connectedBus(broker, service: "test", host: "t")
        defer { Task { await bus.shutdown(); broker.stop(); fixture.cleanUp() } }
        let (process, out, _) = try fixture.start(["tap", "bynar/v1/notify", "--count", "1"] + fixture.connection)
        var note = Bynar_V1_Notification()
        note.text = "hello operators"
        let deadline = ContinuousClock.now + .seconds(20)
        while process.isRunning && ContinuousClock.now < deadline {
            try await bus.publish(note, to: Topics.notifications)
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(process.exitCode == 0)
        let line = try String(contentsOfFile: out, encoding: .utf8)
        let object = try #require(jsonObject(line.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(object["topic"] as? String == "bynar/v1/notify")
        #expect(line.contains("hello operators"))
    }
}
