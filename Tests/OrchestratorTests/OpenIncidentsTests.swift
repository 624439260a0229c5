@testable import Orchestrator
import Testing

/// ``OpenIncidents``: every open incident kept small, at most `capacity` machines whole.
@Suite struct OpenIncidentsTests {
    static let settings = IncidentMachine.Settings(limits: [.safeToRemove: .init(timeoutMs: 60_000, retries: 1)], retryDelayMs: 1_000,
                                                   queueRecheckMs: 30_000, dryRun: false)

    static func machine(_ index: Int, queued: Bool, at now: Int64 = 1_000) -> IncidentMachine {
        var machine = IncidentMachine(id: "h.serial-\(index).\(now)", disk: .init(host: "h", key: "serial-\(index)"), cluster: "c", rack: "",
                                      reasons: ["r"], settings: settings, nowMs: now)
        _ = machine.handle(.started, nowMs: now)
        if queued { _ = machine.handle(.safetyAnswered(safe: false, detail: "not yet", clusterHealth: "HEALTH_OK"), nowMs: now) }
        return machine
    }

    @Test("trim keeps at most the capacity: those waiting for nothing go first, then those used longest ago; every one stays indexed")
    func trimKeepsTheCapacityIdleFirst() {
        var open = OpenIncidents(capacity: 8)
        for index in 0..<8 { open.update(Self.machine(index, queued: index % 2 == 0)) }
        for index in 8..<12 { open.update(Self.machine(index, queued: false)) }
        #expect(open.trim() == 5, "down to 7 of 12")
        #expect(open.inMemory == 7 && open.count == 12)
        // The queued ones (no step in flight) went first, then the oldest busy one.
        #expect((0..<8).filter { $0 % 2 == 0 }.allSatisfy { open.needsLoading("h.serial-\($0).1000") })
        #expect(open.needsLoading("h.serial-1.1000") && !open.needsLoading("h.serial-3.1000"))
        #expect(open.queued(in: "c").count == 4 && open.byDisk["h/serial-0"] == "h.serial-0.1000")
        // Read back: in memory again, and what was kept of it unchanged.
        open.load([Self.machine(0, queued: true)])
        #expect(!open.needsLoading("h.serial-0.1000") && open.count == 12)
    }

    @Test("due: the incidents whose time has come, in id order, each until handling moves its time")
    func dueComesFromTheHeap() {
        var open = OpenIncidents(capacity: 100)
        for index in 0..<5 { open.update(Self.machine(index, queued: true, at: 1_000 + Int64(index))) }
        // Queued at 1000+i: asked again at 31000+i.
        #expect(open.due(nowMs: 30_999).isEmpty)
        #expect(open.due(nowMs: 31_002) == ["h.serial-0.1000", "h.serial-1.1001", "h.serial-2.1002"])
        #expect(open.due(nowMs: 31_002).count == 3, "not handled yet: due again")
        var again = Self.machine(0, queued: true, at: 1_000)
        _ = again.handle(.timePassed, nowMs: 31_002)
        open.update(again)
        #expect(open.due(nowMs: 31_004) == ["h.serial-1.1001", "h.serial-2.1002", "h.serial-3.1003", "h.serial-4.1004"])
    }
}
