import BynarConfig
import Testing

/// The notifier section: defaults, Bynar's slack_* fields, and every bad field named.
@Suite struct NotifierConfigTests {
    @Test func defaultsLoadAndUnknownKeysAreRejected() throws {
        let config = try ConfigLoader.parse(#"{"notifier": {}}"#)
        #expect(config.notifier.slack.minSeverity == "info")
        #expect(config.notifier.email.minSeverity == "error")
        #expect(config.notifier.email.effectivePort == 587)
        #expect(config.notifier.digest.timeUtc == "07:00")
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"notifier": {"no_such_key": 1}}"#) }
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"notifier": {"slack": {"webhook": "https://x"}}}"#) }
    }

    @Test func fullSectionLoads() throws {
        let config = try ConfigLoader.parse("""
            {"slack_webhook": "https://hooks.slack.com/services/T/B/X", "slack_channel": "#storage", "slack_botname": "bynar",
             "notifier": {
               "slack": {"channel": "#disks", "min_severity": "warning", "quiet_seconds": 1.5, "window_seconds": 60, "max_message_length": 3000},
               "email": {"host": "smtp.example.com", "security": "tls", "username": "bynar", "password": "pw",
                         "from": "bynar@example.com", "error_to": ["ops@example.com"], "digest_to": ["storage@example.com", "lead@example.com"]},
               "digest": {"time_utc": "06:30", "hours": 24}}}
            """)
        #expect(config.notifier.slack.webhookUrl == nil && config.slackWebhook != nil)
        #expect(config.notifier.slack.channel == "#disks")
        #expect(config.notifier.slack.quietSeconds == 1.5)
        #expect(config.notifier.email.effectivePort == 465)
        #expect(config.notifier.email.digestTo.count == 2)
        #expect(NotifierConfig.minutesOfDay(config.notifier.digest.timeUtc) == 390)
    }

    @Test func environmentOverridesReachTheSection() throws {
        let config = try ConfigLoader.parse(#"{"notifier": {}}"#, environment: ["BYNAR_NOTIFIER__SLACK__QUIET_SECONDS": "3", "BYNAR_NOTIFIER__EMAIL__PORT": "2525"])
        #expect(config.notifier.slack.quietSeconds == 3)
        #expect(config.notifier.email.port == 2525)
    }

    @Test func everyBadFieldIsNamed() throws {
        let text = """
            {"notifier": {
               "retry_max_seconds": 0,
               "slack": {"webhook_url": "hooks.slack.com/x", "min_severity": "loud", "quiet_seconds": 0, "window_seconds": -1,
                         "max_message_length": 10, "max_listed": 0, "timeout_seconds": 0},
               "email": {"host": "", "port": 70000, "security": "ssl", "ca_file": "/nonexistent/ca.pem", "password": "x",
                         "password_file": "/nonexistent/pw", "from": "not an address", "error_to": ["ops"], "digest_to": ["a@b c"],
                         "min_severity": "severe", "quiet_seconds": 0, "window_seconds": -1, "timeout_seconds": 0},
               "digest": {"time_utc": "7am", "interval_hours": 0, "hours": 0}}}
            """
        do {
            _ = try ConfigLoader.parse(text)
            Issue.record("a config full of mistakes was accepted")
        } catch let error as ConfigError {
            let fields = Set(error.problems.map(\.field))
            for field in [
                "notifier.retry_max_seconds", "notifier.slack.webhook_url", "notifier.slack.min_severity", "notifier.slack.quiet_seconds",
                "notifier.slack.window_seconds", "notifier.slack.max_message_length", "notifier.slack.max_listed", "notifier.slack.timeout_seconds",
                "notifier.email.host", "notifier.email.port", "notifier.email.security", "notifier.email.ca_file", "notifier.email.password_file",
                "notifier.email.username", "notifier.email.from", "notifier.email.error_to", "notifier.email.digest_to",
                "notifier.email.min_severity", "notifier.email.quiet_seconds", "notifier.email.window_seconds", "notifier.email.timeout_seconds",
                "notifier.digest.time_utc", "notifier.digest.interval_hours", "notifier.digest.hours",
            ] {
                #expect(fields.contains(field), "\(field) not reported in \(error)")
            }
        }
    }

    @Test func emailNeedsASenderAndRecipients() throws {
        do {
            _ = try ConfigLoader.parse(#"{"notifier": {"email": {"host": "smtp.example.com"}}}"#)
            Issue.record("e-mail without from and recipients was accepted")
        } catch let error as ConfigError {
            #expect(error.description.contains("notifier.email.from: is required when email.host is set"), "\(error)")
            #expect(error.description.contains("notifier.email.error_to"), "\(error)")
        }
    }
}
