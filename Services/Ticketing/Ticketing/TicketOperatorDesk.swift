import BynarAuth
import BynarBus
import BynarConfig
import BynarProto
import Logging

/// Operators' signed commands to ticketing (`bynar tickets resolve`), held to the standard
/// of their commands to the orchestrator (docs/security.md): taken only from
/// ``Topics/ticketOperatorCommands`` (only operator identities may publish there), verified
/// with ``CommandVerifier`` against `ticketing.operator_keys_file` (signature, expiry, nonce
/// never seen, remembered in this service's store), logged with the key that signed, and
/// answered on the operator's reply topic.
///
/// A resolve marks a local ticket resolved and makes it due for its follow check now: the
/// follow loop reports it RESOLVED, the same way and on the same topics as a JIRA ticket a
/// technician resolved.
struct TicketOperatorDesk: Sendable {
    /// Nil when no operator key is trusted: every command is refused, saying so.
    let verifier: CommandVerifier?
    let backend: any TicketBackend
    let engine: TicketEngine
    let bus: Bus
    let logger: Logger

    /// Verifies and does one command, then answers it.
    func handle(_ received: Received<Bynar_V1_TicketOperatorCommand>) async {
        let command = received.payload
        if received.retained {
            logger.warning("a retained ticket operator command was ignored (commands are never retained)", metadata: ["request_id": "\(command.requestID.prefix(200))"])
            return
        }
        let response = decide(command, sentUnixMs: received.envelope.createdUnixMs)
        let level: Logger.Level = response.outcome == .success ? .notice : .warning
        logger.log(level: level, "ticket operator command", metadata: [
            "request_id": "\(command.requestID.prefix(200))", "key_id": "\(command.auth.keyID.prefix(64))",
            "outcome": "\(response.outcome)", "reason": "\(response.reason)",
        ])
        do { try await bus.reply(to: received, with: response) } catch {
            logger.warning("cannot answer a ticket operator command", metadata: ["request_id": "\(command.requestID.prefix(200))", "error": "\(error)"])
        }
    }

    private func decide(_ command: Bynar_V1_TicketOperatorCommand, sentUnixMs: Int64) -> Bynar_V1_TicketOperatorResponse {
        var response = Bynar_V1_TicketOperatorResponse()
        response.requestID = command.requestID
        response.outcome = .refused
        guard let verifier else {
            response.reason = "not authorised: ticketing trusts no operator key (ticketing.operator_keys_file is not configured)"
            return response
        }
        let operatorKey: String
        switch verifier.authorize(command, nowMs: Bus.nowUnixMs(), sentUnixMs: sentUnixMs > 0 ? sentUnixMs : nil) {
        case .failure(let rejection):
            response.reason = "not authorised: \(rejection)"
            return response
        case .success(let authorization):
            operatorKey = authorization.keyID
        }
        switch command.action {
        case nil:
            response.reason = "the command names no action"
        case .resolve(let resolve):
            resolveTicket(resolve.ticket.trimmedWhitespace, by: operatorKey, reason: command.reason.trimmedWhitespace, into: &response)
        }
        return response
    }

    private func resolveTicket(_ ticket: String, by operatorKey: String, reason: String, into response: inout Bynar_V1_TicketOperatorResponse) {
        guard !ticket.isEmpty else {
            response.reason = "resolve refused: name a ticket key or an incident id"
            return
        }
        guard let local = backend as? LocalBackend else {
            response.reason = "resolve refused: tickets are filed in \(backend.name) here; resolve \(ticket.prefix(200)) there (bynar tickets resolve is for the local backend's tickets)"
            return
        }
        let why = reason.isEmpty ? "resolved with bynar tickets resolve" : reason
        let outcome: LocalBackend.Resolution
        do {
            outcome = try local.resolve(ticket, by: operatorKey, reason: why, nowMs: Bus.nowUnixMs())
        } catch {
            response.outcome = .failed
            response.reason = "resolve failed: \(error)"
            return
        }
        switch outcome {
        case .unknown:
            response.reason = "resolve refused: no ticket \(ticket.prefix(200)) (neither a ticket key nor an incident with a ticket in the local backend)"
        case .alreadyDone(let found):
            response.reason = "resolve refused: \(found.ref.key) is already \(found.state)\(found.resolvedBy.map { " (by \($0))" } ?? "")"
            response.ticket = event(found)
        case .resolved(let found):
            engine.followNow(incident: found.incidentID)
            response.outcome = .success
            response.reason = "\(found.ref.key) resolved by \(operatorKey): \(why); the orchestrator hears it as RESOLVED"
            response.ticket = event(found)
        }
    }

    private func event(_ ticket: LocalBackend.Ticket) -> Bynar_V1_TicketEvent {
        var event = Bynar_V1_TicketEvent()
        event.incidentID = ticket.incidentID
        event.ticketKey = ticket.ref.key
        event.backend = backend.name
        event.state = switch ticket.state {
        case "open": .opened
        case "resolved": .resolved
        default: .closed
        }
        event.detail = ticket.resolution ?? ""
        return event
    }
}
