import BynarConfig
import Synchronization

/// The pause after a failed request to the backend: from the minimum, doubling with each
/// failure in a row, capped at the maximum; a 429's Retry-After is honoured when it asks for
/// longer. A success starts it over.
struct RetryBackoff: Sendable, Equatable {
    let minimum: Duration
    let maximum: Duration
    private(set) var next: Duration

    init(minimumSeconds: Int, maximumSeconds: Int) {
        minimum = .seconds(minimumSeconds)
        maximum = .seconds(maximumSeconds)
        next = minimum
    }

    /// The pause after this failure (and the next one grows).
    mutating func failed(retryAfter: Duration? = nil) -> Duration {
        let backoff = next
        next = min(next * 2, maximum)
        guard let retryAfter else { return backoff }
        // The server said when; never sooner, and not hours later because of a silly value.
        return min(max(retryAfter, minimum), max(maximum, .seconds(3600)))
    }

    mutating func succeeded() {
        next = minimum
    }
}

/// When to check an open ticket again: the first check `first_check_seconds` after filing,
/// each later gap `backoff_factor` times the last, never more than `max_interval_seconds`.
struct FollowPlan: Sendable, Equatable {
    let schedule: TicketingConfig.FollowSchedule

    var firstIntervalSeconds: Int { schedule.firstCheckSeconds }

    func intervalAfter(_ previousSeconds: Int) -> Int {
        let grown = Double(max(previousSeconds, schedule.firstCheckSeconds)) * schedule.backoffFactor
        return Int(min(grown.rounded(), Double(schedule.maxIntervalSeconds)))
    }
}

/// Wakes one waiting task; a signal sent while nobody waits is kept for the next wait.
final class Wakeup: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }
    private let state = Mutex(State())

    func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.pending = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Returns on a signal, after `timeout`, or when the task is cancelled.
    func wait(upTo timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                if !Task.isCancelled { self.signal() }
            }
            group.addTask { await self.waitForSignal() }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForSignal() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if state.pending {
                        state.pending = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            signal()
        }
    }
}
