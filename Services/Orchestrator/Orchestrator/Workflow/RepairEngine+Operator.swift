import BynarAuth
import BynarBus
import BynarConfig
import BynarProto
import Logging

/// One operator command as the engine carries it from arrival to answer.
struct OperatorRequest: Sendable {
    var received: Received<Bynar_V1_OperatorCommand>
    /// The key that signed it once verified; until then the key id it claims.
    var keyID: String
    var verified = false
    var action: String
    var incidentID: String
    var target: String
    var reason: String { received.payload.reason }

    init(_ received: Received<Bynar_V1_OperatorCommand>) {
        self.received = received
        let command = received.payload
        keyID = command.auth.keyID
        switch command.action {
        case .show(let show)?: (action, incidentID, target) = ("show", show.incidentID, "")
        case .retry(let retry)?: (action, incidentID, target) = ("retry", retry.incidentID, "")
        case .cancel(let cancel)?: (action, incidentID, target) = ("cancel", cancel.incidentID, "")
        case .resolve(let resolve)?: (action, incidentID, target) = ("resolve", resolve.incidentID, "")
        case .forget(let forget)?: (action, incidentID, target) = ("forget", forget.incidentID, "")
        case .maintenanceOn(let on)?: (action, incidentID, target) = ("maintenance-on", "", Self.scope(host: on.host, disk: on.disk))
        case .maintenanceOff(let off)?: (action, incidentID, target) = ("maintenance-off", "", Self.scope(host: off.host, disk: off.disk))
        case nil: (action, incidentID, target) = ("(none)", "", "")
        }
    }

    static func scope(host: String, disk: String) -> String { disk.isEmpty ? "host \(host)" : "disk \(disk) on \(host)" }

    /// "alice", or "[unverified: alice]" before (or without) verification.
    var who: String { Self.who(keyID: keyID, verified: verified) }

    static func who(keyID: String, verified: Bool) -> String {
        verified ? keyID : "[unverified: \(keyID.isEmpty ? "no key" : String(keyID.prefix(64)))]"
    }
}

/// Operator commands (`bynar incidents show|retry|cancel|resolve|forget`, `bynar maintenance`):
/// verified here with the operator keys and decided by ``RepairCore`` (with ``IncidentMachine``
/// and ``MaintenanceBook``); every one (verified or not) is audited in the journal with its
/// answer in the batch's transaction, announced on the bus, and answered after the commit.
extension RepairEngine {
    /// Checks `received` against the operator keys: the request (with the key that signed
    /// it, once verified) and, when it is not authorised, why.
    func verify(_ received: Received<Bynar_V1_OperatorCommand>) -> (OperatorRequest, String?) {
        var request = OperatorRequest(received)
        guard let verifier = operatorVerifier else {
            return (request, "not authorised: the orchestrator trusts no operator key (orchestrator.operator_keys_file is not configured)")
        }
        let sent = received.envelope.createdUnixMs
        switch verifier.authorize(received.payload, nowMs: clock(), sentUnixMs: sent > 0 ? sent : nil) {
        case .failure(let rejection):
            return (request, "not authorised: \(rejection)")
        case .success(let authorization):
            request.keyID = authorization.keyID
            request.verified = true
            return (request, nil)
        }
    }

    /// What the journal knows of the incident `request` names: the incident when it is
    /// closed (an open one is read back into the core when its machine is not in memory),
    /// and its audit trail so far (the journal's and the batch's not yet committed).
    func known(_ request: OperatorRequest) -> RepairCore.Known {
        guard !request.incidentID.isEmpty else { return .init() }
        readBack([request.incidentID])
        let closed = core.machine(request.incidentID) == nil ? (try? journal.incident(id: request.incidentID)) ?? nil : nil
        guard request.action == "show" else { return .init(closed: closed) }
        let audit = ((try? journal.audit(incidentID: request.incidentID)) ?? []) + pending.audits.filter { $0.incidentID == request.incidentID }
        return .init(closed: closed, audit: audit)
    }

    /// Asks the incident's disk-manager (List) where the disk is, then decides the cancel,
    /// resolve or forget with what it said (or that it said nothing).
    func askDiskFacts(_ request: OperatorRequest, machine: IncidentMachine) {
        let inputs = self.inputs
        guard let client else {
            inputs.post(.operatorDiskFacts(request, .unknown(reason: "no orchestrator.signing_key_file: the orchestrator cannot ask the disk-manager")))
            return
        }
        let timeout = Duration.seconds(config.requestTimeoutSeconds)
        let logger = self.logger
        Task {
            let facts: IncidentMachine.DiskFacts
            do {
                let response = try await client.send(.list(.init()), to: machine.disk.host, timeout: timeout, correlationID: machine.id)
                facts = Self.facts(response, machine: machine)
            } catch {
                logger.warning("disk-manager did not say where an incident's disk is", metadata: ["incident": "\(machine.id)", "error": "\(error)"])
                facts = .unknown(reason: "List on \(machine.disk.host): \(error)")
            }
            inputs.post(.operatorDiskFacts(request, facts))
        }
    }

    /// What a disk-manager's List says about `machine`'s disk and its replacement.
    static func facts(_ response: Bynar_V1_DiskManagerResponse, machine: IncidentMachine) -> IncidentMachine.DiskFacts {
        guard response.outcome == .success, case .diskList(let list)? = response.result else {
            return .unknown(reason: "List answered \(response.outcome)\(response.reason.isEmpty ? "" : ": \(response.reason)")")
        }
        let keys = [machine.newDisk?.key, machine.disk.key].compactMap { $0 }
        for key in keys where list.disks.contains(where: { $0.disk.key == key && $0.status == .inService }) {
            return .inService(key: key)
        }
        for key in keys {
            if let listed = list.disks.first(where: { $0.disk.key == key }) {
                let status: String = switch listed.status {
                case .removed: "REMOVED"
                case .blank: "BLANK"
                case .busy: "BUSY"
                default: "in status \(listed.status.rawValue)"
                }
                return .notInService(key: key, status: status)
            }
        }
        return .absent
    }

    /// How long "no such incident" waits before it is sent.
    static var unknownIncidentAnswerDelay: Duration { .seconds(2) }

    /// Sends the batch's answers (after its commit).
    func sendReplies(_ answers: [(Received<Bynar_V1_OperatorCommand>, Bynar_V1_OperatorResponse, late: Bool)]) {
        guard !answers.isEmpty else { return }
        let bus = self.bus
        let logger = self.logger
        Task {
            for (command, response, late) in answers {
                let send: @Sendable () async -> Void = {
                    do { try await bus.reply(to: command, with: response) } catch {
                        logger.warning("cannot answer an operator command", metadata: ["request_id": "\(response.requestID.prefix(200))", "error": "\(error)"])
                    }
                }
                if late {
                    Task {
                        try? await Task.sleep(for: Self.unknownIncidentAnswerDelay)
                        await send()
                    }
                } else {
                    await send()
                }
            }
        }
    }

    static func auditEntry(_ entry: IncidentJournal.AuditEntry) -> Bynar_V1_OperatorAuditEntry {
        var wire = Bynar_V1_OperatorAuditEntry()
        wire.atUnixMs = entry.atMs
        wire.by = OperatorRequest.who(keyID: entry.keyID, verified: entry.verified)
        wire.action = entry.action
        wire.incidentID = entry.incidentID
        wire.reason = entry.reason
        wire.outcome = entry.outcome
        return wire
    }

    // MARK: Maintenance

    static func window(_ window: MaintenanceBook.Window) -> Bynar_V1_Maintenance {
        var wire = Bynar_V1_Maintenance()
        wire.host = window.host
        wire.disk = window.disk
        wire.untilUnixMs = window.untilMs ?? 0
        wire.reason = window.reason
        wire.by = window.by
        wire.sinceUnixMs = window.sinceMs
        return wire
    }

}
