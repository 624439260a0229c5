import BynarProto
import BynarRuntime

/// Membership as this orchestrator sees it, fed by two streams of the same statuses: the
/// full subscription (every orchestrator sees everything, retained ones included) and the
/// shared hook subscription (each live status goes to one orchestrator). Each status is
/// applied once, whichever stream brings it first; the transitions it caused belong to the
/// orchestrator that got it on the shared subscription.
actor MembershipKeeper {
    private(set) var membership = Membership()
    /// Transitions per status message id, kept until claimed or two minutes old.
    private var applied: [String: (transitions: [Membership.Transition], atMs: Int64, claimed: Bool)] = [:]
    private var lastPrune: Int64 = 0
    /// The message ids in `applied` whose transitions took a service down, by host and
    /// service: a birth forgets them without looking through every status of the last two
    /// minutes (that look made 10,000 hosts' births quadratic).
    private var deaths: [ServiceKey: [String]] = [:]
    private struct ServiceKey: Hashable {
        var host: String
        var service: String
    }

    /// From the full subscription: applies an application's state (`host` from its topic).
    func observe(app state: Bynar_V1_AppState, host: String, messageID: String, nowMs: Int64) {
        guard applied[messageID] == nil else { return }
        _ = record(messageID, nowMs: nowMs, claimed: false) { $0.apply(host: host, app: state.app, up: Self.up(state.health), atMs: nowMs) }
    }

    /// From the shared subscription: the application transitions this orchestrator must run hooks for.
    func claim(app state: Bynar_V1_AppState, host: String, messageID: String, nowMs: Int64) -> [Membership.Transition] {
        if let entry = applied[messageID] {
            guard !entry.claimed else { return [] }
            applied[messageID]?.claimed = true
            return entry.transitions
        }
        return record(messageID, nowMs: nowMs, claimed: true) { $0.apply(host: host, app: state.app, up: Self.up(state.health), atMs: nowMs) }
    }

    static func up(_ health: Bynar_V1_AppHealth) -> Bool? {
        switch health {
        case .up: true
        case .down: false
        default: nil
        }
    }

    /// From the full subscription: applies the status; returns the hosts whose state changed.
    func observe(_ status: Bynar_V1_ServiceStatus, messageID: String, nowMs: Int64) -> Set<String> {
        guard applied[messageID] == nil else { return [] }
        let transitions = apply(status, messageID: messageID, nowMs: nowMs, claimed: false)
        return transitions.isEmpty ? [] : [status.host]
    }

    /// From the shared subscription: the transitions this orchestrator must run hooks for.
    func claim(_ status: Bynar_V1_ServiceStatus, messageID: String, nowMs: Int64) -> (transitions: [Membership.Transition], changedHost: Bool) {
        if let entry = applied[messageID] {
            guard !entry.claimed else { return ([], false) }
            applied[messageID]?.claimed = true
            return (entry.transitions, false)
        }
        let transitions = apply(status, messageID: messageID, nowMs: nowMs, claimed: true)
        return (transitions, !transitions.isEmpty)
    }

    private func apply(_ status: Bynar_V1_ServiceStatus, messageID: String, nowMs: Int64, claimed: Bool) -> [Membership.Transition] {
        let birth = status.state == .birth
        guard birth || status.state == .death else { return [] }
        let transitions = membership.apply(host: status.host, service: status.service, birth: birth, session: status.session, atMs: nowMs,
                                           clean: status.deathCause == .cleanShutdown)
        if birth {
            // A service's will repeats its message id on every lost connection of one run:
            // once it is back, its next death is a new event.
            for id in deaths.removeValue(forKey: ServiceKey(host: status.host, service: status.service)) ?? [] {
                applied[id] = nil
            }
        }
        return record(messageID, nowMs: nowMs, claimed: claimed) { _ in transitions }
    }

    /// Remembers the transitions `change` made for `messageID`, claimed or not.
    private func record(_ messageID: String, nowMs: Int64, claimed: Bool, _ change: (inout Membership) -> [Membership.Transition]) -> [Membership.Transition] {
        let transitions = change(&membership)
        applied[messageID] = (transitions, nowMs, claimed)
        for case .service(let host, let service, false) in transitions {
            deaths[ServiceKey(host: host, service: service), default: []].append(messageID)
        }
        if nowMs - lastPrune > 30_000 {
            lastPrune = nowMs
            applied = applied.filter { nowMs - $0.value.atMs < 120_000 }
            deaths = deaths.compactMapValues { ids in
                let kept = ids.filter { applied[$0] != nil }
                return kept.isEmpty ? nil : kept
            }
        }
        return transitions
    }

    /// Every host it knows.
    var hosts: [String] { membership.hosts.keys.sorted() }

    /// The retained HostState of `host`.
    func hostState(_ host: String) -> Bynar_V1_HostState? {
        guard let record = membership.hosts[host] else { return nil }
        var state = Bynar_V1_HostState()
        state.host = host
        state.up = record.up
        state.sinceUnixMs = record.sinceMs
        state.services = record.services.keys.sorted().map { name in
            let service = record.services[name]!
            var entry = Bynar_V1_HostState.Service()
            entry.service = name
            entry.up = service.up
            entry.session = service.session
            entry.sinceUnixMs = service.sinceMs
            return entry
        }
        return state
    }
}

extension HookRunner {
    /// What people are told about a hook that failed (non-zero exit or timeout); nil when
    /// it succeeded. The orchestrator sends it itself, until a notifier answers
    /// (``Outbox/notification(_:correlationId:)``): a hook result on `bynar/v1/hook/events`
    /// is a broadcast no reader confirms, so a notifier crash could lose it.
    static func failureNotification(_ result: Bynar_V1_HookResult, host: String) -> Bynar_V1_Notification? {
        guard result.timedOut || result.exitStatus != 0 else { return nil }
        var note = Bynar_V1_Notification()
        note.severity = .warning
        let tenths = (result.durationMs + 50) / 100
        let how = result.timedOut ? "timed out after \(tenths / 10).\(tenths % 10) s" : "exited with status \(result.exitStatus)"
        note.title = "Operator hook \(result.hook) \(how)"
        var text = "Arguments: \(result.arguments.joined(separator: " "))"
        if !result.stderrTail.isEmpty { text += "\nIt wrote: \(result.stderrTail)" }
        note.text = text
        note.host = host
        note.nextAction = "nothing automatic: the hook is not retried; check the script"
        return note
    }
}
