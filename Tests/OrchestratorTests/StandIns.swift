import BynarAuth
import BynarBus
import BynarProto
import BynarStore
import BynarTestSupport
import Crypto
import Foundation
import Synchronization

// STAND-INS. The real disk-manager's Remove/Add and the real ticketing service are being
// finished in parallel; until they land, the orchestrator's end-to-end tests run against
// these small responders. They speak the real schema over the real broker and follow the
// protocol of the common brief: signatures verified with the real CommandVerifier, first
// outcome per request id (ALREADY_DONE on a repeat, same job id), ACCEPTED + JobProgress
// for Remove and Add, JobStatus, simulate. They count what they did, so the tests can
// prove that nothing happened twice and that limits held.

/// Stand-in for the disk-managers of every host (answers on bynar/v1/dm/+/cmd as the host
/// a request names).
final class DiskManagerStandIn: Sendable {
    struct Seen: Sendable, Equatable {
        var requestID: String
        var host: String
        var operation: String
        var simulate: Bool
        var diskKey: String
        var reuseOsdID: String
    }

    struct Behaviour: Sendable {
        var safe = true
        var clusterHealth = "HEALTH_OK"
        /// Do not answer SafeToRemove at all (a disk-manager that hangs).
        var silentSafeToRemove = false
        /// How long a Remove/Add job runs before SUCCEEDED.
        var jobDuration: Duration = .milliseconds(150)
        /// Remove jobs end FAILED (at "destroy", after the disk went out).
        var failRemoveJobs = false
        /// Do not answer List (a disk-manager that cannot say where a disk is).
        var silentList = false
    }

    private struct State {
        var seen: [Seen] = []
        var first: [String: Bynar_V1_DiskManagerResponse] = [:]
        var jobs: [String: Bynar_V1_JobProgress] = [:]
        /// Real (not simulated) Remove/Add executions per request id.
        var executions: [String: Int] = [:]
        var out: Set<String> = []
        var maxOut = 0
        var osdIDs: [String: String] = [:]
        var rejected: [String] = []
        /// Answers the stand-in could not send (the bus refused or timed out).
        var replyFailures: [String] = []
        var behaviour = Behaviour()
    }

    private let state = Mutex(State())
    let bus: Bus
    private let verifier: CommandVerifier
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(broker: TestBroker, trustedKeysLine: String) async throws {
        bus = try await connectedBus(broker, service: "disk-manager-stand-in", host: "dm")
        let store = try LocalStore(path: ":memory:", migrations: CommandVerifier.migrations)
        verifier = CommandVerifier(trustedKeys: try TrustedKeys(fileText: trustedKeysLine + "\n"), store: store)
        let commands = try await bus.subscribe(Topics.diskManagerCommands(host: "+"), as: Bynar_V1_DiskManagerRequest.self)
        let consumer = Task { [self] in
            for await command in commands {
                if let response = await self.handle(command.payload) {
                    // As the disk-manager of the host the topic names: the orchestrator
                    // takes answers only from the disk-manager it asked.
                    let host = command.topic.split(separator: "/")[3]
                    do {
                        try await self.bus.reply(to: command, with: response, asHost: String(host), service: "disk-manager")
                    } catch {
                        self.state.withLock { $0.replyFailures.append("\(response.requestID): \(error)") }
                    }
                }
            }
        }
        task.withLock { $0 = consumer }
    }

    func configure(_ change: (inout Behaviour) -> Void) { state.withLock { change(&$0.behaviour) } }
    var seen: [Seen] { state.withLock { $0.seen } }
    var executions: [String: Int] { state.withLock { $0.executions } }
    var maxOut: Int { state.withLock { $0.maxOut } }
    var currentlyOut: Int { state.withLock { $0.out.count } }
    /// Puts a removed disk back in service (an operator's `bynar disks add` by hand).
    func markInService(_ key: String) { state.withLock { _ = $0.out.remove(key) } }
    var rejected: [String] { state.withLock { $0.rejected } }
    var replyFailures: [String] { state.withLock { $0.replyFailures } }
    func seen(_ operation: String) -> [Seen] { seen.filter { $0.operation == operation } }

    private func handle(_ request: Bynar_V1_DiskManagerRequest) async -> Bynar_V1_DiskManagerResponse? {
        var response = Bynar_V1_DiskManagerResponse()
        response.requestID = request.requestID
        response.host = request.host
        response.simulated = request.simulate
        if case .failure(let why) = verifier.verify(request, nowMs: Bus.nowUnixMs()) {
            state.withLock { $0.rejected.append("\(request.requestID): \(why)") }
            response.outcome = .refused
            response.reason = "not authorised: \(why)"
            return response
        }
        let (operation, key, reuse) = Self.describe(request)
        let (behaviour, repeated) = state.withLock { state -> (Behaviour, Bynar_V1_DiskManagerResponse?) in
            state.seen.append(Seen(requestID: request.requestID, host: request.host, operation: operation, simulate: request.simulate, diskKey: key, reuseOsdID: reuse))
            return (state.behaviour, state.first[request.requestID])
        }
        if var again = repeated {
            again.originalOutcome = again.outcome
            again.outcome = .alreadyDone
            return again
        }
        switch request.operation {
        case .safeToRemove:
            if behaviour.silentSafeToRemove { return nil }
            response.outcome = .success
            var verdict = Bynar_V1_DiskManagerResponse.SafeToRemove()
            verdict.safe = behaviour.safe
            verdict.detail = behaviour.safe ? "ok-to-stop and safe-to-destroy" : "PGs would become inactive"
            verdict.clusterHealth = behaviour.clusterHealth
            response.safeToRemove = verdict
        case .remove, .add:
            let isRemove: Bool = if case .remove = request.operation { true } else { false }
            let steps = isRemove ? ["out", "safe-to-destroy", "stop", "destroy"] : ["prepare", "activate", "in"]
            if request.simulate {
                response.outcome = .success
                response.steps = steps
                return response
            }
            let job = "job-\(request.requestID)"
            let osd = state.withLock { state -> String in
                state.executions[request.requestID, default: 0] += 1
                if isRemove {
                    state.out.insert(key)
                    state.maxOut = max(state.maxOut, state.out.count)
                    let osd = state.osdIDs[key] ?? "\(state.osdIDs.count)"
                    state.osdIDs[key] = osd
                    return osd
                }
                return reuse
            }
            response.outcome = .accepted
            response.jobID = job
            response.backend = "ceph"
            var progress = Bynar_V1_JobProgress()
            progress.jobID = job
            progress.requestID = request.requestID
            progress.host = request.host
            progress.operation = isRemove ? "Remove" : "Add"
            progress.state = .running
            progress.step = steps[0]
            progress.stepCount = UInt32(steps.count)
            state.withLock { $0.jobs[job] = progress }
            let duration = behaviour.jobDuration
            Task { [self] in
                _ = try? await self.bus.publish(progress, to: Topics.diskManagerProgress(host: request.host))
                try? await Task.sleep(for: duration)
                let fails = isRemove && behaviour.failRemoveJobs
                var done = progress
                done.state = fails ? .failed : .succeeded
                done.outcome = fails ? .failed : .success
                if fails {
                    done.failedStep = "destroy"
                    done.message = "stand-in: destroy failed"
                }
                done.steps = steps
                done.step = steps.last!
                done.stepIndex = UInt32(steps.count - 1)
                done.backendID = osd
                done.updatedUnixMs = Bus.nowUnixMs()
                self.state.withLock { state in
                    state.jobs[job] = done
                    if !isRemove {
                        // The new disk is in: the old slot's removal is over.
                        if let old = state.osdIDs.first(where: { $0.value == osd })?.key { state.out.remove(old) }
                    }
                }
                _ = try? await self.bus.publish(done, to: Topics.diskManagerProgress(host: request.host))
            }
        case .jobStatus(let status):
            guard let job = state.withLock({ $0.jobs[status.jobID] }) else {
                response.outcome = .refused
                response.reason = "no job \(status.jobID)"
                return response
            }
            response.outcome = .success
            response.jobID = status.jobID
            response.job = job
            return response  // status answers are not remembered (they change)
        case .list:
            if behaviour.silentList { return nil }
            // Every disk a request named: out (REMOVED) or in service.
            response.outcome = .success
            response.diskList = state.withLock { state in
                var list = Bynar_V1_DiskManagerResponse.DiskList()
                for key in Set(state.seen.filter { $0.host == request.host && $0.operation != "JobStatus" }.map(\.diskKey)).sorted() where !key.isEmpty {
                    var disk = Bynar_V1_ManagedDisk()
                    disk.disk.host = request.host
                    disk.disk.key = key
                    disk.backend = "ceph"
                    disk.status = state.out.contains(key) ? .removed : .inService
                    list.disks.append(disk)
                }
                return list
            }
            return response  // lists are not remembered (they change)
        default:
            response.outcome = .refused
            response.reason = "not served by the stand-in"
        }
        state.withLock { $0.first[request.requestID] = response }
        return response
    }

    static func describe(_ request: Bynar_V1_DiskManagerRequest) -> (String, String, String) {
        switch request.operation {
        case .safeToRemove(let op): ("SafeToRemove", op.disk.key, "")
        case .remove(let op): ("Remove", op.disk.key, "")
        case .add(let op): ("Add", op.disk.key, op.reuseOsdID)
        case .jobStatus(let op): ("JobStatus", op.jobID, "")
        case .list: ("List", "", "")
        case .deploy(let op): ("Deploy", op.disk.key, "")
        case nil: ("(none)", "", "")
        }
    }

    func stop() async {
        task.withLock { $0?.cancel() }
        await bus.shutdown()
    }
}

/// Stand-in for the ticketing service: takes TicketRequests from its shared subscription,
/// answers OPEN with an OPENED TicketEvent (one ticket per incident, however often OPEN is
/// sent) and keeps the retained ticket state; tests resolve tickets by hand. Like the real
/// one, it answers every request that carries a response topic once done (the
/// orchestrator sends comments and closes until answered: `Outbox.Receipt`), as service
/// "ticketing", the responder the orchestrator's receipts wait for.
final class TicketingStandIn: Sendable {
    private struct State {
        var requests: [Bynar_V1_TicketRequest] = []
        var keys: [String: String] = [:]
        var autoResolve = false
    }
    private let state = Mutex(State())
    let bus: Bus
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(broker: TestBroker, autoResolve: Bool = false) async throws {
        bus = try await connectedBus(broker, service: "ticketing", host: "tk")
        state.withLock { $0.autoResolve = autoResolve }
        let commands = try await bus.subscribe(Topics.shared(group: "ticketing", Topics.ticketCommands), as: Bynar_V1_TicketRequest.self)
        let consumer = Task { [self] in
            for await command in commands {
                await self.handle(command.payload)
                if command.responseTopic != nil {
                    var response = Bynar_V1_TicketResponse()
                    response.incidentID = command.payload.incidentID
                    response.ticketKey = self.state.withLock { $0.keys[command.payload.incidentID] ?? "" }
                    try? await self.bus.reply(to: command, with: response)
                }
            }
        }
        task.withLock { $0 = consumer }
    }

    var requests: [Bynar_V1_TicketRequest] { state.withLock { $0.requests } }
    /// Distinct tickets opened.
    var ticketsOpened: Int { state.withLock { $0.keys.count } }

    private func handle(_ request: Bynar_V1_TicketRequest) async {
        let (key, auto) = state.withLock { state -> (String, Bool) in
            state.requests.append(request)
            let key = state.keys[request.incidentID] ?? "OPS-\(state.keys.count + 1)"
            state.keys[request.incidentID] = key
            return (key, state.autoResolve)
        }
        switch request.action {
        case .open:
            await publish(request.incidentID, key: key, .opened)
            if auto { await publish(request.incidentID, key: key, .resolved) }
        case .close:
            await publish(request.incidentID, key: key, .closed)
        default:
            break
        }
    }

    func resolve(incident: String) async {
        guard let key = state.withLock({ $0.keys[incident] }) else { return }
        await publish(incident, key: key, .resolved)
    }

    private func publish(_ incident: String, key: String, _ ticketState: Bynar_V1_TicketState) async {
        var event = Bynar_V1_TicketEvent()
        event.incidentID = incident
        event.ticketKey = key
        event.url = "https://jira.example/browse/\(key)"
        event.state = ticketState
        event.backend = "stand-in"
        event.changedUnixMs = Bus.nowUnixMs()
        _ = try? await bus.publish(event, to: Topics.ticketEvents)
        _ = try? await bus.publish(event, to: Topics.ticketState(incident: incident), retain: true)
    }

    func stop() async {
        task.withLock { $0?.cancel() }
        await bus.shutdown()
    }
}

/// Publishes what the detector publishes for a disk: the transition event, then the retained
/// health (the detector's order).
struct DetectorVoice {
    let bus: Bus

    static func identity(host: String, key: String, dev: String = "/dev/sdc") -> Bynar_V1_DiskIdentity {
        var disk = Bynar_V1_DiskIdentity()
        disk.host = host
        disk.key = key
        disk.serial = String(key.dropFirst("serial-".count))
        disk.devPath = dev
        return disk
    }

    /// `detail` is the reason's detail (default: "stand-in detector says <state>").
    func say(_ disk: Bynar_V1_DiskIdentity, from: Bynar_V1_DiskState, to: Bynar_V1_DiskState, previous: Bynar_V1_DiskIdentity? = nil, system: Bool = false,
             detail: String? = nil) async throws {
        var reason = Bynar_V1_HealthReason()
        reason.rule = to == .failed ? "fs.read_only" : "disk.\(to)"
        reason.detail = detail ?? "stand-in detector says \(to)"
        reason.severity = to
        var event = Bynar_V1_DiskHealthEvent()
        event.disk = disk
        event.fromState = from
        event.toState = to
        event.reasons = [reason]
        if let previous { event.previousDisk = previous }
        try await bus.publish(event, to: Topics.diskEvents(host: disk.host))
        var health = Bynar_V1_DiskHealth()
        health.disk = disk
        health.state = to
        health.reasons = [reason]
        health.stateSinceUnixMs = Bus.nowUnixMs()
        health.systemDisk = system
        try await bus.publish(health, to: Topics.diskHealth(host: disk.host, disk: disk.key), retain: true)
    }
}

