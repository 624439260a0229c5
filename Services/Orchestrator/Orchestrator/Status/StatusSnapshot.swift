import BynarConfig
import BynarProto

/// Everything the status page shows, at one moment: what `GET /api/status` answers (JSON,
/// snake_case keys; docs/status-page.md lists the fields) and what the HTML page is rendered
/// from. Made by ``make(board:incidents:timelines:bucket:config:host:version:nowMs:)``, a
/// pure function of what the orchestrator knows.
public struct StatusSnapshot: Codable, Sendable, Equatable {
    public struct Service: Codable, Sendable, Equatable {
        public var service: String
        public var up: Bool
        public var session: UInt64
        public var sinceUnixMs: Int64
    }

    public struct Host: Codable, Sendable, Equatable {
        public var host: String
        public var up: Bool
        public var sinceUnixMs: Int64
        public var services: [Service]
    }

    public struct Disk: Codable, Sendable, Equatable {
        public var host: String
        public var key: String
        public var devPath: String
        /// The detector's health state: healthy, suspect, failing, failed, missing, replaced, unknown.
        public var state: String
        public var reasons: [String]
        public var sinceUnixMs: Int64
        public var systemDisk: Bool
    }

    public struct StateCount: Codable, Sendable, Equatable {
        public var state: String
        public var count: Int
    }

    public struct Ticket: Codable, Sendable, Equatable {
        public var incidentId: String
        public var key: String
        /// The ticket's page in the backend (empty when the backend gave none).
        public var url: String
        /// The technician resolved it (the disk was replaced, or is about to be).
        public var resolved: Bool
    }

    public struct Incident: Codable, Sendable, Equatable {
        public var id: String
        public var host: String
        public var diskKey: String
        public var devPath: String
        public var cluster: String
        public var rack: String
        /// The workflow's state (`checkingSafety`, `ticketed`, ...; docs/orchestrator.md).
        public var state: String
        /// The step in flight (`safe`, `remove`, `ticket`, `add`; empty for none) and its attempt.
        public var step: String
        public var attempt: Int
        public var detail: String
        public var reasons: [String]
        public var openedUnixMs: Int64
        public var updatedUnixMs: Int64
        /// The brake counts the disk out.
        public var countsAsOut: Bool
        public var ticket: Ticket?
        public var timeline: [IncidentJournal.TimelineEntry]
    }

    /// Disks out against one of the brake's limits.
    public struct BrakeUse: Codable, Sendable, Equatable {
        /// "cluster", "rack" or "host".
        public var per: String
        public var name: String
        public var out: Int
        public var limit: Int
    }

    public struct Brake: Codable, Sendable, Equatable {
        public var maxOutPerCluster: Int
        public var maxOutPerRack: Int
        public var maxOutPerHost: Int
        public var removalsPerHour: Double
        public var removalBurst: Int
        /// Removal tokens left as of the brake's last decision (nil before its first).
        public var removalTokens: Double?
        /// Every cluster; racks and hosts with a disk out.
        public var use: [BrakeUse]
    }

    /// An open hardware incident: a server part its BMC reports failed ([hardware.md](hardware.md)).
    public struct Hardware: Codable, Sendable, Equatable {
        public var id: String
        public var host: String
        /// "power supply", "fan", ...
        public var kind: String
        public var part: String
        public var location: String
        public var serial: String
        public var reason: String
        public var openedUnixMs: Int64
        /// Since when the BMC reports it healthy (the incident closes after
        /// `hardware_healthy_seconds`); nil while failed.
        public var healthySinceUnixMs: Int64?
        public var ticket: Ticket?
    }

    public struct HookRun: Codable, Sendable, Equatable {
        public var eventId: String
        public var hook: String
        public var arguments: [String]
        public var exitStatus: Int32
        public var timedOut: Bool
        public var startedUnixMs: Int64
        public var durationMs: Int64
    }

    public var generatedUnixMs: Int64
    /// The orchestrator's host and version, and whether it only decides (dry run).
    public var orchestratorHost: String
    public var version: String
    public var dryRun: Bool
    public var hosts: [Host]
    /// Every health state, with how many disks are in it.
    public var diskStates: [StateCount]
    public var disks: [Disk]
    public var incidents: [Incident]
    public var hardware: [Hardware]
    public var tickets: [Ticket]
    public var brake: Brake
    /// Newest first.
    public var hooks: [HookRun]

    /// The health states in the order the page lists them.
    static let diskStateOrder = ["failed", "missing", "failing", "suspect", "replaced", "healthy", "unknown"]

    static func make(board: StatusBoard.Contents, incidents: [IncidentMachine], timelines: [String: [IncidentJournal.TimelineEntry]],
                     bucket: ClusterBrake.Bucket?, config: OrchestratorConfig, host: String, version: String, nowMs: Int64,
                     hardware: [HardwareIncidents.Incident] = []) -> StatusSnapshot {
        let hosts = board.hosts.values.sorted { $0.host < $1.host }.map { state in
            Host(host: state.host, up: state.up, sinceUnixMs: state.sinceUnixMs,
                 services: state.services.map { Service(service: $0.service, up: $0.up, session: $0.session, sinceUnixMs: $0.sinceUnixMs) })
        }
        let disks = board.disks.values.map { health in
            Disk(host: health.disk.host, key: health.disk.key, devPath: health.disk.devPath, state: health.state.readableName,
                 reasons: health.reasons.map { $0.detail.isEmpty ? $0.rule : "\($0.rule): \($0.detail)" },
                 sinceUnixMs: health.stateSinceUnixMs, systemDisk: health.systemDisk)
        }.sorted { ($0.host, $0.key) < ($1.host, $1.key) }
        var counts: [String: Int] = [:]
        for disk in disks { counts[disk.state, default: 0] += 1 }

        let shown = incidents.sorted { $0.openedMs < $1.openedMs }.map { machine in
            Incident(id: machine.id, host: machine.disk.host, diskKey: machine.disk.key, devPath: machine.disk.devPath,
                     cluster: machine.cluster, rack: machine.rack, state: machine.state.rawValue, step: machine.step?.rawValue ?? "",
                     attempt: machine.attempt, detail: machine.detail, reasons: machine.reasons, openedUnixMs: machine.openedMs,
                     updatedUnixMs: machine.updatedMs, countsAsOut: machine.countsAsOut,
                     ticket: machine.ticketKey.isEmpty ? nil : Ticket(incidentId: machine.id, key: machine.ticketKey, url: machine.ticketURL, resolved: machine.ticketResolved),
                     timeline: timelines[machine.id] ?? [])
        }

        let parts = hardware.sorted { $0.openedMs < $1.openedMs }.map { incident in
            let finding = incident.finding
            return Hardware(id: incident.id, host: incident.host, kind: finding.part.spokenKind,
                            part: finding.part.name, location: finding.part.location, serial: finding.part.serial,
                            reason: "\(finding.reason): \(finding.detail)", openedUnixMs: incident.openedMs, healthySinceUnixMs: incident.healthySinceMs,
                            ticket: incident.ticketKey.isEmpty ? nil : Ticket(incidentId: incident.id, key: incident.ticketKey, url: incident.ticketURL,
                                                                              resolved: incident.ticket == .resolvedByPerson))
        }

        let out = incidents.filter(\.countsAsOut)
        var use: [BrakeUse] = []
        var clusters = [config.defaultCluster]
        for cluster in config.hosts.compactMap(\.cluster) + out.map(\.cluster) where !clusters.contains(cluster) { clusters.append(cluster) }
        for cluster in clusters {
            use.append(BrakeUse(per: "cluster", name: cluster, out: out.filter { $0.cluster == cluster }.count, limit: config.brake.maxOutPerCluster))
        }
        for rack in Set(out.map(\.rack)).subtracting([""]).sorted() {
            use.append(BrakeUse(per: "rack", name: rack, out: out.filter { $0.rack == rack }.count, limit: config.brake.maxOutPerRack))
        }
        for host in Set(out.map(\.disk.host)).sorted() {
            use.append(BrakeUse(per: "host", name: host, out: out.filter { $0.disk.host == host }.count, limit: config.brake.maxOutPerHost))
        }
        let brake = Brake(maxOutPerCluster: config.brake.maxOutPerCluster, maxOutPerRack: config.brake.maxOutPerRack,
                          maxOutPerHost: config.brake.maxOutPerHost, removalsPerHour: config.brake.removalsPerHour,
                          removalBurst: config.brake.removalBurst, removalTokens: bucket?.tokens, use: use)

        return StatusSnapshot(
            generatedUnixMs: nowMs, orchestratorHost: host, version: version, dryRun: config.dryRun, hosts: hosts,
            diskStates: diskStateOrder.map { StateCount(state: $0, count: counts[$0] ?? 0) }, disks: disks, incidents: shown,
            hardware: parts, tickets: shown.compactMap(\.ticket) + parts.compactMap(\.ticket), brake: brake,
            hooks: board.hooks.reversed().map {
                HookRun(eventId: $0.eventID, hook: $0.hook, arguments: $0.arguments, exitStatus: $0.exitStatus, timedOut: $0.timedOut,
                        startedUnixMs: $0.startedUnixMs, durationMs: $0.durationMs)
            })
    }
}
