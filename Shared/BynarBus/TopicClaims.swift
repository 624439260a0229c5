public import BynarProto

/// Identity is the topic the broker checked, never a name inside a payload.
///
/// The broker's ACL lets `detector.h2` publish only under `bynar/v1/disk/h2/...`, and
/// `disk-manager.h2` only under `bynar/v1/dm/h2/...` and `bynar/v1/svc/h2/disk-manager`.
/// The payload, though, can say anything: a `DiskHealthEvent` with `disk.host = "h1"` on
/// h2's topic would have the orchestrator act on h1. So every message a service receives
/// (``Bus/decode(_:as:)`` and ``Bus/decodeEnvelope(_:)``: the one place) is checked here:
/// the host, service and disk a per-host topic names must be the ones its payload claims.
/// A disagreement is a rejection (counted, logged, dead-lettered), naming the mismatch.
/// The envelope's `source_host` / `source_service` are informational only: no service
/// decides anything on them.
///
/// Rules, by topic (`bynar/v1/...`):
/// 1. `svc/{host}/{service}`: a `ServiceStatus`'s `host` and `service` are those.
/// 2. `disk/{host}/events`: a `DiskHealthEvent`'s `disk.host` (and `previous_disk.host`,
///    when set) is `{host}`.
/// 3. `disk/{host}/{key}/health`: a `DiskHealth`'s `disk.host` is `{host}` and `disk.key`
///    is `{key}`.
/// 4. `dm/{host}/progress`: a `JobProgress`'s `host` (when set) is `{host}`.
/// 5. `dm/{host}/cmd`: a `DiskManagerRequest`'s `host` is `{host}` (the sender is the
///    orchestrator or an operator, whose own host is not the topic's).
/// 6. `host/{host}/state`: a `HostState`'s `host` is `{host}`.
/// 7. `reply/{client}/{host}/{service}`: the envelope's `source_host` and
///    `source_service` are `{host}` and `{service}` (the topic names the responder; the
///    requester also checks it is the one it asked, ``Bus/request(_:to:expecting:timeout:correlationId:)``).
/// 8. `operator/cmd` carries only `OperatorCommand`s, and an `OperatorCommand` is taken only
///    from there: the broker lets only operator identities publish on that topic, so an
///    operator command anywhere else was not sent by an operator.
/// 9. `ticket/operator/cmd` carries only `TicketOperatorCommand`s, and one is taken only from
///    there, for the same reason as rule 8.
/// 10. `pool/{host}/{pool}`: a `PoolState`'s `pool` is `{pool}` (it names no host: the
///     topic's is the host's).
/// 11. `app/{host}/{app}`: an `AppState`'s `app` is `{app}`; `app/{host}/{app}/override`: an
///     `AppOverride`'s `app` is `{app}` (the broker lets only operators publish overrides).
/// Other topics name no host and are not checked here.
public enum TopicClaims {
    /// Nil when the claims agree with `topic`; otherwise what disagrees.
    public static func mismatch(topic: String, envelope: Envelope) -> String? {
        let levels = Topics.levels(of: topic)
        guard levels.count >= 3, levels[0] == "bynar", levels[1] == "v1" else { return nil }
        let isOperatorCommand: Bool = if case .operatorCommand? = envelope.payload { true } else { false }
        if topic == Topics.operatorCommands, !isOperatorCommand {
            return "\(envelope.payload?.payloadName ?? "no payload") on \(topic), which carries only operator_command"
        }
        if isOperatorCommand, topic != Topics.operatorCommands {
            return "operator_command on \(topic.prefix(300)); operator commands are taken only from \(Topics.operatorCommands)"
        }
        let isTicketOperatorCommand: Bool = if case .ticketOperatorCommand? = envelope.payload { true } else { false }
        if topic == Topics.ticketOperatorCommands, !isTicketOperatorCommand {
            return "\(envelope.payload?.payloadName ?? "no payload") on \(topic), which carries only ticket_operator_command"
        }
        if isTicketOperatorCommand, topic != Topics.ticketOperatorCommands {
            return "ticket_operator_command on \(topic.prefix(300)); ticket operator commands are taken only from \(Topics.ticketOperatorCommands)"
        }
        guard levels.count >= 4 else { return nil }
        let kind = levels[2]
        let host = String(levels[3])
        // A level is the claim as ``Topics/level(_:)`` writes it (the same for every name a
        // Bynar service makes; encoded only for odd ones).
        func differs(_ what: String, _ claimed: String, _ expected: String) -> String? {
            Topics.level(claimed) == expected ? nil : "\(what) \"\(claimed.prefix(200))\" but the topic \(topic.prefix(300)) is \"\(expected)\"'s"
        }
        switch (kind, levels.count) {
        case ("svc", 5):
            let service = String(levels[4])
            if case .serviceStatus(let status)? = envelope.payload {
                return differs("service_status.host", status.host, host) ?? differs("service_status.service", status.service, service)
            }
        case ("disk", 5) where levels[4] == "events":
            if case .diskHealthEvent(let event)? = envelope.payload {
                if let problem = differs("disk.host", event.disk.host, host) { return problem }
                if event.hasPreviousDisk, !event.previousDisk.host.isEmpty { return differs("previous_disk.host", event.previousDisk.host, host) }
            }
        case ("disk", 6) where levels[5] == "health":
            if case .diskHealth(let health)? = envelope.payload {
                return differs("disk.host", health.disk.host, host) ?? differs("disk.key", health.disk.key, String(levels[4]))
            }
        case ("dm", 5) where levels[4] == "progress":
            if case .jobProgress(let progress)? = envelope.payload, !progress.host.isEmpty { return differs("job_progress.host", progress.host, host) }
        case ("dm", 5) where levels[4] == "cmd":
            if case .diskManagerRequest(let request)? = envelope.payload { return differs("disk_manager_request.host", request.host, host) }
        case ("reply", 6):
            return differs("source_host", envelope.sourceHost, String(levels[4])) ?? differs("source_service", envelope.sourceService, String(levels[5]))
        case ("app", 5):
            if case .appState(let state)? = envelope.payload { return differs("app_state.app", state.app, String(levels[4])) }
        case ("app", 6) where levels[5] == "override":
            if case .appOverride(let override)? = envelope.payload { return differs("app_override.app", override.app, String(levels[4])) }
        case ("pool", 5):
            if case .poolState(let state)? = envelope.payload { return differs("pool_state.pool", state.pool, String(levels[4])) }
        case ("host", 5) where levels[4] == "state":
            if case .hostState(let state)? = envelope.payload { return differs("host_state.host", state.host, host) }
        default:
            break
        }
        return nil
    }
}
