import Synchronization

/// Wakes one waiting task; a signal sent while nobody waits is kept for the next wait.
/// Wake-ups are hints: a waiter re-reads whatever it waits for (an outbox, a queue, a
/// schedule) and may be woken once more than needed, never less.
public final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }
    private let state = Mutex(State())

    public init() {}

    public func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns on a signal, or when the task is cancelled.
    public func wait() async {
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

    /// Returns on a signal, at `deadline` (none: only on a signal), or when the task is
    /// cancelled.
    public func wait(until deadline: ContinuousClock.Instant?) async {
        let timer = deadline.map { deadline in
            Task { [weak self] in
                try? await Task.sleep(until: deadline)
                if !Task.isCancelled { self?.signal() }
            }
        }
        defer { timer?.cancel() }
        await wait()
    }

    /// Returns on a signal, after `timeout`, or when the task is cancelled.
    public func wait(upTo timeout: Duration) async {
        await wait(until: .now + timeout)
    }
}
