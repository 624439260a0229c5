import BynarProto

/// The words of every message: what happened, where (host, disk, slot) and what Bynar does
/// next. Shared by Slack, e-mail and the digest.
enum MessageText {
    /// A notification completed from the incident history: the disk and host when the
    /// sender left them out, and the next step when it did not say.
    static func complete(_ notification: Bynar_V1_Notification, incident: IncidentRecord?) -> Bynar_V1_Notification {
        var completed = notification
        if let incident {
            if !completed.hasDisk && incident.disk != Bynar_V1_DiskIdentity() { completed.disk = incident.disk }
            if completed.host.isEmpty { completed.host = incident.host }
            if completed.ticketURL.isEmpty { completed.ticketURL = incident.ticketURL }
        }
        if completed.host.isEmpty { completed.host = completed.disk.host }
        if completed.nextAction.isEmpty { completed.nextAction = nextAction(incident) }
        if completed.title.isEmpty { completed.title = completed.text.isEmpty ? "Bynar notification" : String(completed.text.prefix(120)) }
        return completed
    }

    /// What Bynar does next for an incident in its current state.
    static func nextAction(_ incident: IncidentRecord?) -> String {
        guard let incident else { return "nothing automatic; this is for your information" }
        let ticket = incident.ticketKey.isEmpty ? "" : " (ticket \(incident.ticketKey))"
        switch incident.state {
        case .opened, .checkingSafety: return "checking with the disk-manager that the disk can be removed safely"
        case .queued: return "waiting for the cluster brake to allow the removal"
        case .removing: return "removing the disk from the cluster"
        case .removed: return "opening a ticket for a replacement disk"
        case .ticketed, .waitingForReplacement: return "waiting for a technician to replace the disk\(ticket)"
        case .adding: return "adding the new disk back into the cluster"
        case .resolved: return "nothing: the disk is back in service"
        case .cancelled: return "nothing: the disk recovered before it was removed"
        case .stuck: return "nothing until a person looks\(incident.detail.isEmpty ? "" : ": \(incident.detail)")"
        case .unspecified, .UNRECOGNIZED: return "following the incident"
        }
    }

    /// `ST4000NM0035 serial ZC1A2B3C, slot pci-0000:00:1f.2-ata-3, /dev/sdc` (whatever is known).
    static func describe(_ disk: Bynar_V1_DiskIdentity) -> String {
        var parts: [String] = []
        let model = [disk.vendor, disk.model].filter { !$0.isEmpty }.joined(separator: " ")
        if !model.isEmpty { parts.append(model) }
        if !disk.serial.isEmpty { parts.append("serial \(disk.serial)") } else if !disk.wwn.isEmpty { parts.append("WWN \(disk.wwn)") }
        var first = parts.joined(separator: " ")
        if first.isEmpty { first = disk.key.isEmpty ? "" : "disk \(disk.key)" }
        var rest: [String] = []
        if !disk.byPath.isEmpty { rest.append("slot \(disk.byPath)") }
        if !disk.devPath.isEmpty { rest.append(disk.devPath) }
        if !disk.location.isEmpty { rest.append("location \(disk.location)") }
        return ([first] + rest).filter { !$0.isEmpty }.joined(separator: ", ")
    }

    /// `host h1, disk ST4000 serial Z1, slot ...`, or what there is of it.
    static func location(_ notification: Bynar_V1_Notification) -> String {
        let disk = describe(notification.disk)
        let host = notification.host.isEmpty ? "" : "host \(notification.host)"
        let parts = [host, disk.isEmpty ? "" : "disk \(disk)"].filter { !$0.isEmpty }
        return parts.isEmpty ? "not tied to a host or disk" : parts.joined(separator: ", ")
    }

    static func severityName(_ severity: Bynar_V1_Notification.Severity) -> String {
        switch severity {
        case .error: return "ERROR"
        case .warning: return "WARNING"
        default: return "INFO"
        }
    }

    /// 0 info (also unspecified), 1 warning, 2 error: for minimum-severity filters.
    static func rank(_ severity: Bynar_V1_Notification.Severity) -> Int {
        switch severity {
        case .error: return 2
        case .warning: return 1
        default: return 0
        }
    }

    static func rank(named name: String) -> Int {
        ["info": 0, "warning": 1, "error": 2][name] ?? 0
    }

    /// "3 errors, 1 warning" for a batch.
    static func severityCounts(_ notices: [Notice]) -> String {
        let counts = [Bynar_V1_Notification.Severity.error, .warning, .info].map { severity in
            (severity, notices.filter { rank($0.notification.severity) == rank(severity) }.count)
        }
        return counts.filter { $0.1 > 0 }.map { severity, count in
            let word = severity == .error ? "error" : severity == .warning ? "warning" : "info"
            return "\(count) \(word)\(count == 1 || word == "info" ? "" : "s")"
        }.joined(separator: ", ")
    }

    /// Notices grouped by host (hosts sorted, "(no host)" last), arrival order kept within a host.
    static func byHost(_ notices: [Notice]) -> [(host: String, notices: [Notice])] {
        var groups: [String: [Notice]] = [:]
        for notice in notices { groups[notice.notification.host, default: []].append(notice) }
        return groups.keys.sorted { ($0.isEmpty ? 1 : 0, $0) < ($1.isEmpty ? 1 : 0, $1) }.map { ($0, groups[$0]!) }
    }

    /// "1.2 s", "45 s", "3 min", "2 h 5 min", "3 d 4 h".
    static func duration(ms: Int64) -> String {
        let seconds = Double(ms) / 1000
        if seconds < 10 {
            let tenths = Int((seconds * 10).rounded())
            return tenths % 10 == 0 ? "\(tenths / 10) s" : "\(tenths / 10).\(tenths % 10) s"
        }
        if seconds < 120 { return "\(Int(seconds.rounded())) s" }
        let minutes = Int(seconds / 60)
        if minutes < 120 { return "\(minutes) min" }
        let hours = minutes / 60
        if hours < 48 { return minutes % 60 == 0 ? "\(hours) h" : "\(hours) h \(minutes % 60) min" }
        return hours % 24 == 0 ? "\(hours / 24) d" : "\(hours / 24) d \(hours % 24) h"
    }

    /// `2025-06-03 07:00 UTC`.
    static func timestamp(_ unixMs: Int64) -> String {
        var seconds = Int(unixMs / 1000)
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        seconds -= days * 86_400
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(year)-\(two(month))-\(two(day)) \(two(seconds / 3600)):\(two(seconds % 3600 / 60)) UTC"
    }
}
