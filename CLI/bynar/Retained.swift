import BynarBus
import BynarProto
import Synchronization

/// Reads retained state: subscribes to `filters`, keeps the latest message per topic, and
/// stops once nothing has arrived for `quiet` after the last one (retained messages come
/// right after the subscription is confirmed), or at `cap`.
func collectRetained(_ bus: Bus, filters: [String], quiet: Duration = .milliseconds(300), cap: Duration) async throws -> [String: EnvelopeSubscription.Element] {
    let collected = RetainedMessages()
    var consumers: [Task<Void, Never>] = []
    defer { consumers.forEach { $0.cancel() } }
    let start = ContinuousClock.now
    for filter in filters {
        let messages = try await bus.subscribeEnvelopes(filter, buffer: 1 << 16)
        consumers.append(Task {
            for await message in messages {
                collected.state.withLock { state in
                    state.latest[message.topic] = message
                    state.last = .now
                }
            }
        })
    }
    collected.state.withLock { $0.last = .now }
    while ContinuousClock.now - start < cap {
        let last = collected.state.withLock { $0.last }
        if ContinuousClock.now - last >= quiet { break }
        try await Task.sleep(for: .milliseconds(20))
    }
    return collected.state.withLock { $0.latest }
}

/// The latest message per topic and when the last one came.
final class RetainedMessages: Sendable {
    struct State {
        var latest: [String: EnvelopeSubscription.Element] = [:]
        var last = ContinuousClock.now
    }
    let state = Mutex(State())
}

/// Decodes the collected messages that carry `P`, by topic.
func payloads<P: BusPayload>(_ messages: [String: EnvelopeSubscription.Element], as type: P.Type) -> [(topic: String, payload: P)] {
    messages.compactMap { topic, message in P.extract(from: message.envelope).map { (topic, $0) } }
        .sorted { $0.topic < $1.topic }
}

/// "12s ago", "5m ago", "3h ago", "2d ago" from a unix ms time; "-" for none.
func age(_ unixMs: Int64) -> String {
    guard unixMs > 0 else { return "-" }
    let seconds = max(0, (Bus.nowUnixMs() - unixMs) / 1000)
    switch seconds {
    case ..<120: return "\(seconds)s ago"
    case ..<7200: return "\(seconds / 60)m ago"
    case ..<172_800: return "\(seconds / 3600)h ago"
    default: return "\(seconds / 86400)d ago"
    }
}
