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
