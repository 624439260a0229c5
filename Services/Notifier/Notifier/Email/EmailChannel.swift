#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// E-mail as a delivery channel: each stored message becomes one mail to its recipients.
struct EmailChannel: DeliveryChannel {
    let name = "email"
    let client: SMTPClient
    let from: String

    func send(_ message: OutgoingMessage) async -> DeliveryOutcome {
        guard !message.recipients.isEmpty else { return .rejected(reason: "no recipients configured for \(message.kind) mail") }
        let mail = MailMessage(from: from, to: message.recipients, subject: message.subject, text: message.text, html: message.html,
                               dateUnixMs: NotifierClock.nowUnixMs(), messageID: "\(UUID().uuidString.lowercased())@\(client.settings.heloName)")
        do {
            try await client.send(mail)
            return .delivered
        } catch let error as SMTPError {
            return error.isPermanent ? .rejected(reason: error.description) : .retry(after: nil, reason: error.description)
        } catch {
            return .retry(after: nil, reason: "\(error)")
        }
    }

    func shutdown() async {}
}
