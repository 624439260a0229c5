import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The orchestrator holds the machines of at most `orchestrator.incidents_in_memory` open
/// incidents; the others live in the journal and are read back when something happens to
/// them. Here that bound is 1, so nearly every answer, ticket event, recheck and operator
/// command finds its incident only in the journal: the real bynar-orchestrator, a real
/// broker and SQLite, the stand-in disk-manager and ticketing (StandIns.swift).
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct BoundedMemoryTests {
    @Test("one incident in memory: a storm over two hosts is repaired, each Remove and Add once, the brake held, across a SIGKILL")
    func aStormWithOneIncidentInMemory() async throws {
        try await withHarness(autoResolveTickets: true) { h in
            h.dm.configure { $0.jobDuration = .milliseconds(100) }
            let config = """
                "incidents_in_memory": 1,
                "brake": {"max_out_per_host": 1, "max_out_per_rack": 100, "max_out_per_cluster": 100, "removals_per_hour": 1000000, "removal_burst": 100}
                """
            try await h.start(orchestrator: config)
            let disks = (1...4).flatMap { index in ["stor7", "stor8"].map { DetectorVoice.identity(host: $0, key: "serial-\($0)-M\(index)") } }
            for disk in disks { try await h.detector.say(disk, from: .failing, to: .failed) }
            // Be the technician: a disk whose ticket is resolved gets its replacement.
            var replaced: Set<String> = []
            var killed = false
            let deadline = ContinuousClock.now + .seconds(120)
            while ContinuousClock.now < deadline {
                let latest = h.latest
                if latest.count == disks.count && latest.values.allSatisfy({ $0.incident.state == .resolved }) { break }
                for event in latest.values where event.incident.state == .waitingForReplacement && !replaced.contains(event.incident.id) {
                    replaced.insert(event.incident.id)
                    var new = event.incident.disk
                    new.key = event.incident.disk.key.replacingOccurrences(of: "-M", with: "-N")
                    try await h.detector.say(new, from: .unspecified, to: .replaced, previous: event.incident.disk)
                }
                // Killed once, half way: the journal is all there is.
                if !killed && latest.values.filter({ $0.incident.state == .resolved }).count >= disks.count / 2 {
                    killed = true
                    h.kill()
                    try await h.start(orchestrator: config)
                }
                #expect(h.dm.currentlyOut <= 2, "one out per host")
                try await Task.sleep(for: .milliseconds(20))
            }
            let latest = h.latest
            #expect(killed)
            #expect(latest.count == disks.count && latest.values.allSatisfy { $0.incident.state == .resolved }, "\(latest.mapValues { "\($0.incident.state) \($0.message)" })")
            let executed = h.dm.executions
            #expect(executed.count == 2 * disks.count && executed.values.allSatisfy { $0 == 1 }, "each Remove and Add acted once: \(executed)")
            #expect(h.tickets.ticketsOpened == disks.count)
            #expect(h.incidents.all.contains { $0.payload.incident.state == .queued }, "the brake held some back")
            #expect(h.orchestrator?.log.contains("event dropped") == false, "no event lost for an incident not in memory")
        }
    }

    @Test("one incident in memory: an operator's show and cancel reach an incident that is only in the journal")
    func anOperatorReachesAnIncidentNotInMemory() async throws {
        try await withOperatorHarness { h, cli in
            h.dm.configure { $0.safe = false }
            try await h.start(orchestrator: """
                "incidents_in_memory": 1, "operator_keys_file": "\(cli.trustedKeysPath)", "queue_recheck_seconds": 3600
                """)
            let first = DetectorVoice.identity(host: "stor3", key: "serial-MEM1")
            let second = DetectorVoice.identity(host: "stor3", key: "serial-MEM2", dev: "/dev/sdd")
            try await h.detector.say(first, from: .failing, to: .failed)
            let a = try await h.waitFor(.queued)
            try await h.detector.say(second, from: .failing, to: .failed)
            #expect(await h.incidents.wait(timeout: .seconds(20)) { _ in h.latest.values.filter { $0.incident.state == .queued }.count == 2 })
            // The second incident was used last: the first is in the journal only.
            let show = try await cli.run(["incidents", "show", a, "--key", cli.keyPath] + cli.connection)
            #expect(show.exitCode == 0 && show.stdout.contains("serial-MEM1") && show.stdout.contains("QUEUED"), "\(show.stdout) \(show.stderr)")
            let cancel = try await cli.run(["incidents", "cancel", a, "--reason", "not this one", "--key", cli.keyPath] + cli.connection)
            #expect(cancel.exitCode == 0, "\(cancel.stdout) \(cancel.stderr)")
            #expect(await h.incidents.wait(timeout: .seconds(10)) { _ in h.latest[a]?.incident.state == .cancelled })
            let trail = try await cli.run(["incidents", "show", a, "--key", cli.keyPath] + cli.connection)
            #expect(trail.stdout.contains("cancel") && trail.stdout.contains("not this one"), "\(trail.stdout)")
            #expect(h.latest.values.contains { $0.incident.disk.key == "serial-MEM2" && $0.incident.state == .queued }, "the other incident is untouched")
        }
    }
}
