#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The ticketing's section of the host config (`"ticketing": {...}`).
///
/// JIRA settings not given here fall back to Bynar's top-level fields (`jira_host`,
/// `jira_user`, `jira_password`, `jira_issue_type`, `jira_priority`, `jira_project_id`,
/// `jira_ticket_assignee`), so an old `bynar.json` files tickets unchanged. See
/// ``BynarConfig/ticketingSettings()`` for the resolved, checked result.
public struct TicketingConfig: Codable, Sendable, Equatable {
    /// Where tickets go: "jira", "webhook", or "local" (tickets kept in ticketing's own
    /// store, resolved with `bynar tickets resolve`).
    public var backend = "jira"
    public var jira = JiraSection()
    public var webhook = WebhookSection()
    public var local = LocalSection()
    /// Trusted-keys file of the operators whose signed commands (`bynar tickets resolve`)
    /// ticketing takes; none: every such command is refused.
    public var operatorKeysFile: String?
    /// Longest one HTTP request to the backend may take, connection included.
    public var requestTimeoutSeconds = 30
    /// Incidents worked on at once; one incident's requests always run one after another.
    public var parallelIncidents = 4
    /// How open tickets are checked for resolution.
    public var follow = FollowSchedule()
    /// Pause after a 5xx or network error: starts at the minimum, doubles per failure,
    /// capped at the maximum. A 429's Retry-After wins when it is longer.
    public var retryMinSeconds = 1
    public var retryMaxSeconds = 300

    public init() {}

    /// JIRA (REST API v2).
    public struct JiraSection: Codable, Sendable, Equatable {
        /// `https://jira.example.com` (a context path is kept: `https://host/jira`); default `jira_host`.
        public var baseUrl: String?
        /// Project key ("OPS"); default `jira_project_id`.
        public var projectKey: String?
        /// Issue type id ("10004"); default `jira_issue_type`.
        public var issueTypeId: String?
        /// Priority id ("3"); default `jira_priority`; none: JIRA's default priority.
        public var priorityId: String?
        /// User name the ticket is assigned to; default `jira_ticket_assignee`; none: unassigned.
        public var assignee: String?
        /// Component names set on every ticket.
        public var components: [String] = []
        /// Labels set on every ticket, besides the per-incident `bynar-incident-<id>`.
        public var labels: [String] = ["bynar"]
        /// "basic" (user + API token) or "bearer" (personal access token); default: bearer
        /// when `personal_access_token_file` is set, else basic.
        public var auth: String?
        /// Basic auth user; default `jira_user`.
        public var user: String?
        /// Basic auth API token (or password); default `jira_password`.
        public var apiToken: String?
        /// File whose first line is the API token (instead of `api_token`).
        public var apiTokenFile: String?
        /// File whose first line is the personal access token (bearer auth).
        public var personalAccessTokenFile: String?

        public init() {}
    }

    /// A generic webhook: every ticket action is POSTed as JSON to `url`.
    public struct WebhookSection: Codable, Sendable, Equatable {
        public var url: String?
        /// File whose first line is sent as `Authorization: Bearer <token>`.
        public var bearerTokenFile: String?

        public init() {}
    }

    /// The built-in backend: tickets in ticketing's SQLite store, for teams without a ticket
    /// system (and the local demo).
    public struct LocalSection: Codable, Sendable, Equatable {
        /// Tickets are called `<key_prefix>-<number>` ("BYNAR-3").
        public var keyPrefix = "BYNAR"

        public init() {}
    }

    /// Per-ticket resolution checks: the first after `first_check_seconds`, then each gap
    /// `backoff_factor` times the last, at most `max_interval_seconds`.
    public struct FollowSchedule: Codable, Sendable, Equatable {
        public var firstCheckSeconds = 300
        public var backoffFactor = 2.0
        public var maxIntervalSeconds = 3600

        public init() {}
    }

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "ticketing." + field, problem: text)) }

        if !["jira", "webhook", "local"].contains(backend) { problem("backend", "must be \"jira\", \"webhook\" or \"local\", got \"\(backend)\"") }
        if local.keyPrefix.isEmpty || local.keyPrefix.utf8.count > 32 || !local.keyPrefix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) {
            problem("local.key_prefix", "must be 1-32 ASCII letters, digits or _, got \"\(local.keyPrefix)\"")
        }
        if let path = operatorKeysFile, let reason = unreadable(path) { problem("operator_keys_file", reason) }
        if requestTimeoutSeconds < 1 { problem("request_timeout_seconds", "must be at least 1, got \(requestTimeoutSeconds)") }
        if !(1...64).contains(parallelIncidents) { problem("parallel_incidents", "must be 1-64, got \(parallelIncidents)") }
        if retryMinSeconds < 1 { problem("retry_min_seconds", "must be at least 1, got \(retryMinSeconds)") }
        if retryMaxSeconds < retryMinSeconds {
            problem("retry_max_seconds", "must be at least retry_min_seconds (\(retryMinSeconds)), got \(retryMaxSeconds)")
        }
        if follow.firstCheckSeconds < 1 { problem("follow.first_check_seconds", "must be at least 1, got \(follow.firstCheckSeconds)") }
        if !(follow.backoffFactor >= 1 && follow.backoffFactor <= 100) {
            problem("follow.backoff_factor", "must be 1-100 (1 checks at a fixed interval), got \(follow.backoffFactor)")
        }
        if follow.maxIntervalSeconds < follow.firstCheckSeconds {
            problem("follow.max_interval_seconds", "must be at least follow.first_check_seconds (\(follow.firstCheckSeconds)), got \(follow.maxIntervalSeconds)")
        }

        if let url = jira.baseUrl, let reason = httpURLProblem(url) { problem("jira.base_url", reason) }
        if let auth = jira.auth, !["basic", "bearer"].contains(auth) { problem("jira.auth", "must be \"basic\" or \"bearer\", got \"\(auth)\"") }
        if jira.apiToken != nil && jira.apiTokenFile != nil { problem("jira.api_token_file", "set either api_token or api_token_file, not both") }
        for (field, path) in [("jira.api_token_file", jira.apiTokenFile), ("jira.personal_access_token_file", jira.personalAccessTokenFile), ("webhook.bearer_token_file", webhook.bearerTokenFile)] {
            if let path, let reason = unreadable(path) { problem(field, reason) }
        }
        for label in jira.labels where label.isEmpty || label.contains(where: \.isWhitespace) {
            problem("jira.labels", "JIRA labels cannot be empty or contain spaces, got \"\(label)\"")
        }
        if jira.components.contains(where: { $0.trimmedWhitespace.isEmpty }) { problem("jira.components", "component names must not be empty") }
        if let url = webhook.url, let reason = httpURLProblem(url) { problem("webhook.url", reason) }
        return problems
    }
}

/// Why `text` is not an absolute http(s) URL with a host, or nil when it is.
func httpURLProblem(_ text: String) -> String? {
    guard let scheme = text.split(separator: ":", maxSplits: 1).first, ["http", "https"].contains(scheme.lowercased()),
          text.dropFirst(scheme.count).hasPrefix("://") else {
        return "must be an http:// or https:// URL, got \"\(text)\""
    }
    let rest = text.dropFirst(scheme.count + 3)
    let authority = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
    if authority.isEmpty { return "has no host: \"\(text)\"" }
    return nil
}

/// The ticketing settings with Bynar's legacy fields filled in, token files read and
/// everything the chosen backend needs present.
public struct TicketingSettings: Sendable, Equatable {
    public enum Backend: Sendable, Equatable {
        case jira(Jira)
        case webhook(Webhook)
        case local(Local)
    }

    /// How requests prove who they are.
    public enum Credentials: Sendable, Equatable {
        /// HTTP basic: user and API token (or password).
        case basic(user: String, token: String)
        /// `Authorization: Bearer <token>` (a JIRA personal access token).
        case bearer(token: String)
    }

    public struct Jira: Sendable, Equatable {
        /// Without a trailing slash.
        public var baseURL: String
        public var projectKey: String
        public var issueTypeId: String
        public var priorityId: String?
        public var assignee: String?
        public var components: [String]
        public var labels: [String]
        public var credentials: Credentials
    }

    public struct Webhook: Sendable, Equatable {
        public var url: String
        public var credentials: Credentials?
    }

    public struct Local: Sendable, Equatable {
        public var keyPrefix: String
    }

    /// An HTTP proxy (HTTPS targets are tunnelled through it with CONNECT).
    public struct Proxy: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var user: String?
        public var password: String?
    }

    public var backend: Backend
    public var proxy: Proxy?
    public var requestTimeoutSeconds: Int
    public var parallelIncidents: Int
    public var follow: TicketingConfig.FollowSchedule
    public var retryMinSeconds: Int
    public var retryMaxSeconds: Int
}

extension BynarConfig {
    /// The ticketing settings, resolved: each JIRA field from the `ticketing` section, else
    /// from Bynar's top-level `jira_*` field; token files read.
    /// - Throws: ``ConfigError`` naming every missing or unusable field (both names, where a
    ///   legacy field could have supplied it).
    public func ticketingSettings() throws(ConfigError) -> TicketingSettings {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: field, problem: text)) }
        let section = ticketing

        var proxySettings: TicketingSettings.Proxy?
        if let proxy {
            switch Self.parseProxy(proxy) {
            case .success(let parsed): proxySettings = parsed
            case .failure(let reason): problems.append(reason)
            }
        }

        /// The first line of `path`, or nil after reporting why it cannot be used.
        func secret(_ field: String, _ path: String) -> String? {
            guard let data = try? Data(contentsOf: URL(fileURLWithPath: path)) else {
                problem(field, unreadable(path) ?? "cannot read \(path)")
                return nil
            }
            let line = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let token = line.trimmedWhitespace
            if token.isEmpty { problem(field, "\(path) is empty (the token goes on its first line)") }
            return token
        }
        /// The section's value, else the legacy field's; reports both names when neither is set.
        func required(_ field: String, _ value: String?, legacy: String, _ legacyValue: String?) -> String {
            if let value = value ?? legacyValue, !value.trimmedWhitespace.isEmpty { return value }
            problem("ticketing.\(field)", "is required for the jira backend (or set the top-level \(legacy))")
            return ""
        }

        var backend: TicketingSettings.Backend?
        switch section.backend {
        case "local":
            backend = .local(.init(keyPrefix: section.local.keyPrefix))
        case "webhook":
            let url = section.webhook.url ?? ""
            if url.isEmpty { problem("ticketing.webhook.url", "is required for the webhook backend") }
            let token = section.webhook.bearerTokenFile.flatMap { secret("ticketing.webhook.bearer_token_file", $0) }
            backend = .webhook(.init(url: url, credentials: token.map { .bearer(token: $0) }))
        default:
            let jira = section.jira
            var baseURL = required("jira.base_url", jira.baseUrl, legacy: "jira_host", jiraHost)
            if jira.baseUrl == nil, !baseURL.isEmpty, let reason = httpURLProblem(baseURL) { problem("jira_host", reason) }
            while baseURL.hasSuffix("/") { baseURL.removeLast() }
            let projectKey = required("jira.project_key", jira.projectKey, legacy: "jira_project_id", jiraProjectId)
            let issueTypeId = required("jira.issue_type_id", jira.issueTypeId, legacy: "jira_issue_type", jiraIssueType)
            let auth = jira.auth ?? (jira.personalAccessTokenFile != nil ? "bearer" : "basic")
            var credentials = TicketingSettings.Credentials.bearer(token: "")
            if auth == "bearer" {
                if let file = jira.personalAccessTokenFile {
                    credentials = .bearer(token: secret("ticketing.jira.personal_access_token_file", file) ?? "")
                } else {
                    problem("ticketing.jira.personal_access_token_file", "is required for bearer auth")
                }
            } else {
                let user = required("jira.user", jira.user, legacy: "jira_user", jiraUser)
                var token = jira.apiToken ?? ""
                if let file = jira.apiTokenFile {
                    token = secret("ticketing.jira.api_token_file", file) ?? ""
                } else if jira.apiToken == nil {
                    token = required("jira.api_token", nil, legacy: "jira_password", jiraPassword)
                }
                credentials = .basic(user: user, token: token)
            }
            backend = .jira(.init(
                baseURL: baseURL, projectKey: projectKey, issueTypeId: issueTypeId,
                priorityId: jira.priorityId ?? jiraPriority, assignee: jira.assignee ?? jiraTicketAssignee,
                components: jira.components, labels: jira.labels, credentials: credentials
            ))
        }
        guard problems.isEmpty, let backend else { throw ConfigError(source: "ticketing settings", problems: problems) }
        return TicketingSettings(
            backend: backend, proxy: proxySettings, requestTimeoutSeconds: section.requestTimeoutSeconds,
            parallelIncidents: section.parallelIncidents, follow: section.follow,
            retryMinSeconds: section.retryMinSeconds, retryMaxSeconds: section.retryMaxSeconds
        )
    }

    /// `http://[user:password@]host[:port][/]` → its parts; port 80 when not given.
    static func parseProxy(_ text: String) -> Result<TicketingSettings.Proxy, FieldError> {
        func failure(_ reason: String) -> Result<TicketingSettings.Proxy, FieldError> { .failure(FieldError(field: "proxy", problem: reason)) }
        guard text.lowercased().hasPrefix("http://") else {
            return failure("the ticketing service talks plain HTTP to its proxy (HTTPS targets go through CONNECT): use an http:// proxy URL, got \"\(Redaction.url(text))\"")
        }
        var rest = Substring(text.dropFirst("http://".count))
        if rest.hasSuffix("/") { rest.removeLast() }
        if rest.contains("/") { return failure("must be http://host:port with no path, got \"\(Redaction.url(text))\"") }
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at].split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            user = userInfo.first.map { percentDecoded($0) }
            password = userInfo.count > 1 ? percentDecoded(userInfo[1]) : ""
            rest = rest[rest.index(after: at)...]
        }
        var host = String(rest)
        var port = 80
        if let colon = rest.lastIndex(of: ":"), !rest[colon...].contains("]") {
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else {
                return failure("has no valid port (1-65535): \"\(Redaction.url(text))\"")
            }
            port = number
            host = String(rest[..<colon])
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty { return failure("has no host: \"\(Redaction.url(text))\"") }
        return .success(.init(host: host, port: port, user: user, password: password))
    }
}

/// `%40` → `@` and so on (the user-info of a proxy URL); malformed escapes stay as they are.
func percentDecoded(_ text: Substring) -> String {
    var bytes: [UInt8] = []
    var index = text.utf8.startIndex
    let utf8 = text.utf8
    while index < utf8.endIndex {
        let byte = utf8[index]
        if byte == UInt8(ascii: "%"), let high = utf8.index(index, offsetBy: 1, limitedBy: utf8.endIndex), high < utf8.endIndex,
           let low = utf8.index(index, offsetBy: 2, limitedBy: utf8.endIndex), low < utf8.endIndex,
           let value = UInt8(String(decoding: [utf8[high], utf8[low]], as: UTF8.self), radix: 16) {
            bytes.append(value)
            index = utf8.index(after: low)
        } else {
            bytes.append(byte)
            index = utf8.index(after: index)
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension StringProtocol {
    /// Without leading and trailing whitespace and newlines.
    package var trimmedWhitespace: String {
        guard let first = firstIndex(where: { !$0.isWhitespace }), let last = lastIndex(where: { !$0.isWhitespace }) else { return "" }
        return String(self[first...last])
    }
}
