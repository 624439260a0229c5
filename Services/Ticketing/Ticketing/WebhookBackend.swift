public import BynarConfig
import NIOHTTP1
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A generic webhook: each ticket action is POSTed as one JSON object to a URL, for ticket
/// systems Bynar has no backend for (a small adapter on the other side files the ticket).
///
/// Body: `{"action": "open"|"comment"|"close", "incident_id", "ticket_key", "summary",
/// "description", "labels", "host", "disk": {...}, "part": {...}, "text"}` (`part`, for a
/// failed server part: kind, id, name, location, serial, model, rule, reason, detail), with the header
/// `Idempotency-Key: <label>-<action>` so a receiver can drop repeats.
/// The answer to "open" may be JSON `{"key": "...", "url": "..."}`; otherwise the ticket is
/// known as `webhook-<incident>`.
///
/// What it cannot do: look for tickets filed before (so exactly-once rests on the local
/// record and the receiver honouring the idempotency key), and tell when a ticket is
/// resolved (nothing to follow: no RESOLVED events; CLOSE still works).
public struct WebhookBackend: TicketBackend {
    public let name = "webhook"
    public let canSearch = false
    public let canFollow = false
    let url: String
    let http: HTTPTransport

    public init(_ webhook: TicketingSettings.Webhook, settings: TicketingSettings) {
        url = webhook.url
        http = HTTPTransport(settings: settings, credentials: webhook.credentials, what: "the webhook", backend: name)
    }

    struct Body: Encodable {
        struct Disk: Encodable {
            var host, serial, model, wwn, byPath, location, devPath: String
            var sizeBytes: UInt64
        }
        var action: String
        var incidentId: String
        var ticketKey: String?
        var summary: String?
        var description: String?
        var labels: [String]?
        var host: String?
        var disk: Disk?
        var part: Part?
        var text: String?
    }

    struct Part: Encodable {
        var kind, id, name, location, serial, model, rule, reason, detail: String
    }

    struct Answer: Decodable {
        var key: String?
        var url: String?
    }

    func post(_ body: Body, key: String) async throws(TicketBackendError) -> HTTPTransport.Reply {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let bytes = (try? Array(encoder.encode(body))) ?? []
        return try await http.send(.POST, url, json: bytes, extraHeaders: [("Idempotency-Key", key)])
    }

    public func create(_ ticket: NewTicket) async throws(TicketBackendError) -> TicketRef {
        let disk = ticket.health.disk
        var body = Body(action: "open", incidentId: ticket.incidentID, summary: ticket.summary, description: ticket.description, labels: ticket.labels)
        if let hardware = ticket.hardware {
            let finding = hardware.finding, part = finding.part
            body.host = hardware.host
            body.part = Part(kind: part.kind, id: part.id, name: part.name, location: part.location, serial: part.serial, model: part.model,
                             rule: finding.rule, reason: finding.reason, detail: finding.detail)
        } else {
            body.host = disk.host
            body.disk = .init(host: disk.host, serial: disk.serial, model: disk.model, wwn: disk.wwn, byPath: disk.byPath,
                              location: disk.location, devPath: disk.devPath, sizeBytes: disk.sizeBytes)
        }
        let reply = try await post(body, key: TicketText.incidentLabel(ticket.incidentID) + "-open")
        let answer = try? JSONDecoder().decode(Answer.self, from: Data(reply.body))
        let key = answer?.key.flatMap { $0.isEmpty ? nil : $0 } ?? "webhook-\(ticket.incidentID)"
        return TicketRef(key: key, number: 0, url: answer?.url ?? "")
    }

    public func find(incidentID: String) async throws(TicketBackendError) -> [TicketRef] { [] }

    public func comment(key: String, text: String) async throws(TicketBackendError) {
        _ = try await post(Body(action: "comment", incidentId: "", ticketKey: key, text: text), key: "\(key)-comment-\(StableHash.hex(text))")
    }

    public func close(key: String) async throws(TicketBackendError) {
        _ = try await post(Body(action: "close", incidentId: "", ticketKey: key), key: "\(key)-close")
    }

    public func status(key: String) async throws(TicketBackendError) -> TicketStatus { .open(status: "unknown (a webhook cannot be asked)") }

    public func discard(duplicate: TicketRef, kept: TicketRef) async throws(TicketBackendError) {}

    public func shutdown() async {
        await http.shutdown()
    }
}
