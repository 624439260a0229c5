import BynarBus
import BynarConfig
import BynarProto
import Foundation
@testable import Orchestrator
import Testing

/// The orchestrator's cross-incident decisions without I/O: ``RepairCore/handle(_:nowMs:)``
/// takes one input and a time and returns what to do (incidents changed, messages, commands).
/// No broker, no journal, no clock: the same inputs give the same effects.
@Suite struct RepairCoreTests {
    static func identity(_ key: String, dev: String = "/dev/sdc") -> Bynar_V1_DiskIdentity {
        .with { $0.host = "stor1"; $0.key = key; $0.serial = key; $0.devPath = dev }
    }

    static func event(_ disk: Bynar_V1_DiskIdentity, to state: Bynar_V1_DiskState, previous: Bynar_V1_DiskIdentity? = nil) -> RepairCore.Input {
        var event = Bynar_V1_DiskHealthEvent()
        event.disk = disk
        event.toState = state
        event.reasons = [.with { $0.rule = "disk.\(state)"; $0.detail = "said \(state)" }]
        if let previous { event.previousDisk = previous }
        return .diskEvent(event)
    }

    static func health(_ disk: Bynar_V1_DiskIdentity, _ state: Bynar_V1_DiskState, system: Bool = false) -> RepairCore.Input {
        .diskHealth(.with { $0.disk = disk; $0.state = state; $0.systemDisk = system }, retained: false)
    }

    static func core() -> RepairCore {
        var config = OrchestratorConfig()
        config.missingGraceSeconds = 600
        return RepairCore(config: config, openIncidents: [], bucket: nil, latestOpenings: [:], maintenance: MaintenanceBook(), nowMs: 1_000)
    }

    @Test("a FAILED data disk opens one incident: journaled, announced, and its SafeToRemove asked")
    func aFailedDiskOpensAnIncident() {
        var core = Self.core()
        let disk = Self.identity("serial-A")
        #expect(core.handle(Self.health(disk, .healthy), nowMs: 2_000).isEmpty)
        let effects = core.handle(Self.event(disk, to: .failed), nowMs: 3_000)
        #expect(effects.opened == 1)
        #expect(effects.dirty.count == 1 && core.machines.count == 1)
        let id = try? #require(effects.dirty.first)
        #expect(id?.hasPrefix("stor1.serial-A.3000") == true)
        #expect(effects.messages.contains { $0.topic == Topics.incidentEvents })
        #expect(effects.messages.contains { $0.topic == Topics.notifications })
        #expect(effects.commands.contains { if case .checkSafety = $0.action { true } else { false } })
        // The same failure again changes nothing.
        #expect(core.handle(Self.event(disk, to: .failed), nowMs: 4_000).isEmpty)
    }

    @Test("the brake first: a failure the brake's limits would hold is queued without a SafeToRemove, and asks once capacity comes free")
    func aFailureTheBrakeWouldHoldAsksNothing() throws {
        var config = OrchestratorConfig()
        config.brake.maxOutPerCluster = 1
        var core = RepairCore(config: config, openIncidents: [], bucket: nil, latestOpenings: [:], maintenance: MaintenanceBook(), nowMs: 1_000)
        func asks(_ effects: RepairCore.Effects) -> Bool { effects.commands.contains { if case .checkSafety = $0.action { true } else { false } } }
        let first = Self.identity("serial-1", dev: "/dev/sdb"), second = Self.identity("serial-2", dev: "/dev/sdc")
        core.handle(Self.health(first, .healthy), nowMs: 1_100)
        core.handle(Self.health(second, .healthy), nowMs: 1_100)
        let one = core.handle(Self.event(first, to: .failed), nowMs: 2_000)
        let firstID = try #require(one.dirty.first)
        #expect(asks(one))
        core.handle(.event(incident: firstID, .safetyAnswered(safe: true, detail: "ok", clusterHealth: "HEALTH_OK")), nowMs: 2_100)
        #expect(core.machines[firstID]?.state == .removing)

        let two = core.handle(Self.event(second, to: .failed), nowMs: 3_000)
        let secondID = try #require(two.dirty.first)
        #expect(!asks(two), "the cluster's one disk out is out: no SafeToRemove")
        #expect(core.machines[secondID]?.state == .queued)
        #expect(core.machines[secondID]?.detail.contains("already out in cluster default (limit 1)") == true, "\(core.machines[secondID]?.detail ?? "")")
        // Said once, OPENED -> QUEUED, and never that the disk-manager is being asked.
        let reports = two.messages.compactMap { $0.topic == Topics.incidentEvents ? $0.payload as? Bynar_V1_IncidentEvent : nil }
        #expect(reports.map(\.fromState) == [.opened] && reports.map(\.incident.state) == [.queued], "\(reports.map(\.message))")
        #expect(!reports.contains { $0.message.contains("asking") }, "\(reports.map(\.message))")
        let failedNote = two.messages.compactMap { $0.payload as? Bynar_V1_Notification }.first
        #expect(failedNote?.nextAction.contains("waiting for the cluster brake") == true, "\(failedNote?.nextAction ?? "no notification")")
        // Its regular recheck asks nothing either while the first is out, and says nothing.
        let recheck = core.handle(.tick, nowMs: 3_000 + Int64(config.queueRecheckSeconds) * 1000 + 1)
        #expect(!asks(recheck))
        #expect(!recheck.messages.contains { $0.topic == Topics.incidentEvents || $0.topic == Topics.incidentState(id: secondID) }, "\(recheck.messages.map(\.topic))")
        #expect(core.machines[secondID]?.state == .queued)

        // The first is repaired (its new disk added): capacity comes free and the second asks.
        core.handle(.event(incident: firstID, .answered(.remove, .init(outcome: .success, backendID: "osd.7"))), nowMs: 40_000)
        core.handle(.ticket(.with { $0.incidentID = firstID; $0.ticketKey = "BYN-1"; $0.state = .opened }), nowMs: 40_100)
        core.handle(.ticket(.with { $0.incidentID = firstID; $0.ticketKey = "BYN-1"; $0.state = .resolved }), nowMs: 40_200)
        core.handle(Self.event(Self.identity("serial-1b", dev: "/dev/sdb"), to: .replaced, previous: first), nowMs: 40_300)
        #expect(core.machines[firstID]?.state == .adding)
        let freed = core.handle(.event(incident: firstID, .answered(.add, .init(outcome: .success, backendID: "osd.7"))), nowMs: 40_400)
        #expect(asks(freed) && freed.commands.contains { $0.incident == secondID }, "\(core.machines[firstID]?.state.rawValue ?? "closed"), \(core.machines[secondID]?.detail ?? "")")
        #expect(core.machines[secondID]?.state == .checkingSafety)
    }

    @Test("the same inputs at the same times give the same effects")
    func deterministic() {
        func run() -> [String] {
            var core = Self.core()
            let disk = Self.identity("serial-D")
            core.handle(Self.health(disk, .healthy), nowMs: 2_000)
            let effects = core.handle(Self.event(disk, to: .failed), nowMs: 3_000)
            return effects.messages.map(\.topic) + effects.commands.map { "\($0.incident) \($0.action)" }
        }
        #expect(run() == run())
    }

    @Test("a missing disk whose slot another disk took, before its flags came: decided when they come; a system disk never")
    func aReplacedMissingDiskWaitsForItsFlags() {
        var core = Self.core()
        let system = Self.identity("serial-SYS", dev: "/dev/sda")
        // The events run ahead of the health (another subscription): no flags yet.
        core.handle(Self.event(system, to: .missing), nowMs: 2_000)
        #expect(core.handle(Self.event(Self.identity("serial-SYS2", dev: "/dev/sda"), to: .replaced, previous: system), nowMs: 2_100).opened == 0)
        // The flags arrive: a system disk, never repaired.
        #expect(core.handle(Self.health(system, .missing, system: true), nowMs: 2_200).opened == 0)
        #expect(core.handle(.tick, nowMs: 10_000).opened == 0)
        #expect(core.machines.isEmpty)

        let data = Self.identity("serial-DATA", dev: "/dev/sdd")
        core.handle(Self.event(data, to: .missing), nowMs: 11_000)
        core.handle(Self.event(Self.identity("serial-DATA2", dev: "/dev/sdd"), to: .replaced, previous: data), nowMs: 11_100)
        let decided = core.handle(Self.health(data, .missing), nowMs: 11_200)
        #expect(decided.opened == 1, "a data disk is decided when its flags come, not after the grace period")

        // Flags that never come: decided after the wait, with what is known.
        let lost = Self.identity("serial-LOST", dev: "/dev/sde")
        core.handle(Self.event(lost, to: .missing), nowMs: 20_000)
        core.handle(Self.event(Self.identity("serial-LOST2", dev: "/dev/sde"), to: .replaced, previous: lost), nowMs: 20_100)
        #expect(core.handle(.tick, nowMs: 20_100 + RepairCore.flagsWaitMs - 1).opened == 0)
        #expect(core.handle(.tick, nowMs: 20_100 + RepairCore.flagsWaitMs).opened == 1)
    }

    @Test("an incident waiting for its new disk takes the healthy disk the detector says is in its slot, when the REPLACED event was lost")
    func aLostReplacedEventIsMadeUpByTheSlotsHealth() throws {
        var core = Self.core()
        var old = Self.identity("serial-OLD")
        old.byPath = "pci-0000:00:1f.2-ata-3"
        core.handle(Self.health(old, .healthy), nowMs: 2_000)
        let opened = core.handle(Self.event(old, to: .failed), nowMs: 3_000)
        let id = try #require(opened.dirty.first)
        core.handle(.event(incident: id, .safetyAnswered(safe: true, detail: "ok", clusterHealth: "HEALTH_OK")), nowMs: 3_100)
        core.handle(.event(incident: id, .answered(.remove, .init(outcome: .success, backendID: "osd.7"))), nowMs: 3_200)
        core.handle(.ticket(.with { $0.incidentID = id; $0.ticketKey = "BYN-1"; $0.state = .opened }), nowMs: 3_300)
        core.handle(.ticket(.with { $0.incidentID = id; $0.ticketKey = "BYN-1"; $0.state = .resolved }), nowMs: 3_400)
        #expect(core.machines[id]?.state == .waitingForReplacement)
        // A disk in another slot, or one that was there before the incident, is not it.
        var elsewhere = Self.identity("serial-ELSEWHERE", dev: "/dev/sdq")
        elsewhere.byPath = "pci-0000:00:1f.2-ata-4"
        core.handle(.diskHealth(.with { $0.disk = elsewhere; $0.state = .healthy; $0.stateSinceUnixMs = 3_500 }, retained: true), nowMs: 3_500)
        #expect(core.handle(.tick, nowMs: 4_000).commands.isEmpty)
        #expect(core.machines[id]?.state == .waitingForReplacement)
        // The new disk's retained health (its REPLACED event was lost with a broker crash).
        var new = Self.identity("serial-NEW")
        new.byPath = old.byPath
        core.handle(.diskHealth(.with { $0.disk = new; $0.state = .healthy; $0.stateSinceUnixMs = 3_600 }, retained: true), nowMs: 3_600)
        let adopted = core.handle(.tick, nowMs: 5_000)
        #expect(core.machines[id]?.state == .adding)
        #expect(adopted.commands.contains { if case .add(_, let disk, let reuse, _) = $0.action { disk.key == "serial-NEW" && reuse == "osd.7" } else { false } })
    }

    @Test("the ticket names what the disk served by its backend's own name (osd.4, the filesystem at a mountpoint), also when the detector could no longer read the disk's label")
    func theTicketNamesWhatTheDiskServed() throws {
        func ticket(backend: String, id: String, inUseBy: String) throws -> (Bynar_V1_TicketRequest, IncidentMachine) {
            var core = Self.core()
            let disk = Self.identity("serial-\(backend)")
            core.handle(.diskHealth(.with { $0.disk = disk; $0.state = .healthy; $0.inUseBy = inUseBy }, retained: false), nowMs: 2_000)
            let opened = core.handle(Self.event(disk, to: .failed), nowMs: 3_000)
            let incident = try #require(opened.dirty.first)
            core.handle(.event(incident: incident, .safetyAnswered(safe: true, detail: "ok", clusterHealth: "HEALTH_OK")), nowMs: 3_100)
            // Accepted as a job (the backend said with the answer), finished by a job event that names it too.
            core.handle(.event(incident: incident, .answered(.remove, .init(outcome: .accepted, jobID: "job-1", backend: backend))), nowMs: 3_200)
            let removeRequest = try #require(core.machines[incident]?.requestID(.remove))
            let removed = core.handle(.event(incident: incident, .jobMoved(.init(requestID: removeRequest, jobID: "job-1", state: .succeeded, backend: backend, backendID: id))), nowMs: 3_300)
            let request = try #require(removed.messages.compactMap { $0.payload as? Bynar_V1_TicketRequest }.first)
            return (request, try #require(core.machines[incident]))
        }
        // A dying OSD disk: once every read fails the detector no longer sees its label.
        let (ceph, machine) = try ticket(backend: "ceph", id: "4", inUseBy: "")
        #expect(ceph.health.inUseBy == "osd.4 in cluster default", "\(ceph.health.inUseBy)")
        #expect(machine.served == "osd.4")
        // The journal keeps the backend: an orchestrator that restarts names it the same.
        let reread = try IncidentMachine(journalRecord: try Bynar_V1_IncidentRecord(serializedBytes: try machine.journalRecord.serializedBytes() as [UInt8]))
        #expect(reread.served == "osd.4" && reread.backend == "ceph")
        // While the detector still reads it, its own words stand.
        let (read, _) = try ticket(backend: "ceph", id: "4", inUseBy: "ceph osd.4 (cluster dev)")
        #expect(read.health.inUseBy == "ceph osd.4 (cluster dev)", "\(read.health.inUseBy)")
        // A plain data disk is no OSD.
        let (plain, _) = try ticket(backend: "filesystem", id: "/srv/disk1", inUseBy: "")
        #expect(plain.health.inUseBy == "the filesystem at /srv/disk1 in cluster default", "\(plain.health.inUseBy)")
        #expect(!plain.health.inUseBy.contains("OSD"))
    }

    /// Runs a repair story through a core holding at most `capacity` machines, with a shell
    /// like the engine's: events handed back for incidents not in memory are read from the
    /// "journal" (what was committed) and given again; each step is committed, then closed
    /// incidents are forgotten and memory trimmed. Returns per step what was decided (sorted:
    /// an event handed back is decided after the rest of its input), the journal, and how
    /// many incidents were read back.
    static func story(capacity: Int) -> (decided: [[String]], journal: [String: IncidentMachine], readBack: Int, inMemory: [Int]) {
        var config = OrchestratorConfig()
        config.missingGraceSeconds = 600
        config.incidentsInMemory = capacity
        config.brake.maxOutPerHost = 1
        config.brake.removalBurst = 10
        var core = RepairCore(config: config, openIncidents: [], bucket: nil, latestOpenings: [:], maintenance: MaintenanceBook(), nowMs: 1_000)
        var journal: [String: IncidentMachine] = [:]
        var decided: [[String]] = []
        var readBack = 0
        var inMemory: [Int] = []
        func step(_ input: RepairCore.Input, at now: Int64) {
            var pending: [RepairCore.Input] = [input]
            var step = RepairCore.Effects()
            while !pending.isEmpty {
                var effects = core.handle(pending.removeFirst(), nowMs: now)
                let load = effects.load
                effects.load = []
                step.merge(effects)
                guard !load.isEmpty else { continue }
                readBack += load.count
                core.load(load.compactMap { journal[$0.incident] })
                pending = load.map { .event(incident: $0.incident, $0.event) } + pending
            }
            for id in step.dirty { journal[id] = core.machine(id) }
            core.forget(closed: step.dirty.filter { journal[$0]?.isClosed == true })
            core.trimMemory()
            inMemory.append(core.machines.count)
            decided.append((step.messages.map { "\($0.topic) \(String(describing: $0.payload))" } + step.commands.map { "\($0.incident) \($0.action)" }).sorted())
        }
        let (a, b, c) = (identity("serial-A"), identity("serial-B", dev: "/dev/sdd"), Bynar_V1_DiskIdentity.with { $0.host = "stor2"; $0.key = "serial-C"; $0.devPath = "/dev/sdc" })
        for disk in [a, b, c] { step(health(disk, .healthy), at: 2_000) }
        for disk in [a, b, c] { step(event(disk, to: .failed), at: 3_000) }
        let (ia, ib, ic) = ("stor1.serial-A.3000", "stor1.serial-B.3000", "stor2.serial-C.3000")
        for id in [ia, ib, ic] { step(.event(incident: id, .safetyAnswered(safe: true, detail: "ok", clusterHealth: "HEALTH_OK")), at: 3_100) }
        for id in [ia, ic] { step(.event(incident: id, .answered(.remove, .init(outcome: .success, backendID: "osd.7"))), at: 3_200) }
        for id in [ia, ic] { step(.ticket(.with { $0.incidentID = id; $0.ticketKey = "BYN-\(id.count)"; $0.state = .opened }), at: 3_300) }
        step(.ticket(.with { $0.incidentID = ia; $0.ticketKey = "BYN-1"; $0.state = .resolved }), at: 3_400)
        step(event(identity("serial-A2"), to: .replaced, previous: a), at: 3_500)
        // A is back: the host's capacity frees and the queued B asks again.
        step(.event(incident: ia, .answered(.add, .init(outcome: .success, backendID: "osd.7"))), at: 3_600)
        step(.event(incident: ib, .safetyAnswered(safe: true, detail: "ok", clusterHealth: "HEALTH_OK")), at: 3_700)
        step(.jobProgress(.with { $0.requestID = "\(ib)/remove/1"; $0.jobID = "job-B"; $0.state = .running; $0.step = "out" }), at: 3_800)
        step(.tick, at: 3_900)
        // Long after: B's Remove job said nothing for its whole step timeout; C waits for its technician.
        step(.tick, at: 3_000 + 1_900_000)
        step(.jobProgress(.with { $0.requestID = "\(ib)/remove/1"; $0.jobID = "job-B"; $0.state = .succeeded; $0.backendID = "osd.9" }), at: 3_000 + 1_900_100)
        step(event(c, to: .healthy), at: 3_000 + 1_900_200)
        return (decided, journal, readBack, inMemory)
    }

    @Test("with one machine in memory the core decides what it decides with all of them: an incident not in memory is handed back, read from the journal, and goes on")
    func oneMachineInMemoryDecidesTheSame() {
        let all = Self.story(capacity: 1_000)
        let one = Self.story(capacity: 1)
        #expect(all.readBack == 0 && one.readBack >= 10, "read back: \(all.readBack) and \(one.readBack)")
        #expect(one.inMemory.allSatisfy { $0 <= 1 }, "memory after each commit: \(one.inMemory)")
        #expect(all.decided == one.decided)
        #expect(all.journal == one.journal)
        #expect(all.journal["stor1.serial-A.3000"]?.state == .resolved)
        #expect(all.journal["stor1.serial-B.3000"]?.state == .removed, "\(all.journal["stor1.serial-B.3000"].map { "\($0.state) \($0.detail)" } ?? "")")
        #expect(all.decided.contains { $0.contains { $0.contains("stor1.serial-B.3000") && $0.contains("checkSafety") && $0.contains("/safe/2") } }, "B asked again when A came back")
    }

    @Test("the disks the status page shows are those the core remembers: a disk that left its slot is forgotten")
    func aReplacedDiskLeavesTheDiskView() {
        var core = Self.core()
        let old = Self.identity("serial-OLD")
        #expect(core.handle(Self.health(old, .healthy), nowMs: 2_000).disks.map(\.key) == ["stor1/serial-OLD"])
        let replaced = core.handle(Self.event(Self.identity("serial-NEW"), to: .replaced, previous: old), nowMs: 3_000)
        #expect(replaced.disks.count == 1 && replaced.disks[0].key == "stor1/serial-OLD" && replaced.disks[0].health == nil)
        let board = StatusBoard()
        board.noteDisks([("stor1/serial-OLD", .with { $0.disk = old; $0.state = .healthy })])
        board.noteDisks(replaced.disks)
        #expect(board.copy.disks.isEmpty)
    }
}
