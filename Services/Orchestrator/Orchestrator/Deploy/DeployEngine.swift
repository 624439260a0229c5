public import BynarAuth
import BynarBus
public import BynarProto
import Synchronization

/// How a deploy run behaves.
public struct DeployOptions: Sendable {
    /// Hosts worked on at once.
    public var hostConcurrency = 64
    /// Deploy commands in flight at once (sent and not finished), over all hosts.
    public var maxInFlight = 1024
    /// Times one request is sent again after a transient failure (timeout, broker away).
    public var retries = 3
    /// Wait before the first retry; doubles each retry up to ``backoffMax``.
    public var backoffBase: Duration = .milliseconds(500)
    public var backoffMax: Duration = .seconds(10)
    /// How long one request waits for its answer.
    public var requestTimeout: Duration = .seconds(10)
    /// How long one deploy job may run before it is reported as not finished.
    public var jobTimeout: Duration = .seconds(1800)
    /// Without progress for this long, the job is asked for with JobStatus.
    public var pollInterval: Duration = .seconds(10)
    /// Ask the disk-managers what they would do; change nothing.
    public var simulate = false

    public init() {}

    /// Why these options cannot work, or nil.
    public func problem() -> String? {
        if hostConcurrency < 1 { return "concurrency must be at least 1, got \(hostConcurrency)" }
        if maxInFlight < 1 { return "max in flight must be at least 1, got \(maxInFlight)" }
        if retries < 0 { return "retries must be 0 or more, got \(retries)" }
        return nil
    }

    /// The wait before retry number `attempt` (1-based).
    public func backoff(attempt: Int) -> Duration {
        var wait = backoffBase
        for _ in 1..<max(1, attempt) where wait < backoffMax { wait *= 2 }
        return min(wait, backoffMax)
    }
}

/// Deploys OSDs on many hosts at once: for each host of the plan, lists its disks, chooses
/// the BLANK ones the plan's patterns match, sends a signed Deploy for each with the
/// request id `<run-id>/<host>/<disk-key>` (so a resumed run re-sends the same id and the
/// disk-manager answers ALREADY_DONE instead of deploying twice), and follows each job to
/// SUCCEEDED or FAILED. Transient failures (timeouts, broker away) are retried with
/// exponential backoff; everything that happens goes to the journal.
public final class DeployEngine: Sendable {
    public let client: DiskManagerClient
    public let plan: DeployPlan
    public let options: DeployOptions
    public let journal: DeployJournal
    private let counters = Mutex(DeployProgress())
    private let roundTrips = Mutex<[Double]>([])
    private let inFlight: AsyncSemaphore

    public init(client: DiskManagerClient, plan: DeployPlan, options: DeployOptions, journal: DeployJournal) {
        self.client = client
        self.plan = plan
        self.options = options
        self.journal = journal
        inFlight = AsyncSemaphore(permits: options.maxInFlight)
        counters.withLock { $0.hostsTotal = plan.hosts.count }
    }

    /// The counters now.
    public var progress: DeployProgress { counters.withLock { $0 } }

    /// Runs the plan to the end and reports every disk. Throws only when the progress
    /// topic cannot be subscribed (nothing has been sent then).
    public func run() async throws -> DeployReport {
        let clock = ContinuousClock()
        let started = clock.now
        let follower = try await JobFollower(bus: client.bus)
        defer { follower.stop() }
        var rows: [DeployReport.Row] = []
        await withTaskGroup(of: [DeployReport.Row].self) { group in
            var next = plan.hosts.makeIterator()
            for _ in 0..<min(options.hostConcurrency, plan.hosts.count) {
                guard let host = next.next() else { break }
                group.addTask { await self.deploy(host, follower: follower) }
            }
            for await hostRows in group {
                rows += hostRows
                counters.withLock { $0.hostsDone += 1 }
                if let host = next.next(), !Task.isCancelled {
                    group.addTask { await self.deploy(host, follower: follower) }
                }
            }
        }
        journal.sync()
        let elapsed = clock.now - started
        return DeployReport(
            runID: journal.runID, journal: journal.path, resumed: journal.resumed, hosts: plan.hosts.count,
            elapsedMs: Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15,
            roundTrips: DeployReport.RoundTrips(roundTrips.withLock { $0 }), rows: rows
        )
    }

    // MARK: One host

    struct Target: Sendable {
        var disk: String
        var devPath: String
    }

    func deploy(_ host: DeployPlan.Host, follower: JobFollower) async -> [DeployReport.Row] {
        let listed = await send(.list(.init()), to: host.name, requestID: nil)
        let disks: [Bynar_V1_ManagedDisk]
        switch listed {
        case .failure(let failure):
            return [DeployReport.Row(host: host.name, result: .failed, reason: "cannot list disks: \(failure.reason)", failedStep: "list", retries: failure.retries)]
        case .success(let (response, _)):
            guard response.outcome == .success, case .diskList(let list)? = response.result else {
                return [DeployReport.Row(host: host.name, result: .failed, reason: "list \(response.outcome.name): \(response.reason)", failedStep: "list")]
            }
            disks = list.disks
        }
        var rows: [DeployReport.Row] = []
        var targets: [Target] = []
        let candidates = DeployPlan.candidates(disks, patterns: host.patterns)
        let byKey = Dictionary(disks.map { ($0.disk.key, $0) }, uniquingKeysWith: { first, _ in first })
        for disk in candidates {
            let history = journal.history(host: host.name, disk: disk.disk.key)
            if history.last == .succeeded {
                rows.append(DeployReport.Row(host: host.name, disk: disk.disk.key, devPath: disk.disk.devPath, result: .doneEarlier,
                                             osdID: history.osdID ?? "", requestID: history.requestID ?? ""))
            } else {
                targets.append(Target(disk: disk.disk.key, devPath: disk.disk.devPath))
            }
        }
        // Disks an earlier run deployed on (no longer BLANK): report them, and follow those
        // it sent but did not see finish.
        let chosen = Set(candidates.map(\.disk.key))
        for key in journal.disks(of: host.name) where !chosen.contains(key) {
            let history = journal.history(host: host.name, disk: key)
            let devPath = byKey[key]?.disk.devPath ?? ""
            switch history.last {
            case .succeeded:
                rows.append(DeployReport.Row(host: host.name, disk: key, devPath: devPath, result: .doneEarlier,
                                             osdID: history.osdID ?? "", requestID: history.requestID ?? ""))
            case .sending, .accepted:
                targets.append(Target(disk: key, devPath: devPath))
            case .failed, .run, nil:
                break
            }
        }
        let mentioned = Set(rows.map(\.disk) + targets.map(\.disk))
        for unmatched in DeployPlan.unmatchedLiterals(disks, patterns: host.patterns) {
            let disk = unmatched.disk?.disk
            if let disk, mentioned.contains(disk.key) { continue }
            rows.append(DeployReport.Row(host: host.name, disk: disk?.key ?? unmatched.pattern, devPath: disk?.devPath ?? "",
                                         result: disk == nil ? .failed : .skipped, reason: unmatched.reason))
        }
        if targets.isEmpty && rows.isEmpty {
            let blank = disks.filter { $0.status == .blank && !$0.systemDisk && !$0.excluded }.count
            rows.append(DeployReport.Row(host: host.name, result: .nothingToDo,
                                         reason: "no blank disk matches \(host.patterns.map(\.text).joined(separator: " ")) (\(disks.count) disks, \(blank) blank)"))
        }
        counters.withLock { $0.disksChosen += targets.count }
        await withTaskGroup(of: DeployReport.Row.self) { group in
            for target in targets {
                group.addTask {
                    await self.inFlight.acquire()
                    defer { self.inFlight.release() }
                    return await self.deploy(target, on: host.name, follower: follower)
                }
            }
            for await row in group { rows.append(row) }
        }
        return rows
    }

    // MARK: One disk

    func deploy(_ target: Target, on host: String, follower: JobFollower) async -> DeployReport.Row {
        let requestID = journal.requestID(host: host, disk: target.disk)
        var row = DeployReport.Row(host: host, disk: target.disk, devPath: target.devPath, result: .failed, requestID: requestID)
        func finish(_ result: DeployReport.Result, osd: String = "", reason: String = "", step: String = "", record: Bool = true) -> DeployReport.Row {
            row.result = result
            row.osdID = osd
            row.reason = reason
            row.failedStep = step
            counters.withLock { result == .failed ? ($0.failed += 1) : ($0.succeeded += 1) }
            guard record, !options.simulate else { return row }
            let kind: DeployJournal.Entry.Kind? = switch result {
            case .succeeded: .succeeded
            case .failed: .failed
            default: nil
            }
            if let kind {
                note(DeployJournal.Entry(kind: kind, host: host, disk: target.disk, requestID: requestID,
                                         osdID: osd.isEmpty ? nil : osd, reason: reason.isEmpty ? nil : reason,
                                         failedStep: step.isEmpty ? nil : step, atUnixMs: Bus.nowUnixMs()))
            }
            return row
        }
        let history = journal.history(host: host, disk: target.disk)
        if !options.simulate && history.last != .sending && history.last != .accepted {
            note(DeployJournal.Entry(kind: .sending, host: host, disk: target.disk, requestID: requestID, atUnixMs: Bus.nowUnixMs()))
        }
        var deploy = Bynar_V1_DiskManagerRequest.Deploy()
        deploy.disk = .key(target.disk)
        let response: Bynar_V1_DiskManagerResponse
        switch await send(.deploy(deploy), to: host, requestID: requestID) {
        case .failure(let failure):
            row.retries = failure.retries
            // Not known to have arrived: no final journal entry, so a later run re-sends
            // the same request id.
            return finish(.failed, reason: failure.reason, step: "request", record: false)
        case .success(let (answer, retries)):
            row.retries = retries
            response = answer
        }
        let jobID: String
        switch response.outcome {
        case .accepted:
            jobID = response.jobID
            note(DeployJournal.Entry(kind: .accepted, host: host, disk: target.disk, requestID: requestID, jobID: jobID, atUnixMs: Bus.nowUnixMs()))
        case .alreadyDone where !response.jobID.isEmpty:
            jobID = response.jobID
        case .alreadyDone:
            if response.originalOutcome == .success {
                return finish(.succeeded, osd: response.backendID)
            }
            return finish(.failed, reason: "an earlier send of \(requestID) ended \(response.originalOutcome.name): \(response.reason)", step: response.failedStep)
        case .success where response.simulated || options.simulate:
            row.reason = response.steps.joined(separator: "; ")
            counters.withLock { $0.succeeded += 1 }
            row.result = .simulated
            return row
        case .success:
            return finish(.succeeded, osd: response.backendID)
        default:
            return finish(.failed, reason: "\(response.outcome.name): \(response.reason)", step: response.failedStep)
        }
        counters.withLock { $0.running += 1 }
        defer { counters.withLock { $0.running -= 1 } }
        let final = await follower.follow(
            jobID: jobID, host: host, client: client, pollInterval: options.pollInterval,
            requestTimeout: options.requestTimeout, deadline: .now + options.jobTimeout
        )
        guard let final else {
            // Still running as far as we know: the journal keeps it accepted, so the next
            // run follows the same job.
            return finish(.failed, reason: "job \(jobID) did not finish within \(options.jobTimeout)", step: "follow", record: false)
        }
        if final.state == .succeeded {
            return finish(.succeeded, osd: final.backendID)
        }
        return finish(.failed, reason: final.message.isEmpty ? "job \(jobID) failed" : final.message, step: final.failedStep)
    }

    // MARK: Requests

    struct SendFailure: Error {
        var reason: String
        var retries: Int
    }

    /// Sends `operation`, again after transient failures (with backoff), and returns the
    /// answer with the number of retries it took.
    func send(_ operation: Bynar_V1_DiskManagerRequest.OneOf_Operation, to host: String, requestID: String?) async -> Result<(Bynar_V1_DiskManagerResponse, Int), SendFailure> {
        var attempt = 0
        let clock = ContinuousClock()
        while true {
            let started = clock.now
            do {
                let response = try await client.send(operation, to: host, requestID: requestID, simulate: options.simulate, timeout: options.requestTimeout)
                let elapsed = clock.now - started
                roundTrips.withLock { $0.append(Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15) }
                return .success((response, attempt))
            } catch {
                guard Self.isTransient(error), attempt < options.retries, !Task.isCancelled else {
                    let tries = attempt == 0 ? "" : " (after \(attempt + 1) tries)"
                    return .failure(SendFailure(reason: "\(error)\(tries)", retries: attempt))
                }
                attempt += 1
                counters.withLock { $0.retries += 1 }
                try? await Task.sleep(for: options.backoff(attempt: attempt))
            }
        }
    }

    /// Timeouts and an unreachable broker may pass; a refusal or a bad reply will not.
    static func isTransient(_ error: any Error) -> Bool {
        switch error as? BusError {
        case .timedOut?, .unreachable?: true
        default: false
        }
    }

    private func note(_ entry: DeployJournal.Entry) {
        do { try journal.append(entry) } catch {
            // The journal is what makes a resume safe: the caller reports every failed write.
            journalErrors.withLock { $0.append("\(error)") }
        }
    }

    private let journalErrors = Mutex<[String]>([])

    /// Journal writes that failed (the disk full, the file removed).
    public var journalProblems: [String] { journalErrors.withLock { $0 } }
}
