import BynarConfig
import Foundation
import Testing

/// The ticketing section: defaults, legacy fallback, and every bad field named.
@Suite struct TicketingConfigTests {
    @Test func defaultsLoadAndUnknownKeysAreRejected() throws {
        _ = try ConfigLoader.parse(#"{"ticketing": {}}"#)
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"ticketing": {"no_such_key": 1}}"#) }
    }

    /// Bynar's top-level jira_* fields fill in what the section does not say.
    @Test func legacyFieldsFillTheJiraSettings() throws {
        let config = try ConfigLoader.parse("""
        {"jira_host": "https://jira.example.com/", "jira_user": "bynar", "jira_password": "secret", "jira_issue_type": "10004",
         "jira_priority": "3", "jira_project_id": "OPS", "jira_ticket_assignee": "tech",
         "ticketing": {"jira": {"project_key": "STORAGE", "components": ["Ceph"]}}}
        """)
        let settings = try config.ticketingSettings()
        guard case .jira(let jira) = settings.backend else { Issue.record("not jira"); return }
        #expect(jira.baseURL == "https://jira.example.com")
        #expect(jira.projectKey == "STORAGE", "the section wins over jira_project_id")
        #expect(jira.issueTypeId == "10004" && jira.priorityId == "3" && jira.assignee == "tech")
        #expect(jira.credentials == .basic(user: "bynar", token: "secret"))
        #expect(jira.components == ["Ceph"] && jira.labels == ["bynar"])
        #expect(settings.proxy == nil)
    }

    /// Bearer auth takes the personal access token from its file; api_token_file likewise.
    @Test func tokensAreReadFromFiles() throws {
        let directory = NSTemporaryDirectory() + "bynar-ticketing-config-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "pat-abc\nignored\n".write(toFile: directory + "/pat", atomically: true, encoding: .utf8)
        try "  tok-1  \n".write(toFile: directory + "/token", atomically: true, encoding: .utf8)
        let base = #""base_url": "http://jira:8080/jira", "project_key": "OPS", "issue_type_id": "1""#
        let bearer = try ConfigLoader.parse(#"{"ticketing": {"jira": {\#(base), "personal_access_token_file": "\#(directory)/pat"}}}"#).ticketingSettings()
        guard case .jira(let jira) = bearer.backend else { Issue.record("not jira"); return }
        #expect(jira.credentials == .bearer(token: "pat-abc"))
        #expect(jira.baseURL == "http://jira:8080/jira")
        let basic = try ConfigLoader.parse(#"{"ticketing": {"jira": {\#(base), "user": "u", "api_token_file": "\#(directory)/token"}}}"#).ticketingSettings()
        guard case .jira(let jira2) = basic.backend else { Issue.record("not jira"); return }
        #expect(jira2.credentials == .basic(user: "u", token: "tok-1"))
    }

    /// What the jira backend needs and is missing is named, with the legacy field that
    /// could have supplied it.
    @Test func missingJiraSettingsAreAllNamed() throws {
        let config = try ConfigLoader.parse(#"{"ticketing": {"jira": {"auth": "bearer"}}}"#)
        let error = try #require(throws: ConfigError.self) { try config.ticketingSettings() }
        let fields = Set(error.problems.map(\.field))
        #expect(fields == ["ticketing.jira.base_url", "ticketing.jira.project_key", "ticketing.jira.issue_type_id", "ticketing.jira.personal_access_token_file"], "\(error)")
        #expect(error.description.contains("jira_host") && error.description.contains("jira_project_id"))
    }

    /// Impossible values are refused when the config loads, each by its field.
    @Test func badValuesAreRefusedByField() throws {
        let error = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse("""
            {"ticketing": {"backend": "email", "request_timeout_seconds": 0, "parallel_incidents": 0, "retry_min_seconds": 5,
              "retry_max_seconds": 2, "follow": {"first_check_seconds": 600, "backoff_factor": 0.5, "max_interval_seconds": 60},
              "jira": {"base_url": "jira.example.com", "auth": "oauth", "api_token": "a", "api_token_file": "/nonexistent/token",
                       "labels": ["has space"], "components": [""]},
              "webhook": {"url": "ftp://x"}}}
            """)
        }
        let fields = Set(error.problems.map(\.field))
        for field in ["ticketing.backend", "ticketing.request_timeout_seconds", "ticketing.parallel_incidents", "ticketing.retry_max_seconds",
                      "ticketing.follow.backoff_factor", "ticketing.follow.max_interval_seconds", "ticketing.jira.base_url", "ticketing.jira.auth",
                      "ticketing.jira.api_token_file", "ticketing.jira.labels", "ticketing.jira.components", "ticketing.webhook.url"] {
            #expect(fields.contains(field), "\(field) not named in:\n\(error)")
        }
    }

    /// The top-level proxy: host, port and credentials; an https:// proxy is refused for
    /// ticketing with the reason.
    @Test func proxyIsParsed() throws {
        let withProxy = #""jira_host": "https://jira", "jira_user": "u", "jira_password": "p", "jira_issue_type": "1", "jira_project_id": "OPS""#
        let settings = try ConfigLoader.parse(#"{\#(withProxy), "proxy": "http://user:p%40ss@proxy.local:3128/"}"#).ticketingSettings()
        let proxy = try #require(settings.proxy)
        #expect(proxy.host == "proxy.local" && proxy.port == 3128 && proxy.user == "user" && proxy.password == "p@ss")
        #expect(try ConfigLoader.parse(#"{\#(withProxy), "proxy": "http://proxy"}"#).ticketingSettings().proxy?.port == 80)
        let error = try #require(throws: ConfigError.self) { try ConfigLoader.parse(#"{\#(withProxy), "proxy": "https://proxy:3129"}"#).ticketingSettings() }
        #expect(error.problems.map(\.field) == ["proxy"])
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(#"{\#(withProxy), "proxy": "http://proxy:99999"}"#).ticketingSettings() }
    }

    @Test func webhookNeedsItsURL() throws {
        let error = try #require(throws: ConfigError.self) { try ConfigLoader.parse(#"{"ticketing": {"backend": "webhook"}}"#).ticketingSettings() }
        #expect(error.problems.map(\.field) == ["ticketing.webhook.url"])
        let settings = try ConfigLoader.parse(#"{"ticketing": {"backend": "webhook", "webhook": {"url": "https://hooks.example/t"}}}"#).ticketingSettings()
        guard case .webhook(let webhook) = settings.backend else { Issue.record("not a webhook"); return }
        #expect(webhook.url == "https://hooks.example/t" && webhook.credentials == nil)
    }
}
