public import BynarBus
public import BynarProto

/// A test's window on one host's repair: every service status, incident event, ticket event,
/// the host's disk health events and the disk-manager's job progress, collected from the
/// moment it subscribed. End-to-end tests read the repair's path from it.
public struct RepairTap: Sendable {
    public let statuses: Collector<Received<Bynar_V1_ServiceStatus>>
    public let incidents: Collector<Received<Bynar_V1_IncidentEvent>>
    public let tickets: Collector<Received<Bynar_V1_TicketEvent>>
    public let diskEvents: Collector<Received<Bynar_V1_DiskHealthEvent>>
    public let progress: Collector<Received<Bynar_V1_JobProgress>>

    public init(_ bus: Bus, host: String) async throws {
        statuses = Collector(try await bus.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
        incidents = Collector(try await bus.subscribe(Topics.incidentEvents, as: Bynar_V1_IncidentEvent.self))
        tickets = Collector(try await bus.subscribe(Topics.ticketEvents, as: Bynar_V1_TicketEvent.self))
        diskEvents = Collector(try await bus.subscribe(Topics.diskEvents(host: host), as: Bynar_V1_DiskHealthEvent.self))
        progress = Collector(try await bus.subscribe(Topics.diskManagerProgress(host: host), as: Bynar_V1_JobProgress.self))
    }

    /// Whether `service` announced its birth within `timeout`.
    public func born(_ service: String, timeout: Duration = .seconds(20)) async -> Bool {
        await statuses.wait(timeout: timeout) { $0.contains { $0.payload.service == service && $0.payload.state == .birth } }
    }
}
