import BynarProto

/// The digest: what happened to disks over a period, one row per incident, and every
/// storage pool its host reports (bzman's nightly report: health, capacity, errors, last
/// scrub, and what Bynar did about each), as plain text and as HTML. Built from the
/// notifier's incident history and the pools' retained states.
struct DigestReport: Sendable {
    var fromUnixMs: Int64
    var toUnixMs: Int64
    var incidents: [IncidentRecord]
    var pools: [PoolRecord]

    init(fromUnixMs: Int64, toUnixMs: Int64, incidents: [IncidentRecord], pools: [PoolRecord] = []) {
        self.fromUnixMs = fromUnixMs
        self.toUnixMs = toUnixMs
        self.incidents = incidents
        self.pools = pools
    }

    /// Pools not reported for this long are left out (exported, destroyed, or their host
    /// gone for a week).
    static let poolsKeptMs: Int64 = 7 * 86_400_000
    /// A host reports an unchanged pool every hour (the detector's ZFS watcher); one not
    /// reported for two hours is marked stale.
    static let poolStaleMs: Int64 = 2 * 3_600_000

    /// Incidents opened in the period.
    var failures: [IncidentRecord] { incidents.filter { $0.openedUnixMs >= fromUnixMs && $0.openedUnixMs <= toUnixMs } }
    /// Incidents whose disk went back into service in the period.
    var repairs: [IncidentRecord] {
        incidents.filter { ($0.resolvedUnixMs ?? .min) >= fromUnixMs && ($0.resolvedUnixMs ?? .max) <= toUnixMs }
    }
    var openTickets: [IncidentRecord] { incidents.filter(\.ticketOpen) }
    var stuck: [IncidentRecord] { incidents.filter { $0.state == .stuck } }

    /// Median time to repair of the repairs in the period.
    var medianTimeToRepairMs: Int64? {
        let times = repairs.compactMap(\.timeToRepairMs).sorted()
        guard !times.isEmpty else { return nil }
        return times.count % 2 == 1 ? times[times.count / 2] : (times[times.count / 2 - 1] + times[times.count / 2]) / 2
    }

    var subject: String {
        "[Bynar] Digest \(MessageText.timestamp(toUnixMs)): \(failures.count) failure\(failures.count == 1 ? "" : "s"), \(repairs.count) repair\(repairs.count == 1 ? "" : "s"), \(openTickets.count) open ticket\(openTickets.count == 1 ? "" : "s")"
    }

    /// The columns of the table, in order.
    static let columns = ["Incident", "Host", "Disk", "Opened", "State", "Ticket", "Repaired", "Time to repair"]

    /// One row per incident, as strings.
    var rows: [[String]] {
        incidents.map { record in
            [
                record.id,
                record.host.isEmpty ? "-" : record.host,
                MessageText.describe(record.disk).isEmpty ? "-" : MessageText.describe(record.disk),
                record.openedUnixMs > 0 ? MessageText.timestamp(record.openedUnixMs) : "-",
                Self.stateName(record.state),
                record.ticketKey.isEmpty ? "-" : "\(record.ticketKey) (\(Self.ticketStateName(record.ticketState)))",
                record.resolvedUnixMs.map(MessageText.timestamp) ?? "-",
                record.timeToRepairMs.map { MessageText.duration(ms: $0) } ?? "-",
            ]
        }
    }

    var summaryLines: [String] {
        [
            "Failures: \(failures.count)",
            "Repairs done: \(repairs.count)",
            "Open tickets: \(openTickets.count)",
            "Stuck (a person must look): \(stuck.count)",
            "Median time to repair: \(medianTimeToRepairMs.map { MessageText.duration(ms: $0) } ?? "-")",
        ]
    }

    /// The columns of the pools' table, in order.
    static let poolColumns = ["Host", "Pool", "Health", "Used", "Errors r/w/c", "Last scrub", "Scan", "Bynar"]

    /// Incidents of the period about a disk of `pool`: the detector names the pool in its
    /// reasons ("ZFS pool tank: vdev sdc is FAULTED").
    func incidents(of pool: PoolRecord) -> [IncidentRecord] {
        incidents.filter { $0.host == pool.host && $0.reasons.contains("ZFS pool \(pool.state.pool):") }
    }

    /// What Bynar did about `pool` in the period, in words.
    func action(_ pool: PoolRecord) -> String {
        let related = incidents(of: pool)
        if !related.isEmpty {
            return related.map { record in
                "\(record.id) \(Self.stateName(record.state))" + (record.ticketKey.isEmpty ? "" : ", ticket \(record.ticketKey) \(Self.ticketStateName(record.ticketState))")
            }.joined(separator: "; ")
        }
        if pool.state.alarms.isEmpty { return "nothing needed" }
        if pool.state.health != "ONLINE" { return "no disk incident: a person must look" }
        return "nothing a disk swap fixes: for a person"
    }

    /// One row per pool, as strings.
    var poolRows: [[String]] {
        pools.map { pool in
            let state = pool.state
            let scrub: String = state.lastScrubUnix > 0
                ? "\(MessageText.timestamp(state.lastScrubUnix * 1000)) (\(state.lastScrubErrors) error\(state.lastScrubErrors == 1 ? "" : "s"))"
                : "never"
            let stale = toUnixMs - state.observedUnixMs > Self.poolStaleMs ? " (not reported since \(MessageText.timestamp(state.observedUnixMs)))" : ""
            return [
                pool.host, state.pool, state.health + stale,
                state.capacityPercent >= 0 ? "\(state.capacityPercent)%" + (state.size.isEmpty ? "" : " of \(state.size)") : "-",
                "\(state.readErrors)/\(state.writeErrors)/\(state.checksumErrors)", scrub, state.scan.isEmpty ? "-" : state.scan, action(pool),
            ]
        }
    }

    /// The pools' section in plain text: a table, then each pool's alarms.
    var poolLines: [String] {
        guard !pools.isEmpty else { return [] }
        let notOnline = pools.filter { $0.state.health != "ONLINE" }.count
        var lines = ["", "Storage pools: \(pools.count) pool\(pools.count == 1 ? "" : "s") on \(Set(pools.map(\.host)).count) host\(Set(pools.map(\.host)).count == 1 ? "" : "s"), \(notOnline) not ONLINE", ""]
        let table = [Self.poolColumns] + poolRows
        let widths = Self.poolColumns.indices.map { column in table.map { $0[column].count }.max() ?? 0 }
        for (index, row) in table.enumerated() {
            lines.append(row.enumerated().map { $1.padding(to: widths[$0]) }.joined(separator: "  ").trimmedTrailing)
            if index == 0 { lines.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
        }
        let alarmed = pools.filter { !$0.state.alarms.isEmpty }
        if !alarmed.isEmpty {
            lines += ["", "Pool alarms:"]
            for pool in alarmed { lines.append("  \(pool.host) \(pool.state.pool): \(pool.state.alarms.joined(separator: "; "))") }
        }
        return lines
    }

    var text: String {
        var lines = [
            "Bynar digest, \(MessageText.timestamp(fromUnixMs)) to \(MessageText.timestamp(toUnixMs))",
            "",
        ] + summaryLines + [""]
        if incidents.isEmpty {
            lines.append("No incidents in this period.")
        } else {
            let table = [Self.columns] + rows
            let widths = Self.columns.indices.map { column in table.map { $0[column].count }.max() ?? 0 }
            for (index, row) in table.enumerated() {
                lines.append(row.enumerated().map { $1.padding(to: widths[$0]) }.joined(separator: "  ").trimmedTrailing)
                if index == 0 { lines.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
            }
            let details = incidents.filter { !$0.reasons.isEmpty || ($0.state == .stuck && !$0.detail.isEmpty) }
            if !details.isEmpty {
                lines += ["", "Why:"]
                for record in details {
                    let why = [record.reasons, record.state == .stuck ? "stuck: \(record.detail)" : ""].filter { !$0.isEmpty }.joined(separator: "; ")
                    lines.append("  \(record.id): \(why)")
                }
            }
        }
        lines += poolLines
        return lines.joined(separator: "\n") + "\n"
    }

    var html: String {
        func e(_ text: String) -> String {
            text.replacing("&", with: "&amp;").replacing("<", with: "&lt;").replacing(">", with: "&gt;").replacing("\"", with: "&quot;")
        }
        var out = """
        <!DOCTYPE html>
        <html><head><meta charset="utf-8"><title>\(e(subject))</title></head>
        <body style="font-family: sans-serif">
        <h2>Bynar digest</h2>
        <p>\(e(MessageText.timestamp(fromUnixMs))) to \(e(MessageText.timestamp(toUnixMs)))</p>
        <ul>
        """
        for line in summaryLines { out += "\n<li>\(e(line))</li>" }
        out += "\n</ul>\n"
        if incidents.isEmpty {
            out += "<p>No incidents in this period.</p>\n"
        } else {
            out += "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\" style=\"border-collapse: collapse\">\n<thead><tr>"
            out += Self.columns.map { "<th>\(e($0))</th>" }.joined() + "<th>Why</th></tr></thead>\n<tbody>\n"
            for (record, row) in zip(incidents, rows) {
                var cells = row.map(e)
                if !record.ticketURL.isEmpty && !record.ticketKey.isEmpty {
                    cells[5] = "<a href=\"\(e(record.ticketURL))\">\(e(record.ticketKey))</a> (\(e(Self.ticketStateName(record.ticketState))))"
                }
                let why = [record.reasons, record.state == .stuck ? "stuck: \(record.detail)" : ""].filter { !$0.isEmpty }.joined(separator: "; ")
                out += "<tr>" + cells.map { "<td>\($0)</td>" }.joined() + "<td>\(e(why))</td></tr>\n"
            }
            out += "</tbody>\n</table>\n"
        }
        if !pools.isEmpty {
            out += "<h3>Storage pools</h3>\n<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\" style=\"border-collapse: collapse\">\n<thead><tr>"
            out += Self.poolColumns.map { "<th>\(e($0))</th>" }.joined() + "<th>Alarms</th></tr></thead>\n<tbody>\n"
            for (pool, row) in zip(pools, poolRows) {
                out += "<tr>" + row.map { "<td>\(e($0))</td>" }.joined() + "<td>\(e(pool.state.alarms.joined(separator: "; ")))</td></tr>\n"
            }
            out += "</tbody>\n</table>\n"
        }
        out += "</body></html>\n"
        return out
    }

    static func stateName(_ state: Bynar_V1_IncidentState) -> String {
        switch state {
        case .opened: return "opened"
        case .checkingSafety: return "checking safety"
        case .queued: return "queued"
        case .removing: return "removing"
        case .removed: return "removed"
        case .ticketed: return "ticketed"
        case .waitingForReplacement: return "waiting for replacement"
        case .adding: return "adding"
        case .resolved: return "resolved"
        case .cancelled: return "cancelled"
        case .stuck: return "stuck"
        case .unspecified, .UNRECOGNIZED: return "unknown"
        }
    }

    static func ticketStateName(_ state: Bynar_V1_TicketState) -> String {
        switch state {
        case .opened: return "open"
        case .resolved: return "resolved"
        case .closed: return "closed"
        case .failed: return "failed"
        case .unspecified, .UNRECOGNIZED: return "unknown"
        }
    }
}

/// When digests are due. Pure: times in, decisions out.
struct DigestSchedule: Sendable, Equatable {
    /// Minutes after midnight UTC, for a daily digest.
    var minuteOfDay: Int
    /// Every this many milliseconds instead, when set (aligned to the Unix epoch).
    var intervalMs: Int64?

    /// The latest scheduled time at or before `now`.
    func slot(atOrBefore now: Int64) -> Int64 {
        if let intervalMs { return now - ((now % intervalMs) + intervalMs) % intervalMs }
        let day: Int64 = 86_400_000
        let today = now - ((now % day) + day) % day
        let slot = today + Int64(minuteOfDay) * 60_000
        return slot <= now ? slot : slot - day
    }

    /// The first scheduled time after `now`.
    func nextSlot(after now: Int64) -> Int64 {
        slot(atOrBefore: now) + (intervalMs ?? 86_400_000)
    }

    /// Whether a digest is due at `now`, given the slot of the last one sent (nil: never
    /// sent from this store, so the first start waits for the next slot instead of
    /// sending a report at once).
    func isDue(now: Int64, lastSentSlot: Int64?) -> Bool {
        guard let lastSentSlot else { return false }
        return slot(atOrBefore: now) > lastSentSlot
    }
}

extension String {
    func padding(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }

    var trimmedTrailing: String {
        var copy = self
        while copy.last?.isWhitespace == true { copy.removeLast() }
        return copy
    }

    var trimmed: String {
        String(drop { $0.isWhitespace }).trimmedTrailing
    }
}
