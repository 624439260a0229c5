import BynarConfig
import Foundation
import Testing

/// Secrets never reach a log line or an error message.
struct SecretsTests {
    @Test("a config's description shows no password, token or webhook")
    func configDescriptionRedactsSecrets() {
        var config = BynarConfig()
        config.broker.password = "broker-secret-1"
        config.jiraPassword = "jira-secret-2"
        config.slackWebhook = "https://hooks.slack.com/services/T/B/slack-secret-3"
        config.vaultToken = "vault-secret-4"
        config.ticketing.jira.apiToken = "api-secret-5"
        config.notifier.email.password = "smtp-secret-6"
        config.notifier.slack.webhookUrl = "https://hooks.slack.com/services/T/B/slack-secret-7"
        config.broker.passwordFile = "/etc/bynar/broker.pw"
        for text in [String(describing: config), String(reflecting: config), "\(config.broker)", "\([config])"] {
            for secret in ["broker-secret-1", "jira-secret-2", "slack-secret-3", "vault-secret-4", "api-secret-5", "smtp-secret-6", "slack-secret-7"] {
                #expect(!text.contains(secret), "\(secret) leaked")
            }
            #expect(text.contains("<redacted>") && text.contains("/etc/bynar/broker.pw"), "file names are no secret")
        }
    }

    @Test("an error that echoes a proxy URL does not echo its password")
    func proxyCredentialsAreRedacted() throws {
        #expect(Redaction.url("http://ops:hunter2@proxy:3128") == "http://ops:<redacted>@proxy:3128")
        #expect(Redaction.url("proxy \"https://u:p%40ss@h/x\" and ftp://h/") == "proxy \"https://u:<redacted>@h/x\" and ftp://h/")
        #expect(Redaction.url("http://proxy:3128") == "http://proxy:3128")
        // Through the real config validation: a bad proxy URL with a password.
        var config = BynarConfig()
        config.proxy = "https://ops:hunter2@proxy:3128"
        do {
            _ = try config.ticketingSettings()
            Issue.record("an https proxy was accepted")
        } catch {
            #expect("\(error)".contains("https://ops:<redacted>@proxy:3128") && !"\(error)".contains("hunter2"), "\(error)")
        }
    }

    @Test func tooOpenSecretFilesAreNamed() throws {
        let directory = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = directory + "/server.key"
        try "k".write(toFile: key, atomically: true, encoding: .utf8)
        chmod(key, 0o644)
        #expect(Redaction.looseFileReason(key, what: "broker.tls.key_file")?.contains("mode 0644: readable by every user") == true)
        chmod(key, 0o640)
        #expect(Redaction.looseFileReason(key, what: "broker.tls.key_file") == nil, "group-readable is fine")
        chmod(key, 0o620)
        #expect(Redaction.looseFileReason(key, what: "x")?.contains("writable") == true)
    }

    func makeDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "bynar-secrets-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
