import BynarBus
import BynarConfig
import BynarProto
@testable import Orchestrator
import Testing

/// Hardware incidents without I/O (``HardwareIncidents``, rules HW1-HW6 in docs/hardware.md):
/// the same inputs give the same incidents and messages.
@Suite struct HardwareIncidentsTests {
    static let psuID = "/redfish/v1/Chassis/1U/Power#/PowerSupplies/1"

    static func finding(_ severity: Bynar_V1_HardwareSeverity, id: String = psuID, kind: String = "power_supply", serial: String = "PSU-SN-2",
                        diskKey: String = "") -> Bynar_V1_HardwarePartFinding {
        .with {
            $0.part = .with { $0.kind = kind; $0.id = id; $0.name = "PSU 2"; $0.location = "PSU bay 2"; $0.serial = serial; $0.model = "PWS-1K" }
            $0.severity = severity
            $0.rule = severity == .failed ? "R3" : "R8"
            $0.reason = severity == .failed ? "redfish.power_supply_failed" : "redfish.failure_predicted"
            $0.detail = "Status.Health Critical"
            $0.diskKey = diskKey
        }
    }

    static func event(_ to: Bynar_V1_HardwareSeverity, from: Bynar_V1_HardwareSeverity = .ok, _ finding: Bynar_V1_HardwarePartFinding? = nil) -> HardwareIncidents.Input {
        .event(host: "stor1", .with { $0.finding = finding ?? Self.finding(to); $0.from = from; $0.to = to })
    }

    static func state(_ findings: [Bynar_V1_HardwarePartFinding], reachable: Bool = true, host: String = "stor1") -> HardwareIncidents.Input {
        .state(host: host, .with { $0.bmcReachable = reachable; $0.findings = findings; $0.partsRead = 20 })
    }

    static func tickets(_ effects: HardwareIncidents.Effects) -> [Bynar_V1_TicketRequest] {
        effects.messages.compactMap { $0.payload as? Bynar_V1_TicketRequest }
    }

    static func notes(_ effects: HardwareIncidents.Effects) -> [Bynar_V1_Notification] {
        effects.messages.compactMap { $0.payload as? Bynar_V1_Notification }
    }

    static func ticketEvent(_ id: String, _ state: Bynar_V1_TicketState) -> HardwareIncidents.Input {
        .ticket(.with { $0.incidentID = id; $0.state = state; $0.ticketKey = "OPS-7"; $0.url = "https://jira.example/browse/OPS-7" })
    }

    /// HW5: an OPEN no ticket event confirmed (lost on the way, or ticketing's answer lost)
    /// is asked again after ``HardwareIncidents/refileMs``, once per that time; a ticket
    /// event stops it.
    @Test func anOpenNoTicketEventConfirmedIsAskedAgain() throws {
        var core = HardwareIncidents(open: [], healthySeconds: 60, ticketReceiptSeconds: 300)
        let open = try #require(Self.tickets(core.handle(Self.event(.failed), nowMs: 1_000)).first)
        let refile = HardwareIncidents.refileMs
        #expect(Self.tickets(core.handle(.tick, nowMs: 1_000 + refile - 1)).isEmpty)
        let again = Self.tickets(core.handle(.tick, nowMs: 1_000 + refile))
        #expect(again.map(\.action) == [.open] && again.first?.incidentID == open.incidentID, "asked again, for the same incident")
        #expect(Self.tickets(core.handle(.tick, nowMs: 1_000 + refile + 1)).isEmpty, "not again until another refileMs")
        core.handle(Self.ticketEvent(open.incidentID, .opened), nowMs: 2_000 + refile)
        #expect(Self.tickets(core.handle(.tick, nowMs: 3_000 + 3 * refile)).isEmpty, "filed: never asked again")
    }

    /// HW1, HW4, HW5: a failed PSU gets one incident and one ticket naming the part, its
    /// location and serial; the technician's resolution while the BMC still says failed gets
    /// one comment; healthy for the configured time closes incident and ticket.
    @Test func aFailedPartIsTicketedOnceAndClosedWhenTheBMCSaysItIsHealthy() throws {
        var core = HardwareIncidents(open: [], healthySeconds: 60, ticketReceiptSeconds: 300)
        let opened = core.handle(Self.event(.failed), nowMs: 1_000)
        let open = try #require(Self.tickets(opened).first)
        #expect(Self.tickets(opened).count == 1 && open.action == .open)
        #expect(open.incidentID.hasPrefix("hw:stor1:") && open.hardware.host == "stor1")
        #expect(open.hardware.finding.part.serial == "PSU-SN-2" && open.hardware.finding.part.location == "PSU bay 2")
        #expect(!open.hasHealth, "a hardware ticket carries no disk")
        #expect(opened.changed.map(\.id) == [open.incidentID])
        #expect(Self.notes(opened).first?.severity == .error)
        #expect(opened.messages.first { $0.payload is Bynar_V1_TicketRequest }?.receipt == nil,
                "an OPEN is confirmed by its ticket event, not held as a receipt group's head (a lost receipt held its comment and close behind it)")

        #expect(core.handle(Self.event(.failed), nowMs: 2_000).isEmpty, "the same failure again: nothing new")
        #expect(Self.tickets(core.handle(Self.state([Self.finding(.failed)]), nowMs: 2_500)).isEmpty, "a retained state of it: nothing new")

        let filed = core.handle(Self.ticketEvent(open.incidentID, .opened), nowMs: 3_000)
        #expect(filed.changed.first?.ticketKey == "OPS-7" && filed.messages.isEmpty)
        let resolved = core.handle(Self.ticketEvent(open.incidentID, .resolved), nowMs: 4_000)
        let comment = try #require(Self.tickets(resolved).first)
        #expect(comment.action == .comment && comment.comment.contains("still reports") && comment.ticketKey == "OPS-7")
        #expect(core.open.count == 1, "resolved by a person while failed: the incident stays open")
        #expect(Self.tickets(core.handle(Self.ticketEvent(open.incidentID, .resolved), nowMs: 4_500)).isEmpty, "told once")

        // The technician swapped it: the BMC reads it healthy, with a new serial.
        let healthy = core.handle(Self.event(.ok, from: .failed, Self.finding(.ok, serial: "PSU-SN-9")), nowMs: 10_000)
        #expect(Self.tickets(healthy).isEmpty && core.open.count == 1, "healthy, not yet for long enough")
        #expect(core.handle(.tick, nowMs: 69_999).changed.isEmpty)
        let closed = core.handle(.tick, nowMs: 70_000)
        let close = try #require(Self.tickets(closed).first)
        #expect(close.action == .close && close.comment.contains("PSU-SN-2 is now PSU-SN-9"))
        #expect(closed.changed.first?.isOpen == false && core.open.isEmpty)
        #expect(Self.notes(closed).first?.severity == .info)

        // The same part failing later is a new incident.
        let again = core.handle(Self.event(.failed), nowMs: 100_000)
        #expect(Self.tickets(again).first.map { $0.action == .open && $0.incidentID != open.incidentID } == true)
    }

    /// HW4: a part that flaps (healthy, then failed again within the healthy time) keeps its
    /// one incident and ticket, with a comment.
    @Test func aFlappingPartKeepsOneTicket() throws {
        var core = HardwareIncidents(open: [], healthySeconds: 300, ticketReceiptSeconds: 300)
        let id = try #require(Self.tickets(core.handle(Self.event(.failed), nowMs: 0)).first?.incidentID)
        _ = core.handle(Self.event(.ok, from: .failed), nowMs: 1_000)
        let again = core.handle(Self.event(.failed), nowMs: 2_000)
        #expect(Self.tickets(again).map(\.action) == [.comment] && Self.tickets(again).first?.incidentID == id)
        #expect(core.handle(.tick, nowMs: 400_000).changed.isEmpty, "failed now: never closed by time")
        #expect(core.open.values.map(\.id) == [id])
    }

    /// HW4: the state (part no longer listed) and the event back to OK come on two
    /// subscriptions, in either order: the new serial is kept whichever comes first.
    @Test func aSwappedPartsSerialIsKeptWhicheverReportComesFirst() throws {
        var core = HardwareIncidents(open: [], healthySeconds: 10, ticketReceiptSeconds: 300)
        _ = core.handle(Self.event(.failed), nowMs: 0)
        _ = core.handle(Self.state([]), nowMs: 1_000)
        _ = core.handle(Self.event(.ok, from: .failed, Self.finding(.ok, serial: "PSU-SN-9")), nowMs: 1_100)
        let close = try #require(Self.tickets(core.handle(.tick, nowMs: 11_000)).first)
        #expect(close.action == .close && close.comment.contains("serial PSU-SN-2 is now PSU-SN-9") && close.comment.contains("healthy since"), "\(close.comment)")
    }

    /// HW2, HW3: a drive the detector tied to a disk it watches is the disk workflow's; a
    /// warning (live) is told, not ticketed; a retained warning is not told again.
    @Test func managedDrivesAndWarningsOpenNoIncident() {
        var core = HardwareIncidents(open: [], healthySeconds: 0, ticketReceiptSeconds: 300)
        let drive = Self.finding(.failed, id: "/redfish/v1/Systems/1/Storage/1/Drives/3", kind: "drive", diskKey: "wwn-0x5000c500a1b2c3d4")
        #expect(core.handle(.event(host: "stor1", .with { $0.finding = drive; $0.to = .failed }), nowMs: 1).isEmpty)
        #expect(core.handle(Self.state([drive]), nowMs: 2).isEmpty)
        let warned = core.handle(Self.event(.warning), nowMs: 3)
        #expect(Self.tickets(warned).isEmpty && warned.changed.isEmpty && Self.notes(warned).map(\.severity) == [.warning])
        #expect(core.handle(Self.state([Self.finding(.warning)]), nowMs: 4).isEmpty)
        // An unmanaged drive that fails is the technician's, through a hardware ticket.
        let unmanaged = Self.finding(.failed, id: "/redfish/v1/Systems/1/Storage/1/Drives/4", kind: "drive")
        #expect(Self.tickets(core.handle(.event(host: "stor1", .with { $0.finding = unmanaged; $0.to = .failed }), nowMs: 5)).map(\.action) == [.open])
    }

    /// HW6: an orchestrator starting (or taking over) with the journal's open incidents: a
    /// retained state opens what failed while it was away, and starts the healthy time of
    /// parts no longer listed; an unreachable BMC's state closes nothing.
    @Test func retainedStatesReconcileWithTheJournal() throws {
        var first = HardwareIncidents(open: [], healthySeconds: 0, ticketReceiptSeconds: 300)
        let fan = Self.finding(.failed, id: "/redfish/v1/Chassis/1U/Thermal#/Fans/0", kind: "fan", serial: "FAN-1")
        let opened = first.handle(Self.state([Self.finding(.failed), fan]), nowMs: 10)
        #expect(Self.tickets(opened).count == 2 && first.open.count == 2)

        // A new leader: the journal's incidents; the BMC cannot be read (last good findings,
        // without the fan): nothing closes.
        var next = HardwareIncidents(open: opened.changed, healthySeconds: 0, ticketReceiptSeconds: 300)
        #expect(next.handle(Self.state([Self.finding(.failed)], reachable: false), nowMs: 20).isEmpty)
        // Read again: the fan is no longer listed: closed (healthy time 0), the PSU stays.
        let read = next.handle(Self.state([Self.finding(.failed)]), nowMs: 30)
        #expect(Self.tickets(read).map(\.action) == [.close])
        #expect(next.open.values.map(\.partID) == [Self.psuID])
        // Another host's state says nothing about this host's parts.
        #expect(next.handle(Self.state([], host: "stor2"), nowMs: 40).isEmpty)
    }

    /// HW5: a ticket ticketing could not file is asked for again after ten minutes.
    @Test func anUnfiledTicketIsAskedForAgain() throws {
        var core = HardwareIncidents(open: [], healthySeconds: 0, ticketReceiptSeconds: 300)
        let id = try #require(Self.tickets(core.handle(Self.event(.failed), nowMs: 0)).first?.incidentID)
        #expect(core.handle(.ticket(.with { $0.incidentID = id; $0.state = .failed; $0.detail = "JIRA said 400" }), nowMs: 1_000).changed.first?.ticket == .failed)
        #expect(core.handle(.tick, nowMs: 600_999).messages.isEmpty)
        #expect(Self.tickets(core.handle(.tick, nowMs: 601_000)).map(\.action) == [.open])
        #expect(core.handle(.ticket(.with { $0.incidentID = "stor1.sdc.5"; $0.state = .opened }), nowMs: 602_000).isEmpty, "a disk incident's ticket is not this core's")
    }
}

/// The status page's hardware section, from the journal's open hardware incidents: the part
/// as text (markup from a BMC is escaped), its ticket, and whether it reads healthy yet.
@Suite struct HardwareStatusTests {
    @Test func theStatusPageListsOpenHardwareIncidents() throws {
        var core = HardwareIncidents(open: [], healthySeconds: 300, ticketReceiptSeconds: 300)
        var finding = HardwareIncidentsTests.finding(.failed)
        finding.part.location = "PSU <b>2</b>"
        let opened = core.handle(.event(host: "stor1", .with { $0.finding = finding; $0.to = .failed }), nowMs: 1_000)
        let id = try #require(opened.changed.first?.id)
        _ = core.handle(HardwareIncidentsTests.ticketEvent(id, .opened), nowMs: 2_000)
        let snapshot = StatusSnapshot.make(board: .init(), incidents: [], timelines: [:], bucket: nil, config: OrchestratorConfig(), host: "orch",
                                           version: "test", nowMs: 3_000, hardware: Array(core.open.values))
        #expect(snapshot.hardware.map(\.kind) == ["power supply"] && snapshot.hardware.first?.healthySinceUnixMs == nil)
        #expect(snapshot.tickets.map(\.key) == ["OPS-7"], "its ticket is among the page's tickets")
        let html = StatusPage.html(snapshot)
        #expect(html.contains("Hardware incidents (1)") && html.contains("PSU &lt;b&gt;2&lt;/b&gt;") && !html.contains("<b>2</b>"))
        #expect(html.contains("https://jira.example/browse/OPS-7"))
        let json = String(decoding: try StatusPage.json(snapshot), as: UTF8.self)
        #expect(json.contains("\"hardware\":[{") && json.contains("\"serial\":\"PSU-SN-2\""), "\(json)")
        let empty = StatusPage.html(StatusSnapshot.make(board: .init(), incidents: [], timelines: [:], bucket: nil, config: OrchestratorConfig(), host: "orch",
                                                        version: "test", nowMs: 3_000))
        #expect(empty.contains("Hardware incidents (0)") && empty.contains("No server part reported failed."))
    }
}
