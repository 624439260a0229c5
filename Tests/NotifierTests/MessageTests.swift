import BynarProto
import BynarStore
@testable import Notifier
import Testing

/// Pure parts: message text, coalescing policy, Slack's answers, dot-stuffing, the digest
/// table and its schedule.
@Suite struct MessageTests {
    static func disk(_ serial: String, host: String = "h1", slot: String = "pci-0000:00:1f.2-ata-3") -> Bynar_V1_DiskIdentity {
        var disk = Bynar_V1_DiskIdentity()
        disk.host = host
        disk.model = "ST4000NM0035"
        disk.serial = serial
        disk.byPath = slot
        disk.devPath = "/dev/sdc"
        disk.key = "serial-" + serial
        return disk
    }

    static func failure(_ serial: String, host: String) -> Notice {
        var n = Bynar_V1_Notification()
        n.severity = .error
        n.title = "Disk failed: SMART overall-health self-assessment failed"
        n.host = host
        n.disk = disk(serial, host: host)
        n.nextAction = "removing it from the cluster"
        n.incidentID = "inc-\(serial)"
        return Notice(notification: n, receivedUnixMs: 0)
    }

    @Test func aSingleNotificationSaysWhatWhereAndNext() {
        let text = SlackRenderer(maxListed: 25, maxLength: 3500).render([Self.failure("ZC1A2B3C", host: "h1")], spanMs: 0, nowUnixMs: 0).text
        #expect(text.contains("*ERROR* Disk failed: SMART overall-health self-assessment failed"))
        #expect(text.contains("*Where:* host h1, disk ST4000NM0035 serial ZC1A2B3C, slot pci-0000:00:1f.2-ata-3, /dev/sdc"))
        #expect(text.contains("*Next:* removing it from the cluster"))
        #expect(text.contains("incident `inc-ZC1A2B3C`"))
    }

    @Test func theNextStepAndTheDiskComeFromTheIncidentWhenTheSenderLeftThemOut() {
        var bare = Bynar_V1_Notification()
        bare.severity = .warning
        bare.title = "Ticket filed"
        bare.incidentID = "inc-9"
        var incident = IncidentRecord(id: "inc-9")
        incident.host = "h7"
        incident.disk = Self.disk("Z9", host: "h7")
        incident.state = .waitingForReplacement
        incident.ticketKey = "OPS-12"
        let completed = MessageText.complete(bare, incident: incident)
        #expect(completed.host == "h7")
        #expect(completed.disk.serial == "Z9")
        #expect(completed.nextAction == "waiting for a technician to replace the disk (ticket OPS-12)")
        incident.state = .stuck
        incident.detail = "disk-manager did not answer the removal for 30 min"
        #expect(MessageText.nextAction(incident) == "nothing until a person looks: disk-manager did not answer the removal for 30 min")
        #expect(MessageText.complete(Bynar_V1_Notification(), incident: nil).nextAction.contains("nothing automatic"))
    }

    @Test func aBurstBecomesOneSummaryGroupedByHostAndCut() {
        let notices = (0..<50).map { Self.failure("S\($0)", host: "h\($0 % 3)") }
        let message = SlackRenderer(maxListed: 20, maxLength: 3500).render(notices, spanMs: 1200, nowUnixMs: 0)
        #expect(message.items == 50)
        #expect(message.text.hasPrefix(":red_circle: *50 notifications in 1.2 s* on 3 hosts: 50 errors"))
        #expect(message.text.contains("\n*h0* (17)"))
        #expect(message.text.contains("…and 30 more"))
        #expect(message.text.components(separatedBy: "\n• ").count - 1 == 20)
        // A tight length limit cuts earlier, still within the limit and still counted.
        let short = SlackRenderer(maxListed: 100, maxLength: 600).render(notices, spanMs: 1200, nowUnixMs: 0).text
        #expect(short.count <= 600)
        let listed = short.components(separatedBy: "\n• ").count - 1
        #expect(short.contains("…and \(50 - listed) more"))
    }

    @Test func slackEscapesItsControlCharacters() {
        var n = Self.failure("A", host: "h1")
        n.notification.title = "a <b> & c"
        #expect(SlackRenderer(maxListed: 5, maxLength: 3500).single(n.notification).contains("a &lt;b&gt; &amp; c"))
    }

    @Test func coalescingWaitsForQuietButNotPastTheWindow() {
        let policy = CoalescingPolicy(quietMs: 2000, windowMs: 30_000)
        #expect(policy.flushAt(firstMs: 1000, lastMs: 1000) == 3000)       // alone: after the quiet period
        #expect(policy.flushAt(firstMs: 1000, lastMs: 1500) == 3500)       // burst: quiet after the last
        #expect(policy.flushAt(firstMs: 1000, lastMs: 30_000) == 31_000)   // trickle: the window caps it
    }

    @Test func slackAnswersBecomeOutcomes() {
        #expect(SlackWebhook.outcome(status: 200, body: "ok", retryAfter: nil) == .delivered)
        #expect(SlackWebhook.outcome(status: 429, body: "rate_limited", retryAfter: "3") == .retry(after: .seconds(3), reason: "Slack rate limit (429 \"rate_limited\"), Retry-After 3"))
        if case .retry(nil, _) = SlackWebhook.outcome(status: 503, body: "", retryAfter: nil) {} else { Issue.record("5xx must be retried with backoff") }
        #expect(SlackWebhook.outcome(status: 400, body: "invalid_payload", retryAfter: nil) == .rejected(reason: "Slack refused the message: 400 \"invalid_payload\""))
        #expect(SlackWebhook.outcome(status: 404, body: "channel_not_found", retryAfter: nil) == .rejected(reason: "Slack refused the message: 404 \"channel_not_found\""))
        #expect(retryDelay(attempts: 1, capSeconds: 300) == .seconds(1))
        #expect(retryDelay(attempts: 4, capSeconds: 300) == .seconds(8))
        #expect(retryDelay(attempts: 40, capSeconds: 300) == .seconds(300))
    }

    @Test func proxyURLsAreUnderstood() throws {
        _ = try SlackWebhook.proxy("http://proxy.example:3128")
        _ = try SlackWebhook.proxy("http://user:pw@proxy.example:8080/")
        #expect(throws: (any Error).self) { try SlackWebhook.proxy("http://") }
    }

    @Test func dataIsDotStuffedAndEndsWithALoneDot() {
        #expect(MailMessage.dotStuffed("a\n.b\n..c\nd") == "a\r\n..b\r\n...c\r\nd\r\n.\r\n")
        #expect(MailMessage.dotStuffed("x\r\n.\r\n") == "x\r\n..\r\n.\r\n")
        let mail = MailMessage(from: "a@b.c", to: ["x@y.z"], subject: "Grüße", text: "t", html: "<p>h</p>", dateUnixMs: 0, messageID: "m1@h")
        let rendered = mail.rendered()
        #expect(rendered.contains("Subject: =?UTF-8?B?"))
        #expect(rendered.contains("Date: Thu, 01 Jan 1970 00:00:00 +0000"))
        #expect(rendered.contains("multipart/alternative"))
    }

    @Test func theDigestHasOneRowPerIncidentWithTimeToRepair() {
        let hour: Int64 = 3_600_000
        let now: Int64 = 100 * hour
        var repaired = IncidentRecord(id: "inc-1")
        repaired.host = "h1"
        repaired.disk = Self.disk("A1")
        repaired.state = .resolved
        repaired.openedUnixMs = now - 20 * hour
        repaired.resolvedUnixMs = now - 16 * hour
        repaired.ticketKey = "OPS-1"
        repaired.ticketState = .closed
        var fast = repaired
        fast.id = "inc-2"
        fast.resolvedUnixMs = now - 18 * hour
        var waiting = IncidentRecord(id: "inc-3")
        waiting.host = "h2"
        waiting.state = .waitingForReplacement
        waiting.openedUnixMs = now - 2 * hour
        waiting.ticketKey = "OPS-3"
        waiting.ticketURL = "https://jira.example/browse/OPS-3"
        waiting.ticketState = .opened
        waiting.reasons = "SMART overall-health self-assessment failed"
        let report = DigestReport(fromUnixMs: now - 24 * hour, toUnixMs: now, incidents: [repaired, fast, waiting])
        #expect(report.failures.count == 3 && report.repairs.count == 2 && report.openTickets.count == 1)
        #expect(report.medianTimeToRepairMs == 3 * hour)
        let text = report.text
        #expect(text.contains("Median time to repair: 3 h"))
        let rows = text.split(separator: "\n").filter { $0.hasPrefix("inc-") }
        #expect(rows.count == 3)
        #expect(rows[0].contains("resolved") && rows[0].hasSuffix("4 h"))
        #expect(rows[1].hasSuffix("2 h"))
        #expect(rows[2].contains("OPS-3 (open)") && rows[2].hasSuffix("-"))
        let html = report.html
        #expect(html.components(separatedBy: "<tr><td>inc-").count - 1 == 3)
        #expect(html.contains("<a href=\"https://jira.example/browse/OPS-3\">OPS-3</a>"))
        #expect(html.contains("<td>4 h</td>"))
    }

    /// bzman's nightly report as a section of the digest: every pool with health, capacity,
    /// errors, last scrub, and what Bynar did about it (the incidents whose reasons name the
    /// pool, on its host); a pool its host stopped reporting is marked.
    @Test func digestListsEveryPoolAndWhatBynarDidAboutIt() {
        let hour: Int64 = 3_600_000
        let now: Int64 = 1_765_000_000_000
        func pool(_ host: String, _ name: String, _ health: String, used: Int32, errors: (UInt64, UInt64, UInt64) = (0, 0, 0),
                  scrub: Int64 = 0, alarms: [String] = [], observed: Int64 = 0) -> PoolRecord {
            var state = Bynar_V1_PoolState()
            state.pool = name
            state.kind = "zfs"
            state.health = health
            state.capacityPercent = used
            state.size = "15.9G"
            (state.readErrors, state.writeErrors, state.checksumErrors) = errors
            state.lastScrubUnix = scrub
            state.lastScrubErrors = scrub > 0 ? 0 : -1
            state.scan = scrub > 0 ? "last scrub found 0 errors" : "no scrub or resilver yet"
            state.alarms = alarms
            state.observedUnixMs = now - observed
            return PoolRecord(host: host, state: state)
        }
        var replaced = IncidentRecord(id: "inc-7")
        replaced.host = "h1"
        replaced.state = .resolved
        replaced.openedUnixMs = now - 5 * hour
        replaced.reasons = "ZFS pool tank: vdev sdc is UNAVAIL (0 read, 186 write, 0 checksum errors)"
        replaced.ticketKey = "OPS-9"
        replaced.ticketState = .closed
        var elsewhere = replaced
        elsewhere.id = "inc-8"
        elsewhere.host = "h2"
        elsewhere.reasons = "ZFS pool backup: vdev sdd is FAULTED (0 read, 0 write, 9 checksum errors)"
        let pools = [
            pool("h1", "tank", "ONLINE", used: 41, errors: (0, 186, 0), scrub: (now - 30 * hour) / 1000),
            pool("h1", "full", "ONLINE", used: 80, alarms: ["pool full is 80% full (alarm at 75%)"]),
            pool("h2", "tank", "DEGRADED", used: 10, alarms: ["pool tank is DEGRADED"], observed: 3 * hour),
        ]
        let report = DigestReport(fromUnixMs: now - 24 * hour, toUnixMs: now, incidents: [replaced, elsewhere], pools: pools)
        #expect(report.incidents(of: pools[0]).map(\.id) == ["inc-7"], "only h1's incident about tank")
        #expect(report.action(pools[0]) == "inc-7 resolved, ticket OPS-9 closed")
        #expect(report.action(pools[1]) == "nothing a disk swap fixes: for a person")
        #expect(report.action(pools[2]) == "no disk incident: a person must look", "h2's incident is about its pool backup, not tank")
        let text = report.text
        #expect(text.contains("Storage pools: 3 pools on 2 hosts, 1 not ONLINE"), "\(text)")
        let rows = text.split(separator: "\n").filter { $0.hasPrefix("h1 ") || $0.hasPrefix("h2 ") }
        #expect(rows.count == 3, "\(text)")
        #expect(rows[0].contains("tank") && rows[0].contains("41% of 15.9G") && rows[0].contains("0/186/0") && rows[0].contains("(0 errors)")
                && rows[0].hasSuffix("inc-7 resolved, ticket OPS-9 closed"), "\(rows[0])")
        #expect(rows[1].contains("never"))
        #expect(rows[2].contains("DEGRADED (not reported since"), "\(rows[2])")
        #expect(text.contains("Pool alarms:\n  h1 full: pool full is 80% full (alarm at 75%)\n  h2 tank: pool tank is DEGRADED"), "\(text)")
        let html = report.html
        #expect(html.contains("<h3>Storage pools</h3>") && html.components(separatedBy: "<tr><td>h").count - 1 == 3)
        #expect(!DigestReport(fromUnixMs: 0, toUnixMs: now, incidents: []).text.contains("Storage pools"), "no pools, no section")
    }

    @Test func digestScheduleSendsOncePerSlot() {
        let day: Int64 = 86_400_000
        let schedule = DigestSchedule(minuteOfDay: 7 * 60, intervalMs: nil)
        let sixAM = 10 * day + 6 * 3_600_000
        #expect(schedule.slot(atOrBefore: sixAM) == 9 * day + 7 * 3_600_000)
        #expect(schedule.nextSlot(after: sixAM) == 10 * day + 7 * 3_600_000)
        #expect(!schedule.isDue(now: sixAM, lastSentSlot: nil))
        #expect(!schedule.isDue(now: sixAM, lastSentSlot: 9 * day + 7 * 3_600_000))
        #expect(schedule.isDue(now: sixAM + 3_600_000, lastSentSlot: 9 * day + 7 * 3_600_000))
        let hourly = DigestSchedule(minuteOfDay: 0, intervalMs: 3_600_000)
        #expect(hourly.slot(atOrBefore: 5_400_000) == 3_600_000)
    }

    @Test func timestampsAreUTC() {
        #expect(MessageText.timestamp(0) == "1970-01-01 00:00 UTC")
        #expect(MessageText.timestamp(1_748_934_000_000) == "2025-06-03 07:00 UTC")
        #expect(MessageText.duration(ms: 1200) == "1.2 s")
        #expect(MessageText.duration(ms: 3 * 3_600_000 + 5 * 60_000) == "3 h 5 min")
    }
}
