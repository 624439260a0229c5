public import BynarProto

/// Somewhere tickets are filed: JIRA now, others later. Every method either does what it
/// says or throws a ``TicketBackendError`` that says whether trying again can help.
public protocol TicketBackend: Sendable {
    /// "jira", "webhook": names the backend in TicketEvents and logs.
    var name: String { get }
    /// Whether ``find(incidentID:)`` can see tickets filed earlier (by this or another
    /// instance). Without it, exactly-once rests on the local incident → ticket record alone.
    var canSearch: Bool { get }
    /// Whether ``status(key:)`` can tell a resolved ticket from an open one.
    var canFollow: Bool { get }

    /// Files a new ticket and returns it.
    func create(_ ticket: NewTicket) async throws(TicketBackendError) -> TicketRef
    /// Every ticket carrying this incident's label, lowest-numbered (oldest) first.
    func find(incidentID: String) async throws(TicketBackendError) -> [TicketRef]
    func comment(key: String, text: String) async throws(TicketBackendError)
    /// Moves the ticket to a done status (nothing to do when it is done already).
    func close(key: String) async throws(TicketBackendError)
    func status(key: String) async throws(TicketBackendError) -> TicketStatus
    /// Gets rid of `duplicate`, a second ticket for an incident that `kept` already covers.
    func discard(duplicate: TicketRef, kept: TicketRef) async throws(TicketBackendError)
    /// Releases connections; the backend is not used afterwards.
    func shutdown() async
}

/// A ticket to file.
public struct NewTicket: Sendable, Equatable {
    public var incidentID: String
    public var summary: String
    public var description: String
    /// The configured labels plus the incident's own (``TicketText/incidentLabel(_:)``).
    public var labels: [String]
    /// What the ticket is about, as the orchestrator sent it: a disk's health, or (a
    /// hardware incident) a failed server part.
    public var health: Bynar_V1_DiskHealth
    public var hardware: Bynar_V1_HardwareTicket?
}

/// A filed ticket.
public struct TicketRef: Sendable, Equatable {
    /// What people call it ("OPS-123").
    public var key: String
    /// The backend's numeric id; lower means filed earlier.
    public var number: Int
    /// Where a person opens it.
    public var url: String

    public init(key: String, number: Int, url: String) {
        self.key = key
        self.number = number
        self.url = url
    }
}

/// What a ticket's status says about the work.
public enum TicketStatus: Sendable, Equatable {
    case open(status: String)
    /// Done (status category "done", or a resolution is set).
    case resolved(status: String, resolution: String)
    /// The backend has no such ticket (any more).
    case gone
}

/// Why a backend call failed, sorted by what the caller should do next.
public enum TicketBackendError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 401/403: the credentials or permissions are wrong. Retrying cannot help until a
    /// person fixes the configuration.
    case notAuthorized(status: Int, detail: String)
    /// The backend refused this request as it is (400 and other 4xx): retrying the same
    /// request gets the same answer. `detail` carries the backend's own messages.
    case rejected(status: Int, detail: String)
    /// 429: try again after `retryAfter` (the Retry-After header), or after the usual
    /// backoff when it gave none.
    case rateLimited(retryAfter: Duration?, detail: String)
    /// 5xx, timeouts, connection failures: try again after a backoff.
    case unavailable(detail: String)

    public var description: String {
        switch self {
        case .notAuthorized(let status, let detail): "not authorised (HTTP \(status)): \(detail)"
        case .rejected(let status, let detail): "refused (HTTP \(status)): \(detail)"
        case .rateLimited(let after, let detail): "rate limited (HTTP 429, retry after \(after.map { "\($0)" } ?? "unspecified")): \(detail)"
        case .unavailable(let detail): "unavailable: \(detail)"
        }
    }
}
