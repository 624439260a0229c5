/// The notifier's section of the host config (`"notifier": {...}`).
///
/// Slack is on when a webhook is known (`notifier.slack.webhook_url`, else Bynar's top-level
/// `slack_webhook`); e-mail is on when `notifier.email.host` is set. Either may be off.
public struct NotifierConfig: Codable, Sendable, Equatable {
    public var slack = SlackConfig()
    public var email = EmailConfig()
    public var digest = DigestConfig()
    /// Failed deliveries (Slack 5xx or no answer, SMTP 4xx or no connection) are retried
    /// with a backoff doubling from 1 s up to this.
    public var retryMaxSeconds = 300

    public init() {}

    /// Severity names in the order they rank.
    public static let severities = ["info", "warning", "error"]

    /// Slack incoming webhook.
    public struct SlackConfig: Codable, Sendable, Equatable {
        /// Overrides Bynar's `slack_webhook`.
        public var webhookUrl: String?
        /// Overrides Bynar's `slack_channel` (e.g. `#storage`); the webhook's own channel otherwise.
        public var channel: String?
        /// Overrides Bynar's `slack_botname`.
        public var botName: String?
        /// Notifications below this severity (`info`, `warning`, `error`) are not posted.
        public var minSeverity = "info"
        /// A notification waits this long for others; if none come it is posted alone.
        public var quietSeconds = 2.0
        /// ...and a burst is summed up at the latest this long after its first notification.
        public var windowSeconds = 30.0
        /// Longest message text posted (Slack truncates beyond 40,000 characters and
        /// readers give up long before); a longer summary ends with "and N more".
        public var maxMessageLength = 3500
        /// At most this many notifications listed one per line in a summary.
        public var maxListed = 25
        public var timeoutSeconds = 10

        public init() {}
    }

    /// E-mail over SMTP: errors as they happen (coalesced like Slack) and the daily digest.
    public struct EmailConfig: Codable, Sendable, Equatable {
        /// SMTP server; e-mail is off without it.
        public var host: String?
        /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
        public var port: Int?
        /// `starttls` (upgrade a plain connection; refused if the server cannot), `tls`
        /// (TLS from the first byte, "SMTPS") or `none` (plain text; only for a relay on
        /// the same host).
        public var security = "starttls"
        /// CA certificate(s) to trust for the server's certificate; the system's otherwise.
        public var caFile: String?
        /// AUTH (PLAIN, else LOGIN) when set.
        public var username: String?
        public var password: String?
        /// File holding the password (first line), so it need not sit in the config.
        public var passwordFile: String?
        /// Envelope and header sender.
        public var from: String?
        /// Who gets errors.
        public var errorTo: [String] = []
        /// Who gets the digest.
        public var digestTo: [String] = []
        /// Notifications below this severity are not e-mailed.
        public var minSeverity = "error"
        /// Name given in EHLO; default: this host's name.
        public var heloName: String?
        public var quietSeconds = 5.0
        public var windowSeconds = 120.0
        /// Connect and each reply must come within this.
        public var timeoutSeconds = 30

        public init() {}

        /// The port to use: the configured one or the usual one for `security`.
        public var effectivePort: Int {
            if let port { return port }
            switch security {
            case "tls": return 465
            case "none": return 25
            default: return 587
            }
        }
    }

    /// The daily report (e-mailed to `email.digest_to`).
    public struct DigestConfig: Codable, Sendable, Equatable {
        public var enabled = true
        /// When to send it, `HH:MM` in UTC.
        public var timeUtc = "07:00"
        /// Send every this many hours instead of once a day at `time_utc`.
        public var intervalHours: Double?
        /// How far back the report looks.
        public var hours = 24.0

        public init() {}
    }

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "notifier." + field, problem: text)) }
        func severity(_ field: String, _ value: String) {
            if !Self.severities.contains(value) { problem(field, "must be one of \(Self.severities.joined(separator: ", ")), got \"\(value)\"") }
        }

        if retryMaxSeconds < 1 { problem("retry_max_seconds", "must be at least 1, got \(retryMaxSeconds)") }

        if let url = slack.webhookUrl, !(url.hasPrefix("https://") || url.hasPrefix("http://")) {
            problem("slack.webhook_url", "must be an http(s) URL, got \"\(url)\"")
        }
        severity("slack.min_severity", slack.minSeverity)
        if !(slack.quietSeconds > 0) { problem("slack.quiet_seconds", "must be more than 0, got \(slack.quietSeconds)") }
        if !(slack.windowSeconds >= slack.quietSeconds) {
            problem("slack.window_seconds", "must be at least quiet_seconds (\(slack.quietSeconds)), got \(slack.windowSeconds)")
        }
        if slack.maxMessageLength < 200 { problem("slack.max_message_length", "must be at least 200, got \(slack.maxMessageLength)") }
        if slack.maxListed < 1 { problem("slack.max_listed", "must be at least 1, got \(slack.maxListed)") }
        if slack.timeoutSeconds < 1 { problem("slack.timeout_seconds", "must be at least 1, got \(slack.timeoutSeconds)") }

        let securities = ["starttls", "tls", "none"]
        if !securities.contains(email.security) {
            problem("email.security", "must be one of \(securities.joined(separator: ", ")), got \"\(email.security)\"")
        }
        if let host = email.host, host.isEmpty { problem("email.host", "must not be empty (leave it out to turn e-mail off)") }
        if let port = email.port, !(1...65535).contains(port) { problem("email.port", "must be 1-65535, got \(port)") }
        if email.password != nil && email.passwordFile != nil { problem("email.password_file", "set either password or password_file, not both") }
        if (email.password != nil || email.passwordFile != nil) && (email.username ?? "").isEmpty {
            problem("email.username", "is required when a password is set")
        }
        if let file = email.passwordFile, let reason = unreadable(file) { problem("email.password_file", reason) }
        if let file = email.caFile, let reason = unreadable(file) { problem("email.ca_file", reason) }
        for (field, addresses) in [("error_to", email.errorTo), ("digest_to", email.digestTo)] {
            for address in addresses where !Self.plausibleAddress(address) {
                problem("email." + field, "\"\(address)\" is not an e-mail address")
            }
        }
        if let from = email.from, !Self.plausibleAddress(from) { problem("email.from", "\"\(from)\" is not an e-mail address") }
        if email.host != nil {
            if email.from == nil { problem("email.from", "is required when email.host is set") }
            if email.errorTo.isEmpty && email.digestTo.isEmpty { problem("email.error_to", "name at least one recipient (error_to or digest_to) when email.host is set") }
        }
        severity("email.min_severity", email.minSeverity)
        if !(email.quietSeconds > 0) { problem("email.quiet_seconds", "must be more than 0, got \(email.quietSeconds)") }
        if !(email.windowSeconds >= email.quietSeconds) {
            problem("email.window_seconds", "must be at least quiet_seconds (\(email.quietSeconds)), got \(email.windowSeconds)")
        }
        if email.timeoutSeconds < 1 { problem("email.timeout_seconds", "must be at least 1, got \(email.timeoutSeconds)") }

        if Self.minutesOfDay(digest.timeUtc) == nil { problem("digest.time_utc", "must be HH:MM (UTC, 00:00-23:59), got \"\(digest.timeUtc)\"") }
        if let hours = digest.intervalHours, !(hours > 0) { problem("digest.interval_hours", "must be more than 0, got \(hours)") }
        if !(digest.hours > 0) { problem("digest.hours", "must be more than 0, got \(digest.hours)") }
        return problems
    }

    /// `HH:MM` as minutes after midnight, or nil when it is not a time of day.
    public static func minutesOfDay(_ text: String) -> Int? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ $0.count == 2 }), let hour = Int(parts[0]), let minute = Int(parts[1]),
              (0...23).contains(hour), (0...59).contains(minute) else { return nil }
        return hour * 60 + minute
    }

    /// `local@domain` without spaces or angle brackets (which would break SMTP commands).
    static func plausibleAddress(_ text: String) -> Bool {
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        return parts.count == 2 && !parts[0].isEmpty && !parts[1].isEmpty
            && !text.contains(where: { $0.isWhitespace || "<>,;\"".contains($0) })
    }
}
