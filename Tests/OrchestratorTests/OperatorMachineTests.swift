import BynarAuth
import BynarBus
import BynarProto
import BynarStore
import Crypto
import Foundation
import Orchestrator
import Testing

/// The operator's hand on the wheel, without I/O: retry, cancel and resolve in every state
/// with every answer the disk-manager can give, the rules of ``IncidentMachine``'s header
/// (numbered there), and the re-announcements of stuck and waiting incidents.
@Suite struct OperatorMachineTests {
    typealias T = IncidentMachineTests
    static let alice = M.Operator(keyID: "alice", reason: "disk reseated by hand")
    static let facts: [String: M.DiskFacts] = [
        "inService": .inService(key: "serial-OLD"), "newInService": .inService(key: "serial-NEW"),
        "removed": .notInService(key: "serial-OLD", status: "REMOVED"), "absent": .absent, "unknown": .unknown(reason: "timed out"),
    ]

    /// Every state the operator can meet, including the two kinds of STUCK and a kept-out
    /// cancelled incident.
    static func machines() -> [(String, M)] {
        var result = M.State.allCases.map { ("\($0)", T.machine(in: $0)) }
        result.append(("stuckAtRemove", stuckAtRemove()))
        result.append(("stuckAtAdd", stuckAtAdd()))
        var keptOut = stuckAtRemove()
        _ = keptOut.handle(.operatorCancel(alice, .unknown(reason: "host down")), nowMs: 5000)
        precondition(keptOut.state == .cancelled && keptOut.countsAsOut)
        result.append(("cancelledKeptOut", keptOut))
        return result
    }

    /// A Remove that failed for good: STUCK, the disk may be out.
    static func stuckAtRemove() -> M {
        var m = T.machine(in: .removing, retries: 0)
        _ = m.handle(.commandFailed(.remove, reason: "no reply"), nowMs: 3000)
        precondition(m.state == .stuck && m.mayBeOut)
        return m
    }

    static func stuckAtAdd() -> M {
        var m = T.machine(in: .adding, retries: 0)
        _ = m.handle(.answered(.add, .init(outcome: .failed, reason: "mkfs", failedStep: "mkfs")), nowMs: 3000)
        precondition(m.state == .stuck && m.step == .add)
        return m
    }

    static func answer(_ actions: [M.Action]) -> (done: Bool, message: String)? {
        for action in actions { if case .answerOperator(let done, let message) = action { return (done, message) } }
        return nil
    }

    @Test func everyOperatorCommandIsAnsweredExactlyOnceAndRefusalsChangeNothing() throws {
        for (name, machine) in Self.machines() {
            var events: [(String, M.Event)] = [("retry", .operatorRetry(Self.alice))]
            for (factName, facts) in Self.facts {
                events.append(("cancel/\(factName)", .operatorCancel(Self.alice, facts)))
                events.append(("resolve/\(factName)", .operatorResolve(Self.alice, facts)))
                events.append(("forget/\(factName)", .operatorForget(Self.alice, facts)))
            }
            for (eventName, event) in events {
                var m = machine
                let actions = m.handle(event, nowMs: 9000)
                let answers = actions.filter { if case .answerOperator = $0 { true } else { false } }
                #expect(answers.count == 1, "\(name) + \(eventName): \(actions)")
                guard let (done, message) = Self.answer(actions) else { continue }
                #expect(!message.isEmpty)
                if !done {
                    #expect(m == machine && actions.count == 1, "\(name) + \(eventName): a refusal changes nothing")
                } else {
                    #expect(m.state != machine.state || m.step != machine.step || m.generation != machine.generation || m.countsAsOut != machine.countsAsOut,
                            "\(name) + \(eventName) did something")
                    #expect(actions.contains { if case .report = $0 { true } else { false } }, "\(name) + \(eventName) is reported")
                    #expect(actions.contains { if case .notify = $0 { true } else { false } }, "\(name) + \(eventName) is told to people")
                }
                // The journal keeps what an operator did exactly.
                #expect(try JSONDecoder().decode(M.self, from: JSONEncoder().encode(m)) == m)
            }
        }
    }

    @Test("rule 1: no reason, no command")
    func aReasonIsRequired() {
        let silent = M.Operator(keyID: "alice", reason: "  ")
        for event in [M.Event.operatorRetry(silent), .operatorCancel(silent, .inService(key: "serial-OLD")), .operatorResolve(silent, .inService(key: "serial-OLD"))] {
            var m = Self.stuckAtRemove()
            let actions = m.handle(event, nowMs: 9000)
            #expect(Self.answer(actions)?.done == false && Self.answer(actions)?.message.contains("reason") == true)
            #expect(m == Self.stuckAtRemove())
        }
    }

    @Test("rule 2: retry runs a stuck Remove again through safety and the brake, with fresh ids")
    func retryStuckRemove() {
        var m = Self.stuckAtRemove()
        let safeBefore = m.requestID(.safeToRemove), removeBefore = m.requestID(.remove)
        let actions = m.handle(.operatorRetry(Self.alice), nowMs: 9000)
        #expect(m.state == .checkingSafety && m.attempt == 1)
        #expect(m.countsAsOut, "the earlier Remove may have taken the disk out: the brake keeps counting it")
        guard case .checkSafety(let id)? = actions.first(where: { if case .checkSafety = $0 { true } else { false } }) else {
            Issue.record("no SafeToRemove: \(actions)")
            return
        }
        #expect(id != safeBefore, "a fresh SafeToRemove id (a repeat would get the stale verdict)")
        _ = m.handle(.safetyAnswered(safe: true, detail: "", clusterHealth: "HEALTH_OK"), nowMs: 9100)
        let remove = m.handle(.brakeDecided(.admit), nowMs: 9200)
        #expect(remove.last.map { if case .remove(let id, _) = $0 { id != removeBefore && id.hasSuffix("/remove/2") } else { false } } == true, "\(remove)")
        #expect(Self.answer(actions)?.done == true && Self.answer(actions)?.message.contains("from remove") == true, "\(actions)")
    }

    @Test("rule 2: retry of a stuck Add sends Add again with a fresh id; of a stuck ticket, OPEN again")
    func retryStuckAddAndTicket() {
        var add = Self.stuckAtAdd()
        let actions = add.handle(.operatorRetry(Self.alice), nowMs: 9000)
        #expect(add.state == .adding)
        #expect(actions.contains(.add(requestID: "stor1.serial-OLD.1000/add/2", disk: T.newDisk, reuseOsdID: "7", simulate: false)), "\(actions)")
        _ = add.handle(.answered(.add, .init(outcome: .success, backendID: "7")), nowMs: 9100)
        #expect(add.state == .resolved)

        var ticket = T.machine(in: .removed, retries: 0)
        _ = ticket.handle(.ticketChanged(.init(state: .failed, detail: "JIRA 400")), nowMs: 3000)
        #expect(ticket.state == .stuck)
        let again = ticket.handle(.operatorRetry(Self.alice), nowMs: 9000)
        #expect(ticket.state == .removed && again.contains(.ticket(.open, comment: "")))
    }

    @Test("rule 2: a paused step and a queued incident run now; a replaced-by-hand disk and a busy step are refused")
    func retryPausedQueuedAndRefusals() {
        var paused = T.machine(in: .removing, retries: 3)
        _ = paused.handle(.commandFailed(.remove, reason: "no reply"), nowMs: 3000)
        #expect(paused.retryAtMs == 4000)
        let now = paused.handle(.operatorRetry(Self.alice), nowMs: 3100)
        #expect(paused.state == .checkingSafety && Self.answer(now)?.done == true)

        var queued = T.machine(in: .queued)
        let asked = queued.handle(.operatorRetry(Self.alice), nowMs: 2100)
        #expect(queued.state == .checkingSafety && asked.contains { if case .checkSafety = $0 { true } else { false } })

        var replaced = T.machine(in: .stuck)  // a new disk replaced the failed one before removal
        let refused = replaced.handle(.operatorRetry(Self.alice), nowMs: 9000)
        #expect(replaced.state == .stuck && Self.answer(refused)?.message.contains("replaced") == true)

        for state in [M.State.ticketed, .waitingForReplacement, .resolved, .cancelled, .opened] {
            var m = T.machine(in: state)
            #expect(Self.answer(m.handle(.operatorRetry(Self.alice), nowMs: 9000))?.done == false, "\(state)")
        }
        var running = T.machine(in: .removing)
        #expect(Self.answer(running.handle(.operatorRetry(Self.alice), nowMs: 2500))?.done == false, "a Remove in flight is not retried")
    }

    @Test("rule 3: no cancel or resolve while a Remove or Add may run")
    func noEndWhileAJobMayRun() {
        for state in [M.State.removing, .adding] {
            for event in [M.Event.operatorCancel(Self.alice, .inService(key: "serial-OLD")), .operatorResolve(Self.alice, .inService(key: "serial-NEW"))] {
                var m = T.machine(in: state)
                let actions = m.handle(event, nowMs: 9000)
                #expect(m.state == state && Self.answer(actions)?.message.contains("may be running") == true, "\(state): \(actions)")
            }
        }
    }

    @Test("rule 4: cancel frees the brake only when the disk-manager reports the disk in service")
    func cancelFreesTheBrakeOnlyWhenInService() {
        var inService = Self.stuckAtRemove()
        let freed = inService.handle(.operatorCancel(Self.alice, .inService(key: "serial-OLD")), nowMs: 9000)
        #expect(inService.state == .cancelled && !inService.countsAsOut && inService.isClosed)
        #expect(freed.contains(.close), "a freed incident's retained state is cleared")

        for facts in [M.DiskFacts.notInService(key: "serial-OLD", status: "REMOVED"), .absent, .unknown(reason: "timed out")] {
            var m = Self.stuckAtRemove()
            let actions = m.handle(.operatorCancel(Self.alice, facts), nowMs: 9000)
            #expect(m.state == .cancelled && m.countsAsOut && !m.isClosed, "\(facts): kept out")
            #expect(!actions.contains(.close), "a kept-out incident stays visible")
            #expect(Self.answer(actions)?.message.contains("still counts as out") == true, "\(facts): says why")
        }

        // Nothing was counted out (queued before any Remove): cancelling frees nothing and holds nothing.
        var queued = T.machine(in: .queued)
        _ = queued.handle(.operatorCancel(Self.alice, .unknown(reason: "timed out")), nowMs: 9000)
        #expect(queued.state == .cancelled && !queued.countsAsOut && queued.isClosed)

        // A ticketed incident: the technician's ticket gets a comment.
        var ticketed = T.machine(in: .ticketed)
        let comment = ticketed.handle(.operatorCancel(Self.alice, .notInService(key: "serial-OLD", status: "REMOVED")), nowMs: 9000)
        #expect(comment.contains { if case .ticket(.comment, let text) = $0 { text.contains("alice") } else { false } })
        #expect(ticketed.countsAsOut)
    }

    @Test("rule 5: resolve only with the disk or its replacement in service; a kept-out cancel is resolved that way")
    func resolveNeedsTheDiskInService() {
        for facts in [M.DiskFacts.notInService(key: "serial-OLD", status: "REMOVED"), .absent, .unknown(reason: "timed out")] {
            var m = Self.stuckAtRemove()
            let actions = m.handle(.operatorResolve(Self.alice, facts), nowMs: 9000)
            #expect(m == Self.stuckAtRemove() && Self.answer(actions)?.done == false && Self.answer(actions)?.message.contains("back in service") == true, "\(facts)")
        }
        var ticketed = T.machine(in: .waitingForReplacement)
        let closed = ticketed.handle(.operatorResolve(Self.alice, .inService(key: "serial-NEW")), nowMs: 9000)
        #expect(ticketed.state == .resolved && !ticketed.countsAsOut && closed.contains(.close))
        #expect(closed.contains { if case .ticket(.close, let text) = $0 { text.contains("alice") } else { false } })

        var keptOut = Self.stuckAtRemove()
        _ = keptOut.handle(.operatorCancel(Self.alice, .absent), nowMs: 5000)
        #expect(Self.answer(keptOut.handle(.operatorCancel(Self.alice, .inService(key: "serial-OLD")), nowMs: 6000))?.done == false, "cancelled once")
        let refused = keptOut.handle(.operatorResolve(Self.alice, .absent), nowMs: 6000)
        #expect(keptOut.countsAsOut && Self.answer(refused)?.done == false)
        _ = keptOut.handle(.operatorResolve(Self.alice, .inService(key: "serial-OLD")), nowMs: 7000)
        #expect(keptOut.state == .resolved && !keptOut.countsAsOut && keptOut.isClosed)
        #expect(Self.answer(keptOut.handle(.operatorResolve(Self.alice, .inService(key: "serial-OLD")), nowMs: 8000))?.done == false, "resolved once")
    }

    @Test("rule 6: forget lets the brake go of a kept-out cancelled incident only while its disk-manager cannot say anything")
    func forgetOnlyAKeptOutIncidentNobodyCanAnswerFor() {
        var keptOut = Self.stuckAtRemove()
        _ = keptOut.handle(.operatorCancel(Self.alice, .unknown(reason: "host retired")), nowMs: 5000)
        #expect(keptOut.countsAsOut && !keptOut.isClosed)
        // The disk-manager answers: the disk really is out (or in service: resolve).
        for facts: M.DiskFacts in [.absent, .notInService(key: "serial-OLD", status: "REMOVED"), .inService(key: "serial-OLD")] {
            var m = keptOut
            let refused = m.handle(.operatorForget(Self.alice, facts), nowMs: 6000)
            #expect(m == keptOut && Self.answer(refused)?.done == false && Self.answer(refused)?.message.contains("forget refused") == true, "\(facts): \(refused)")
        }
        var noReason = keptOut
        #expect(Self.answer(noReason.handle(.operatorForget(.init(keyID: "alice", reason: " "), .unknown(reason: "gone")), nowMs: 6000))?.done == false)
        let forgot = keptOut.handle(.operatorForget(Self.alice, .unknown(reason: "List on stor1: timed out")), nowMs: 7000)
        #expect(Self.answer(forgot)?.done == true && forgot.contains(.close), "\(forgot)")
        #expect(keptOut.state == .cancelled && !keptOut.countsAsOut && keptOut.isClosed)
        #expect(Self.answer(keptOut.handle(.operatorForget(Self.alice, .unknown(reason: "gone")), nowMs: 8000))?.done == false, "forgotten once")
        // Anything but a kept-out cancel is refused (a STUCK incident is cancelled first).
        var stuck = Self.stuckAtRemove()
        #expect(Self.answer(stuck.handle(.operatorForget(Self.alice, .unknown(reason: "gone")), nowMs: 6000))?.message.contains("cancel it first") == true)
    }

    @Test func stuckAndWaitingIncidentsAreAnnouncedAgainOnSchedule() {
        let hour: Int64 = 3_600_000
        var settings = T.settings(retries: 0)
        settings.reannounceStuckMs = 4 * hour
        settings.reannounceWaitingMs = 24 * hour
        var m = M(id: "i", disk: T.disk, cluster: "c", rack: "", reasons: ["smart"], settings: settings, nowMs: 0)
        _ = m.handle(.started, nowMs: 0)
        _ = m.handle(.commandFailed(.safeToRemove, reason: "no reply"), nowMs: 1000)
        #expect(m.state == .stuck && m.dueMs == 1000 + 4 * hour)
        #expect(m.handle(.timePassed, nowMs: 1000 + 4 * hour - 1).isEmpty)
        let first = m.handle(.timePassed, nowMs: 1000 + 4 * hour)
        #expect(first.count == 1 && first.contains { if case .notify(.error, let title, _, let next) = $0 { title.contains("still stuck (4 h)") && next.contains("bynar incidents") } else { false } }, "\(first)")
        #expect(m.handle(.timePassed, nowMs: 1000 + 5 * hour).isEmpty, "not again before the next period")
        #expect(m.handle(.timePassed, nowMs: 1000 + 8 * hour).count == 1, "and again after it")

        var waiting = M(id: "w", disk: T.disk, cluster: "c", rack: "", reasons: ["smart"], settings: settings, nowMs: 0)
        for (event, at) in [(M.Event.started, Int64(0)), (.safetyAnswered(safe: true, detail: "", clusterHealth: ""), 1), (.brakeDecided(.admit), 2),
                            (.answered(.remove, .init(outcome: .success)), 3), (.ticketChanged(.init(state: .opened, key: "OPS-1")), 4)] {
            _ = waiting.handle(event, nowMs: at)
        }
        #expect(waiting.state == .ticketed)
        #expect(waiting.handle(.timePassed, nowMs: 4 + 24 * hour - 1).isEmpty)
        let again = waiting.handle(.timePassed, nowMs: 4 + 24 * hour)
        #expect(again.contains { if case .notify(.warning, let title, _, _) = $0 { title.contains("waiting for a technician") && title.contains("OPS-1") } else { false } }, "\(again)")

        var off = T.machine(in: .ticketed)  // settings without re-announcements
        #expect(off.handle(.timePassed, nowMs: 100 * hour).isEmpty && off.dueMs == nil)
    }
}

/// Maintenance windows (rules in ``MaintenanceBook``'s header).
@Suite struct MaintenanceBookTests {
    static func window(_ host: String, disk: String = "", until: Int64? = nil, reason: String = "firmware") -> MaintenanceBook.Window {
        .init(host: host, disk: disk, untilMs: until, reason: reason, by: "alice", sinceMs: 1000)
    }

    @Test func coverageReplacementOffAndExpiry() throws {
        var book = MaintenanceBook()
        #expect(book.covering(host: "h1", disk: "d1", nowMs: 0) == nil)
        #expect((try? book.switchOn(Self.window(""), nowMs: 0).get()) == nil, "rule 1: a host is required")
        #expect((try? book.switchOn(Self.window("h1", reason: " "), nowMs: 0).get()) == nil, "rule 1: a reason is required")
        #expect((try? book.switchOn(Self.window("h1", until: 500), nowMs: 1000).get()) == nil, "rule 1: an end in the past")
        _ = try book.switchOn(Self.window("h1", until: 10_000), nowMs: 1000).get()
        #expect(book.covering(host: "h1", disk: "anything", nowMs: 5000)?.host == "h1", "rule 5: the host's window covers its disks")
        #expect(book.covering(host: "h2", disk: "anything", nowMs: 5000) == nil)
        #expect(book.covering(host: "h1", disk: "anything", nowMs: 10_000) == nil, "rule 4: over at its end")
        let replaced = try book.switchOn(Self.window("h1", until: 20_000, reason: "rack move"), nowMs: 2000).get()
        #expect(replaced.contains("replacing") && book.windows.count == 1 && book.windows[0].reason == "rack move", "rule 2")
        _ = try book.switchOn(Self.window("h2", disk: "d7"), nowMs: 2000).get()
        #expect(book.covering(host: "h2", disk: "d7", nowMs: 3000)?.disk == "d7" && book.covering(host: "h2", disk: "d8", nowMs: 3000) == nil)
        #expect(book.nextEndMs == 20_000)

        #expect((try? book.switchOff(host: "h2", disk: "d8").get()) == nil, "rule 3: nothing to end")
        #expect(try book.switchOff(host: "h2", disk: "").get().map(\.disk) == ["d7"], "rule 3: a host's off ends its disks' windows")
        #expect(book.expire(nowMs: 19_999).isEmpty)
        #expect(book.expire(nowMs: 20_000).map(\.host) == ["h1"] && book.windows.isEmpty, "rule 4")
        let decoded = try JSONDecoder().decode(MaintenanceBook.self, from: JSONEncoder().encode(book))
        #expect(decoded == book)
    }
}

/// Operator commands are signed and verified the disk-manager commands' way, but one kind's
/// signature never passes as the other's; and only the operator topic carries them.
@Suite struct OperatorCommandAuthTests {
    /// A fixed key (swift-crypto's key type is not Sendable, so no stored static).
    static var key: Curve25519.Signing.PrivateKey {
        // swiftlint:disable:next force_try
        try! Curve25519.Signing.PrivateKey(rawRepresentation: [UInt8](repeating: 7, count: 32))
    }

    static func verifier() throws -> CommandVerifier {
        let store = try LocalStore(path: ":memory:", migrations: CommandVerifier.migrations)
        return CommandVerifier(trustedKeys: TrustedKeys(keys: ["alice": key.publicKey]), store: store)
    }

    static func cancel() -> Bynar_V1_OperatorCommand {
        var command = Bynar_V1_OperatorCommand()
        command.requestID = "r1"
        command.reason = "taking over"
        command.cancel = .with { $0.incidentID = "h1.serial-X.1" }
        return command
    }

    @Test func signedVerifiedTamperedReplayedAndUnsigned() throws {
        let verifier = try Self.verifier()
        let signed = try CommandSigning.sign(Self.cancel(), keyID: "alice", key: Self.key, lifetime: .seconds(60), nowMs: 1_000_000)
        #expect(try verifier.authorize(signed, nowMs: 1_000_001).get().keyID == "alice")
        #expect(verifier.authorize(signed, nowMs: 1_000_002) == .failure(.replayed(signed.auth.nonce.map { String(format: "%02x", $0) }.joined())))
        var tampered = try CommandSigning.sign(Self.cancel(), keyID: "alice", key: Self.key, lifetime: .seconds(60), nowMs: 1_000_000)
        tampered.cancel.incidentID = "h1.serial-Y.1"
        #expect(verifier.authorize(tampered, nowMs: 1_000_001) == .failure(.badSignature))
        #expect(verifier.authorize(Self.cancel(), nowMs: 1_000_001) == .failure(.unsigned))
        let other = try CommandSigning.sign(Self.cancel(), keyID: "mallory", key: Curve25519.Signing.PrivateKey(), lifetime: .seconds(60), nowMs: 1_000_000)
        #expect(verifier.authorize(other, nowMs: 1_000_001) == .failure(.unknownKey("mallory")))
    }

    @Test("a signature over one kind of command never verifies as the other kind")
    func signingContextsKeepKindsApart() throws {
        // A `show` reads as a disk-manager List (field 10) whose unknown fields survive a
        // re-encoding: without the context prefix its signature would verify as a List.
        var show = Bynar_V1_OperatorCommand()
        show.requestID = "r1"
        show.show = .with { $0.incidentID = "h1.serial-X.1" }
        let command = try CommandSigning.sign(show, keyID: "alice", key: Self.key, lifetime: .seconds(60), nowMs: 1_000_000)
        #expect(try CommandSigning.signedBytes(command).starts(with: Array("bynar.v1.OperatorCommand\n".utf8)))
        var asRequest = try Bynar_V1_DiskManagerRequest(serializedBytes: try command.serializedBytes() as [UInt8])
        #expect(try asRequest.serializedBytes() as [UInt8] == command.serializedBytes() as [UInt8], "the same bytes")
        asRequest.auth = command.auth
        if case .failure(.badSignature) = try Self.verifier().verify(asRequest, nowMs: 1_000_001) {} else {
            Issue.record("an operator command's signature verified as a disk-manager command")
        }
        // And the other way round: a signed List read as an operator `show`.
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = "list-1"
        request.host = "h1"
        request.list = .init()
        let signedRequest = try CommandSigning.sign(request, keyID: "alice", key: Self.key, lifetime: .seconds(60), nowMs: 1_000_000)
        var asCommand = try Bynar_V1_OperatorCommand(serializedBytes: try signedRequest.serializedBytes() as [UInt8])
        asCommand.auth = signedRequest.auth
        #expect(try Self.verifier().authorize(asCommand, nowMs: 1_000_001) == .failure(.badSignature))
    }

    @Test("TopicClaims rule 8: operator commands only on the operator topic, and nothing else there")
    func operatorTopicCarriesOnlyOperatorCommands() {
        var envelope = Bynar_V1_Envelope()
        envelope.operatorCommand = Self.cancel()
        #expect(TopicClaims.mismatch(topic: Topics.operatorCommands, envelope: envelope) == nil)
        #expect(TopicClaims.mismatch(topic: Topics.notifications, envelope: envelope)?.contains("operator_command") == true)
        #expect(TopicClaims.mismatch(topic: Topics.diskManagerCommands(host: "h1"), envelope: envelope) != nil)
        var note = Bynar_V1_Envelope()
        note.notification = .with { $0.title = "x" }
        #expect(TopicClaims.mismatch(topic: Topics.operatorCommands, envelope: note)?.contains("carries only operator_command") == true)
        #expect(Topics.responder(forRequestTopic: Topics.operatorCommands) == Responder(host: nil, service: "orchestrator"))
    }
}
