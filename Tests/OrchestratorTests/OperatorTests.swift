import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// An operator's hand on the wheel, end to end: the real bynar-orchestrator on a real broker,
/// the real `bynar` CLI, the stand-in disk-manager and ticketing (StandIns.swift). A STUCK
/// incident whose disk may be out holds the brake; unsigned and unknown-key commands are
/// refused and audited; a signed retry gets it moving; cancel does not free the brake while
/// the disk-manager cannot say where the disk is; resolve frees it once the disk-manager
/// reports the disk in service; maintenance keeps a repair from being opened and says so.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct OperatorTests {
    static let first = DetectorVoice.identity(host: "stor3", key: "serial-OP1")
    static let second = DetectorVoice.identity(host: "stor3", key: "serial-OP2", dev: "/dev/sdd")

    /// Waits until incident `id`'s latest reported state is `state`.
    /// B is held by the brake: QUEUED, or asking SafeToRemove again on its queue recheck
    /// (it goes back to QUEUED; a sample can catch it there), and never sent a Remove.
    static func held(_ h: OrchestratorHarness, _ b: String) -> Bool {
        let state = h.latest[b]?.incident.state
        return (state == .queued || state == .checkingSafety) && !h.dm.seen("Remove").contains { $0.requestID.hasPrefix(b + "/") }
    }

    static func waitFor(_ h: OrchestratorHarness, _ id: String, _ state: Bynar_V1_IncidentState, timeout: Duration = .seconds(20)) async throws {
        let reached = await h.incidents.wait(timeout: timeout) { _ in h.latest[id]?.incident.state == state }
        if !reached {
            throw TestSupportError("\(id) never reached \(state); latest: \(h.latest[id].map { "\($0.incident.state) \($0.message)" } ?? "none"); log:\n\(h.orchestrator?.log.suffix(3000) ?? "")")
        }
    }

    /// The incident id of `disk` (waits for its first report).
    static func incident(of disk: Bynar_V1_DiskIdentity, in h: OrchestratorHarness) async throws -> String {
        var found: String?
        _ = await h.incidents.wait(timeout: .seconds(20)) { _ in
            found = h.latest.first { $0.value.incident.disk.key == disk.key }?.key
            return found != nil
        }
        return try #require(found, "no incident for \(disk.key)")
    }

    @Test("a retired host: its kept-out cancel is refused to forget while its disk-manager answers, forgotten once it cannot, and the brake lets the next repair go")
    func aRetiredHostsKeptOutIncidentIsForgotten() async throws {
        try await withOperatorHarness { h, cli in
            h.dm.configure { $0.failRemoveJobs = true }
            try await h.start(orchestrator: """
                "operator_keys_file": "\(cli.trustedKeysPath)", "brake": {"max_out_per_host": 1, "max_out_per_rack": 10, "max_out_per_cluster": 10, "removals_per_hour": 100000, "removal_burst": 100}
                """, steps: #""remove": {"timeout_seconds": 10, "retries": 0}"#)
            try await h.detector.say(Self.first, from: .failing, to: .failed)
            let a = try await Self.incident(of: Self.first, in: h)
            try await Self.waitFor(h, a, .stuck)
            try await h.detector.say(Self.second, from: .failing, to: .failed)
            let b = try await Self.incident(of: Self.second, in: h)
            try await Self.waitFor(h, b, .queued)
            // The host is being retired: its disk-manager no longer answers; cancel keeps A out.
            h.dm.configure { $0.silentList = true }
            let cancel = try await cli.run(["incidents", "cancel", a, "--reason", "stor3 is being retired", "--key", cli.keyPath] + cli.connection)
            #expect(cancel.exitCode == 0 && cancel.stdout.contains("still counts as out"), "\(cancel.stdout) \(cancel.stderr)")
            // While it still answers (REMOVED), forget is refused: the disk really is out.
            h.dm.configure { $0.silentList = false }
            let early = try await cli.run(["incidents", "forget", a, "--reason", "retired", "--key", cli.keyPath] + cli.connection)
            #expect(early.exitCode == 1 && early.stderr.contains("forget refused") && early.stderr.contains("REMOVED"), "\(early.stderr)")
            #expect(h.latest[a]?.incident.countsAsOut == true && Self.held(h, b))
            // Gone for good: forgotten; the brake lets B go.
            h.dm.configure { $0.silentList = true }
            let forget = try await cli.run(["incidents", "forget", a, "--reason", "stor3 retired, its OSDs purged", "--key", cli.keyPath] + cli.connection)
            #expect(forget.exitCode == 0 && forget.stdout.contains("no longer counts"), "\(forget.stdout) \(forget.stderr)")
            #expect(await h.incidents.wait(timeout: .seconds(10)) { _ in h.latest[a]?.incident.countsAsOut == false && h.latest[a]?.step == "operator-forget" })
            h.dm.configure { $0.silentList = false; $0.failRemoveJobs = false }
            try await Self.waitFor(h, b, .removing)
            #expect(try await !h.retainedState(a), "a forgotten incident's retained state is cleared")
            let trail = try await cli.run(["incidents", "show", a, "--key", cli.keyPath] + cli.connection)
            #expect(trail.stdout.contains("forget") && trail.stdout.contains("stor3 retired, its OSDs purged"), "\(trail.stdout)")
        }
    }

    @Test("STUCK with the disk out: forged commands refused and audited, retry moves it, cancel keeps the brake until the disk-manager answers, resolve frees it")
    func stuckIncidentHasAWayOut() async throws {
        try await withOperatorHarness { h, cli in
            h.dm.configure { $0.failRemoveJobs = true }
            try await h.start(orchestrator: """
                "operator_keys_file": "\(cli.trustedKeysPath)", "brake": {"max_out_per_host": 1, "max_out_per_rack": 10, "max_out_per_cluster": 10, "removals_per_hour": 100000, "removal_burst": 100}
                """, steps: #""remove": {"timeout_seconds": 10, "retries": 0}"#)
            try await h.detector.say(Self.first, from: .failing, to: .failed)
            let a = try await Self.incident(of: Self.first, in: h)
            try await Self.waitFor(h, a, .stuck)
            #expect(h.latest[a]?.incident.countsAsOut == true, "a Remove that failed after `out`: the brake counts the disk")
            // A second failure on the host is held by the brake (max 1 out per host).
            try await h.detector.say(Self.second, from: .failing, to: .failed)
            let b = try await Self.incident(of: Self.second, in: h)
            try await Self.waitFor(h, b, .queued)
            #expect(h.latest[b]?.message.contains("already out on host stor3") == true, "\(h.latest[b]?.message ?? "")")

            // 1. An unsigned cancel, straight onto the operator topic: refused, audited, announced.
            var unsigned = Bynar_V1_OperatorCommand()
            unsigned.requestID = "forged-1"
            unsigned.reason = "let me in"
            unsigned.cancel = .with { $0.incidentID = a }
            let refused = try await OperatorClient.send(unsigned, on: h.tap, timeout: .seconds(10))
            #expect(refused.outcome == .refused && refused.reason.contains("not signed"), "\(refused.reason)")
            #expect(await h.incidents.wait(timeout: .seconds(5)) { events in
                events.contains { $0.payload.step == "operator-refused" && $0.payload.incident.id == a && $0.payload.message.contains("[unverified") }
            }, "the refusal is reported as an incident event")
            // 2. The CLI with a key the orchestrator does not trust.
            let stranger = try KeyFiles.generate(keyID: "mallory")
            let strangerKey = cli.directory + "/mallory.key"
            try stranger.privateKeyFileText.write(toFile: strangerKey, atomically: true, encoding: .utf8)
            let unknown = try await cli.run(["incidents", "cancel", a, "--reason", "trust me", "--key", strangerKey] + cli.connection)
            #expect(unknown.exitCode == 1 && unknown.stderr.contains("unknown key \"mallory\""), "\(unknown.stderr)")
            #expect(h.latest[a]?.incident.state == .stuck, "nothing moved")

            // 3. show: the audit trail has both refusals, with who they claimed to be.
            let show = try await cli.run(["incidents", "show", a, "--key", cli.keyPath] + cli.connection)
            #expect(show.exitCode == 0, "\(show.stderr)")
            #expect(show.stdout.contains("STUCK") && show.stdout.contains("[unverified: no key]") && show.stdout.contains("[unverified: mallory]"), "\(show.stdout)")
            #expect(show.stdout.contains("refused: not authorised"), "\(show.stdout)")

            // 4. A signed retry (the disk-manager works again): the incident moves.
            h.dm.configure { $0.failRemoveJobs = false }
            let removesBefore = h.dm.seen("Remove").map(\.requestID)
            let retry = try await cli.run(["incidents", "retry", a, "--reason", "osd.3 destroy fixed by hand", "--key", cli.keyPath] + cli.connection)
            #expect(retry.exitCode == 0, "\(retry.stderr)")
            try await Self.waitFor(h, a, .ticketed)
            let newRemoves = h.dm.seen("Remove").map(\.requestID).filter { !removesBefore.contains($0) }
            #expect(newRemoves == ["\(a)/remove/2"], "a fresh request id: \(newRemoves)")
            #expect(h.incidents.all.contains { $0.payload.incident.id == a && $0.payload.step == "operator-retry" && $0.payload.message.contains("operator operator-1 retried") })
            try await Task.sleep(for: .seconds(2))
            #expect(Self.held(h, b), "B still held: A is out")

            // 5. cancel while the disk-manager cannot say where the disk is: done, but the
            //    disk stays counted out and B stays held.
            h.dm.configure { $0.silentList = true }
            let cancel = try await cli.run(["incidents", "cancel", a, "--reason", "taking over by hand", "--key", cli.keyPath] + cli.connection)
            #expect(cancel.exitCode == 0, "\(cancel.stderr)")
            #expect(cancel.stdout.contains("still counts as out"), "\(cancel.stdout)")
            try await Self.waitFor(h, a, .cancelled)
            #expect(h.latest[a]?.incident.countsAsOut == true)
            #expect(await h.notifications.wait(timeout: .seconds(5)) { $0.contains { $0.payload.title.contains("Operator operator-1 cancelled") } })
            #expect(h.tickets.requests.contains { $0.action == .comment && $0.comment.contains("cancelled by operator operator-1") })
            try await Task.sleep(for: .seconds(3))
            #expect(Self.held(h, b), "the brake still counts A: B is held")
            #expect(h.dm.seen("Remove").allSatisfy { $0.diskKey != Self.second.key })

            // 6. resolve while the disk is still REMOVED: refused, naming it.
            h.dm.configure { $0.silentList = false }
            let early = try await cli.run(["incidents", "resolve", a, "--reason", "done", "--key", cli.keyPath] + cli.connection)
            #expect(early.exitCode == 1 && early.stderr.contains("REMOVED"), "\(early.stderr)")
            // 7. The disk is back in service: resolve frees the brake and B goes.
            h.dm.markInService(Self.first.key)
            let resolve = try await cli.run(["incidents", "resolve", a, "--reason", "osd.0 back in by hand", "--key", cli.keyPath] + cli.connection)
            #expect(resolve.exitCode == 0, "\(resolve.stderr)")
            try await Self.waitFor(h, a, .resolved)
            try await Self.waitFor(h, b, .removing)
            #expect(try await !h.retainedState(a), "a resolved incident's retained state is cleared")
            let trail = try await cli.run(["incidents", "show", a, "--key", cli.keyPath] + cli.connection)
            let auditLines = trail.stdout.split(separator: "\n").filter { $0.contains("operator-1") && $0.contains("done:") }
            for action in ["retry", "cancel", "resolve"] {
                #expect(auditLines.contains { $0.contains(" \(action) ") }, "the audit trail has the \(action): \(trail.stdout)")
            }
            #expect(trail.stdout.contains("osd.0 back in by hand") && trail.stdout.contains("RESOLVED"), "\(trail.stdout)")

            // 8. cancel with the disk-manager reporting the disk in service frees it at once.
            try await Self.waitFor(h, b, .ticketed)
            h.dm.markInService(Self.second.key)
            let freeing = try await cli.run(["incidents", "cancel", b, "--reason", "the disk recovered after a reseat", "--key", cli.keyPath] + cli.connection)
            #expect(freeing.exitCode == 0 && freeing.stdout.contains("no longer counts it out"), "\(freeing.stdout) \(freeing.stderr)")
            try await Self.waitFor(h, b, .cancelled)
            #expect(h.latest[b]?.incident.countsAsOut == false)
            #expect(try await !h.retainedState(b), "a cancelled incident that holds nothing is cleared")
        }
    }

    @Test("maintenance: no repair is opened, people are told why, cluster status shows it, and the repair runs once it ends")
    func maintenanceSuppressesRepairAndSaysSo() async throws {
        try await withOperatorHarness { h, cli in
            try await h.start(orchestrator: #""operator_keys_file": "\#(cli.trustedKeysPath)""#)
            let on = try await cli.run(["maintenance", "on", "--host", "stor3", "--until", "2h", "--reason", "firmware upgrade", "--key", cli.keyPath] + cli.connection)
            #expect(on.exitCode == 0 && on.stdout.contains("host stor3 in maintenance"), "\(on.stdout) \(on.stderr)")
            try await h.detector.say(Self.first, from: .failing, to: .failed)
            #expect(await h.notifications.wait(timeout: .seconds(10)) { notes in
                notes.contains { $0.payload.title.contains("not repaired") && $0.payload.title.contains("maintenance") && $0.payload.disk.key == Self.first.key }
            }, "people are told the failure was not repaired, and why")
            try await Task.sleep(for: .seconds(1))
            #expect(h.latest.isEmpty && h.dm.seen.isEmpty, "no incident, nothing asked of the disk-manager: \(h.latest.keys)")
            let status = try await cli.run(["cluster", "status"] + cli.connection)
            #expect(status.stdout.split(separator: "\n").contains { $0.hasPrefix("stor3") && $0.contains("firmware upgrade") && $0.contains("operator-1") }, "\(status.stdout)")

            // Kept across a restart.
            h.kill()
            try await h.start(orchestrator: #""operator_keys_file": "\#(cli.trustedKeysPath)""#)
            let list = try await cli.run(["maintenance", "list"] + cli.connection)
            #expect(list.stdout.contains("stor3") && list.stdout.contains("firmware upgrade"), "\(list.stdout)")

            let off = try await cli.run(["maintenance", "off", "--host", "stor3", "--reason", "upgrade done", "--key", cli.keyPath] + cli.connection)
            #expect(off.exitCode == 0, "\(off.stderr)")
            let id = try await Self.incident(of: Self.first, in: h)
            try await Self.waitFor(h, id, .ticketed)
            let after = try await cli.run(["cluster", "status"] + cli.connection)
            #expect(!after.stdout.contains("firmware upgrade"), "\(after.stdout)")
        }
    }

    @Test("without orchestrator.operator_keys_file every operator command is refused, with the reason")
    func noOperatorKeysRefusesEverything() async throws {
        try await withOperatorHarness { h, cli in
            try await h.start()
            let run = try await cli.run(["maintenance", "on", "--host", "stor3", "--reason", "x", "--key", cli.keyPath] + cli.connection)
            #expect(run.exitCode == 1 && run.stderr.contains("orchestrator.operator_keys_file is not configured"), "\(run.stderr)")
            try await h.detector.say(Self.first, from: .failing, to: .failed)
            _ = try await Self.incident(of: Self.first, in: h)
        }
    }
}
