import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The real bynar-orchestrator on a real broker, driving a repair end to end. The
/// disk-manager and ticketing here are STAND-INS (StandIns.swift: the real schema and
/// protocol, signatures verified) until the real Remove/Add and ticketing land.
@Suite(.serialized) struct RepairWorkflowTests {
    static let failed = DetectorVoice.identity(host: "stor1", key: "serial-OLD1")
    static let replacement = DetectorVoice.identity(host: "stor1", key: "serial-NEW1")

    @Test("failed disk → removed → ticket → replaced → re-added with its OSD id (stand-in disk-manager and ticketing)")
    func failedDiskGoesAllTheWayBackIn() async throws {
        try await withHarness { h in
            try await h.start()
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            let id = try await h.waitFor(.ticketed)
            await h.tickets.resolve(incident: id)
            try await h.waitFor(.waitingForReplacement)
            try await h.detector.say(Self.replacement, from: .unspecified, to: .replaced, previous: Self.failed)
            try await h.waitFor(.resolved)

            var states: [Bynar_V1_IncidentState] = []
            for event in h.incidents.all where states.last != event.payload.incident.state { states.append(event.payload.incident.state) }
            #expect(states == [.checkingSafety, .removing, .removed, .ticketed, .waitingForReplacement, .adding, .resolved])
            let removes = h.dm.seen("Remove"), adds = h.dm.seen("Add")
            #expect(removes.count == 1 && removes[0].diskKey == "serial-OLD1" && !removes[0].simulate)
            #expect(removes[0].requestID == "\(id)/remove/1")
            #expect(adds.count == 1 && adds[0].diskKey == "serial-NEW1")
            #expect(adds[0].reuseOsdID == "0", "Add reuses the OSD id Remove's job reported")
            #expect(h.dm.rejected.isEmpty, "every command was signed with the trusted key")
            #expect(h.tickets.requests.map(\.action) == [.open, .comment, .close])
            #expect(h.tickets.requests.first?.health.disk.key == "serial-OLD1")
            let notes = h.notifications.all.map(\.payload)
            #expect(notes.first?.severity == .warning && notes.first?.incidentID == id)
            // Sent after the RESOLVED event, on another subscription: waited for, not raced.
            #expect(await h.notifications.wait(timeout: .seconds(5)) { $0.contains { $0.payload.title.contains("replaced") && $0.payload.nextAction.contains("resolved") } })
            #expect(try await !h.retainedState(id), "the retained incident state is cleared once resolved")
        }
    }

    @Test("SIGKILL at every step: the orchestrator resumes and acts exactly once (stand-ins)")
    func killedAtEachStepActsOnce() async throws {
        try await withHarness { h in
            h.dm.configure { $0.jobDuration = .seconds(2) }
            try await h.start()
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            // 1: killed while the Remove job runs.
            #expect(await Collector<Int>.poll(timeout: .seconds(10)) { !h.dm.seen("Remove").isEmpty })
            h.kill()
            try await h.start()
            // 2: killed right after the ticket was asked for.
            #expect(await Collector<Int>.poll(timeout: .seconds(10)) { !h.tickets.requests.isEmpty })
            h.kill()
            try await h.start()
            let id = try await h.waitFor(.ticketed)
            // 3: killed while ticketed.
            h.kill()
            try await h.start()
            await h.tickets.resolve(incident: id)
            try await h.detector.say(Self.replacement, from: .unspecified, to: .replaced, previous: Self.failed)
            // 4: killed while the Add job runs.
            #expect(await Collector<Int>.poll(timeout: .seconds(10)) { !h.dm.seen("Add").isEmpty })
            h.kill()
            try await h.start()
            try await h.waitFor(.resolved, timeout: .seconds(30))

            #expect(Set(h.latest.keys) == [id], "one incident across five runs")
            let executed = h.dm.executions
            #expect(executed == ["\(id)/remove/1": 1, "\(id)/add/1": 1], "Remove and Add each acted once: \(executed)")
            #expect(h.dm.seen("Remove").count + h.dm.seen("JobStatus").count >= 2, "after the restart the Remove was re-sent (ALREADY_DONE) or its job asked for")
            #expect(h.tickets.ticketsOpened == 1)
            #expect(h.dm.seen("Add").allSatisfy { $0.reuseOsdID == "0" })
        }
    }

    @Test("a storm of 20 failures on one host with a limit of 2 never has more than 2 out (stand-ins)")
    func stormQueuesAndNeverExceedsTheLimit() async throws {
        try await withHarness(autoResolveTickets: true) { h in
            h.dm.configure { $0.jobDuration = .milliseconds(100) }
            try await h.start(orchestrator: """
                "brake": {"max_out_per_host": 2, "max_out_per_rack": 100, "max_out_per_cluster": 100, "removals_per_hour": 1000000, "removal_burst": 100}
                """)
            let disks = (1...20).map { DetectorVoice.identity(host: "stor7", key: "serial-S\($0)") }
            for disk in disks { try await h.detector.say(disk, from: .failing, to: .failed) }
            // Be the technician: a disk whose ticket is resolved gets its replacement.
            var replaced: Set<String> = []
            let deadline = ContinuousClock.now + .seconds(90)
            while ContinuousClock.now < deadline {
                let latest = h.latest
                if latest.count == 20 && latest.values.allSatisfy({ $0.incident.state == .resolved }) { break }
                for event in latest.values where event.incident.state == .waitingForReplacement && !replaced.contains(event.incident.id) {
                    replaced.insert(event.incident.id)
                    var new = event.incident.disk
                    new.key = event.incident.disk.key.replacingOccurrences(of: "serial-S", with: "serial-N")
                    try await h.detector.say(new, from: .unspecified, to: .replaced, previous: event.incident.disk)
                }
                #expect(h.dm.currentlyOut <= 2)
                try await Task.sleep(for: .milliseconds(20))
            }
            let latest = h.latest
            #expect(latest.count == 20 && latest.values.allSatisfy { $0.incident.state == .resolved }, "\(latest.mapValues { "\($0.incident.state)" })")
            #expect(h.dm.maxOut == 2, "the limit was used and never exceeded (max out \(h.dm.maxOut))")
            #expect(h.dm.executions.values.allSatisfy { $0 == 1 })
            let queued = h.incidents.all.filter { $0.payload.incident.state == .queued }
            #expect(queued.count >= 18, "the storm queued visibly")
            #expect(queued.allSatisfy { $0.payload.message.contains("host stor7") || $0.payload.message.contains("not safe") })
        }
    }

    @Test("a disk healthy again before removal closes the incident without action (stand-ins)")
    func healthyBeforeRemovalCancels() async throws {
        try await withHarness { h in
            h.dm.configure { $0.safe = false }
            try await h.start()
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            let id = try await h.waitFor(.queued)
            #expect(h.latest[id]?.message.contains("not safe") == true)
            try await h.detector.say(Self.failed, from: .failed, to: .healthy)
            try await h.waitFor(.cancelled)
            #expect(h.dm.seen("Remove").isEmpty && h.tickets.requests.isEmpty)
            #expect(await h.notifications.wait(timeout: .seconds(5)) { $0.contains { $0.payload.title.contains("recovered") } })
            #expect(try await !h.retainedState(id))
        }
    }

    @Test("a disk MISSING past the grace period is repaired; one back within it is not (stand-ins)")
    func missingDiskIsRepairedAfterTheGracePeriod() async throws {
        try await withHarness { h in
            try await h.start(orchestrator: #""missing_grace_seconds": 2"#)
            let flaky = DetectorVoice.identity(host: "stor1", key: "serial-FLAKY")
            let started = ContinuousClock.now
            try await h.detector.say(flaky, from: .healthy, to: .missing)
            try await h.detector.say(Self.failed, from: .healthy, to: .missing)
            try await h.detector.say(flaky, from: .missing, to: .healthy)
            let id = try await h.waitFor(.ticketed)
            #expect(ContinuousClock.now - started >= .seconds(2), "not before the grace period")
            #expect(id.contains("serial-OLD1"))
            #expect(Set(h.latest.keys) == [id], "the disk back within the grace period opened nothing")
            #expect(h.dm.seen("Remove").map(\.diskKey) == ["serial-OLD1"])
            let ticket = try #require(h.tickets.requests.first)
            #expect(ticket.health.state == .missing && ticket.health.reasons.first?.rule == "disk.missing", "\(ticket.health)")
        }
    }

    @Test("a MISSING disk whose slot gets another disk within the grace period is decided at once, with its own flags: a system disk never (stand-ins)")
    func aMissingDiskReplacedWithinTheGraceKeepsItsFlags() async throws {
        try await withHarness { h in
            try await h.start(orchestrator: #""missing_grace_seconds": 3"#)
            let system = DetectorVoice.identity(host: "stor1", key: "serial-SYS", dev: "/dev/sda")
            let newSystem = DetectorVoice.identity(host: "stor1", key: "serial-SYS2", dev: "/dev/sda")
            try await h.detector.say(system, from: .unspecified, to: .healthy, system: true)
            try await h.detector.say(system, from: .healthy, to: .missing, system: true)
            try await h.detector.say(newSystem, from: .unspecified, to: .replaced, previous: system, system: true)
            // A data disk the same way: its incident opens now, not after the grace period.
            let started = ContinuousClock.now
            let data = DetectorVoice.identity(host: "stor1", key: "serial-DATA", dev: "/dev/sdd")
            let newData = DetectorVoice.identity(host: "stor1", key: "serial-DATA2", dev: "/dev/sdd")
            try await h.detector.say(data, from: .healthy, to: .missing)
            try await h.detector.say(newData, from: .unspecified, to: .replaced, previous: data)
            let opened = await h.incidents.wait(timeout: .seconds(10)) { _ in h.latest.keys.contains { $0.contains("serial-DATA.") } }
            #expect(opened && ContinuousClock.now - started < .seconds(3), "decided when the slot changed: \(h.latest.keys)")
            try await Task.sleep(for: .seconds(5))
            #expect(!h.latest.keys.contains { $0.contains("serial-SYS") }, "a system disk is never repaired: \(h.latest.keys)")
        }
    }

    @Test("a FAILED event on one host's topic naming another host's disk moves nothing, and is dead-lettered")
    func aForgedCrossHostEventIsRefused() async throws {
        try await withHarness { h in
            try await h.start()
            let letters = Collector(try await h.tap.subscribe(Topics.deadLetter(host: "orch", service: "orchestrator"), as: Bynar_V1_DeadLetter.self))
            // What detector.stor2 could publish on its own topic: a FAILED disk of stor1.
            var event = Bynar_V1_DiskHealthEvent()
            event.disk = Self.failed
            event.fromState = .failing
            event.toState = .failed
            try await h.tap.publish(event, to: Topics.diskEvents(host: "stor2"))
            var health = Bynar_V1_DiskHealth()
            health.disk = Self.failed
            health.state = .failed
            try await h.tap.publish(health, to: Topics.diskHealth(host: "stor2", disk: Self.failed.key), retain: true)
            #expect(await letters.wait(timeout: .seconds(10)) { $0.count >= 2 }, "both forged messages dead-lettered")
            #expect(letters.all.allSatisfy { $0.payload.reason.contains("disk.host \"stor1\"") && $0.payload.reason.contains("\"stor2\"") },
                    "\(letters.all.map(\.payload.reason))")
            try await Task.sleep(for: .seconds(2))
            #expect(h.latest.isEmpty, "no incident opened")
            #expect(h.dm.seen.isEmpty, "nothing sent to any disk-manager")
            try await h.tap.clearRetained(Topics.diskHealth(host: "stor2", disk: Self.failed.key))
        }
    }

    @Test("a host inventing disks cannot grow the orchestrator without bound")
    func inventedDisksAreBounded() async throws {
        try await withHarness { h in
            try await h.start(orchestrator: #""max_disks_per_host": 100"#)
            let pid = h.orchestrator!.process.pid
            func rssKiB() -> Int {
                let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
                let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
                return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
            }
            let before = rssKiB()
            // What detector.stor2 may publish on its own topics: 3,000 healthy disks, each
            // with a 2 KB model string (6 MB in all: under the orchestrator's 8 MiB
            // subscription buffer, so every one reaches the engine and the cap, not the
            // buffer, is what refuses them).
            for index in 0..<3_000 {
                var health = Bynar_V1_DiskHealth()
                health.disk = DetectorVoice.identity(host: "stor2", key: "serial-F\(index)")
                health.disk.model = String(repeating: "M", count: 2_000)
                health.state = .healthy
                try await h.tap.publish(health, to: Topics.diskHealth(host: "stor2", disk: health.disk.key))
            }
            // A 3,001st disk of stor2 fails: not remembered, no incident.
            var failed = Bynar_V1_DiskHealth()
            failed.disk = DetectorVoice.identity(host: "stor2", key: "serial-F3000")
            failed.state = .failed
            try await h.tap.publish(failed, to: Topics.diskHealth(host: "stor2", disk: failed.disk.key))
            // stor1 goes on as ever.
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            let id = try await h.waitFor(.ticketed, timeout: .seconds(60))
            #expect(id.hasPrefix("stor1."))
            #expect(h.latest.keys.allSatisfy { !$0.hasPrefix("stor2.") }, "the unremembered disk opened nothing")
            let after = rssKiB()
            print("invented disks: 3000 healths of 2 KB from one host, max_disks_per_host 100: orchestrator RSS \(before / 1024) MiB -> \(after / 1024) MiB")
            #expect(after - before < 64 * 1024, "RSS grew \((after - before) / 1024) MiB")
            let log = h.orchestrator!.log
            #expect(await Collector<Int>.poll(timeout: .seconds(20)) { h.orchestrator!.log.contains("refused_so_far=1000") },
                    "the refusals are logged (the first and every 1000th)")
            _ = log
        }
    }

    @Test("a disk key that is no valid topic level does not block the messages after it")
    func oddDiskKeyIsEncodedNotStuck() async throws {
        try await withHarness { h in
            try await h.start()
            // Before topic levels were encoded where messages are made, this key made the
            // orchestrator build bynar/v1/incident/state/stor1.fz-a#b..., which libmosquitto
            // refuses, and its sender retried that batch for ever: nothing after it went out.
            let odd = DetectorVoice.identity(host: "stor1", key: "fz-a#b")
            try await h.detector.say(odd, from: .failing, to: .failed)
            let id = try await h.waitFor(.ticketed)
            #expect(id.hasPrefix("stor1.fz-a#b."))
            #expect(try await h.retainedState(id), "its retained state is on bynar/v1/incident/state/\(Topics.level(id))")
            let other = DetectorVoice.identity(host: "stor2", key: "serial-NEXT")
            try await h.detector.say(other, from: .failing, to: .failed)
            #expect(await Collector<Int>.poll(timeout: .seconds(20)) { h.latest.keys.contains { $0.hasPrefix("stor2.serial-NEXT.") && h.latest[$0]?.incident.state == .ticketed } },
                    "the next incident's messages go out: \(h.latest.mapValues(\.incident.state))")
        }
    }

    @Test("what the detector says while the orchestrator is down is handled when it is back")
    func eventsQueuedWhileDownAreHandled() async throws {
        try await withHarness { h in
            try await h.start()
            h.terminate()
            // Its persistent session queues these at the broker; on restart they arrive
            // before its subscriptions are registered again, and must not be lost.
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            try await Task.sleep(for: .milliseconds(300))
            try await h.start()
            let id = try await h.waitFor(.ticketed)
            #expect(id.hasPrefix("stor1.serial-OLD1."))
        }
    }

    /// The other kinds it consumes, queued while it is down: the technician's ticket
    /// resolution (ticket events) and the detector seeing the new disk (disk events and
    /// health) carry the incident through Add to RESOLVED after the restart. (Requests
    /// such as operator commands carry a message expiry equal to their caller's timeout:
    /// the broker drops one nobody took in time, by design, and the caller is told.)
    @Test("a ticket resolved and a replacement seen while the orchestrator is down finish the repair when it is back")
    func ticketAndReplacementQueuedWhileDownAreHandled() async throws {
        try await withHarness { h in
            try await h.start()
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            let id = try await h.waitFor(.ticketed)
            h.terminate()
            await h.tickets.resolve(incident: id)
            try await h.detector.say(Self.replacement, from: .unspecified, to: .replaced, previous: Self.failed)
            try await Task.sleep(for: .milliseconds(300))
            try await h.start()
            try await h.waitFor(.resolved)
            #expect(h.dm.seen("Add").count == 1 && h.dm.seen("Add").first?.diskKey == "serial-NEW1")
            // The close goes once ticketing answered the comment before it (in order, until
            // answered): it can arrive a moment after the incident's RESOLVED state.
            _ = await Collector<Int>.poll(timeout: .seconds(5)) { h.tickets.requests.count >= 3 }
            #expect(h.tickets.requests.map(\.action) == [.open, .comment, .close])
        }
    }

    @Test("a system disk's failure opens no incident")
    func systemDiskIsNeverACandidate() async throws {
        try await withHarness { h in
            try await h.start()
            try await h.detector.say(DetectorVoice.identity(host: "stor1", key: "serial-ROOT", dev: "/dev/sda"), from: .failing, to: .failed, system: true)
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            let id = try await h.waitFor(.ticketed)
            #expect(Set(h.latest.keys) == [id] && id.contains("serial-OLD1"))
            #expect(h.dm.seen.allSatisfy { $0.diskKey != "serial-ROOT" })
        }
    }

    @Test("a step that exhausts its retries is STUCK, reported, and not retried")
    func stuckStepIsReported() async throws {
        try await withHarness { h in
            h.dm.configure { $0.silentSafeToRemove = true }
            try await h.start(steps: #""safe_to_remove": {"timeout_seconds": 5, "retries": 1}"#, requestTimeout: 1)
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            let id = try await h.waitFor(.stuck)
            #expect(h.latest[id]?.incident.detail.contains("after 2 attempts") == true, "\(h.latest[id]?.incident.detail ?? "")")
            #expect(await h.notifications.wait(timeout: .seconds(5)) { $0.contains { $0.payload.severity == .error && $0.payload.incidentID == id } })
            let asked = h.dm.seen("SafeToRemove").count
            #expect(asked == 2)
            try await Task.sleep(for: .seconds(2))
            #expect(h.dm.seen("SafeToRemove").count == asked, "no retry after STUCK")
            #expect(try await h.retainedState(id), "a stuck incident stays visible")
        }
    }

    @Test("dry run decides and reports but sends nothing that changes a disk (stand-ins)")
    func dryRunChangesNothing() async throws {
        try await withHarness { h in
            try await h.start(orchestrator: #""dry_run": true"#)
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            try await h.waitFor(.removed)
            // (The notification and the incident's state travel on different subscriptions.)
            #expect(await h.notifications.wait(timeout: .seconds(5)) { $0.contains { $0.payload.title.hasPrefix("dry run: would remove") } })
            try await h.detector.say(Self.replacement, from: .unspecified, to: .replaced, previous: Self.failed)
            try await h.waitFor(.resolved)
            #expect(h.dm.seen("Remove").count == 1 && h.dm.seen("Remove").allSatisfy(\.simulate))
            #expect(h.dm.seen("Add").count == 1 && h.dm.seen("Add").allSatisfy(\.simulate))
            #expect(h.dm.executions.isEmpty, "nothing was executed")
            #expect(h.tickets.requests.isEmpty, "no ticket in a dry run")
        }
    }
}
