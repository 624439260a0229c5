import BynarBus
import BynarConfig
import BynarProto
public import BynarRuntime
public import BynarStore
import Logging
import ServiceLifecycle
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The notifier service: tells people on Slack and by e-mail what Bynar saw and does.
///
/// - Notifications (`$share/notifier/bynar/v1/notify`, one instance each; failed operator
///   hooks come this way from the orchestrator) and hosts going down or up become messages. Each says what happened, where (host,
///   disk model, serial, slot) and what Bynar does next; the notifier fills in the disk and
///   the next step from its incident history when the sender did not.
/// - Per channel, notifications wait a short quiet period; a burst becomes one summary.
///   Waiting notifications and unsent messages live in SQLite: a restart loses nothing.
/// - Every instance follows incident and ticket events into its own history, for the daily
///   digest e-mail, which the live notifier with the lowest host name sends.
public struct NotifierService: BynarService {
    public static let serviceName = "notifier"
    public static var migrations: [LocalStore.Migration] { NotifierStore.migrations }
    public static var commandUsage: [(usage: String, summary: String)] { NotifierCommands.usage }

    let context: ServiceContext
    let store: NotifierStore
    let routes: [Route]
    let email: ChannelPump?
    /// Every channel, once.
    let pumps: [ChannelPump]
    private let leadership: Leadership

    /// A channel and the least severity it takes.
    struct Route: Sendable {
        var pump: ChannelPump
        var minimumRank: Int
    }

    public init(context: ServiceContext) throws {
        self.context = context
        store = NotifierStore(store: context.store)
        leadership = Leadership(host: context.host)
        let config = context.config.notifier
        var routes: [Route] = []
        if let url = config.slack.webhookUrl ?? context.config.slackWebhook {
            let slack = try SlackWebhook(url: url, channel: config.slack.channel ?? context.config.slackChannel,
                                         username: config.slack.botName ?? context.config.slackBotname ?? "bynar",
                                         proxy: context.config.proxy, timeout: .seconds(config.slack.timeoutSeconds))
            let renderer = SlackRenderer(maxListed: config.slack.maxListed, maxLength: config.slack.maxMessageLength)
            let pump = ChannelPump(channel: slack, policy: CoalescingPolicy(seconds: config.slack.quietSeconds, config.slack.windowSeconds),
                                   store: store, retryCapSeconds: config.retryMaxSeconds, logger: context.logger) { notices, span in
                renderer.render(notices, spanMs: span, nowUnixMs: NotifierClock.nowUnixMs())
            }
            routes.append(Route(pump: pump, minimumRank: MessageText.rank(named: config.slack.minSeverity)))
        } else {
            context.logger.notice("Slack is off: no notifier.slack.webhook_url or slack_webhook configured")
        }
        var email: ChannelPump?
        if let settings = try Self.smtpSettings(config.email, host: context.host), let from = config.email.from {
            let renderer = EmailRenderer(recipients: config.email.errorTo)
            let pump = ChannelPump(channel: EmailChannel(client: SMTPClient(settings: settings), from: from),
                                   policy: CoalescingPolicy(seconds: config.email.quietSeconds, config.email.windowSeconds),
                                   store: store, retryCapSeconds: config.retryMaxSeconds, logger: context.logger) { notices, span in
                renderer.render(notices, spanMs: span, nowUnixMs: NotifierClock.nowUnixMs())
            }
            if !config.email.errorTo.isEmpty {
                routes.append(Route(pump: pump, minimumRank: MessageText.rank(named: config.email.minSeverity)))
            }
            email = pump
        } else {
            context.logger.notice("e-mail is off: no notifier.email.host configured")
        }
        self.routes = routes
        self.email = email
        pumps = routes.map(\.pump).filter { $0 !== email } + (email.map { [$0] } ?? [])
    }

    /// SMTP settings from the config, or nil when e-mail is off.
    static func smtpSettings(_ email: NotifierConfig.EmailConfig, host: String) throws -> SMTPSettings? {
        guard let server = email.host else { return nil }
        var password = email.password
        if let file = email.passwordFile {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            password = String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
        }
        return SMTPSettings(host: server, port: email.effectivePort, security: SMTPSettings.Security(rawValue: email.security) ?? .startTLS,
                            caFile: email.caFile, username: email.username, password: password,
                            heloName: email.heloName ?? host, timeout: .seconds(email.timeoutSeconds))
    }

    public func run() async throws {
        let bus = context.bus
        // Notifications and the incident and ticket history in one sequence, in the order
        // they arrived: a notification is completed from the history (``accept(_:)``), which
        // must hold every event that came before it. Read by separate tasks, a notification
        // that came right after its incident's event could be completed before that event
        // was recorded.
        let ordered = try await bus.subscribeInOrder([Topics.shared(group: "notifier", Topics.notifications), Topics.incidentEvents, Topics.ticketEvents])
        let hosts = try await bus.subscribe(Topics.shared(group: "notifier", Topics.hostState(host: "+")), as: Bynar_V1_HostState.self)
        let notifiers = try await bus.subscribe(Topics.serviceStatus(host: "+", service: Self.serviceName), as: Bynar_V1_ServiceStatus.self)
        let pools = try await bus.subscribe(Topics.allPoolStates, as: Bynar_V1_PoolState.self)
        await bus.markReady()
        context.logger.info("notifier ready", metadata: ["channels": "\(routes.map(\.pump.channel.name).joined(separator: ","))"])

        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                for pump in pumps {
                    group.addTask { await pump.run() }
                }
                group.addTask {
                    for await message in ordered {
                        switch message.filterIndex {
                        case 0:
                            if let notifications = message.decodeNotifications() { await self.take(notifications) }
                        case 1:
                            if let event = message.decode(as: Bynar_V1_IncidentEvent.self) {
                                self.remember { try store.record(event.payload, receivedUnixMs: NotifierClock.nowUnixMs()) }
                            }
                        default:
                            if let event = message.decode(as: Bynar_V1_TicketEvent.self) {
                                self.remember { try store.record(event.payload, receivedUnixMs: NotifierClock.nowUnixMs()) }
                            }
                        }
                    }
                }
                group.addTask {
                    for await message in hosts { self.hostChanged(message.payload) }
                }
                group.addTask {
                    for await message in notifiers { leadership.observe(message.payload) }
                }
                group.addTask {
                    for await message in pools {
                        // The host is the topic's (bynar/v1/pool/{host}/{pool}), which the broker checked.
                        let host = Topics.hostLevel(ofTopic: message.topic)
                        self.remember { try store.record(pool: message.payload, host: host) }
                    }
                }
                group.addTask { await self.sendDigests() }
            }
        }
        for pump in pumps { await pump.channel.shutdown() }
    }

    /// A notification from the bus, or the batch of them one service committed together
    /// (``Bynar_V1_NotificationBatch``, taken one by one in order): each queued once (a
    /// single one known by its message id, one of a batch by the batch's id and its place),
    /// and the message answered with one ``Bynar_V1_Receipt`` once all are queued when its
    /// sender asks (it sends it until answered: a notifier killed as it took it would
    /// otherwise lose it; docs/bus.md). One not queued: not answered, so the message comes
    /// again, and those of it already queued are not queued twice.
    func take(_ received: Received<Bynar_V1_NotificationBatch>) async {
        let messageId = received.envelope.messageID
        Self.dieBeforeStoring.count(messageId: messageId, logger: context.logger)
        let single: Bool = if case .notification? = received.envelope.payload { true } else { false }
        for (index, notification) in received.payload.notifications.enumerated() {
            let key = single ? messageId : "\(messageId)/\(index)"
            do {
                if try store.seen(messageId: key) {
                    context.logger.debug("notification delivered again; queued once", metadata: ["message_id": "\(key)"])
                    continue
                }
                // The incident state it carries first, so the message is completed from it.
                try store.record(notification, receivedUnixMs: NotifierClock.nowUnixMs())
                guard accept(notification) else { return }
                try store.markSeen(messageId: key, nowMs: NotifierClock.nowUnixMs())
            } catch {
                context.logger.error("cannot record a notification as seen", metadata: ["message_id": "\(key)", "error": "\(error)"])
                return
            }
        }
        guard received.responseTopic != nil else { return }
        var receipt = Bynar_V1_Receipt()
        receipt.messageID = messageId
        do { try await context.bus.reply(to: received, with: receipt) } catch {
            context.logger.warning("cannot answer a notification's sender; it sends it again", metadata: ["message_id": "\(messageId)", "error": "\(error)"])
        }
    }

    /// Completes a notification from the incident history and queues it on every channel
    /// that takes its severity; false when it could not be queued (logged).
    @discardableResult
    func accept(_ notification: Bynar_V1_Notification) -> Bool {
        let now = NotifierClock.nowUnixMs()
        do {
            let incident = notification.incidentID.isEmpty ? nil : try store.incident(id: notification.incidentID)
            let notice = Notice(notification: MessageText.complete(notification, incident: incident), receivedUnixMs: now)
            let rank = MessageText.rank(notification.severity)
            var channels: [String] = []
            for route in routes where rank >= route.minimumRank {
                try route.pump.enqueue(notice, receivedUnixMs: now)
                channels.append(route.pump.channel.name)
            }
            context.logger.debug("notification queued", metadata: ["title": "\(notice.notification.title)", "channels": "\(channels.joined(separator: ","))"])
            return true
        } catch {
            context.logger.error("cannot queue notification", metadata: ["title": "\(notification.title)", "error": "\(error)"])
            return false
        }
    }

    private func remember(_ write: () throws -> Void) {
        do { try write() } catch {
            context.logger.error("cannot record in the incident history", metadata: ["error": "\(error)"])
        }
    }

    /// Announces a host going down or coming back (not its first sighting while up).
    func hostChanged(_ state: Bynar_V1_HostState) {
        do {
            let known = try store.hostState(state.host)
            try store.setHostState(state.host, up: state.up, sinceUnixMs: state.sinceUnixMs)
            if let known, known.up == state.up { return }
            if known == nil && state.up { return }
            var notification = Bynar_V1_Notification()
            notification.host = state.host
            if state.up {
                notification.severity = .info
                notification.title = "Host \(state.host) is back up"
                notification.nextAction = "nothing: its services are running again"
            } else {
                notification.severity = .warning
                notification.title = "Host \(state.host) is down: every Bynar service on it stopped"
                let services = state.services.map { "\($0.service) \($0.up ? "up" : "down")" }.joined(separator: ", ")
                if !services.isEmpty { notification.text = "Services: \(services)" }
                notification.nextAction = "nothing automatic beyond the operator hooks; its disks are not judged until it is back"
            }
            accept(notification)
        } catch {
            context.logger.error("cannot record host state", metadata: ["host": "\(state.host)", "error": "\(error)"])
        }
    }

    static let digestSettingKey = "notifier.digest.last_slot_unix_ms"

    /// Sends the digest when it is due and this instance leads; otherwise notes the slot as
    /// taken care of by the leader.
    func sendDigests() async {
        let config = context.config.notifier
        guard config.digest.enabled, let email, !config.email.digestTo.isEmpty else {
            if config.digest.enabled { context.logger.notice("digest is off: it needs notifier.email.host and notifier.email.digest_to") }
            return
        }
        let schedule = DigestSchedule(minuteOfDay: NotifierConfig.minutesOfDay(config.digest.timeUtc) ?? 0,
                                      intervalMs: config.digest.intervalHours.map { Int64($0 * 3_600_000) })
        while !Task.isCancelled {
            let now = NotifierClock.nowUnixMs()
            do {
                let last = try store.setting(Self.digestSettingKey).flatMap { Int64($0) }
                if last == nil || schedule.isDue(now: now, lastSentSlot: last) {
                    if last != nil && leadership.isLeader {
                        let report = DigestReport(fromUnixMs: now - Int64(config.digest.hours * 3_600_000), toUnixMs: now,
                                                  incidents: try store.incidents(sinceUnixMs: now - Int64(config.digest.hours * 3_600_000)),
                                                  pools: try store.pools(sinceUnixMs: now - DigestReport.poolsKeptMs))
                        try email.enqueue(message: OutgoingMessage(channel: "email", kind: "digest", subject: report.subject, text: report.text,
                                                                   html: report.html, recipients: config.email.digestTo,
                                                                   items: report.incidents.count, createdUnixMs: now))
                        context.logger.info("digest queued", metadata: ["incidents": "\(report.incidents.count)"])
                    } else if last != nil {
                        context.logger.info("digest left to the notifier on \(leadership.leader)")
                    }
                    try store.setSetting(Self.digestSettingKey, String(schedule.slot(atOrBefore: now)))
                }
            } catch {
                context.logger.error("digest failed", metadata: ["error": "\(error)"])
            }
            let next = schedule.nextSlot(after: NotifierClock.nowUnixMs())
            try? await Task.sleep(for: .milliseconds(max(10, next - NotifierClock.nowUnixMs() + 5)))
        }
    }
}

extension CoalescingPolicy {
    init(seconds quiet: Double, _ window: Double) {
        self.init(quietMs: Int64(quiet * 1000), windowMs: Int64(window * 1000))
    }
}

/// Which notifier instance sends the digest: the live one with the lowest host name, as seen
/// from the retained births and deaths of `bynar/v1/svc/+/notifier`.
final class Leadership: Sendable {
    private let host: String
    /// Host -> (session, alive).
    private let seen = Mutex<[String: (session: UInt64, alive: Bool)]>([:])

    init(host: String) { self.host = host }

    func observe(_ status: Bynar_V1_ServiceStatus) {
        seen.withLock { seen in
            let known = seen[status.host]
            switch status.state {
            case .birth: seen[status.host] = (status.session, true)
            case .death:
                // A death older than the last birth is stale (the will of a previous run).
                if let known, known.session > status.session { return }
                seen[status.host] = (status.session, false)
            default: return
            }
        }
    }

    var leader: String {
        seen.withLock { seen in ([host] + seen.filter { $0.value.alive }.map(\.key)).min() ?? host }
    }

    var isLeader: Bool { leader == host }
}

extension NotifierService {
    static let dieBeforeStoring = DieBeforeStoring(variable: "TEST_NOTIFIER_DIE_BEFORE_STORING")
}
