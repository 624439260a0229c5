import BynarBus
import BynarProto
import BynarStore
import BynarTestSupport
import Foundation
import Testing

/// The real bynar-notifier process on a real broker, posting to a STAND-IN for Slack's
/// incoming webhooks (Tests/StandIns/slack/slack_standin.py: no real Slack can run in a
/// test). The stand-in answers as Slack documents: 200 "ok", 400/404 with an error code,
/// 429 with Retry-After, 500.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed"))
struct SlackDeliveryTests {
    /// Stand-in Slack: 50 failures published within a moment reach Slack as one summary,
    /// grouped by host; a lone notification afterwards goes out on its own, promptly.
    @Test func aBurstOfFiftyFailuresIsOneSlackSummaryStandIn() async throws {
        let slack = try SlackStandIn()
        let harness = try await NotifierHarness()
        let notifier = try await harness.start(notifier: slackSection(slack, quiet: 1))
        defer { notifier.signal(SIGTERM) }

        for i in 0..<50 {
            try await harness.notify("Disk failed: SMART overall-health failing #\(i)", host: "h\(i % 5)", serial: "S\(i)")
        }
        #expect(await eventually(.seconds(15)) { try !slack.delivered().isEmpty }, "\(notifier.log)")
        try await Task.sleep(for: .seconds(2))
        let posts = try slack.delivered()
        #expect(posts.count == 1, "50 failures became \(posts.count) Slack messages")
        let summary = try #require(posts.first?.payload)
        #expect(summary.text?.contains("*50 notifications in") == true, "\(summary.text ?? "")")
        #expect(summary.text?.contains("on 5 hosts: 50 errors") == true)
        #expect(summary.text?.contains("\n*h0* (10)") == true)
        let listed = (summary.text ?? "").components(separatedBy: "\n• ").count - 1
        #expect(listed >= 10 && listed <= 25, "listed \(listed)")
        #expect(summary.text?.contains("…and \(50 - listed) more") == true)
        #expect((summary.text ?? "").count <= 3500)
        #expect(summary.channel == "#storage" && summary.username == "bynar-test")

        // A lone event afterwards: its own message, within the quiet period and a bit.
        let start = Date()
        try await harness.notify("Disk recovered before removal", severity: .info, host: "h9", serial: "Q1", next: "nothing: the incident is closed")
        #expect(await eventually(.seconds(10)) { try slack.delivered().count == 2 })
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed < 4, "a lone notification took \(elapsed) s")
        let single = try #require(try slack.delivered().last?.payload?.text)
        #expect(single.contains("*INFO* Disk recovered before removal"))
        #expect(single.contains("*Where:* host h9, disk ST4000NM0035 serial Q1, slot pci-0000:00:1f.2-ata-3"))
        #expect(single.contains("*Next:* nothing: the incident is closed"))
        await harness.finish()
    }

    /// Stand-in Slack: notifications published while the notifier is down (killed with -9)
    /// wait in its persistent session (a shared subscription) and are delivered when it is
    /// back, none lost.
    @Test func notificationsQueuedWhileTheNotifierIsDownAreDeliveredStandIn() async throws {
        let slack = try SlackStandIn()
        let harness = try await NotifierHarness()
        let first = try await harness.start(notifier: slackSection(slack, quiet: 0.5))
        first.signal(SIGKILL)
        for i in 0..<3 { try await harness.notify("Disk failed while the notifier was away #\(i)", host: "h\(i)", serial: "Q\(i)") }
        let second = try await harness.start(directory: first.directory, notifier: slackSection(slack, quiet: 0.5))
        defer { second.signal(SIGTERM) }
        #expect(await eventually(.seconds(15)) { try slack.delivered().contains { ($0.payload?.text ?? "").contains("#2") } }, "\(second.log)")
        let text = try slack.delivered().map { $0.payload?.text ?? "" }.joined(separator: "\n")
        for i in 0..<3 { #expect(text.contains("away #\(i)"), "notification \(i) delivered: \(text)") }
        await harness.finish()
    }

    /// A notifier the test-only knob kills as it takes its first notification, and an
    /// outbox sending on the harness's bus (how every service sends notifications).
    private func dyingNotifierAndSender(_ harness: NotifierHarness, _ slack: SlackStandIn) async throws
        -> (dying: ServiceProcess, store: LocalStore, outbox: Outbox, sending: Task<Void, Never>) {
        let dying = try await harness.start(notifier: slackSection(slack, quiet: 0.3), environment: ["TEST_NOTIFIER_DIE_BEFORE_STORING": "1"])
        let store = try LocalStore(path: ":memory:")
        let outbox = Outbox(bus: harness.bus, store: store)
        return (dying, store, outbox, Task { await outbox.run() })
    }

    /// An ERROR notification as every service sends it, sent again after 2 s (not 5 min)
    /// while unanswered.
    private func resentFast(_ title: String, host: String) -> Outbox.Event {
        var note = Bynar_V1_Notification()
        note.severity = .error
        note.title = title
        note.host = host
        var event = Outbox.notification(note)
        event.receipt?.resendAfter = .seconds(2)
        return event
    }

    /// Stand-in Slack: a notification sent as every service sends one (through an outbox,
    /// until a notifier answers) reaches Slack once although the notifier that took it first
    /// was killed right after libmosquitto acknowledged it, before storing it (the
    /// at-most-once window of docs/bus.md; a test-only knob kills it there). The copy sent
    /// again is queued after the restart and answered; the sender then forgets it.
    @Test func aNotificationTakenByADyingNotifierIsDeliveredAfterItsRestartStandIn() async throws {
        let slack = try SlackStandIn()
        let harness = try await NotifierHarness()
        let (dying, store, outbox, sending) = try await dyingNotifierAndSender(harness, slack)
        defer { sending.cancel() }
        try outbox.commit([resentFast("Disk failed inside the window", host: "h-window")])
        #expect(await eventually(.seconds(15)) { !dying.process.isRunning }, "the knob kills the notifier as it takes it\n\(dying.log)")
        #expect(dying.log.contains("TEST_NOTIFIER_DIE_BEFORE_STORING"))
        let second = try await harness.start(directory: dying.directory, notifier: slackSection(slack, quiet: 0.3))
        defer { second.signal(SIGTERM) }
        #expect(await eventually(.seconds(20)) { try slack.delivered().contains { $0.raw.contains("inside the window") } }, "\(second.log)")
        #expect(await eventually(.seconds(10)) { try store.awaitingReceipts() == 0 && store.outboxCounts().pending == 0 }, "answered: the sender forgets it")
        try await Task.sleep(for: .seconds(3))
        #expect(try slack.delivered().filter { $0.raw.contains("inside the window") }.count == 1, "delivered once, not once per copy")
        await harness.finish()
    }

    /// Stand-in Slack: the notifications one service committed together go as one
    /// NotificationBatch (``Outbox``), and the notifier takes each of them. The first
    /// notifier is killed as it takes the batch (the test-only knob); the batch sent again
    /// is taken after the restart: each of its notifications reaches Slack once, and one
    /// receipt answers the whole batch, so the sender forgets it. A copy that comes again
    /// after that queues nothing twice.
    @Test func aBatchOfNotificationsIsTakenOneByOneAndAnsweredOnceStandIn() async throws {
        let slack = try SlackStandIn()
        let harness = try await NotifierHarness()
        let (dying, store, outbox, sending) = try await dyingNotifierAndSender(harness, slack)
        defer { sending.cancel() }
        let events = (0..<3).map { resentFast("Disk \($0) of the batch failed", host: "h-batch-\($0)") }
        let sent = try outbox.commit(events)
        #expect(sent.count == 1, "one envelope for the three")
        #expect(await eventually(.seconds(15)) { !dying.process.isRunning }, "the knob kills the notifier as it takes it\n\(dying.log)")
        let second = try await harness.start(directory: dying.directory, notifier: slackSection(slack, quiet: 0.3))
        defer { second.signal(SIGTERM) }
        func posted() throws -> String { try slack.delivered().map(\.raw).joined(separator: "\n") }
        #expect(await eventually(.seconds(20)) { let text = try posted(); return (0..<3).allSatisfy { text.contains("Disk \($0) of the batch") } }, "\(second.log)")
        #expect(await eventually(.seconds(10)) { try store.awaitingReceipts() == 0 && store.outboxCounts().pending == 0 }, "one receipt answered the batch")
        // The same batch again, the same envelope (a resend that crossed the receipt):
        // nothing queued twice.
        let copy: [UInt8] = try sent[0].serializedBytes()
        #expect(try await harness.bus.publish(batch: [(bytes: copy, topic: Topics.notifications, retain: false)]) == [nil])
        try await Task.sleep(for: .seconds(3))
        let text = try posted()
        for index in 0..<3 {
            #expect(text.components(separatedBy: "Disk \(index) of the batch").count - 1 == 1, "notification \(index) delivered once: \(text)")
        }
        await harness.finish()
    }

    /// Stand-in Slack: every other kind of message the notifier consumes, published while it
    /// is down (killed with -9), is handled when it is back: a host going down becomes a
    /// message (shared subscription), and the incident and ticket
    /// events (plain subscriptions) are in its incident history, which completes a later
    /// notification that names only the incident.
    @Test func everyKindOfMessageQueuedWhileTheNotifierIsDownIsHandledStandIn() async throws {
        let slack = try SlackStandIn()
        let harness = try await NotifierHarness()
        let first = try await harness.start(notifier: slackSection(slack, quiet: 0.5))
        first.signal(SIGKILL)
        var incident = Bynar_V1_IncidentEvent()
        incident.incident.id = "inc-away"
        incident.incident.state = .ticketed
        incident.incident.disk.host = "h-away"
        incident.incident.disk.key = "sdq"
        incident.incident.disk.serial = "AWAY1"
        incident.message = "ticket filed while the notifier was down"
        try await harness.bus.publish(incident, to: Topics.incidentEvents)
        var ticket = Bynar_V1_TicketEvent()
        ticket.incidentID = "inc-away"
        ticket.ticketKey = "BYN-77"
        ticket.url = "https://jira.example/browse/BYN-77"
        ticket.state = .opened
        try await harness.bus.publish(ticket, to: Topics.ticketEvents)
        var host = Bynar_V1_HostState()
        host.host = "h-gone"
        host.up = false
        try await harness.bus.publish(host, to: Topics.hostState(host: "h-gone"))

        let second = try await harness.start(directory: first.directory, notifier: slackSection(slack, quiet: 0.5))
        defer { second.signal(SIGTERM) }
        var later = Bynar_V1_Notification()
        later.severity = .warning
        later.title = "Still waiting for the technician"
        later.incidentID = "inc-away"
        try await harness.bus.publish(later, to: Topics.notifications)
        func posted() throws -> String { try slack.delivered().map(\.raw).joined(separator: "\n") }
        let handled = await eventually(.seconds(15)) {
            let text = try posted()
            return text.contains("Host h-gone is down") && text.contains("Still waiting")
        }
        let text = try posted()
        #expect(handled, "\(text)\n\(second.log)")
        #expect(text.contains("*h-away*") && text.contains("serial AWAY1") && text.contains("ticket BYN-77"),
                "the notification naming only the incident was completed from the events queued while down: \(text)")
        await harness.finish()
    }

    /// Stand-in Slack answers 429 with Retry-After: 2; the notifier waits that long before
    /// posting the same message again.
    @Test func retryAfterIsHonouredStandIn() async throws {
        let slack = try SlackStandIn()
        try slack.script([.init(status: 429, body: "rate_limited", retryAfter: "2")])
        let harness = try await NotifierHarness()
        let notifier = try await harness.start(notifier: slackSection(slack, quiet: 0.3))
        defer { notifier.signal(SIGTERM) }

        try await harness.notify("Disk failed: read-only filesystem")
        #expect(await eventually(.seconds(15)) { try slack.received().count >= 2 }, "\(notifier.log)")
        let posts = try slack.received()
        #expect(posts.map(\.status) == [429, 200])
        let gap = posts[1].at - posts[0].at
        #expect(gap >= 1.95 && gap < 4, "retried \(gap) s after a Retry-After of 2 s")
        #expect(posts[0].payload?.text == posts[1].payload?.text && posts[0].raw == posts[1].raw, "the same message is sent again")
        await harness.finish()
    }

    /// Stand-in Slack refuses with 400 invalid_payload and 404 channel_not_found: each is
    /// logged, counted and parked (see `bynar-notifier status`), not retried; the next
    /// message goes out.
    @Test func refusalsAreReportedNotRetriedStandIn() async throws {
        let slack = try SlackStandIn()
        try slack.script([.init(status: 400, body: "invalid_payload"), .init(status: 404, body: "channel_not_found")])
        let harness = try await NotifierHarness()
        let notifier = try await harness.start(notifier: slackSection(slack, quiet: 0.3))
        defer { notifier.signal(SIGTERM) }

        try await harness.notify("first")
        #expect(await eventually(.seconds(10)) { try slack.received().count == 1 })
        try await harness.notify("second")
        #expect(await eventually(.seconds(10)) { try slack.received().count == 2 })
        try await harness.notify("third")
        #expect(await eventually(.seconds(10)) { try slack.received().count == 3 })
        try await Task.sleep(for: .seconds(2))
        #expect(try slack.received().map(\.status) == [400, 404, 200], "refused messages are not retried")
        #expect(notifier.log.contains(#"Slack refused the message: 400 \"invalid_payload\""#) || notifier.log.contains("Slack refused the message: 400 \"invalid_payload\""), "\(notifier.log)")
        #expect(notifier.log.contains("channel_not_found"))

        let (code, output) = try harness.command(["status", "--config", notifier.directory + "/bynar.json"])
        #expect(code == 0, "\(output)")
        #expect(output.contains("slack    0        0       2"), "\(output)")
        #expect(output.contains("Slack refused the message: 404 \"channel_not_found\""), "\(output)")
        await harness.finish()
    }

    /// Stand-in Slack: a notifier killed (SIGKILL) while notifications wait for the quiet
    /// period, and one stopped while Slack answers 500, both deliver everything after a
    /// restart on the same store.
    @Test func aRestartLosesNothingStandIn() async throws {
        let slack = try SlackStandIn()
        let harness = try await NotifierHarness()
        var notifier = try await harness.start(notifier: slackSection(slack, quiet: 30, window: 60))
        let directory = notifier.directory
        for i in 0..<3 { try await harness.notify("waiting #\(i)") }
        #expect(await eventually(.seconds(10)) { notifier.log.components(separatedBy: "notification queued").count - 1 == 3 }, "\(notifier.log)")
        notifier.signal(SIGKILL)
        #expect(try slack.received().isEmpty)

        // Slack in trouble: every post answered 500 for a while.
        try slack.script(Array(repeating: .init(status: 500, body: "internal_error"), count: 3))
        notifier = try await harness.start(directory: directory, notifier: slackSection(slack, quiet: 0.3))
        #expect(await eventually(.seconds(20)) { try slack.delivered().count == 1 }, "\(notifier.log)")
        let summary = try #require(try slack.delivered().first?.payload?.text)
        for i in 0..<3 { #expect(summary.contains("waiting #\(i)"), "\(summary)") }
        #expect(try slack.received().map(\.status) == [500, 500, 500, 200])

        // Stopped while a message is being retried: it goes out after the restart.
        try slack.script(Array(repeating: .init(status: 500, body: "internal_error"), count: 100))
        try await harness.notify("during the outage")
        #expect(await eventually(.seconds(10)) { try slack.received().count >= 5 })
        notifier.signal(SIGTERM)
        try slack.reset()
        notifier = try await harness.start(directory: directory, notifier: slackSection(slack, quiet: 0.3))
        defer { notifier.signal(SIGTERM) }
        #expect(await eventually(.seconds(15)) { try slack.delivered().count == 1 }, "\(notifier.log)")
        #expect(try slack.delivered().first?.payload?.text?.contains("during the outage") == true)
        await harness.finish()
    }

    /// Stand-in Slack: two notifier instances on the shared subscription; 20 notifications
    /// published one by one reach Slack exactly once each, whichever instance took them.
    @Test func twoInstancesSendEachNotificationOnceStandIn() async throws {
        let slack = try SlackStandIn()
        let harness = try await NotifierHarness()
        let first = try await harness.start(host: "n1", notifier: slackSection(slack, quiet: 0.5))
        defer { first.signal(SIGTERM) }
        let second = try await harness.start(host: "n2", notifier: slackSection(slack, quiet: 0.5))
        defer { second.signal(SIGTERM) }

        for i in 0..<20 {
            try await harness.notify("Disk failed #\(i).")
            try await Task.sleep(for: .milliseconds(20))
        }
        let everyOne: () throws -> [Int] = {
            let texts = try slack.delivered().compactMap(\.payload?.text)
            return (0..<20).map { i in texts.map { $0.components(separatedBy: "Disk failed #\(i).").count - 1 }.reduce(0, +) }
        }
        #expect(await eventually(.seconds(15)) { try everyOne().allSatisfy { $0 >= 1 } }, "\(first.log)\n\(second.log)")
        try await Task.sleep(for: .seconds(2))
        #expect(try everyOne() == Array(repeating: 1, count: 20), "each notification exactly once")
        let firstTook = first.log.components(separatedBy: "notification queued").count - 1
        let secondTook = second.log.components(separatedBy: "notification queued").count - 1
        #expect(firstTook + secondTook == 20 && firstTook > 0 && secondTook > 0, "shared: \(firstTook) + \(secondTook)")
        await harness.finish()
    }

    /// Stand-in Slack: a host going down is told, with where and what next, in one summary
    /// with a notification that arrives in the same quiet period. (Failed operator hooks come
    /// as notifications from the orchestrator: HookTests.)
    @Test func hostDownIsToldStandIn() async throws {
        let slack = try SlackStandIn()
        let harness = try await NotifierHarness()
        let notifier = try await harness.start(notifier: slackSection(slack, quiet: 0.5))
        defer { notifier.signal(SIGTERM) }

        var down = Bynar_V1_HostState()
        down.host = "h5"
        down.up = false
        down.sinceUnixMs = Bus.nowUnixMs()
        down.services = [.with { $0.service = "detector"; $0.up = false }]
        try await harness.bus.publish(down, to: Topics.hostState(host: "h5"))
        var note = Bynar_V1_Notification()
        note.severity = .warning
        note.title = "Disk serial-Q on h5 failed"
        note.nextAction = "remove it once safe"
        try await harness.bus.publish(note, to: Topics.notifications)

        #expect(await eventually(.seconds(10)) { try !slack.delivered().isEmpty }, "\(notifier.log)")
        try await Task.sleep(for: .seconds(1))
        let text = try slack.delivered().compactMap(\.payload?.text).joined(separator: "\n")
        #expect(text.contains("*2 notifications"), "\(text)")
        #expect(text.contains("Host h5 is down: every Bynar service on it stopped"))
        #expect(text.contains("Disk serial-Q on h5 failed"))
        #expect(text.contains("next: nothing automatic beyond the operator hooks"))
        await harness.finish()
    }
}
