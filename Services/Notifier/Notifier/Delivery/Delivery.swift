import BynarBus
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A message ready to leave: rendered, stored, waiting for its channel.
struct OutgoingMessage: Sendable, Equatable {
    /// Row id in `notifier_outgoing`.
    var id: Int64 = 0
    var channel: String
    /// "message" (notifications, possibly a summary of many) or "digest".
    var kind: String
    var subject: String
    /// Slack mrkdwn for Slack, plain text for e-mail.
    var text: String
    var html: String?
    /// E-mail recipients; empty for Slack.
    var recipients: [String]
    /// How many notifications it tells of.
    var items: Int
    var createdUnixMs: Int64
    var attempts = 0
    var nextAttemptUnixMs: Int64 = 0
}

/// What became of one attempt to send.
enum DeliveryOutcome: Sendable, Equatable {
    case delivered
    /// Try again: after `after` when the far end said so (Slack's Retry-After), else after
    /// the channel's backoff.
    case retry(after: Duration?, reason: String)
    /// It will never be taken as it is (Slack 4xx, SMTP 5xx): parked and reported.
    case rejected(reason: String)
}

/// Somewhere messages go (Slack, e-mail).
protocol DeliveryChannel: Sendable {
    var name: String { get }
    func send(_ message: OutgoingMessage) async -> DeliveryOutcome
    func shutdown() async
}

/// When a channel's waiting notifications are summed up and sent: once none has arrived for
/// `quiet` (a lone event goes out promptly), or at the latest `window` after the first (a
/// steady trickle still gets through). Pure: times in, time out.
struct CoalescingPolicy: Sendable, Equatable {
    var quietMs: Int64
    var windowMs: Int64

    /// When the waiting notifications, first received at `firstMs` and last at `lastMs`,
    /// are due to go out.
    func flushAt(firstMs: Int64, lastMs: Int64) -> Int64 {
        min(lastMs + quietMs, firstMs + windowMs)
    }
}

/// Backoff for failed deliveries: 1 s, doubling per attempt, capped.
func retryDelay(attempts: Int, capSeconds: Int) -> Duration {
    let seconds = min(Double(capSeconds), Double(1 << min(max(attempts - 1, 0), 20)))
    return .milliseconds(Int64(seconds * 1000))
}

/// Turns one channel's waiting notifications into messages and sends them, in order,
/// honouring the channel's answers. Everything waiting is in SQLite, so a restart picks up
/// where it stopped.
final class ChannelPump: Sendable {
    let channel: any DeliveryChannel
    let policy: CoalescingPolicy
    let renderer: @Sendable ([Notice], _ spanMs: Int64) -> OutgoingMessage
    let store: NotifierStore
    let retryCapSeconds: Int
    let logger: Logger
    let bell = WakeSignal()
    private let counters = Mutex(Counters())

    /// What happened so far, for logs and tests.
    struct Counters: Sendable, Equatable {
        var delivered = 0
        var retried = 0
        var rejected = 0
    }

    init(channel: any DeliveryChannel, policy: CoalescingPolicy, store: NotifierStore, retryCapSeconds: Int, logger: Logger,
         renderer: @escaping @Sendable ([Notice], Int64) -> OutgoingMessage) {
        self.channel = channel
        self.policy = policy
        self.store = store
        self.retryCapSeconds = retryCapSeconds
        self.logger = logger
        self.renderer = renderer
    }

    var stats: Counters { counters.withLock { $0 } }

    /// Stores a notification for this channel and wakes the pump.
    func enqueue(_ notice: Notice, receivedUnixMs: Int64) throws {
        try store.addPending(channel: channel.name, notice: notice, receivedUnixMs: receivedUnixMs)
        bell.signal()
    }

    /// Stores a ready message (the digest) and wakes the pump.
    func enqueue(message: OutgoingMessage) throws {
        try store.addOutgoing([message])
        bell.signal()
    }

    /// Coalesces and sends until the task is cancelled.
    func run() async {
        while !Task.isCancelled {
            var wake: Int64?
            do {
                wake = try await step(now: NotifierClock.nowUnixMs())
            } catch {
                logger.error("notifier store failed", metadata: ["channel": "\(channel.name)", "error": "\(error)"])
                wake = NotifierClock.nowUnixMs() + 1000
            }
            if let wake, wake <= NotifierClock.nowUnixMs() { continue }
            await bell.wait(until: wake.map { NotifierClock.instant(forUnixMs: $0) })
        }
    }

    /// Does what is due at `now`; returns when something next falls due (nil: nothing is
    /// waiting), or `now` to be called again at once.
    func step(now: Int64) async throws -> Int64? {
        var due: [Int64] = []
        if let span = try store.pendingSpan(channel: channel.name) {
            let flushAt = policy.flushAt(firstMs: span.firstMs, lastMs: span.lastMs)
            if flushAt <= now {
                let renderer = self.renderer
                let count = try store.coalescePending(channel: channel.name) { notices in
                    renderer(notices, span.lastMs - span.firstMs)
                }
                logger.debug("coalesced", metadata: ["channel": "\(channel.name)", "notifications": "\(count)"])
            } else {
                due.append(flushAt)
            }
        }
        guard let next = try store.nextOutgoing(channel: channel.name) else { return due.min() }
        guard next.nextAttemptUnixMs <= now else { return (due + [next.nextAttemptUnixMs]).min() }
        let outcome = await channel.send(next)
        switch outcome {
        case .delivered:
            try store.removeOutgoing(id: next.id)
            counters.withLock { $0.delivered += 1 }
            logger.info("sent", metadata: ["channel": "\(channel.name)", "kind": "\(next.kind)", "notifications": "\(next.items)", "attempts": "\(next.attempts + 1)"])
        case .retry(let after, let reason):
            let delay = after ?? retryDelay(attempts: next.attempts + 1, capSeconds: retryCapSeconds)
            let at = NotifierClock.nowUnixMs() + Int64(delay.components.seconds) * 1000 + delay.components.attoseconds / 1_000_000_000_000_000
            try store.recordAttempt(id: next.id, error: reason, nextAttemptUnixMs: at)
            counters.withLock { $0.retried += 1 }
            logger.warning("not sent; will retry", metadata: ["channel": "\(channel.name)", "reason": "\(reason)", "retry_in_ms": "\(at - NotifierClock.nowUnixMs())", "attempts": "\(next.attempts + 1)"])
        case .rejected(let reason):
            try store.park(id: next.id, error: reason, atUnixMs: NotifierClock.nowUnixMs())
            counters.withLock { $0.rejected += 1 }
            logger.error("message refused; parked (see bynar-notifier status)", metadata: ["channel": "\(channel.name)", "reason": "\(reason)", "notifications": "\(next.items)"])
        }
        return now
    }
}

/// Wall-clock time for the store (Unix ms) and its mapping to the monotonic clock.
enum NotifierClock {
    static func nowUnixMs() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000
    }

    static func instant(forUnixMs ms: Int64) -> ContinuousClock.Instant {
        ContinuousClock.now + .milliseconds(max(0, ms - nowUnixMs()))
    }
}
