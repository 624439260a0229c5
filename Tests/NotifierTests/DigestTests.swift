import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The incident history the real bynar-notifier keeps from incident and ticket events, the
/// `bynar-notifier digest` command that prints it, and the digest e-mailed (multipart
/// text + HTML) to a real SMTP server (aiosmtpd).
@Suite(.serialized, .enabled(if: TestBroker.available && SmtpTestServer.available, "mosquitto or python3-aiosmtpd is not installed"))
struct DigestTests {
    static func event(_ id: String, _ state: Bynar_V1_IncidentState, serial: String, host: String, openedAgoMs: Int64, updatedAgoMs: Int64) -> Bynar_V1_IncidentEvent {
        let now = Bus.nowUnixMs()
        var event = Bynar_V1_IncidentEvent()
        event.incident.id = id
        event.incident.state = state
        event.incident.disk.host = host
        event.incident.disk.model = "ST4000NM0035"
        event.incident.disk.serial = serial
        event.incident.disk.byPath = "pci-0000:00:1f.2-ata-\(serial.count)"
        event.incident.openedUnixMs = now - openedAgoMs
        event.incident.updatedUnixMs = now - updatedAgoMs
        event.incident.reasons = [.with { $0.rule = "smart.overall_failing"; $0.detail = "SMART overall-health self-assessment failed" }]
        return event
    }

    @Test func theDigestHasOneRowPerIncidentWithTimeToRepair() async throws {
        let smtp = try SmtpTestServer(mode: .plain)
        let harness = try await NotifierHarness()
        let notifier = try await harness.start(notifier: """
            {"email": {"host": "127.0.0.1", "port": \(smtp.port), "security": "none", "from": "bynar@example.com",
                       "digest_to": ["storage@example.com"]},
             "digest": {"interval_hours": 0.001}}
            """)
        defer { notifier.signal(SIGTERM) }
        let hour: Int64 = 3_600_000
        let minute: Int64 = 60_000
        // inc-1: opened 5 h ago, removed, ticketed, repaired 2 h ago (3 h to repair).
        for (state, ago) in [(Bynar_V1_IncidentState.opened, 5 * hour), (.removed, 4 * hour), (.waitingForReplacement, 4 * hour), (.resolved, 2 * hour)] {
            try await harness.bus.publish(Self.event("inc-1", state, serial: "A1", host: "h1", openedAgoMs: 5 * hour, updatedAgoMs: ago), to: Topics.incidentEvents)
        }
        // inc-2: opened 90 min ago, repaired 30 min ago (1 h).
        for (state, ago) in [(Bynar_V1_IncidentState.opened, 90 * minute), (.resolved, 30 * minute)] {
            try await harness.bus.publish(Self.event("inc-2", state, serial: "B22", host: "h2", openedAgoMs: 90 * minute, updatedAgoMs: ago), to: Topics.incidentEvents)
        }
        // inc-3: waiting for the technician, ticket open.
        try await harness.bus.publish(Self.event("inc-3", .waitingForReplacement, serial: "C333", host: "h2", openedAgoMs: hour, updatedAgoMs: 0), to: Topics.incidentEvents)
        var ticket = Bynar_V1_TicketEvent()
        ticket.incidentID = "inc-3"
        ticket.ticketKey = "OPS-3"
        ticket.url = "https://jira.example/browse/OPS-3"
        ticket.state = .opened
        ticket.changedUnixMs = Bus.nowUnixMs()
        try await harness.bus.publish(ticket, to: Topics.ticketEvents)
        // A ZFS pool h1's detector reports (retained), and one whose payload names another
        // pool than its topic (refused: TopicClaims rule 10).
        var pool = Bynar_V1_PoolState()
        pool.pool = "tank"
        pool.kind = "zfs"
        pool.health = "DEGRADED"
        pool.capacityPercent = 41
        pool.writeErrors = 186
        pool.lastScrubErrors = -1
        pool.alarms = ["pool tank is DEGRADED"]
        pool.observedUnixMs = Bus.nowUnixMs()
        try await harness.bus.publish(pool, to: Topics.poolState(host: "h1", pool: "tank"), retain: true)
        pool.pool = "forged"
        try await harness.bus.publish(pool, to: Topics.poolState(host: "h2", pool: "tank"), retain: true)
        // inc-0: ended two days ago: not in a 24 h report.
        try await harness.bus.publish(Self.event("inc-0", .resolved, serial: "OLD", host: "h1", openedAgoMs: 50 * hour, updatedAgoMs: 49 * hour), to: Topics.incidentEvents)

        let config = notifier.directory + "/bynar.json"
        var text = ""
        #expect(await eventually(.seconds(10)) {
            text = try harness.command(["digest", "--config", config]).1
            return text.contains("OPS-3 (open)")
        }, "\(text)\n\(notifier.log)")
        let rows = text.split(separator: "\n").filter { $0.hasPrefix("inc-") }
        #expect(rows.count == 3, "\(text)")
        #expect(rows.first { $0.hasPrefix("inc-1") }?.hasSuffix("3 h") == true, "\(text)")
        #expect(rows.first { $0.hasPrefix("inc-2") }?.hasSuffix("60 min") == true, "\(text)")
        #expect(rows.first { $0.hasPrefix("inc-1") }?.contains("ST4000NM0035 serial A1, slot pci-0000:00:1f.2-ata-2") == true)
        #expect(text.contains("Failures: 3") && text.contains("Repairs done: 2") && text.contains("Open tickets: 1"))
        #expect(text.contains("Median time to repair: 2 h"), "\(text)")
        #expect(!text.contains("inc-0"))
        #expect(text.contains("Storage pools: 1 pool on 1 host, 1 not ONLINE"), "\(text)")
        #expect(text.split(separator: "\n").contains { $0.hasPrefix("h1") && $0.contains("tank") && $0.contains("DEGRADED") && $0.contains("41%") && $0.contains("0/186/0") }, "\(text)")
        #expect(!text.contains("forged"))
        // A longer look back includes the old one.
        #expect(try harness.command(["digest", "--hours", "72", "--config", config]).1.contains("inc-0"))

        let (code, html) = try harness.command(["digest", "--html", "--config", config])
        #expect(code == 0)
        #expect(html.components(separatedBy: "<tr><td>inc-").count - 1 == 3, "\(html)")
        #expect(html.contains("<a href=\"https://jira.example/browse/OPS-3\">OPS-3</a> (open)"))

        // The scheduled digest (every 3.6 s here) is e-mailed as text + HTML.
        #expect(await eventually(.seconds(15)) { smtp.received.contains { $0.subject.contains("Digest") && $0.subject.contains("3 failures") } }, "\(notifier.log)")
        let mail = try #require(smtp.received.last { $0.subject.contains("3 failures") })
        #expect(mail.content_type == "multipart/alternative")
        #expect(mail.rcpt_tos == ["storage@example.com"])
        #expect(mail.text?.contains("Median time to repair: 2 h") == true)
        #expect(mail.html?.components(separatedBy: "<tr><td>inc-").count == 4)
        await harness.finish()
    }

    /// Incident events reach the notifier at most once (a crash between arrival and its
    /// write loses one); the orchestrator's notifications are sent until answered and carry
    /// the state the incident reached. So an incident whose last events this notifier never
    /// got (here: never published) is still resolved in its history, from the notification
    /// that said so, and a notification about no incident state changes nothing.
    @Test func theLastTransitionComesWithTheNotificationWhenItsEventWasLost() async throws {
        let harness = try await NotifierHarness()
        let notifier = try await harness.start(notifier: #"{"digest": {"interval_hours": 24}}"#)
        defer { notifier.signal(SIGTERM) }
        let hour: Int64 = 3_600_000
        for (state, ago) in [(Bynar_V1_IncidentState.opened, 5 * hour), (.removed, 4 * hour)] {
            try await harness.bus.publish(Self.event("inc-lost", state, serial: "L1", host: "h1", openedAgoMs: 5 * hour, updatedAgoMs: ago), to: Topics.incidentEvents)
        }
        // The WAITING_FOR_REPLACEMENT, ADDING and RESOLVED events were lost; the
        // orchestrator's "replaced" notification arrives (it is sent until answered).
        var replaced = Bynar_V1_Notification()
        replaced.severity = .info
        replaced.title = "Disk L1 on h1 replaced"
        replaced.incidentID = "inc-lost"
        replaced.incidentState = .resolved
        replaced.incidentUpdatedUnixMs = Bus.nowUnixMs() - 2 * hour
        try await harness.bus.publish(replaced, to: Topics.notifications)
        var unrelated = Bynar_V1_Notification()
        unrelated.title = "Something about the incident, no state"
        unrelated.incidentID = "inc-lost"
        try await harness.bus.publish(unrelated, to: Topics.notifications)

        let config = notifier.directory + "/bynar.json"
        var text = ""
        #expect(await eventually(.seconds(10)) {
            text = try harness.command(["digest", "--config", config]).1
            return text.contains("Repairs done: 1")
        }, "\(text)\n\(notifier.log)")
        let row = text.split(separator: "\n").first { $0.hasPrefix("inc-lost") }
        #expect(row?.hasSuffix("3 h") == true, "time to repair from the notification's time: \(text)")
        await harness.finish()
    }

    @Test func badCommandUsageAndConfigAreNamed() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-notifier-cfg")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try #"{"notifier": {"slack": {"min_severity": "loud"}, "email": {"security": "ssl"}}}"#.write(toFile: directory + "/bad.json", atomically: true, encoding: .utf8)
        let output = directory + "/out"
        let service = try ChildProcess(builtExecutable("bynar-notifier"), ["--config", directory + "/bad.json"], outputPath: output)
        _ = service.waitForExit(timeout: .seconds(10))
        #expect(service.exitCode == 78)
        let said = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(said.contains("notifier.slack.min_severity: must be one of info, warning, error, got \"loud\""), "\(said)")
        #expect(said.contains("notifier.email.security: must be one of starttls, tls, none, got \"ssl\""), "\(said)")

        let usage = try ChildProcess(builtExecutable("bynar-notifier"), ["digest", "--hours", "soon"], outputPath: output)
        _ = usage.waitForExit(timeout: .seconds(10))
        #expect(usage.exitCode == 64)
        #expect(((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("--hours needs a number of hours above 0"))

        try #"{"db_location": "\#(directory)/nothing-here"}"#.write(toFile: directory + "/empty.json", atomically: true, encoding: .utf8)
        let missing = try ChildProcess(builtExecutable("bynar-notifier"), ["digest", "--config", directory + "/empty.json"], outputPath: output)
        _ = missing.waitForExit(timeout: .seconds(10))
        #expect(missing.exitCode == 78)
        #expect(((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("no notifier store at \(directory)/nothing-here/notifier.sqlite"))
    }
}
