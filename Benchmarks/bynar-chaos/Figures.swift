import BynarProto
import BynarTestSupport
import Foundation
import GRDB

/// One incident as the orchestrator's journal holds it.
struct JournalIncident: Sendable {
    var id: String
    var host: String
    var diskKey: String
    var state: String
    var open: Bool
    var openedMs: Int64
    var updatedMs: Int64
}

/// One disk-manager job as its store holds it.
struct StoredJob: Sendable {
    var host: String
    var operation: String
    var diskKey: String
    var state: Bynar_V1_JobProgress.State
    var running: Bool
    var message: String
}

enum Stores {
    static func open(_ path: String) throws -> DatabaseQueue {
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(5)
        return try DatabaseQueue(path: path, configuration: configuration)
    }

    /// Every incident in the orchestrator's journal (empty when it cannot be read yet).
    static func incidents(_ path: String) -> [JournalIncident] {
        guard FileManager.default.fileExists(atPath: path), let queue = try? open(path) else { return [] }
        defer { try? queue.close() }
        return (try? queue.read { db in
            try Row.fetchAll(db, sql: "SELECT id, host, disk_key, state, open, opened_unix_ms, updated_unix_ms FROM orchestrator_incident").map { row in
                JournalIncident(id: row["id"], host: row["host"], diskKey: row["disk_key"], state: row["state"], open: row["open"],
                                openedMs: row["opened_unix_ms"], updatedMs: row["updated_unix_ms"])
            }
        }) ?? []
    }

    /// Every job in one disk-manager's store.
    static func jobs(_ path: String, host: String) -> [StoredJob] {
        guard FileManager.default.fileExists(atPath: path), let queue = try? open(path) else { return [] }
        defer { try? queue.close() }
        return (try? queue.read { db in
            try Row.fetchAll(db, sql: "SELECT operation, disk_key, running, progress FROM dm_job").map { row in
                let bytes: Data = row["progress"]
                let progress = (try? Bynar_V1_JobProgress(serializedBytes: [UInt8](bytes))) ?? Bynar_V1_JobProgress()
                return StoredJob(host: host, operation: row["operation"], diskKey: row["disk_key"], state: progress.state,
                                 running: row["running"], message: progress.message)
            }
        }) ?? []
    }
}

/// What the run measured, from the world (mounts, fstab), the orchestrator's journal, the
/// disk-managers' stores and the stand-in JIRA, never from what the services said about
/// themselves alone.
struct Figures {
    var lines: [String] = []
    var missed: [String] = []

    static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
    }

    static func compute(run: ChaosRun, wall: TimeInterval) -> Figures {
        var figures = Figures()
        func line(_ label: String, _ value: String) { figures.lines.append(label.padding(toLength: 36, withPad: " ", startingAt: 0) + value) }
        let options = run.options
        let slots = run.lock.withLock { run.slots }
        let failed = slots.filter { !$0.failedKey.isEmpty }
        let failedKeys = Set(failed.map(\.failedKey))
        let incidents = Stores.incidents("\(run.work)/central/orc/db/orchestrator.sqlite")
        var jobs: [StoredJob] = []
        for host in run.hosts { jobs += Stores.jobs("\(run.work)/\(host)/dm/db/disk-manager.sqlite", host: host) }
        let issues = (try? run.jira?.issues()) ?? []

        // Incidents.
        let byKey = Dictionary(grouping: incidents, by: \.diskKey)
        let withIncident = failed.filter { byKey[$0.failedKey] != nil }
        let extraIncidents = failed.reduce(0) { $0 + max(0, (byKey[$1.failedKey]?.count ?? 0) - 1) }
        let strayIncidents = incidents.filter { !failedKeys.contains($0.diskKey) }
        let ofFailed = incidents.filter { failedKeys.contains($0.diskKey) }
        let resolved = ofFailed.filter { $0.state == "resolved" }
        let stuck = incidents.filter { $0.state == "stuck" }
        let cancelled = ofFailed.filter { $0.state == "cancelled" }
        let unfinished = ofFailed.filter { !["resolved", "stuck", "cancelled"].contains($0.state) }
        let byState = Dictionary(grouping: unfinished, by: \.state).map { "\($0.key) \($0.value.count)" }.sorted().joined(separator: ", ")

        // Tickets: every issue the stand-in JIRA ever created, matched to a failed disk by
        // its incident label.
        func issuesOf(_ key: String) -> [JiraStandIn.Issue] { issues.filter { $0.labels.contains { $0.contains(key) } } }
        let ticketed = failed.filter { !issuesOf($0.failedKey).isEmpty }
        let duplicates = failed.reduce(0) { $0 + max(0, issuesOf($1.failedKey).count - 1) }
        let liveDuplicates = failed.reduce(0) { $0 + max(0, issuesOf($1.failedKey).filter { !$0.deleted }.count - 1) }
        let unmatchedIssues = issues.filter { issue in !failed.contains { slot in issue.labels.contains { $0.contains(slot.failedKey) } } }

        // Jobs per disk: Remove on the failed disk, Add on its replacement.
        func count(_ operation: String, _ key: String) -> Int { key.isEmpty ? 0 : jobs.filter { $0.operation == operation && $0.diskKey == key }.count }
        let removes = failed.map { count("Remove", $0.failedKey) }
        let adds = failed.map { count("Add", $0.replacementKey) }
        func spread(_ counts: [Int]) -> String {
            let grouped = Dictionary(grouping: counts, by: { $0 }).mapValues(\.count)
            return grouped.keys.sorted().map { "\(grouped[$0]!) disk\(grouped[$0]! == 1 ? "" : "s") with \($0)" }.joined(separator: ", ")
        }
        let failedJobs = jobs.filter { ($0.operation == "Remove" || $0.operation == "Add") && $0.state == .failed }
        let runningJobs = jobs.filter { ($0.operation == "Remove" || $0.operation == "Add") && $0.running }

        // Back in service: the replacement is mounted at the old mountpoint, and the host's
        // fstab has exactly one line for it, by the replacement's UUID.
        var back = 0
        var notBack: [String] = []
        for slot in failed {
            guard slot.disks.count >= 2 else { notBack.append("\(slot.host)/\(slot.name): never swapped"); continue }
            let replacement = slot.current
            let mountpoints = FaultyDisk.mountpoints(of: replacement.device)
            let mounted = mountpoints.contains(slot.mountpoint) && replacement.loopIsOurs
            let uuid = ((try? FaultyDisk.run("/sbin/blkid", ["-p", "-o", "value", "-s", "UUID", replacement.device])) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            let fstab = (try? String(contentsOfFile: "\(run.work)/\(slot.host)/fstab", encoding: .utf8)) ?? ""
            let fstabLines = fstab.split(separator: "\n").filter { $0.split(separator: " ").dropFirst().first.map(String.init) == slot.mountpoint }
            if mounted, !uuid.isEmpty, fstabLines.count == 1, fstabLines[0].hasPrefix("UUID=\(uuid) ") {
                back += 1
            } else {
                notBack.append("\(slot.host)/\(slot.name) (\(replacement.device)): mounted at \(mountpoints), ours \(replacement.loopIsOurs), fstab lines \(fstabLines.count)\(uuid.isEmpty ? ", no filesystem" : "")")
            }
        }

        // Repair time: failure injected -> the incident RESOLVED in the journal.
        var repairSeconds: [Double] = []
        for slot in failed {
            guard let at = slot.failedAt, let done = byKey[slot.failedKey]?.first(where: { $0.state == "resolved" }) else { continue }
            repairSeconds.append(Double(done.updatedMs) / 1000 - at.timeIntervalSince1970)
        }

        let lostFailures = failed.count - withIncident.count
        let lost = lostFailures + unfinished.count
        let modes = Dictionary(grouping: failed.compactMap(\.mode), by: { $0 }).map { "\($0.key.rawValue) \($0.value.count)" }.sorted().joined(separator: ", ")
        let kills = run.lock.withLock { run.kills }
        let killText = kills.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        let crashes = run.services.flatMap { service in service.unexpectedExits.map { "\(service.name): \($0)" } }

        line("disks failed (injected)", "\(failed.count) of \(options.disks) (\(modes))")
        line("kills (kill -9, then restart)", "\(kills.values.reduce(0, +)): \(killText)")
        line("services that exited on their own", crashes.isEmpty ? "0" : "\(crashes.count): \(crashes.joined(separator: "; "))")
        line("incidents opened", "\(incidents.count) (for \(withIncident.count) of \(failed.count) failed disks; \(extraIncidents) extra for the same disk; \(strayIncidents.count) for disks that did not fail)")
        line("tickets filed (stand-in JIRA)", "\(issues.count) (for \(ticketed.count) of \(failed.count) failed disks; \(unmatchedIssues.count) for no failed disk)")
        line("duplicate tickets", "\(duplicates) (\(liveDuplicates) still open or live, \(duplicates - liveDuplicates) deleted by ticketing as duplicates)")
        line("Remove jobs per failed disk", spread(removes))
        line("Add jobs per replacement disk", spread(adds))
        line("Remove/Add jobs failed, running", "\(failedJobs.count), \(runningJobs.count)\(failedJobs.isEmpty ? "" : ": " + failedJobs.prefix(5).map { "\($0.host) \($0.operation) \($0.message)" }.joined(separator: "; "))")
        line("disks back in service", "\(back) of \(failed.count)")
        line("incidents RESOLVED", "\(resolved.count)")
        line("incidents STUCK", "\(stuck.count)\(stuck.isEmpty ? "" : ": " + stuck.map(\.id).joined(separator: ", "))")
        line("incidents CANCELLED (failed disks)", "\(cancelled.count)")
        line("events lost", "\(lost) = \(lostFailures) failures with no incident + \(unfinished.count) incidents that never reached an end\(byState.isEmpty ? "" : " (\(byState))")")
        if !repairSeconds.isEmpty {
            line("failure -> incident RESOLVED", String(format: "p50 %.1f s, p90 %.1f s, max %.1f s (%d disks)", percentile(repairSeconds, 0.5), percentile(repairSeconds, 0.9), repairSeconds.max() ?? 0, repairSeconds.count))
        }
        line("wall time", String(format: "%.0f s (%d:%02d)", wall, Int(wall) / 60, Int(wall) % 60))
        let notes = failed.flatMap { slot in slot.notes.map { "\(slot.host)/\(slot.name): \($0)" } }
        for note in notes { figures.lines.append("  note: \(note)") }
        for item in notBack.prefix(10) { figures.lines.append("  not back: \(item)") }

        if failed.count < options.disks { figures.missed.append("only \(failed.count) of \(options.disks) failures injected") }
        if duplicates > 0 { figures.missed.append("\(duplicates) duplicate tickets") }
        if lost > 0 { figures.missed.append("\(lost) events lost") }
        if !stuck.isEmpty { figures.missed.append("\(stuck.count) incidents STUCK") }
        if back < failed.count { figures.missed.append("\(failed.count - back) disks not back in service") }
        if removes.contains(where: { $0 != 1 }) { figures.missed.append("Remove jobs per disk not exactly 1") }
        if adds.contains(where: { $0 != 1 }) { figures.missed.append("Add jobs per disk not exactly 1") }
        if extraIncidents > 0 || !strayIncidents.isEmpty { figures.missed.append("incidents beyond one per failed disk") }
        return figures
    }
}
