import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A failed server part through the real services (``RepairRig``: a real broker, the real
/// bynar-detector, bynar-disk-manager, bynar-ticketing and bynar-orchestrator). The BMC is
/// the STAND-IN Redfish BMC (Tests/StandIns/redfish: DMTF mockup shapes over HTTPS with
/// sessions; sushy-emulator models no power supplies) and JIRA is the STAND-IN JIRA: neither
/// can run for real here. The test plays the BMC's part failing and the technician.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed"))
struct HardwareEndToEndTests {
    static func psu(_ bmc: RedfishStandIn, health: String, serial: String? = nil) throws {
        try bmc.edit("/redfish/v1/Chassis/1U/Power") { power in
            var supplies = power["PowerSupplies"] as! [[String: Any]]
            supplies[1]["Status"] = ["State": "Enabled", "Health": health]
            if let serial { supplies[1]["SerialNumber"] = serial }
            power["PowerSupplies"] = supplies
        }
    }

    /// A power supply fails: one hardware incident, one ticket naming the part, its location
    /// and serial, nothing sent to the disk-manager. The orchestrator is killed (-9) and
    /// started again with the ticket filed: still one ticket. The technician resolves the
    /// ticket before swapping the part: Bynar comments that the BMC still says failed. The
    /// part is swapped (a new serial): the incident and the ticket are closed.
    @Test(.timeLimit(.minutes(4)))
    func aFailedPowerSupplyIsTicketedAndClosedWhenTheBMCSaysItIsReplaced() async throws {
        let bmc = try RedfishStandIn()
        defer { bmc.stop() }
        try await RepairRig.with(prefix: "bynar-hw-e2e") { rig in
            try "\(bmc.user):\(bmc.password)\n".write(toFile: rig.directory + "/bmc-credentials", atomically: true, encoding: .utf8)
            try await rig.start(detector: """
                "probe": false, "read_probe": false, "fsck_interval_seconds": 0, "watch_only": ["/dev/nonexistent-bynar-test"],
                "redfish": {"url": "\(bmc.baseURL)", "ca_file": "\(bmc.ca.caFile)", "credentials_file": "\(rig.directory)/bmc-credentials",
                            "poll_seconds": 1, "timeout_seconds": 3}
                """, diskManager: #""exclude": []"#, orchestrator: #""hardware_healthy_seconds": 3"#)
            try Self.psu(bmc, health: "Critical")

            // One ticket, for the technician, naming the part.
            #expect(await rig.window.tickets.wait(timeout: .seconds(60)) { $0.contains { $0.payload.state == .opened } }, "\(rig.logs())")
            let ticket = try #require(rig.window.tickets.all.first { $0.payload.state == .opened }?.payload)
            #expect(ticket.incidentID.hasPrefix("hw:h1:"))
            let issue = try #require(try rig.jira.liveIssues().first)
            #expect(issue.summary == "Failed power supply on h1: PSU 2 (499253-B21 serial 1Z00002)", "\(issue.summary)")
            #expect(issue.description.contains("*Serial:* 1Z00002") && issue.description.contains("*Location:* PSU 2"), "\(issue.description)")
            #expect(issue.description.contains("redfish.power\\_supply\\_failed") || issue.description.contains("redfish.power_supply_failed"), "\(issue.description)")
            #expect(rig.notifications.all.contains { $0.payload.incidentID == ticket.incidentID && $0.payload.severity == .error }, "people were told")

            // A crash of the orchestrator with the incident open: the journal keeps it.
            try await rig.crashOrchestrator()
            try await Task.sleep(for: .seconds(3))
            #expect(try rig.jira.liveIssues().count == 1, "exactly one ticket after the restart")

            // Resolved by a person while the BMC still says failed: one comment says so.
            try rig.jira.resolve(ticket.ticketKey)
            var commented = false
            for _ in 0..<60 where !commented {
                try await Task.sleep(for: .milliseconds(500))
                commented = try rig.jira.liveIssues().first?.comments.contains { $0.contains("still reports power supply PSU 2 failed") } == true
            }
            #expect(commented, "\((try? rig.jira.liveIssues().first?.comments) ?? [])\n\(rig.logs())")

            // Swapped: the BMC reads the bay healthy with a new serial; after the healthy
            // time (3 s) the ticket is closed, saying so.
            try Self.psu(bmc, health: "OK", serial: "1Z00009")
            #expect(await rig.window.tickets.wait(timeout: .seconds(60)) { $0.contains { $0.payload.state == .closed && $0.payload.ticketKey == ticket.ticketKey } }, "\(rig.logs())")
            let closed = try #require(try rig.jira.liveIssues().first)
            #expect(closed.comments.contains { $0.contains("Closed by Bynar: the BMC reports power supply PSU 2 healthy since") && $0.contains("serial 1Z00002 is now 1Z00009") }, "\(closed.comments)")
            #expect(await rig.notifications.wait(timeout: .seconds(10)) { $0.contains { $0.payload.incidentID == ticket.incidentID && $0.payload.severity == .info } })

            // Nothing went to the disk-manager, and one ticket in all.
            #expect(rig.window.progress.all.isEmpty, "no disk-manager job for a power supply")
            #expect(rig.window.incidents.all.isEmpty, "no disk incident")
            #expect(try rig.jira.liveIssues().count == 1)
        }
    }
}
