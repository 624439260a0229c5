import Foundation
import BynarProto
import Orchestrator
import SwiftProtobuf
import Testing

typealias M = IncidentMachine

/// The repair workflow's state machine, without I/O: every event in every state, then the
/// paths that matter in detail (retries, timeouts, restarts, dry run).
@Suite struct IncidentMachineTests {
    static let disk = M.Disk(host: "stor1", key: "serial-OLD", serial: "OLD", devPath: "/dev/sdc")
    static let newDisk = M.Disk(host: "stor1", key: "serial-NEW", serial: "NEW", devPath: "/dev/sdc")

    static func settings(retries: Int = 1, dryRun: Bool = false) -> M.Settings {
        let limit = M.Settings.Limit(timeoutMs: 10_000, retries: retries)
        return M.Settings(limits: [.safeToRemove: limit, .remove: limit, .openTicket: limit, .add: limit],
                          retryDelayMs: 1_000, queueRecheckMs: 5_000, dryRun: dryRun)
    }

    static func fresh(retries: Int = 1, dryRun: Bool = false) -> M {
        M(id: "stor1.serial-OLD.1000", disk: disk, cluster: "ceph", rack: "r1", reasons: ["smart.overall_failing"],
          settings: settings(retries: retries, dryRun: dryRun), nowMs: 1000)
    }

    /// Named events; job events carry the request id the machine is waiting on.
    static let eventNames = [
        "started", "resumed", "safe", "unsafe", "admit", "hold", "safeRefused", "commandFailedSafe",
        "removeAccepted", "removeSuccess", "removeRefused", "removeFailed", "commandFailedRemove",
        "addAccepted", "addSuccess", "addFailed", "commandFailedAdd",
        "jobRunning", "jobSucceeded", "jobFailed",
        "ticketOpened", "ticketResolved", "ticketFailed",
        "healthy", "newDisk", "capacityFreed", "timeEarly", "timeLate",
    ]

    static func event(_ name: String, for machine: M) -> (M.Event, Int64) {
        let now: Int64 = 2000
        let jobRequest = machine.requestID(machine.state == .adding ? .add : .remove)
        switch name {
        case "started": return (.started, now)
        case "resumed": return (.resumed, now)
        case "safe": return (.safetyAnswered(safe: true, detail: "ok-to-stop", clusterHealth: "HEALTH_OK"), now)
        case "unsafe": return (.safetyAnswered(safe: false, detail: "PGs degraded", clusterHealth: "HEALTH_WARN"), now)
        case "admit": return (.brakeDecided(.admit), now)
        case "hold": return (.brakeDecided(.hold(reason: "limit", retryAtMs: nil)), now)
        case "safeRefused": return (.answered(.safeToRemove, .init(outcome: .refused, reason: "busy")), now)
        case "commandFailedSafe": return (.commandFailed(.safeToRemove, reason: "timeout"), now)
        case "removeAccepted": return (.answered(.remove, .init(outcome: .accepted, jobID: "job-1")), now)
        case "removeSuccess": return (.answered(.remove, .init(outcome: .success, backendID: "7")), now)
        case "removeRefused": return (.answered(.remove, .init(outcome: .refused, reason: "host limit")), now)
        case "removeFailed": return (.answered(.remove, .init(outcome: .failed, reason: "osd out", failedStep: "out")), now)
        case "commandFailedRemove": return (.commandFailed(.remove, reason: "timeout"), now)
        case "addAccepted": return (.answered(.add, .init(outcome: .accepted, jobID: "job-2")), now)
        case "addSuccess": return (.answered(.add, .init(outcome: .success, backendID: "7")), now)
        case "addFailed": return (.answered(.add, .init(outcome: .failed, reason: "mkfs", failedStep: "mkfs")), now)
        case "commandFailedAdd": return (.commandFailed(.add, reason: "timeout"), now)
        case "jobRunning": return (.jobMoved(.init(requestID: jobRequest, jobID: "job-1", state: .running, step: "out")), now)
        case "jobSucceeded": return (.jobMoved(.init(requestID: jobRequest, jobID: "job-1", state: .succeeded, backendID: "7")), now)
        case "jobFailed": return (.jobMoved(.init(requestID: jobRequest, jobID: "job-1", state: .failed, failedStep: "destroy")), now)
        case "ticketOpened": return (.ticketChanged(.init(state: .opened, key: "OPS-1", url: "https://jira/OPS-1")), now)
        case "ticketResolved": return (.ticketChanged(.init(state: .resolved, key: "OPS-1")), now)
        case "ticketFailed": return (.ticketChanged(.init(state: .failed, detail: "JIRA 400")), now)
        case "healthy": return (.diskHealthy, now)
        case "newDisk": return (.newDiskSeen(newDisk), now)
        case "capacityFreed": return (.capacityFreed, now)
        case "timeEarly": return (.timePassed, now)
        case "timeLate": return (.timePassed, 1_000_000)
        default: fatalError("unknown event \(name)")
        }
    }

    /// Drives a fresh machine through real events to `state`.
    static func machine(in state: M.State, retries: Int = 1, dryRun: Bool = false) -> M {
        var machine = fresh(retries: retries, dryRun: dryRun)
        let paths: [M.State: [String]] = [
            .opened: [],
            .checkingSafety: ["started"],
            .queued: ["started", "unsafe"],
            .removing: ["started", "safe", "admit"],
            .removed: ["started", "safe", "admit", "removeSuccess"],
            .ticketed: ["started", "safe", "admit", "removeSuccess", "ticketOpened"],
            .waitingForReplacement: ["started", "safe", "admit", "removeSuccess", "ticketOpened", "ticketResolved"],
            .adding: ["started", "safe", "admit", "removeSuccess", "ticketOpened", "ticketResolved", "newDisk"],
            .resolved: ["started", "safe", "admit", "removeSuccess", "ticketOpened", "ticketResolved", "newDisk", "addSuccess"],
            .cancelled: ["started", "healthy"],
            .stuck: ["started", "newDisk"],
        ]
        for name in paths[state]! {
            let (event, now) = event(name, for: machine)
            _ = machine.handle(event, nowMs: now)
        }
        precondition(machine.state == state, "path to \(state) ended in \(machine.state)")
        return machine
    }

    /// Where each event leads from each state; anything not listed leaves the state as it is.
    static let expected: [M.State: [String: M.State]] = [
        .opened: ["started": .checkingSafety, "resumed": .checkingSafety, "healthy": .cancelled, "newDisk": .stuck],
        .checkingSafety: ["unsafe": .queued, "admit": .removing, "hold": .queued, "healthy": .cancelled, "newDisk": .stuck],
        .queued: ["capacityFreed": .checkingSafety, "timeLate": .checkingSafety, "healthy": .cancelled, "newDisk": .stuck],
        .removing: ["removeSuccess": .removed, "removeRefused": .queued, "removeFailed": .queued, "jobSucceeded": .removed, "jobFailed": .queued],
        .removed: ["ticketOpened": .ticketed, "ticketResolved": .waitingForReplacement],
        .ticketed: ["ticketResolved": .waitingForReplacement],
        .waitingForReplacement: ["newDisk": .adding],
        .adding: ["addSuccess": .resolved, "jobSucceeded": .resolved],
        .resolved: [:],
        .cancelled: [:],
        .stuck: [:],
    ]

    @Test(arguments: M.State.allCases)
    func everyEventInState(_ state: M.State) throws {
        for name in Self.eventNames {
            var machine = Self.machine(in: state)
            let before = machine
            let (event, now) = Self.event(name, for: machine)
            let actions = machine.handle(event, nowMs: now)
            let want = Self.expected[state]?[name] ?? state
            #expect(machine.state == want, "\(state) + \(name): got \(machine.state), expected \(want)")
            if state.isTerminal {
                #expect(actions.isEmpty && machine == before, "\(state) + \(name) must do nothing")
            }
            if machine.state != before.state {
                // Every change of state is reported, from the state it left.
                #expect(actions.contains { if case .report(let from, _, _) = $0 { from == state } else { false } },
                        "\(state) + \(name) → \(machine.state) is not reported")
            }
            // The journal's record keeps the machine exactly, and so does the JSON earlier
            // versions wrote (still read).
            let record = try IncidentJournal.record(of: machine)
            #expect(record.first != UInt8(ascii: "{"))
            #expect(try IncidentJournal.machine(from: record) == machine)
            #expect(try IncidentJournal.machine(from: JSONEncoder().encode(machine)) == machine)
        }
    }

    /// A JSON journal record written before the incident kept its disk's backend has no
    /// such key: it is still read, the backend empty (and a Ceph OSD id still named osd.N).
    @Test func aJSONRecordFromBeforeTheBackendIsRead() throws {
        var machine = Self.fresh()
        _ = machine.handle(.started, nowMs: 1_000)
        _ = machine.handle(.safetyAnswered(safe: true, detail: "ok", clusterHealth: "HEALTH_OK"), nowMs: 1_100)
        _ = machine.handle(.brakeDecided(.admit), nowMs: 1_100)
        _ = machine.handle(.answered(.remove, .init(outcome: .success, backend: "ceph", backendID: "4")), nowMs: 1_200)
        #expect(machine.state == .removed && machine.backend == "ceph" && machine.served == "osd.4", "\(machine.state)")
        var object = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(machine)) as? [String: Any])
        #expect(object.removeValue(forKey: "backendName") != nil, "the key this test removes: \(object.keys.sorted())")
        let old = try IncidentJournal.machine(from: JSONSerialization.data(withJSONObject: object))
        #expect(old.state == .removed && old.osdID == "4" && old.backend == "" && old.served == "osd.4")
    }

    @Test func happyPathActionsInOrder() {
        var m = Self.fresh()
        var actions = m.handle(.started, nowMs: 1000)
        #expect(actions.contains(.checkSafety(requestID: "stor1.serial-OLD.1000/safe/1")))
        actions = m.handle(.safetyAnswered(safe: true, detail: "", clusterHealth: "HEALTH_WARN"), nowMs: 1100)
        #expect(actions == [.askBrake(clusterHealth: "HEALTH_WARN")])
        actions = m.handle(.brakeDecided(.admit), nowMs: 1200)
        #expect(actions.last == .remove(requestID: "stor1.serial-OLD.1000/remove/1", simulate: false))
        #expect(m.countsAsOut && m.mayBeOut)
        _ = m.handle(.answered(.remove, .init(outcome: .accepted, jobID: "j1")), nowMs: 1300)
        #expect(m.jobID == "j1" && m.state == .removing)
        actions = m.handle(.jobMoved(.init(requestID: "stor1.serial-OLD.1000/remove/1", jobID: "j1", state: .succeeded, backendID: "12")), nowMs: 1400)
        #expect(m.state == .removed && m.osdID == "12")
        #expect(actions.contains(.ticket(.open, comment: "")))
        _ = m.handle(.newDiskSeen(Self.newDisk), nowMs: 1500)
        #expect(m.state == .removed, "a new disk alone does not skip the ticket")
        _ = m.handle(.ticketChanged(.init(state: .opened, key: "OPS-9")), nowMs: 1600)
        #expect(m.state == .ticketed && m.ticketKey == "OPS-9")
        actions = m.handle(.ticketChanged(.init(state: .resolved, key: "OPS-9")), nowMs: 1700)
        #expect(m.state == .adding, "ticket resolved and new disk seen: add")
        #expect(actions.contains(.add(requestID: "stor1.serial-OLD.1000/add/1", disk: Self.newDisk, reuseOsdID: "12", simulate: false)))
        #expect(actions.contains { if case .ticket(.comment, _) = $0 { true } else { false } })
        actions = m.handle(.answered(.add, .init(outcome: .success, backendID: "12")), nowMs: 1800)
        #expect(m.state == .resolved && !m.countsAsOut)
        #expect(actions.contains { if case .ticket(.close, _) = $0 { true } else { false } })
        #expect(actions.last == .close)
    }

    @Test func waitsForBothTicketAndNewDisk() {
        var m = Self.machine(in: .ticketed)
        _ = m.handle(.newDiskSeen(Self.newDisk), nowMs: 3000)
        #expect(m.state == .ticketed)
        var other = Self.machine(in: .ticketed)
        _ = other.handle(.ticketChanged(.init(state: .resolved, key: "OPS-1")), nowMs: 3000)
        #expect(other.state == .waitingForReplacement)
        _ = other.handle(.newDiskSeen(Self.newDisk), nowMs: 3100)
        #expect(other.state == .adding)
    }

    @Test func timeoutResendsTheSameIdAndDefiniteFailureTheNext() {
        var m = Self.machine(in: .removing)
        #expect(m.requestID(.remove).hasSuffix("/remove/1"))
        _ = m.handle(.commandFailed(.remove, reason: "no reply"), nowMs: 3000)
        #expect(m.retryAtMs == 4000, "retry after retry_delay × attempt")
        #expect(m.handle(.timePassed, nowMs: 3999).isEmpty)
        let resend = m.handle(.timePassed, nowMs: 4000)
        #expect(resend == [.remove(requestID: "stor1.serial-OLD.1000/remove/1", simulate: false)], "an undecided attempt is re-sent with the same id")
        #expect(m.attempt == 2)

        var refused = Self.machine(in: .removing, retries: 2)
        _ = refused.handle(.answered(.remove, .init(outcome: .refused, reason: "host limit")), nowMs: 3000)
        #expect(refused.state == .queued && !refused.mayBeOut)
        _ = refused.handle(.timePassed, nowMs: 10_000)
        _ = refused.handle(.safetyAnswered(safe: true, detail: "", clusterHealth: "HEALTH_OK"), nowMs: 10_001)
        let again = refused.handle(.brakeDecided(.admit), nowMs: 10_002)
        #expect(again.last == .remove(requestID: "stor1.serial-OLD.1000/remove/2", simulate: false), "after a refusal the next id")
    }

    @Test func aJobThatReportsProgressIsFollowedPastTheStepTimeout() {
        // Remove accepted at 3000 (timeout 10 s, no retries): a drain that reports every 6 s
        // for a minute stays REMOVING; news repeated (a JobStatus answer) is not progress.
        var m = Self.machine(in: .removing, retries: 0)
        _ = m.handle(.answered(.remove, .init(outcome: .accepted, jobID: "job-1")), nowMs: 3000)
        let request = m.requestID(.remove)
        for (index, at) in stride(from: Int64(9_000), through: 63_000, by: 6_000).enumerated() {
            #expect(m.handle(.timePassed, nowMs: at - 1).isEmpty)
            _ = m.handle(.jobMoved(.init(requestID: request, jobID: "job-1", state: .running, step: "wait until osd.7 is safe to destroy: \(100 - index) objects to move")), nowMs: at)
            #expect(m.state == .removing && m.deadlineMs == at + 10_000, "deadline follows the news at \(at)")
        }
        _ = m.handle(.jobMoved(.init(requestID: request, jobID: "job-1", state: .running, step: "wait until osd.7 is safe to destroy: 91 objects to move")), nowMs: 70_000)
        #expect(m.deadlineMs == 73_000, "the same report again moves nothing")
        _ = m.handle(.timePassed, nowMs: 73_000)
        #expect(m.state == .stuck, "no news within the timeout: the step has failed its last attempt")
    }

    @Test func exhaustedStepIsStuckAndReportedOnce() {
        var m = Self.machine(in: .removing, retries: 0)
        let actions = m.handle(.commandFailed(.remove, reason: "no reply within 30 s"), nowMs: 3000)
        #expect(m.state == .stuck && m.mayBeOut && m.countsAsOut, "a disk that may be out still counts for the brake")
        #expect(actions.contains { if case .notify(.error, _, _, _) = $0 { true } else { false } })
        #expect(actions.contains { if case .report(.removing, "stuck", _) = $0 { true } else { false } })
        #expect(m.handle(.timePassed, nowMs: 9_999_999).isEmpty, "not retried forever")

        var deadline = Self.machine(in: .checkingSafety, retries: 0)
        _ = deadline.handle(.timePassed, nowMs: 2000 + 10_000)
        #expect(deadline.state == .stuck, "a step past its deadline with no retries left")
    }

    @Test func aRecordThisVersionCannotReadIsAnErrorNamingTheIncident() throws {
        var record = Self.machine(in: .removing).journalRecord
        record.state = "melting"
        #expect(throws: JournalRecordError.self) { try IncidentJournal.machine(from: record.serializedData()) }
        do {
            _ = try IncidentJournal.machine(from: record.serializedData())
        } catch {
            #expect("\(error)".contains(record.id) && "\(error)".contains("melting"), "\(error)")
        }
        record.state = "removing"
        record.generation["rewind"] = 2
        #expect(throws: JournalRecordError.self) { try IncidentJournal.machine(from: record.serializedData()) }
    }

    @Test func restartResumesWithTheSameRequest() throws {
        var m = Self.machine(in: .removing)
        _ = m.handle(.answered(.remove, .init(outcome: .accepted, jobID: "j1")), nowMs: 2500)
        var restored = try IncidentJournal.machine(from: IncidentJournal.record(of: m))
        #expect(restored.handle(.resumed, nowMs: 9000) == [.queryJob(requestID: "stor1.serial-OLD.1000/remove/1", jobID: "j1")])
        var beforeAnswer = try IncidentJournal.machine(from: IncidentJournal.record(of: Self.machine(in: .removing)))
        #expect(beforeAnswer.handle(.resumed, nowMs: 9000) == [.remove(requestID: "stor1.serial-OLD.1000/remove/1", simulate: false)])
        var ticket = Self.machine(in: .removed)
        #expect(ticket.handle(.resumed, nowMs: 9000) == [.ticket(.open, comment: "")])
        // A repeated id answered ALREADY_DONE (accepted): follow the job at once.
        var repeated = Self.machine(in: .removing)
        #expect(repeated.handle(.answered(.remove, .init(outcome: .accepted, alreadyDone: true, jobID: "j1")), nowMs: 3000)
                == [.queryJob(requestID: "stor1.serial-OLD.1000/remove/1", jobID: "j1")])
    }

    @Test func staleJobOfAnEarlierAttemptIsIgnored() {
        var m = Self.machine(in: .removing)
        let actions = m.handle(.jobMoved(.init(requestID: "stor1.serial-OLD.1000/remove/0", jobID: "old", state: .succeeded)), nowMs: 3000)
        #expect(actions.isEmpty && m.state == .removing)
    }

    @Test func dryRunChangesNothing() {
        var m = Self.machine(in: .removing, dryRun: true)
        #expect(!m.mayBeOut && m.countsAsOut, "a dry-run removal counts as 'would be out' for the brake")
        let removed = m.handle(.answered(.remove, .init(outcome: .success, steps: ["out", "destroy"], simulated: true)), nowMs: 3000)
        #expect(m.state == .removed)
        #expect(!removed.contains { if case .ticket = $0 { true } else { false } }, "no ticket in a dry run")
        #expect(removed.contains { if case .notify(_, let title, _, _) = $0 { title.hasPrefix("dry run: would remove") } else { false } })
        let add = m.handle(.newDiskSeen(Self.newDisk), nowMs: 3100)
        #expect(add.contains(.add(requestID: "stor1.serial-OLD.1000/add/1", disk: Self.newDisk, reuseOsdID: "", simulate: true)))
        let resolved = m.handle(.answered(.add, .init(outcome: .success, simulated: true)), nowMs: 3200)
        #expect(m.state == .resolved && !resolved.contains { if case .ticket = $0 { true } else { false } })

        var healthy = Self.machine(in: .removed, dryRun: true)
        _ = healthy.handle(.diskHealthy, nowMs: 3000)
        #expect(healthy.state == .cancelled)
    }

    @Test func ticketFailureRetriesThenSticks() {
        var m = Self.machine(in: .removed, retries: 1)
        _ = m.handle(.ticketChanged(.init(state: .failed, detail: "JIRA said 400")), nowMs: 3000)
        #expect(m.state == .removed)
        #expect(m.handle(.timePassed, nowMs: 4000) == [.ticket(.open, comment: "")])
        _ = m.handle(.ticketChanged(.init(state: .failed, detail: "JIRA said 400")), nowMs: 5000)
        #expect(m.state == .stuck && m.detail.contains("JIRA said 400"))
    }
}
