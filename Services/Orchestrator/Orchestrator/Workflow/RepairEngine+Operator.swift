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
/// verified with the operator keys, decided by ``IncidentMachine`` and ``MaintenanceBook``,
/// every one (verified or not) audited in the journal with its answer in the batch's
/// transaction, announced on the bus, and answered after the commit.
extension RepairEngine {
    /// Verifies `received` and starts what it asks; refusals are audited and answered.
    func operatorCommand(_ received: Received<Bynar_V1_OperatorCommand>) {
        var request = OperatorRequest(received)
        if received.retained {
            logger.warning("a retained operator command was ignored (commands are never retained)", metadata: ["request_id": "\(received.payload.requestID.prefix(200))"])
            return
        }
        guard let verifier = operatorVerifier else {
            refuse(request, "not authorised: the orchestrator trusts no operator key (orchestrator.operator_keys_file is not configured)")
            return
        }
        let sent = received.envelope.createdUnixMs
        switch verifier.authorize(received.payload, nowMs: clock(), sentUnixMs: sent > 0 ? sent : nil) {
        case .failure(let rejection):
            refuse(request, "not authorised: \(rejection)")
            return
        case .success(let authorization):
            request.keyID = authorization.keyID
            request.verified = true
        }
        let command = received.payload
        switch command.action {
        case nil:
            refuse(request, "the command names no action")
        case .show:
            show(request)
        case .retry:
            guard let machine = openMachine(request) else { return }
            answering = request
            apply(.operatorRetry(.init(keyID: request.keyID, reason: request.reason)), to: machine.id)
            answering = nil
        case .cancel, .resolve, .forget:
            guard let machine = openMachine(request) else { return }
            askDiskFacts(request, machine: machine)
        case .maintenanceOn(let on):
            let window = MaintenanceBook.Window(host: on.host, disk: on.disk, untilMs: on.untilUnixMs > 0 ? on.untilUnixMs : nil,
                                                reason: command.reason, by: request.keyID, sinceMs: clock())
            switch maintenance.switchOn(window, nowMs: clock()) {
            case .failure(let refusal):
                refuse(request, "maintenance on refused: \(refusal)")
            case .success(let what):
                maintenanceChanged = true
                publishMaintenance()
                notifyOperator("Operator \(request.keyID): \(what)", text: "No repair is opened there while it lasts; failures are recorded and reported.",
                               host: on.host, nextAction: "`bynar maintenance off --host \(on.host)\(on.disk.isEmpty ? "" : " --disk \(on.disk)")` ends it")
                answer(request, done: true, message: what, incident: nil)
            }
        case .maintenanceOff(let off):
            switch maintenance.switchOff(host: off.host, disk: off.disk) {
            case .failure(let refusal):
                refuse(request, "maintenance off refused: \(refusal)")
            case .success(let ended):
                maintenanceChanged = true
                publishMaintenance()
                let what = "maintenance of \(ended.map(\.scope).joined(separator: ", ")) ended by operator \(request.keyID): \(command.reason)"
                notifyOperator("Operator \(request.keyID) ended maintenance of \(OperatorRequest.scope(host: off.host, disk: off.disk))", text: what, host: off.host,
                               nextAction: "failures held back there are repaired now")
                answer(request, done: true, message: what, incident: nil)
                maintenanceEnded(ended)
            }
        }
    }

    /// The open incident a retry, cancel or resolve names; nil (refused) when there is none.
    private func openMachine(_ request: OperatorRequest) -> IncidentMachine? {
        if let machine = machines[request.incidentID] { return machine }
        if let closed = try? journal.incident(id: request.incidentID) {
            refuse(request, "\(request.action) refused: incident \(request.incidentID) is already \(closed.state.rawValue)", machine: closed)
        } else {
            refuse(request, "\(request.action) refused: no incident \(request.incidentID.prefix(200))", late: true)
        }
        return nil
    }

    private func show(_ request: OperatorRequest) {
        let machine = machines[request.incidentID] ?? (try? journal.incident(id: request.incidentID)) ?? nil
        guard let machine else {
            refuse(request, "show refused: no incident \(request.incidentID.prefix(200))", late: true)
            return
        }
        answer(request, done: true, message: "shown", incident: machine)
    }

    /// Asks the incident's disk-manager (List) where the disk is, then decides the cancel,
    /// resolve or forget with what it said (or that it said nothing).
    private func askDiskFacts(_ request: OperatorRequest, machine: IncidentMachine) {
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

    /// Decides a verified cancel, resolve or forget once the disk-manager answered (or did not).
    func operatorDecide(_ request: OperatorRequest, facts: IncidentMachine.DiskFacts) {
        guard machines[request.incidentID] != nil else {
            _ = openMachine(request)
            return
        }
        let who = IncidentMachine.Operator(keyID: request.keyID, reason: request.reason)
        answering = request
        let event: IncidentMachine.Event = switch request.action {
        case "cancel": .operatorCancel(who, facts)
        case "forget": .operatorForget(who, facts)
        default: .operatorResolve(who, facts)
        }
        apply(event, to: request.incidentID)
        answering = nil
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

    // MARK: Answers, audit, announcements

    /// The machine's answer to the command being applied.
    func answerOperator(_ machine: IncidentMachine, done: Bool, message: String) {
        guard let request = answering else { return }
        if done {
            answer(request, done: true, message: message, incident: machine)
        } else {
            refuse(request, message, machine: machine)
        }
    }

    /// Refuses `request`: audited, announced (an IncidentEvent when it names a known
    /// incident, else a notification), answered REFUSED; `late`: the answer waits
    /// ``unknownIncidentAnswerDelay`` (another orchestrator on the broker may own the incident,
    /// and the requester takes the first answer).
    func refuse(_ request: OperatorRequest, _ why: String, machine: IncidentMachine? = nil, late: Bool = false) {
        logger.notice("operator command refused", metadata: [
            "by": "\(request.who)", "action": "\(request.action)", "incident": "\(request.incidentID.prefix(200))", "reason": "\(why)"])
        let known = machine ?? machines[request.incidentID]
        let text = "operator \(request.who)'s \(request.action)\(request.target.isEmpty ? "" : " of \(request.target)") refused: \(why) (their reason: \(request.reason.isEmpty ? "none given" : String(request.reason.prefix(500))))"
        if let known {
            queue(Self.incidentEvent(known, from: known.state, step: "operator-refused", message: text), to: Topics.incidentEvents, incident: known.id)
        } else if request.action != "show" && !late {
            notifyOperator("Operator command refused: \(request.action)\(request.target.isEmpty ? "" : " of \(request.target)")", text: text, host: "", nextAction: "")
        }
        answer(request, done: false, message: why, incident: known, late: late)
    }

    /// How long "no such incident" waits before it is sent.
    static var unknownIncidentAnswerDelay: Duration { .seconds(2) }

    /// Audits `request` with its outcome and queues its answer (sent after the commit).
    func answer(_ request: OperatorRequest, done: Bool, message: String, incident: IncidentMachine?, late: Bool = false) {
        audits.append(.init(atMs: clock(), requestID: String(request.received.payload.requestID.prefix(200)), keyID: String(request.keyID.prefix(200)),
                            verified: request.verified, action: request.action, incidentID: String(request.incidentID.prefix(200)),
                            target: request.target, reason: String(request.reason.prefix(2000)), outcome: (done ? "done: " : "refused: ") + message))
        var response = Bynar_V1_OperatorResponse()
        response.requestID = request.received.payload.requestID
        response.outcome = done ? .success : .refused
        response.reason = message
        if let incident {
            response.incident = Self.incident(incident)
            if request.action == "show" {
                let entries = ((try? journal.audit(incidentID: incident.id)) ?? []) + audits.dropLast().filter { $0.incidentID == incident.id }
                response.audit = entries.map(Self.auditEntry)
            }
        }
        if request.action.hasPrefix("maintenance") { response.maintenance = maintenance.windows.map(Self.window) }
        replies.append((request.received, response, late))
    }

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

    func notifyOperator(_ title: String, text: String, host: String, nextAction: String) {
        var note = Bynar_V1_Notification()
        note.severity = .info
        note.title = title
        note.text = text
        note.host = host
        note.nextAction = nextAction
        queueNotification(note, incident: "")
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

    /// Queues the retained MaintenanceState (every window in force).
    func publishMaintenance() {
        var state = Bynar_V1_MaintenanceState()
        state.windows = maintenance.windows.map(Self.window)
        state.updatedUnixMs = clock()
        queue(state, to: Topics.maintenance, incident: "", retain: true)
    }

    /// A failed disk under a maintenance window: recorded, people told once per window, and
    /// decided again when the window ends.
    func holdForMaintenance(_ identity: Bynar_V1_DiskIdentity, reasons: [Bynar_V1_HealthReason], flags: Bynar_V1_DiskHealth,
                            window: MaintenanceBook.Window, nowMs: Int64) {
        let key = Self.diskKey(identity.host, identity.key)
        guard heldByMaintenance[key] == nil else { return }
        heldByMaintenance[key] = (identity, reasons, flags)
        let words = reasons.map { $0.detail.isEmpty ? $0.rule : "\($0.rule): \($0.detail)" }
        let end = window.untilMs.map { " until \(UTCTime.iso8601(unixMs: $0))" } ?? ""
        let why = "\(window.scope) is in maintenance\(end) (operator \(window.by): \(window.reason))"
        unrepaired.append(.init(atMs: nowMs, host: identity.host, diskKey: identity.key, reasons: words, why: why))
        logger.notice("failed disk not repaired: maintenance", metadata: ["disk": "\(key)", "why": "\(why)"])
        var note = Bynar_V1_Notification()
        note.severity = .warning
        note.title = "Disk \(identity.key) on \(identity.host) failed; not repaired: \(window.scope) is in maintenance"
        note.text = "Reasons: \(words.joined(separator: "; ")). \(why)."
        note.host = identity.host
        note.disk = identity
        note.nextAction = "Bynar repairs it when the maintenance ends, if the disk is still failed"
        queueNotification(note, incident: "")
    }

    /// Ends the windows whose time is up.
    func expireMaintenance() {
        let ended = maintenance.expire(nowMs: clock())
        guard !ended.isEmpty else { return }
        maintenanceChanged = true
        publishMaintenance()
        for window in ended {
            notifyOperator("Maintenance of \(window.scope) ended (its time was up)", text: "Switched on by \(window.by): \(window.reason).", host: window.host,
                           nextAction: "failures held back there are repaired now")
        }
        maintenanceEnded(ended)
    }

    /// Opens the incidents maintenance held back, for disks no window covers any more and
    /// that are still failed or missing as far as the detector last said.
    func maintenanceEnded(_ ended: [MaintenanceBook.Window]) {
        let now = clock()
        for (key, held) in heldByMaintenance.sorted(by: { $0.key < $1.key })
        where ended.contains(where: { $0.host == held.identity.host }) && maintenance.covering(host: held.identity.host, disk: held.identity.key, nowMs: now) == nil {
            heldByMaintenance[key] = nil
            let latest = health[key]?.state ?? held.flags.state
            guard latest == .failed || latest == .missing || latest == .unspecified, machines.values.allSatisfy({ $0.isClosed || Self.diskKey($0.disk.host, $0.disk.key) != key }) else { continue }
            open(held.identity, reasons: held.reasons, flags: held.flags, why: "maintenance ended")
        }
    }
}
