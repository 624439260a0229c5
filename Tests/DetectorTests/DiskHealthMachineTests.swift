import Detector
import Foundation
import Testing

typealias Machine = DiskHealthMachine
typealias State = DiskHealthMachine.State

struct DiskHealthMachineTests {
    static let smartFailed = Machine.Reason(rule: "smart.overall_failing", severity: .failed, detail: "SMART says failing")
    static let smartSuspect = Machine.Reason(rule: "smart.attr_nonzero.5", severity: .suspect, detail: "5 reallocated")
    static let probe = Machine.Reason(rule: "fs.probe_failed", severity: .suspect, detail: "write probe: EIO")

    static func clean(_ at: Int64) -> Machine.Event { .checked(.init(durable: [], atMs: at)) }
    static func durable(_ reason: Machine.Reason, _ at: Int64) -> Machine.Event { .checked(.init(durable: [reason], atMs: at)) }

    /// A machine driven into `state` through real events.
    static func machine(in state: State) -> Machine {
        var machine = Machine()
        switch state {
        case .unknown:
            break
        case .healthy:
            _ = machine.handle(.appeared(key: "A", atMs: 0)); _ = machine.handle(clean(1))
        case .suspect:
            _ = machine.handle(.appeared(key: "A", atMs: 0)); _ = machine.handle(durable(smartSuspect, 1))
        case .failing:
            _ = machine.handle(.appeared(key: "A", atMs: 0)); _ = machine.handle(clean(1))
            for t in 2...4 { _ = machine.handle(.kernelIOError(detail: "I/O error, dev sdx, sector \(t)", atMs: Int64(t))) }
        case .failed:
            _ = machine.handle(.appeared(key: "A", atMs: 0)); _ = machine.handle(durable(smartFailed, 1))
        case .missing:
            _ = machine.handle(.appeared(key: "A", atMs: 0)); _ = machine.handle(clean(1)); _ = machine.handle(.vanished(atMs: 2))
        case .replaced:
            _ = machine.handle(.appeared(key: "A", atMs: 0)); _ = machine.handle(durable(smartFailed, 1))
            _ = machine.handle(.vanished(atMs: 2)); _ = machine.handle(.appeared(key: "B", atMs: 3))
        }
        precondition(machine.state == state, "could not reach \(state), got \(machine.state)")
        return machine
    }

    enum Kind: String, CaseIterable { case clean, durableFailed, durableSuspect, kernelError, vanished, appearedSame, appearedNew }

    func event(_ kind: Kind, for machine: Machine) -> Machine.Event {
        switch kind {
        case .clean: Self.clean(100)
        case .durableFailed: Self.durable(Self.smartFailed, 100)
        case .durableSuspect: Self.durable(Self.smartSuspect, 100)
        case .kernelError: .kernelIOError(detail: "I/O error, dev sdx, sector 8", atMs: 100)
        case .vanished: .vanished(atMs: 100)
        case .appearedSame: .appeared(key: machine.key ?? "A", atMs: 100)
        case .appearedNew: .appeared(key: "Z", atMs: 100)
        }
    }

    /// Every event in every state, against a table written out by hand.
    static let expected: [State: [Kind: State]] = [
        .unknown: [.clean: .healthy, .durableFailed: .failed, .durableSuspect: .suspect, .kernelError: .suspect,
                   .vanished: .unknown, .appearedSame: .unknown, .appearedNew: .unknown],
        .healthy: [.clean: .healthy, .durableFailed: .failed, .durableSuspect: .suspect, .kernelError: .suspect,
                   .vanished: .missing, .appearedSame: .healthy, .appearedNew: .replaced],
        .suspect: [.clean: .suspect, .durableFailed: .failed, .durableSuspect: .suspect, .kernelError: .suspect,
                   .vanished: .missing, .appearedSame: .suspect, .appearedNew: .replaced],
        .failing: [.clean: .failing, .durableFailed: .failed, .durableSuspect: .failing, .kernelError: .failing,
                   .vanished: .missing, .appearedSame: .failing, .appearedNew: .replaced],
        .failed: [.clean: .failed, .durableFailed: .failed, .durableSuspect: .failed, .kernelError: .failed,
                  .vanished: .missing, .appearedSame: .failed, .appearedNew: .replaced],
        .missing: [.clean: .missing, .durableFailed: .missing, .durableSuspect: .missing, .kernelError: .missing,
                   .vanished: .missing, .appearedSame: .suspect, .appearedNew: .replaced],
        .replaced: [.clean: .healthy, .durableFailed: .failed, .durableSuspect: .suspect, .kernelError: .suspect,
                    .vanished: .missing, .appearedSame: .replaced, .appearedNew: .replaced],
    ]

    @Test(arguments: State.allCases)
    func everyEventInEveryState(_ state: State) {
        for kind in Kind.allCases {
            var machine = Self.machine(in: state)
            let actions = machine.handle(event(kind, for: machine))
            let want = Self.expected[state]![kind]!
            #expect(machine.state == want, "\(state) + \(kind) -> \(machine.state), want \(want)")
            let announced = actions.contains { if case .announce = $0 { true } else { false } }
            // A change is announced; so is yet another new disk in a replaced slot.
            let anotherReplacement = state == .replaced && kind == .appearedNew
            #expect(announced == (want != state || anotherReplacement), "\(state) + \(kind): announce only on a change, got \(actions)")
            if announced { #expect(actions.contains(.persist)) }
            if case .announce(let from, let to, _, _)? = actions.first(where: { if case .announce = $0 { true } else { false } }) {
                #expect(from == state && to == want)
            }
        }
    }

    @Test func oneKernelErrorIsSuspectRepeatedIsFailingNeverFailed() {
        var machine = Self.machine(in: .healthy)
        let first = machine.handle(.kernelIOError(detail: "I/O error, dev loop3, sector 16600", atMs: 1000))
        #expect(machine.state == .suspect)
        #expect(first.contains(.recheck(because: "I/O error, dev loop3, sector 16600")))
        #expect(machine.reasons.map(\.rule) == ["kernel.io_error"])
        _ = machine.handle(.kernelIOError(detail: "e2", atMs: 2000))
        #expect(machine.state == .suspect)
        _ = machine.handle(.kernelIOError(detail: "e3", atMs: 3000))
        #expect(machine.state == .failing)
        #expect(machine.reasons.first?.rule == "kernel.io_errors_repeated")
        for t in 4...30 { _ = machine.handle(.kernelIOError(detail: "e\(t)", atMs: Int64(t) * 1000)) }
        #expect(machine.state == .failing, "kernel errors alone never make a disk failed")
    }

    @Test func recoveryNeedsErrorsToAgeOutAndConsecutiveCleanChecksOverTime() {
        let minute: Int64 = 60_000
        var machine = Self.machine(in: .healthy)
        _ = machine.handle(.kernelIOError(detail: "e", atMs: 1000))
        #expect(machine.state == .suspect)
        // Inside the error window clean checks do not help.
        for t in 0..<5 { _ = machine.handle(Self.clean(2000 + Int64(t) * minute)) }
        #expect(machine.state == .suspect)
        // Errors aged out (10 min): a burst of clean checks within seconds is not enough...
        let later = 11 * minute
        for t in 0..<5 { _ = machine.handle(Self.clean(later + Int64(t) * 100)) }
        #expect(machine.state == .suspect, "a burst of checks must not walk a disk back")
        // ...three or more better checks spanning 10 minutes are.
        _ = machine.handle(Self.clean(later + 5 * minute))
        #expect(machine.state == .suspect)
        let actions = machine.handle(Self.clean(later + 10 * minute))
        #expect(machine.state == .healthy)
        #expect(actions.first == .announce(from: .suspect, to: .healthy, reasons: [], previousKey: nil))
        // A worse check interrupting the streak restarts it.
        let base = later + 20 * minute
        _ = machine.handle(Self.durable(Self.smartSuspect, base))
        _ = machine.handle(Self.clean(base + 4 * minute)); _ = machine.handle(Self.clean(base + 8 * minute))
        _ = machine.handle(Self.durable(Self.smartSuspect, base + 9 * minute))
        _ = machine.handle(Self.clean(base + 12 * minute)); _ = machine.handle(Self.clean(base + 16 * minute))
        #expect(machine.state == .suspect)
        _ = machine.handle(Self.clean(base + 22 * minute))
        #expect(machine.state == .healthy)
    }

    @Test func probeFailsOnceSuspectTwiceFailed() {
        var machine = Self.machine(in: .healthy)
        _ = machine.handle(.checked(.init(durable: [], probeFailed: Self.probe, atMs: 10)))
        #expect(machine.state == .suspect)
        _ = machine.handle(.checked(.init(durable: [], probeFailed: Self.probe, atMs: 20)))
        #expect(machine.state == .suspect, "a second failure 10 ms later is the same observation")
        _ = machine.handle(.checked(.init(durable: [], probeFailed: Self.probe, atMs: 10 + Machine.probeRetryMs)))
        #expect(machine.state == .failed)
        #expect(machine.reasons.first?.detail == "write probe: EIO (2 time(s) in a row)")
    }

    @Test func failedDiskIsReplacedAndTheNewOneBecomesHealthy() {
        var machine = Self.machine(in: .failed)
        #expect(machine.handle(.vanished(atMs: 10)).first == .announce(from: .failed, to: .missing, reasons: machine.reasons, previousKey: nil))
        let replaced = machine.handle(.appeared(key: "NEW", atMs: 20))
        #expect(machine.state == .replaced && machine.key == "NEW" && machine.previousKey == "A")
        #expect(replaced.contains(.recheck(because: "new disk in slot")))
        guard case .announce(.missing, .replaced, _, "A")? = replaced.first else { Issue.record("got \(replaced)"); return }
        let healthy = machine.handle(Self.clean(30))
        #expect(healthy.first == .announce(from: .replaced, to: .healthy, reasons: [], previousKey: "A"))
        #expect(machine.state == .healthy)
    }

    @Test func sameEvidenceAgainAnnouncesNothing() {
        var machine = Self.machine(in: .failed)
        #expect(machine.handle(Self.durable(Self.smartFailed, 50)).isEmpty)
        // Different reasons at the same severity refresh the retained health only.
        let other = Machine.Reason(rule: "fs.read_only", severity: .failed, detail: "remounted read-only")
        #expect(machine.handle(Self.durable(other, 60)) == [.refresh, .persist])
    }

    @Test func survivesARestartWithoutReannouncing() throws {
        var machine = Self.machine(in: .healthy)
        _ = machine.handle(.kernelIOError(detail: "e", atMs: 1000))
        let saved = try JSONEncoder().encode(machine)
        var restored = try JSONDecoder().decode(Machine.self, from: saved)
        #expect(restored == machine)
        // The same evidence after the restart: no new announcement.
        let actions = restored.handle(.kernelIOError(detail: "e", atMs: 1500))
        #expect(!actions.contains { if case .announce = $0 { true } else { false } })
        #expect(restored.state == .suspect)
    }
}

/// The evidence a dead disk under a Ceph OSD gives: no filesystem, no SMART, only the read
/// probe, the kernel log and the cluster's own view.
struct CephDiskEvidenceTests {
    static let unreadable = Machine.Reason(rule: "disk.unreadable", severity: .suspect, detail: "read probe of /dev/sdx: 4 of 4 reads failed")
    static let readErrors = Machine.Reason(rule: "disk.read_errors", severity: .failing, detail: "read probe of /dev/sdx: 1 of 4 reads failed")

    static func healthy() -> Machine {
        var machine = Machine()
        _ = machine.handle(.appeared(key: "A", atMs: 0))
        _ = machine.handle(.checked(.init(durable: [], ceph: .init(osd: 4, up: true), atMs: 1)))
        return machine
    }

    @Test func aDiskThatCannotBeReadTwiceInARowIsFailedAndIsTriedAgainSoon() {
        var machine = Self.healthy()
        let first = machine.handle(.checked(.init(durable: [], probeFailed: Self.unreadable, atMs: 1000)))
        #expect(machine.state == .suspect)
        #expect(first.contains(.recheckLater(afterMs: Machine.probeRetryMs, because: "probe failed: \(Self.unreadable.detail)")), "\(first)")
        let second = machine.handle(.checked(.init(durable: [], probeFailed: Self.unreadable, atMs: 1000 + Machine.probeRetryMs)))
        #expect(machine.state == .failed)
        #expect(!second.contains { if case .recheckLater = $0 { true } else { false } })
        #expect(machine.reasons.first?.rule == "disk.unreadable")
    }

    @Test func someUnreadablePlacesMakeADiskFailingNotFailed() {
        var machine = Self.healthy()
        _ = machine.handle(.checked(.init(durable: [Self.readErrors], atMs: 1000)))
        #expect(machine.state == .failing)
    }

    @Test func aDownOSDWithKernelErrorsOnItsDiskIsFailed() {
        var machine = Self.healthy()
        _ = machine.handle(.checked(.init(durable: [], ceph: .init(osd: 4, up: false), atMs: 1000)))
        #expect(machine.state == .suspect, "a stopped daemon alone is no dead disk")
        #expect(machine.reasons.first?.rule == "ceph.osd_down")
        _ = machine.handle(.kernelIOError(detail: "I/O error, dev sdx, sector 0", atMs: 1100))
        #expect(machine.state == .failed)
        #expect(machine.reasons.first?.rule == "ceph.osd_down_io_errors")
        #expect(machine.reasons.first?.detail.contains("osd.4") == true)
    }

    @Test func scrubErrorsOnAnOSDWhoseDiskHasReadErrorsMakeItFailing() {
        var machine = Self.healthy()
        _ = machine.handle(.checked(.init(durable: [], ceph: .init(osd: 4, up: true, inconsistentPGs: ["2.3"]), atMs: 1000)))
        #expect(machine.state == .suspect, "inconsistent PGs alone may be any replica's fault")
        _ = machine.handle(.kernelIOError(detail: "I/O error, dev sdx, sector 800", atMs: 1100))
        #expect(machine.state == .failing)
        #expect(machine.reasons.contains { $0.rule == "ceph.scrub_errors" && $0.detail.contains("2.3") && $0.detail.contains("osd.4") })
    }
}
