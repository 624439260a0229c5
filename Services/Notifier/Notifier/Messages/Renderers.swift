import BynarProto

/// Slack messages (mrkdwn): one notification in full, or a burst as one summary grouped by
/// host, cut at `maxListed` lines or `maxLength` characters with "and N more".
struct SlackRenderer: Sendable {
    var maxListed: Int
    var maxLength: Int

    func render(_ notices: [Notice], spanMs: Int64, nowUnixMs: Int64) -> OutgoingMessage {
        let text = notices.count == 1 ? single(notices[0].notification) : summary(notices, spanMs: spanMs)
        return OutgoingMessage(channel: "slack", kind: "message", subject: notices.count == 1 ? notices[0].notification.title : "\(notices.count) notifications",
                               text: text, recipients: [], items: notices.count, createdUnixMs: nowUnixMs)
    }

    /// Slack's three control characters, escaped as its docs ask.
    static func escape(_ text: String) -> String {
        text.replacing("&", with: "&amp;").replacing("<", with: "&lt;").replacing(">", with: "&gt;")
    }

    static func icon(_ severity: Bynar_V1_Notification.Severity) -> String {
        switch severity {
        case .error: return ":red_circle:"
        case .warning: return ":warning:"
        default: return ":information_source:"
        }
    }

    func single(_ n: Bynar_V1_Notification) -> String {
        var lines = [
            "\(Self.icon(n.severity)) *\(MessageText.severityName(n.severity))* \(Self.escape(n.title))",
            "*Where:* \(Self.escape(MessageText.location(n)))",
            "*Next:* \(Self.escape(n.nextAction))",
        ]
        if !n.text.isEmpty && n.text != n.title { lines.append(Self.escape(n.text)) }
        var references: [String] = []
        if !n.incidentID.isEmpty { references.append("incident `\(Self.escape(n.incidentID))`") }
        if !n.ticketURL.isEmpty { references.append("ticket <\(n.ticketURL)>") }
        if !references.isEmpty { lines.append(references.joined(separator: " · ")) }
        return Self.cut(lines.joined(separator: "\n"), to: maxLength)
    }

    func summary(_ notices: [Notice], spanMs: Int64) -> String {
        let worst = notices.map(\.notification.severity).max { MessageText.rank($0) < MessageText.rank($1) } ?? .info
        let groups = MessageText.byHost(notices)
        let hosts = groups.filter { !$0.host.isEmpty }.count
        var text = "\(Self.icon(worst)) *\(notices.count) notifications in \(MessageText.duration(ms: spanMs))* on \(hosts) host\(hosts == 1 ? "" : "s"): \(MessageText.severityCounts(notices))"
        var listed = 0
        // Room kept for the closing "and N more" line.
        let budget = maxLength - 80
        outer: for group in groups {
            let header = "\n*\(group.host.isEmpty ? "(no host)" : Self.escape(group.host))* (\(group.notices.count))"
            guard listed < maxListed, text.count + header.count < budget else { break }
            text += header
            for notice in group.notices {
                let n = notice.notification
                let disk = MessageText.describe(n.disk)
                let line = "\n• \(Self.escape(n.title))\(disk.isEmpty ? "" : " — \(Self.escape(disk))") — next: \(Self.escape(n.nextAction))"
                guard listed < maxListed, text.count + line.count < budget else { break outer }
                text += line
                listed += 1
            }
        }
        if listed < notices.count { text += "\n…and \(notices.count - listed) more (`bynar-notifier digest` lists every incident)" }
        return text
    }

    static func cut(_ text: String, to length: Int) -> String {
        text.count <= length ? text : String(text.prefix(length - 1)) + "…"
    }
}

/// E-mails of errors: one in full, or a burst as one mail listing every notification.
struct EmailRenderer: Sendable {
    var recipients: [String]

    func render(_ notices: [Notice], spanMs: Int64, nowUnixMs: Int64) -> OutgoingMessage {
        let subject: String
        var lines: [String] = []
        if notices.count == 1 {
            let n = notices[0].notification
            subject = "[Bynar \(MessageText.severityName(n.severity))] \(n.title)\(n.host.isEmpty ? "" : " (\(n.host))")"
            lines = Self.block(n)
        } else {
            let hosts = Set(notices.map(\.notification.host).filter { !$0.isEmpty }).count
            subject = "[Bynar] \(notices.count) notifications on \(hosts) host\(hosts == 1 ? "" : "s"): \(MessageText.severityCounts(notices))"
            lines.append("\(notices.count) notifications arrived within \(MessageText.duration(ms: spanMs)).")
            for group in MessageText.byHost(notices) {
                lines += ["", "== \(group.host.isEmpty ? "(no host)" : group.host) (\(group.notices.count))"]
                for notice in group.notices { lines += [""] + Self.block(notice.notification) }
            }
        }
        lines += ["", "-- ", "Sent by the Bynar notifier. `bynar-notifier digest` prints the incident history."]
        return OutgoingMessage(channel: "email", kind: "message", subject: subject, text: lines.joined(separator: "\n"),
                               recipients: recipients, items: notices.count, createdUnixMs: nowUnixMs)
    }

    static func block(_ n: Bynar_V1_Notification) -> [String] {
        var lines = [
            "\(MessageText.severityName(n.severity)): \(n.title)",
            "  Where: \(MessageText.location(n))",
            "  Next:  \(n.nextAction)",
        ]
        if !n.text.isEmpty && n.text != n.title { lines.append("  \(n.text)") }
        if !n.incidentID.isEmpty { lines.append("  Incident: \(n.incidentID)") }
        if !n.ticketURL.isEmpty { lines.append("  Ticket: \(n.ticketURL)") }
        return lines
    }
}
