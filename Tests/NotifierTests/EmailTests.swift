import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
@testable import Notifier
import Testing

/// SMTP against a real local SMTP server (Debian's aiosmtpd), with a throwaway certificate
/// made by openssl: STARTTLS, implicit TLS, AUTH, and the errors an operator must be able
/// to read.
@Suite(.serialized, .enabled(if: SmtpTestServer.available, "python3-aiosmtpd is not installed"))
struct EmailTests {
    static func settings(_ server: SmtpTestServer, security: SMTPSettings.Security = .startTLS, password: String = SmtpTestServer.password) -> SMTPSettings {
        SMTPSettings(host: "localhost", port: server.port, security: security, caFile: server.caFile,
                     username: SmtpTestServer.username, password: password, heloName: "bynar-test", timeout: .seconds(5))
    }

    static func mail(_ subject: String, html: String? = nil) -> MailMessage {
        MailMessage(from: "bynar@example.com", to: ["ops@example.com", "lead@example.com"], subject: subject,
                    text: "line one\n.a line starting with a dot\n..two dots\nlast", html: html,
                    dateUnixMs: Bus.nowUnixMs(), messageID: UUID().uuidString + "@bynar-test")
    }

    @Test func startTLSAndAuthDeliverAMessageIntact() async throws {
        let server = try SmtpTestServer(mode: .startTLS)
        try await SMTPClient(settings: Self.settings(server)).send(Self.mail("Grüße from Bynar", html: "<p>hello &amp; more</p>"))
        let received = try #require(server.received.first, "\(server.log)")
        #expect(received.mail_from == "bynar@example.com")
        #expect(received.rcpt_tos == ["ops@example.com", "lead@example.com"])
        #expect(received.subject == "Grüße from Bynar")
        #expect(received.content_type == "multipart/alternative")
        #expect(received.text == "line one\n.a line starting with a dot\n..two dots\nlast")
        #expect(received.html == "<p>hello &amp; more</p>")
    }

    @Test func implicitTLSWorksToo() async throws {
        let server = try SmtpTestServer(mode: .tls)
        try await SMTPClient(settings: Self.settings(server, security: .tls)).send(Self.mail("over TLS"))
        #expect(server.received.map(\.subject) == ["over TLS"], "\(server.log)")
    }

    @Test func aWrongPasswordIsReportedWithTheServersReply() async throws {
        let server = try SmtpTestServer(mode: .startTLS)
        do {
            try await SMTPClient(settings: Self.settings(server, password: "wrong")).send(Self.mail("never"))
            Issue.record("a wrong password was accepted")
        } catch let error as SMTPError {
            #expect(error.description == "SMTP server localhost:\(server.port) answered AUTH PLAIN with 535 5.7.8 Authentication credentials invalid")
            #expect(error.isPermanent)
        }
        #expect(server.received.isEmpty)
    }

    @Test func anUnreachableServerIsReportedClearly() async throws {
        let port = try freeLoopbackPort()
        var settings = SMTPSettings(host: "127.0.0.1", port: port, security: .startTLS, heloName: "bynar-test", timeout: .seconds(3))
        do {
            try await SMTPClient(settings: settings).send(Self.mail("never"))
            Issue.record("sent to a port nobody listens on")
        } catch let error as SMTPError {
            #expect(error.description.hasPrefix("cannot connect to SMTP server 127.0.0.1:\(port): "), "\(error)")
            #expect(error.description.contains("refused"), "\(error)")
            #expect(!error.isPermanent)
        }
        settings.host = "no-such-host.invalid"
        do {
            try await SMTPClient(settings: settings).send(Self.mail("never"))
            Issue.record("sent to a host that does not exist")
        } catch let error as SMTPError {
            #expect(error.description.hasPrefix("cannot connect to SMTP server no-such-host.invalid:\(port): "), "\(error)")
        }
    }

    @Test func anUntrustedCertificateIsATLSError() async throws {
        let server = try SmtpTestServer(mode: .startTLS)
        var settings = Self.settings(server)
        settings.caFile = nil  // the system store does not know the throwaway CA
        do {
            try await SMTPClient(settings: settings).send(Self.mail("never"))
            Issue.record("an untrusted certificate was accepted")
        } catch let error as SMTPError {
            #expect(error.description.hasPrefix("TLS with SMTP server localhost:\(server.port) failed"), "\(error)")
            #expect(error.isPermanent)
        }
    }

    @Test func aServerThatNeverAnswersTimesOut() async throws {
        // A listening socket nobody accepts from: the connection is made, no greeting comes.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        listen(fd, 1)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        let port = Int(UInt16(bigEndian: address.sin_port))
        let start = ContinuousClock.now
        do {
            try await SMTPClient(settings: SMTPSettings(host: "127.0.0.1", port: port, security: .none, heloName: "t", timeout: .seconds(1))).send(Self.mail("never"))
            Issue.record("a silent server accepted a message")
        } catch let error as SMTPError {
            #expect(error.description == "SMTP server 127.0.0.1:\(port) did not answer greeting in time")
        }
        #expect(ContinuousClock.now - start < .seconds(4))
    }

    /// The real bynar-notifier: an ERROR notification is e-mailed over STARTTLS + AUTH to
    /// aiosmtpd, saying what, where and what next; an INFO one is not e-mailed.
    @Test func errorsAreEmailedByTheNotifier() async throws {
        let server = try SmtpTestServer(mode: .startTLS)
        let harness = try await NotifierHarness()
        let notifier = try await harness.start(notifier: """
            {"email": {"host": "localhost", "port": \(server.port), "security": "starttls", "ca_file": "\(server.caFile)",
                       "username": "bynar", "password": "secret", "from": "bynar@example.com", "error_to": ["ops@example.com"],
                       "quiet_seconds": 0.5}}
            """)
        defer { notifier.signal(SIGTERM) }
        try await harness.notify("Disk failed: SMART overall-health failing", host: "h3", serial: "ZC1A2B3C")
        try await harness.notify("Disk checked", severity: .info)
        #expect(await eventually(.seconds(15)) { !server.received.isEmpty }, "\(notifier.log)\n\(server.log)")
        try await Task.sleep(for: .seconds(1))
        #expect(server.received.count == 1)
        let mail = try #require(server.received.first)
        #expect(mail.subject == "[Bynar ERROR] Disk failed: SMART overall-health failing (h3)")
        #expect(mail.rcpt_tos == ["ops@example.com"])
        let text = mail.text ?? ""
        #expect(text.contains("Where: host h3, disk ST4000NM0035 serial ZC1A2B3C, slot pci-0000:00:1f.2-ata-3"), "\(text)")
        #expect(text.contains("Next:  removing it from the cluster"))
        await harness.finish()
    }
}
