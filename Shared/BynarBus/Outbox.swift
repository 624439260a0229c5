public import BynarProto
public import BynarStore
import Logging

/// Publishes events so that a broker outage or a crash loses none: each event is written
/// to the service's local store first and deleted only once the broker has acknowledged it.
///
/// Delivery is at least once: after a crash between the broker's acknowledgement and the
/// delete, the event is sent again with the same message id, so receivers can drop it.
/// Events leave in the order they were written.
public final class Outbox: Sendable {
    private let bus: Bus
    private let store: LocalStore
    private let wake = WakeSignal()

    public init(bus: Bus, store: LocalStore) {
        self.bus = bus
        self.store = store
    }

    /// Stores the event and wakes the sender; returns the envelope (its message id is the
    /// one receivers will see). Returns before the broker has it: ``run()`` delivers it.
    @discardableResult
    public func publish<P: BusPayload>(_ payload: P, to topic: String, retain: Bool = false, correlationId: String = "") throws -> Envelope {
        let envelope = bus.envelope(payload, correlationId: correlationId)
        try store.enqueue(messageId: envelope.messageID, topic: topic, payload: Bus.serialize(envelope), retain: retain, createdUnixMs: envelope.createdUnixMs)
        wake.signal()
        return envelope
    }

    /// Sends stored events until the task is cancelled.
    public func run() async {
        var retryDelay = Duration.milliseconds(200)
        while !Task.isCancelled {
            let batch: [LocalStore.OutboxEntry]
            do {
                batch = try store.pendingOutbox(limit: 256)
            } catch {
                bus.logger.error("cannot read outbox", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            if batch.isEmpty {
                await wake.wait(timeout: .seconds(5))
                continue
            }
            var stalled = false
            for entry in batch {
                if Task.isCancelled { return }
                do {
                    try await bus.publish(serialized: entry.payload, to: entry.topic, retain: entry.retain)
                    try store.removeFromOutbox(id: entry.id)
                    retryDelay = .milliseconds(200)
                } catch let error as BusError {
                    if case .publishRefused = error {
                        // The broker will never take it (ACL): park it, loudly, and go on.
                        bus.logger.error("broker refused outbox event; parked", metadata: ["topic": "\(entry.topic)", "message_id": "\(entry.messageId)", "error": "\(error)"])
                        try? store.recordOutboxFailure(id: entry.id, error: "\(error)", refused: true)
                        continue
                    }
                    if case .stopped = error { return }
                    try? store.recordOutboxFailure(id: entry.id, error: "\(error)", refused: false)
                    stalled = true
                } catch {
                    try? store.recordOutboxFailure(id: entry.id, error: "\(error)", refused: false)
                    stalled = true
                }
                if stalled { break }
            }
            if stalled {
                // Keep order: retry from the same event after a pause (capped backoff).
                try? await Task.sleep(for: retryDelay)
                retryDelay = min(retryDelay * 2, .seconds(5))
            }
        }
    }

    /// Waits until every stored event was delivered (or parked), or `timeout` passed.
    /// Returns whether the outbox is empty.
    public func drain(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? store.outboxCounts().pending) == 0 { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return (try? store.outboxCounts().pending) == 0
    }
}
