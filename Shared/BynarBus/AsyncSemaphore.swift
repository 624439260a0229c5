import Synchronization

/// Counts permits; `acquire` suspends while none is left (FIFO). Bounds QoS 1 messages in
/// flight, so a fast publisher waits instead of growing libmosquitto's queue without end,
/// and the deploy engine's commands in flight.
public final class AsyncSemaphore: Sendable {
    private struct State {
        var available: Int
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state: Mutex<State>

    public init(permits: Int) { state = Mutex(State(available: permits)) }

    public func acquire() async {
        // Fast path: a free permit costs one lock, no continuation.
        let took = state.withLock { state -> Bool in
            guard state.available > 0 else { return false }
            state.available -= 1
            return true
        }
        if took { return }
        await withCheckedContinuation { continuation in
            let granted = state.withLock { state -> Bool in
                if state.available > 0 {
                    state.available -= 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
    }

    public func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.available += 1
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}
