public import BynarAuth
public import BynarBus
public import BynarProto
import Synchronization

/// Follows disk-manager jobs to their end: listens to JobProgress on one progress topic
/// filter and hands each job's final progress (SUCCEEDED or FAILED) to whoever waits for
/// it. A final progress that arrives before anyone waits is kept, so the race between the
/// ACCEPTED answer and a fast job cannot lose it. When no progress comes for a while, the
/// job is asked for with JobStatus (progress messages are not retained and a subscriber
/// that was away would otherwise wait forever).
public final class JobFollower: Sendable {
    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Bynar_V1_JobProgress?, Never>
    }
    private struct State {
        var finals: [String: Bynar_V1_JobProgress] = [:]
        var waiters: [String: [Waiter]] = [:]
        var nextWaiter: UInt64 = 0
        /// Waiters whose time ran out (or were cancelled) before they were registered.
        var expired: Set<UInt64> = []
        var running: [String: Bynar_V1_JobProgress] = [:]
    }
    private let state = Mutex(State())
    private let consumer: Mutex<Task<Void, Never>?> = Mutex(nil)
    /// Called with every RUNNING progress (for a live view); nil for none.
    private let onProgress: (@Sendable (Bynar_V1_JobProgress) -> Void)?

    /// Subscribes to `filter` (default: every host's progress topic) before returning, so
    /// a request sent afterwards cannot have its progress missed.
    public init(bus: Bus, filter: String = Topics.diskManagerProgress(host: "+"), onProgress: (@Sendable (Bynar_V1_JobProgress) -> Void)? = nil) async throws {
        self.onProgress = onProgress
        let progress = try await bus.subscribe(filter, as: Bynar_V1_JobProgress.self, buffer: 1 << 16)
        let task = Task { [weak self] in
            for await message in progress {
                guard let self else { return }
                self.received(message.payload)
            }
        }
        consumer.withLock { $0 = task }
    }

    deinit { consumer.withLock { $0?.cancel() } }

    /// Stops listening.
    public func stop() { consumer.withLock { $0?.cancel() } }

    /// Takes one progress message (also what JobStatus answered).
    public func received(_ progress: Bynar_V1_JobProgress) {
        let key = Self.key(host: progress.host, jobID: progress.jobID)
        guard Self.isFinal(progress) else {
            state.withLock { $0.running[key] = progress }
            onProgress?(progress)
            return
        }
        let waiters = state.withLock { state -> [Waiter] in
            state.finals[key] = progress
            state.running.removeValue(forKey: key)
            return state.waiters.removeValue(forKey: key) ?? []
        }
        for waiter in waiters { waiter.continuation.resume(returning: progress) }
    }

    /// The final progress of `jobID` on `host` if it came, waiting at most `timeout`; nil
    /// otherwise (also when the task is cancelled). Job ids are the host's own, so the
    /// host is part of the key.
    public func waitForFinal(jobID: String, host: String, timeout: Duration) async -> Bynar_V1_JobProgress? {
        let key = Self.key(host: host, jobID: jobID)
        if let done = state.withLock({ $0.finals[key] }) { return done }
        let id = state.withLock { state -> UInt64 in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        let timer = Task { [weak self] in
            guard (try? await Task.sleep(for: timeout)) != nil else { return }
            self?.giveUp(key: key, waiter: id)
        }
        defer { timer.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bynar_V1_JobProgress?, Never>) in
                let done = state.withLock { state -> Bynar_V1_JobProgress?? in
                    if let done = state.finals[key] { return .some(done) }
                    if Task.isCancelled || state.expired.remove(id) != nil { return .some(nil) }
                    state.waiters[key, default: []].append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                if let done { continuation.resume(returning: done) }
            }
        } onCancel: {
            giveUp(key: key, waiter: id)
        }
    }

    private func giveUp(key: String, waiter id: UInt64) {
        let waiter = state.withLock { state -> Waiter? in
            guard let index = state.waiters[key]?.firstIndex(where: { $0.id == id }) else {
                state.expired.insert(id)
                return nil
            }
            return state.waiters[key]?.remove(at: index)
        }
        waiter?.continuation.resume(returning: nil)
    }

    /// Waits for `jobID` on `host` to finish: progress messages, and every `pollInterval`
    /// without one a JobStatus request. Gives up after `deadline` (returns nil).
    public func follow(
        jobID: String, host: String, client: DiskManagerClient,
        pollInterval: Duration, requestTimeout: Duration, deadline: ContinuousClock.Instant
    ) async -> Bynar_V1_JobProgress? {
        while !Task.isCancelled {
            let now = ContinuousClock.now
            guard now < deadline else { return nil }
            if let done = await waitForFinal(jobID: jobID, host: host, timeout: min(pollInterval, deadline - now)) { return done }
            if Task.isCancelled || ContinuousClock.now >= deadline { return nil }
            var status = Bynar_V1_DiskManagerRequest.JobStatus()
            status.jobID = jobID
            if let response = try? await client.send(.jobStatus(status), to: host, timeout: requestTimeout),
               response.outcome == .success, case .job(let job)? = response.result {
                received(job)
            }
        }
        return nil
    }

    /// The latest RUNNING progress of every job not yet finished.
    public var running: [Bynar_V1_JobProgress] { state.withLock { Array($0.running.values) } }

    static func key(host: String, jobID: String) -> String { "\(host)\u{0}\(jobID)" }

    static func isFinal(_ progress: Bynar_V1_JobProgress) -> Bool {
        progress.state == .succeeded || progress.state == .failed
    }
}
