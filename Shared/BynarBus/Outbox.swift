public import BynarProto
public import BynarStore
public import GRDB
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

    /// An event to send once committed.
    public struct Event: Sendable {
        /// Nil: an empty retained message, which clears the topic's retained one.
        public var payload: (any BusPayload)?
        public var topic: String
        public var retain: Bool
        public var correlationId: String

        public init(_ payload: any BusPayload, to topic: String, retain: Bool = false, correlationId: String = "") {
            self.init(payload: payload, topic: topic, retain: retain, correlationId: correlationId)
        }

        private init(payload: (any BusPayload)?, topic: String, retain: Bool, correlationId: String) {
            self.payload = payload
            self.topic = topic
            self.retain = retain
            self.correlationId = correlationId
        }

        /// Clears the retained message of `topic`.
        public static func clearRetained(_ topic: String) -> Event {
            Event(payload: nil, topic: topic, retain: true, correlationId: "")
        }
    }

    /// The one way a service commits a decision: its new state (`state`, on its own tables)
    /// and the events that report it in one SQLite transaction, then the sender is woken.
    /// Returns before the broker has them: ``run()`` delivers them, in order, at least once.
    @discardableResult
    public func commit(_ events: [Event], state: (Database) throws -> Void = { _ in }) throws -> [Envelope] {
        var envelopes: [Envelope] = []
        var messages: [LocalStore.OutgoingMessage] = []
        for event in events {
            guard let payload = event.payload else {
                messages.append(.init(messageId: "clear-\(Bus.messageIDs.next())", topic: event.topic, payload: [], retain: true, createdUnixMs: Bus.nowUnixMs()))
                continue
            }
            let envelope = bus.envelope(payload, correlationId: event.correlationId)
            envelopes.append(envelope)
            messages.append(.init(messageId: envelope.messageID, topic: event.topic, payload: try Bus.serialize(envelope), retain: event.retain,
                                  createdUnixMs: envelope.createdUnixMs))
        }
        try store.commit(messages, state: state)
        if !messages.isEmpty { wake.signal() }
        return envelopes
    }

    /// Stores the event and wakes the sender; returns the envelope (its message id is the
    /// one receivers will see). Returns before the broker has it: ``run()`` delivers it.
    @discardableResult
    public func publish<P: BusPayload>(_ payload: P, to topic: String, retain: Bool = false, correlationId: String = "") throws -> Envelope {
        try commit([Event(payload, to: topic, retain: retain, correlationId: correlationId)]).first!
    }

    /// Stores a zero-length retained message for `topic`, which makes the broker forget what
    /// it retains there (subscribers never see it as a message). Sent in order with the
    /// events stored before it, and as durably: a crash before the broker has it loses nothing.
    public func clearRetained(_ topic: String) throws {
        try commit([.clearRetained(topic)])
    }

    /// Sends stored events until the task is cancelled.
    public func run() async {
        var retryDelay = Duration.milliseconds(200)
        while !Task.isCancelled {
            let batch: [LocalStore.OutboxEntry]
            do {
                batch = try store.pendingOutbox(limit: 256)  // well under Bus.maxBatch
            } catch {
                bus.logger.error("cannot read outbox", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            if batch.isEmpty {
                // Idle until publish() signals: no polling, so an idle agent runs no SQL.
                await wake.wait()
                continue
            }
            var stalled = false
            do {
                // One batch, in order, pipelined: the broker acknowledges each message.
                let outcomes = try await bus.publish(batch: batch.map { ($0.payload, $0.topic, $0.retain) })
                var delivered: [Int64] = []
                for (entry, refusal) in zip(batch, outcomes) {
                    guard let refusal else {
                        delivered.append(entry.id)
                        continue
                    }
                    // The broker will never take it (ACL): park it, loudly, and go on.
                    bus.logger.error("broker refused outbox event; parked", metadata: ["topic": "\(entry.topic)", "message_id": "\(entry.messageId)", "error": "\(refusal)"])
                    try? store.recordOutboxFailure(id: entry.id, error: "\(refusal)", refused: true)
                }
                try store.removeFromOutbox(ids: delivered)
                retryDelay = .milliseconds(200)
            } catch BusError.stopped {
                return
            } catch {
                // Timed out (broker away) or the store failed: the whole batch is sent again
                // from its first event, keeping order; receivers drop duplicates by id.
                bus.logger.warning("outbox batch not acknowledged; will retry", metadata: ["events": "\(batch.count)", "error": "\(error)"])
                for entry in batch { try? store.recordOutboxFailure(id: entry.id, error: "\(error)", refused: false) }
                stalled = true
            }
            if stalled {
                // Keep order: retry from the same event after a pause (capped backoff), and
                // only once connected: libmosquitto still holds the unacknowledged copies and
                // sends them itself on reconnect, so re-sending while away would only pile up.
                try? await Task.sleep(for: retryDelay)
                retryDelay = min(retryDelay * 2, .seconds(5))
                while !bus.isConnected && !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(100))
                }
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
