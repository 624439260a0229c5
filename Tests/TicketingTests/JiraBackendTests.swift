import BynarConfig
import BynarProto
import BynarTestSupport
import Foundation
import Testing
@testable import Ticketing

/// JiraBackend against the STAND-IN JIRA (Tests/StandIns/jira; no real JIRA can run
/// here): each answer JIRA documents lands in the right TicketBackendError case.
@Suite struct JiraBackendTests {
    func backend(_ jira: JiraStandIn, token: String = "api-token-1") throws -> JiraBackend {
        let config = try ConfigLoader.parse("""
        {"ticketing": {"request_timeout_seconds": 3, "jira": {"base_url": "\(jira.baseURL)", "project_key": "BYN", "issue_type_id": "3",
          "user": "bynar-bot", "api_token": "\(token)"}}}
        """)
        let settings = try config.ticketingSettings()
        guard case .jira(let section) = settings.backend else { throw TestSupportError("not jira") }
        return JiraBackend(section, settings: settings)
    }

    func ticket(_ incident: String) -> NewTicket {
        let health = TicketingHarness.health()
        return NewTicket(incidentID: incident, summary: TicketText.summary(health), description: "d",
                         labels: ["bynar", TicketText.incidentLabel(incident)], health: health)
    }

    /// Stand-in JIRA: create, find by label (oldest first), status, comment and close.
    @Test func createFindFollowCommentCloseStandIn() async throws {
        let jira = try JiraStandIn()
        let backend = try backend(jira)
        let first = try await backend.create(ticket("a"))
        let second = try await backend.create(ticket("a"))
        _ = try await backend.create(ticket("b"))
        #expect(first.key == "BYN-1" && first.url == jira.baseURL + "/browse/BYN-1")
        #expect(try await backend.find(incidentID: "a").map(\.key) == ["BYN-1", "BYN-2"])
        #expect(try await backend.find(incidentID: "nothing").isEmpty)
        #expect(try await backend.status(key: "BYN-1") == .open(status: "To Do"))
        #expect(try await backend.status(key: "BYN-99") == .gone)
        try await backend.discard(duplicate: second, kept: first)
        #expect(try await backend.find(incidentID: "a").map(\.key) == ["BYN-1"], "the duplicate is deleted")
        try await backend.comment(key: "BYN-1", text: "hello")
        try await backend.close(key: "BYN-1")
        #expect(try await backend.status(key: "BYN-1") == .resolved(status: "Done", resolution: "Done"))
        try await backend.close(key: "BYN-1")  // done already: nothing to do
        #expect(try jira.requests().filter { $0.method == "POST" && $0.path.hasSuffix("/transitions") }.count == 1)
        await backend.shutdown()
    }

    /// Stand-in JIRA without the delete permission: the duplicate is commented and closed.
    @Test func duplicateIsClosedWhenDeleteIsForbiddenStandIn() async throws {
        let jira = try JiraStandIn()
        let backend = try backend(jira)
        let kept = try await backend.create(ticket("a"))
        let duplicate = try await backend.create(ticket("a"))
        try jira.forbidDelete(true)
        try await backend.discard(duplicate: duplicate, kept: kept)
        let issue = try #require(try jira.issues().first { $0.key == duplicate.key })
        #expect(!issue.deleted && issue.status == "Done")
        #expect(issue.comments.first?.contains("Duplicate of BYN-1") == true)
        await backend.shutdown()
    }

    /// Stand-in JIRA: 401, 403, 400, 404, 429 and 500 answers, and no answer at all.
    @Test func errorAnswersAreSortedByWhatToDoStandIn() async throws {
        let jira = try JiraStandIn()
        let wrong = try backend(jira, token: "wrong")
        await #expect(throws: TicketBackendError.self) { _ = try await wrong.create(ticket("x")) }
        do { _ = try await wrong.create(ticket("x")) } catch {
            guard case .notAuthorized(401, let detail) = error else { Issue.record("\(error)"); return }
            #expect(detail.contains("You are not authenticated"))
        }
        await wrong.shutdown()

        let backend = try backend(jira)
        func failure(_ body: () async throws -> Void) async -> TicketBackendError? {
            do { try await body() } catch { return error as? TicketBackendError }
            return nil
        }
        try jira.failNext(1, status: 403)
        #expect(await failure { _ = try await backend.find(incidentID: "x") }.map { if case .notAuthorized(403, _) = $0 { true } else { false } } == true)
        try jira.failNext(1, status: 429, retryAfter: "17")
        #expect(await failure { _ = try await backend.find(incidentID: "x") }.map { if case .rateLimited(.seconds(17), _) = $0 { true } else { false } } == true)
        try jira.failNext(1, status: 500)
        #expect(await failure { _ = try await backend.find(incidentID: "x") }.map { if case .unavailable = $0 { true } else { false } } == true)
        let notFound = await failure { try await backend.comment(key: "BYN-404", text: "x") }
        #expect(notFound.map { if case .rejected(404, let detail) = $0 { detail.contains("Issue does not exist") } else { false } } == true, "\(String(describing: notFound))")
        var bad = ticket("y")
        bad.labels.append("has space")
        let refused = await failure { _ = try await backend.create(bad) }
        #expect(refused.map { if case .rejected(400, let detail) = $0 { detail.contains("labels: The label 'has space' contains spaces") } else { false } } == true, "\(String(describing: refused))")
        try jira.setDown(true)
        #expect(await failure { _ = try await backend.find(incidentID: "x") }.map { if case .unavailable = $0 { true } else { false } } == true)
        await backend.shutdown()
    }
}
