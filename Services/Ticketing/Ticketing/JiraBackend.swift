public import BynarConfig
import NIOHTTP1
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// JIRA over its REST API v2 (JIRA Server / Data Center; JIRA Cloud serves v2 as well).
///
/// - create: `POST /rest/api/2/issue` with project key, issue type id, priority id, assignee
///   (by user name), components, labels (the configured ones and `bynar-incident-<id>`),
///   summary and description.
/// - find: `GET /rest/api/2/search` with `labels = "bynar-incident-<id>"`.
/// - comment: `POST /rest/api/2/issue/{key}/comment`.
/// - close: `GET` then `POST /rest/api/2/issue/{key}/transitions`, to the first transition
///   whose target status is in the "done" category.
/// - status: `GET /rest/api/2/issue/{key}?fields=status,resolution`: resolved when the
///   status category is "done" or a resolution is set.
/// - discard: `DELETE /rest/api/2/issue/{key}`; without the delete permission (403), a
///   comment naming the kept ticket and a transition to done instead.
public struct JiraBackend: TicketBackend {
    public let name = "jira"
    public let canSearch = true
    public let canFollow = true
    let settings: TicketingSettings.Jira
    let http: HTTPTransport

    public init(_ jira: TicketingSettings.Jira, settings: TicketingSettings) {
        self.settings = jira
        http = HTTPTransport(settings: settings, credentials: jira.credentials, what: "JIRA", backend: name)
    }

    var api: String { settings.baseURL + "/rest/api/2" }

    func browseURL(_ key: String) -> String { settings.baseURL + "/browse/" + key }

    // MARK: Wire shapes (the subset of JIRA's JSON that Bynar reads or writes)

    struct Named: Codable { var name: String }
    struct Keyed: Codable { var key: String }
    struct Identified: Codable { var id: String }

    struct CreateIssue: Encodable {
        struct Fields: Encodable {
            var project: Keyed
            var issuetype: Identified
            var priority: Identified?
            var assignee: Named?
            var components: [Named]
            var labels: [String]
            var summary: String
            var description: String
        }
        var fields: Fields
    }

    struct Created: Decodable {
        var id: String
        var key: String
    }

    struct Status: Decodable {
        struct Category: Decodable { var key: String? }
        var name: String?
        var statusCategory: Category?
    }

    struct Issue: Decodable {
        struct Fields: Decodable {
            var status: Status?
            var resolution: Named?
        }
        var id: String
        var key: String
        var fields: Fields?
    }

    struct SearchResult: Decodable {
        var total: Int?
        var issues: [Issue]
    }

    struct Transitions: Decodable {
        struct Transition: Decodable {
            var id: String
            var name: String?
            var to: Status?
        }
        var transitions: [Transition]
    }

    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        // Encoding these plain structs cannot fail.
        (try? Array(JSONEncoder().encode(value))) ?? []
    }

    func decode<T: Decodable>(_ type: T.Type, _ reply: HTTPTransport.Reply, from what: String) throws(TicketBackendError) -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(reply.body))
        } catch {
            // A 2xx we cannot read is not JIRA as documented (a login page from a proxy, say).
            throw .unavailable(detail: "\(what): unexpected answer from JIRA (\(error)): \(String(reply.text.prefix(200)))")
        }
    }

    func ref(id: String, key: String) -> TicketRef {
        TicketRef(key: key, number: Int(id) ?? Int.max, url: browseURL(key))
    }

    // MARK: TicketBackend

    public func create(_ ticket: NewTicket) async throws(TicketBackendError) -> TicketRef {
        let body = CreateIssue(fields: .init(
            project: .init(key: settings.projectKey),
            issuetype: .init(id: settings.issueTypeId),
            priority: settings.priorityId.map { .init(id: $0) },
            assignee: settings.assignee.map { .init(name: $0) },
            components: settings.components.map { .init(name: $0) },
            labels: ticket.labels,
            summary: ticket.summary,
            description: ticket.description
        ))
        let reply = try await http.send(.POST, api + "/issue", json: Self.encode(body))
        let created = try decode(Created.self, reply, from: "create issue")
        return ref(id: created.id, key: created.key)
    }

    public func find(incidentID: String) async throws(TicketBackendError) -> [TicketRef] {
        let jql = "labels = \"\(TicketText.incidentLabel(incidentID))\" ORDER BY key ASC"
        let url = api + "/search?jql=" + queryEncoded(jql) + "&fields=status,resolution&maxResults=50"
        let result = try decode(SearchResult.self, try await http.send(.GET, url), from: "search")
        return result.issues.map { ref(id: $0.id, key: $0.key) }.sorted { $0.number < $1.number }
    }

    public func comment(key: String, text: String) async throws(TicketBackendError) {
        struct Comment: Encodable { var body: String }
        _ = try await http.send(.POST, api + "/issue/\(queryEncoded(key))/comment", json: Self.encode(Comment(body: text)))
    }

    public func close(key: String) async throws(TicketBackendError) {
        if case .resolved = try await status(key: key) { return }
        let path = api + "/issue/\(queryEncoded(key))/transitions"
        let transitions = try decode(Transitions.self, try await http.send(.GET, path), from: "transitions of \(key)")
        guard let done = transitions.transitions.first(where: { $0.to?.statusCategory?.key == "done" }) else {
            let names = transitions.transitions.map { $0.name ?? $0.id }.joined(separator: ", ")
            throw .rejected(status: 200, detail: "\(key) has no transition to a done status (available: \(names.isEmpty ? "none" : names))")
        }
        struct Transition: Encodable { var transition: Identified }
        _ = try await http.send(.POST, path, json: Self.encode(Transition(transition: .init(id: done.id))))
    }

    public func status(key: String) async throws(TicketBackendError) -> TicketStatus {
        let url = api + "/issue/\(queryEncoded(key))?fields=status,resolution"
        let reply = try await http.exchange(.GET, url)
        if reply.status == 404 { return .gone }
        guard (200..<300).contains(reply.status) else { throw http.classify(reply, method: .GET, url: url) }
        let issue = try decode(Issue.self, reply, from: "issue \(key)")
        let statusName = issue.fields?.status?.name ?? "unknown"
        if issue.fields?.status?.statusCategory?.key == "done" || issue.fields?.resolution != nil {
            return .resolved(status: statusName, resolution: issue.fields?.resolution?.name ?? "")
        }
        return .open(status: statusName)
    }

    public func discard(duplicate: TicketRef, kept: TicketRef) async throws(TicketBackendError) {
        let url = api + "/issue/\(queryEncoded(duplicate.key))"
        let reply = try await http.exchange(.DELETE, url)
        switch reply.status {
        case 200..<300, 404:
            return
        case 403:
            // No "Delete issues" permission: say what it is and close it.
            try await comment(key: duplicate.key, text: "Duplicate of \(kept.key) (\(kept.url)): two bynar-ticketing instances filed the same incident at once. Bynar follows \(kept.key); this one is closed.")
            try await close(key: duplicate.key)
        default:
            throw http.classify(reply, method: .DELETE, url: url)
        }
    }

    public func shutdown() async {
        await http.shutdown()
    }
}
