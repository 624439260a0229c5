public import BynarConfig
public import BynarProto
public import Logging
import SwiftProtobuf
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A service's connection to the Bynar bus: typed publish and subscribe of
/// ``Bynar_V1_Envelope`` payloads over MQTT 5, QoS 1, on a persistent session.
///
/// - Every publish waits for the broker's acknowledgement and throws when the broker
///   refuses it (an ACL denial is reason 135), so nothing fails silently.
/// - Subscriptions are bounded async sequences of decoded, typed messages. A payload that
///   does not decode is counted, logged and published to the dead-letter topic; the
///   subscription goes on.
/// - With `announce`, the bus publishes a retained birth on every connect once the service
///   called ``markReady()``, and leaves a retained death as its MQTT will, both carrying the
///   service's session counter.
public final class Bus: Sendable {
    /// Who is talking: this names the sender in every envelope and the birth/death topic.
    public struct Identity: Sendable, Equatable {
        public var service: String
        public var host: String
        /// Grows by one each time the service starts (see `LocalStore.nextSession`).
        public var session: UInt64

        public init(service: String, host: String, session: UInt64) {
            self.service = service
            self.host = host
            self.session = session
        }
    }

    /// Counters, for logs, metrics and tests.
    public struct Stats: Sendable, Equatable {
        public var published: UInt64 = 0
        public var received: UInt64 = 0
        /// Payloads that did not decode or carried the wrong type.
        public var rejected: UInt64 = 0
        public var deadLettered: UInt64 = 0
        /// Messages dropped because a subscriber's buffer was full.
        public var overflowed: UInt64 = 0
        /// Messages that arrived before their subscription was registered (a persistent
        /// session's queue is delivered on connect) and were held for it.
        public var held: UInt64 = 0
        /// Held messages no subscription claimed within ``Bus/heldLimit`` /
        /// ``Bus/heldBytesLimit`` (too many) or ``Bus/heldSeconds`` (too old): dropped,
        /// counted and logged.
        public var unrouted: UInt64 = 0
        /// Messages this service made that the broker or libmosquitto refused for good (an
        /// invalid topic, too large, an ACL denial): dead-lettered, not sent.
        public var refusedOutgoing: UInt64 = 0
        public var connects: UInt64 = 0
        /// Replies handed to the request they answer.
        public var replies: UInt64 = 0
        /// Replies that came for no pending request and no outbox receipt (late, duplicate).
        public var lateReplies: UInt64 = 0
    }

    public let identity: Identity
    public let clientId: String
    /// Who wants to hear of reconnects (``reconnects()``), by registration number.
    private let reconnectWatchers = Mutex<(next: Int, streams: [Int: AsyncStream<Void>.Continuation])>((0, [:]))
    /// Where replies to this client's requests arrive.
    public let replyTopic: String
    let logger: Logger
    private let config: BrokerConfig
    private let announce: Bool
    private let client: MosquittoClient
    private let inflight: AsyncSemaphore
    private let state = Mutex(State())

    /// One element for every connect after the first (several since the last one read count
    /// as one): the outbox says its retained messages again to a broker that may be back from
    /// an older save, the orchestrator its host states. Any number of readers.
    public func reconnects() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let number = reconnectWatchers.withLock { watchers in
            defer { watchers.next += 1 }
            watchers.streams[watchers.next] = continuation
            return watchers.next
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.reconnectWatchers.withLock { $0.streams.removeValue(forKey: number) }
        }
        return stream
    }
    /// Turns of the network thread's loop (about ten a second, connected or not): a number
    /// that stops growing means the thread is stuck (see ``networkLoopTicks``).
    private let ticks = Atomic<UInt64>(0)
    private let startedUnixMs = Bus.nowUnixMs()
    static let messageIDs = MessageIDGenerator()

    struct Route: Sendable {
        /// The filter as subscribed (may be `$share/...`).
        var filter: String
        /// The filter topics are matched against.
        var match: String
        /// Routes of one group feed one subscriber: a message is handed to it once.
        var group: UInt64 = 0
        /// Hands a message over; false when the subscriber's buffer was full.
        var deliver: @Sendable (MQTTMessage) -> Bool
        /// Ends the subscriber's sequence (on shutdown).
        var finish: @Sendable () -> Void = {}
    }

    private struct PendingRequest {
        /// Resumed with the reply and its envelope, decoded and checked by ``deliverReply(_:)``.
        var continuation: CheckedContinuation<(MQTTMessage, Envelope), any Error>
        var deadline: ContinuousClock.Instant
        var topic: String
        /// Who may answer (``Topics/responder(forRequestTopic:)``); nil: anyone.
        var responder: Responder?
    }

    private struct State {
        var routes: [UInt64: Route] = [:]
        var nextRouteId: UInt64 = 0
        /// Filters the broker confirmed for the current session.
        var confirmed: Set<String> = []
        var sequence: UInt64 = 0
        var connected = false
        var lastError = "not connected yet"
        var connectWaiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var nextWaiterId: UInt64 = 0
        var requests: [[UInt8]: PendingRequest] = [:]
        /// No pending request's deadline is before this (nil: none pending): the network
        /// thread looks through them only once one may have passed.
        var nextDeadline: ContinuousClock.Instant?
        /// The reply route's subscription, made once (``ensureReplyRoute()``).
        var replyRoute: Task<Void, any Error>?
        var stats = Stats()
        var lastOverflowLog: ContinuousClock.Instant?
        /// Messages no route matched yet, oldest first, with when they came.
        var held: [(message: MQTTMessage, at: ContinuousClock.Instant)] = []
        var heldBytes = 0
        var shutDown = false
        /// The connection (by `stats.connects`) the last birth was announced on.
        var birthConnection: UInt64 = 0
        /// The service said it is ready (subscribed, set up): births may be announced.
        var ready = false
        /// Takes replies that answer no pending request: receipts for the outbox's
        /// events sent "until answered" (correlation data = their message id).
        var receiptTaker: (@Sendable (_ messageId: String, _ responder: Responder) -> Void)?
    }

    /// Creates the bus; nothing is sent until ``start()``.
    public init(config: BrokerConfig, identity: Identity, logger: Logger, announce: Bool = true) throws {
        for (field, value) in [("service", identity.service), ("host", identity.host)] {
            if let reason = Topic.invalidSegmentReason(value) { throw BusError.encoding("\(field) \(reason)") }
        }
        self.identity = identity
        self.config = config
        self.logger = logger
        self.announce = announce
        self.clientId = config.clientId ?? "\(identity.service)-\(identity.host)"
        self.replyTopic = Topics.replies(clientId: clientId)
        self.inflight = AsyncSemaphore(permits: config.maxInflight)

        var password = config.password
        if let file = config.passwordFile {
            password = try Bus.readFirstLine(file)
        }
        var will: (topic: String, payload: [UInt8])?
        if announce {
            var envelope = Bus.stamp(identity: identity, sequence: 0, correlationId: "")
            envelope.payload = Bus.status(identity, .death, cause: .connectionLost, startedUnixMs: startedUnixMs).envelopePayload
            will = (Topics.serviceStatus(host: identity.host, service: identity.service), try Bus.serialize(envelope))
        }
        let tls = config.tls.map { ($0.caFile, $0.caPath, $0.certFile, $0.keyFile) }
        client = try MosquittoClient(options: MosquittoOptions(
            clientId: clientId, host: config.host, port: Int32(config.port),
            keepaliveSeconds: Int32(config.keepaliveSeconds), sessionExpirySeconds: config.sessionExpirySeconds,
            username: config.username, password: password, tls: tls, will: will,
            reconnectMinSeconds: config.reconnectMinSeconds, reconnectMaxSeconds: config.reconnectMaxSeconds,
            maxInflight: Int32(config.maxInflight)
        ))
    }

    /// Starts connecting in the background; the bus keeps reconnecting (capped
    /// exponential backoff) until ``shutdown()``. Publishes wait for the connection.
    public func start() {
        client.start(MosquittoClient.Handlers(
            onMessage: { [weak self] message in self?.dispatch(message) },
            onEvent: { [weak self] event in self?.handle(event) },
            onTick: { [weak self] in
                _ = self?.ticks.wrappingAdd(1, ordering: .relaxed)
                self?.expireRequests()
            }
        ))
    }

    /// How many times the network thread has turned its loop since ``start()``. It grows
    /// about ten times a second while the thread runs, whether the broker is reachable or
    /// not (the reconnect backoff turns too); the systemd watchdog is fed only while it grows.
    public var networkLoopTicks: UInt64 { ticks.load(ordering: .relaxed) }

    /// Waits for the first accepted connection; throws ``BusError/unreachable(broker:lastError:)``
    /// naming the broker and the last error when it does not come within `timeout`.
    public func waitUntilConnected(timeout: Duration) async throws {
        let id = state.withLock { state -> UInt64? in
            if state.connected { return nil }
            state.nextWaiterId += 1
            return state.nextWaiterId
        }
        guard let id else { return }
        let broker = "\(config.host):\(config.port)"
        let timer = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            guard let self else { return }
            let (waiter, lastError) = self.state.withLock { ($0.connectWaiters.removeValue(forKey: id), $0.lastError) }
            waiter?.resume(throwing: BusError.unreachable(broker: broker, lastError: lastError))
        }
        defer { timer.cancel() }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let done = state.withLock { state -> Bool in
                if state.connected { return true }
                state.connectWaiters[id] = continuation
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Whether the broker connection is up right now.
    public var isConnected: Bool { state.withLock { $0.connected } }

    /// Whether the service called ``markReady()`` (it has subscribed and set itself up).
    public var isMarkedReady: Bool { state.withLock { $0.ready } }

    /// A copy of the counters.
    public var stats: Stats { state.withLock { $0.stats } }
    /// The filters the broker acknowledged for the current session.
    public var subscriptionsConfirmed: Set<String> { state.withLock { $0.confirmed } }

    // MARK: Publishing

    /// A new envelope from this service around `payload`, with a fresh message id and the
    /// next sequence number.
    public func envelope<P: BusPayload>(_ payload: P, correlationId: String = "") -> Envelope {
        let sequence = state.withLock { state -> UInt64 in
            state.sequence += 1
            return state.sequence
        }
        var envelope = Bus.stamp(identity: identity, sequence: sequence, correlationId: correlationId)
        envelope.payload = payload.envelopePayload
        return envelope
    }

    /// Publishes `payload` at QoS 1 and returns once the broker accepted it.
    /// - Throws: ``BusError/publishRefused(topic:reasonCode:reason:)`` when the broker says
    ///   no, ``BusError/timedOut(what:)`` when it does not answer within `publish_timeout_ms`.
    @discardableResult
    public func publish<P: BusPayload>(_ payload: P, to topic: String, retain: Bool = false, correlationId: String = "") async throws -> Envelope {
        let envelope = envelope(payload, correlationId: correlationId)
        try await publish(serialized: Bus.serialize(envelope), to: topic, retain: retain)
        return envelope
    }

    /// Publishes an already serialized envelope (the outbox keeps envelopes serialized so a
    /// re-send carries the same message id).
    /// Removes the retained message on `topic` (publishes a zero-length retained message,
    /// which subscribers never see as a message).
    public func clearRetained(_ topic: String) async throws {
        try await publish(serialized: [], to: topic, retain: true)
    }

    public func publish(serialized bytes: [UInt8], to topic: String, retain: Bool) async throws {
        try await publish(bytes: bytes, to: topic, retain: retain, properties: PublishProperties())
    }

    /// The most messages one ``publish(batch:)`` call takes: the bound on what a batch adds
    /// to libmosquitto's queue.
    public static let maxBatch = 1024

    /// Publishes serialized envelopes back to back, in order, and waits once for all the
    /// broker's acknowledgements (far fewer wake-ups than one awaited publish each).
    /// Returns, per message in order, nil when accepted or the refusal.
    /// - Throws: ``BusError/timedOut(what:)`` when not every acknowledgement came in time
    ///   (some may have been delivered: re-send the batch; receivers drop duplicates by id).
    public func publish(batch: [(bytes: [UInt8], topic: String, retain: Bool)]) async throws -> [BusError?] {
        try await publish(batch: batch.map { MosquittoClient.Outgoing(topic: $0.topic, payload: $0.bytes, retain: $0.retain) })
    }

    /// ``publish(batch:)`` of messages that may carry MQTT 5 properties (the outbox's
    /// events sent "until answered" carry a response topic).
    func publish(batch: [MosquittoClient.Outgoing]) async throws -> [BusError?] {
        try await refusals(of: try enqueue(batch: batch))
    }

    /// A batch handed to libmosquitto by ``enqueue(batch:)``, awaiting its acknowledgements.
    struct QueuedPublish: Sendable {
        let messages: [MosquittoClient.Outgoing]
        let queued: MosquittoClient.QueuedBatch
    }

    /// Hands `batch` to libmosquitto before it returns: batches queued one after the other
    /// go in that order, and the next may be queued while the acknowledgements of the one
    /// before are awaited (``refusals(of:)``).
    func enqueue(batch: [MosquittoClient.Outgoing]) throws -> QueuedPublish {
        precondition(batch.count <= Bus.maxBatch, "a batch holds at most \(Bus.maxBatch) messages")
        return QueuedPublish(messages: batch, queued: try client.enqueueBatch(batch))
    }

    /// Waits for the acknowledgements of a queued batch: nil for each message the broker
    /// took, the refusal for each it or libmosquitto refused for good (dead-lettered).
    func refusals(of published: QueuedPublish) async throws -> [BusError?] {
        let batch = published.messages
        let outcomes = try await client.outcomes(of: published.queued, timeout: .milliseconds(config.publishTimeoutMs) + .milliseconds(batch.count))
        let refusals = zip(outcomes, batch).map { outcome, message -> BusError? in
            switch outcome {
            case .acknowledged(let code):
                code < 0x80 ? nil : BusError.publishRefused(topic: message.topic, reasonCode: code, reason: MosquittoClient.reasonString(code))
            case .notSent(let code, let detail):
                BusError.mosquitto(call: "publish to \(message.topic.prefix(200))", code: code, detail: detail)
            }
        }
        let accepted = refusals.filter { $0 == nil }.count
        state.withLock { $0.stats.published += UInt64(accepted) }
        for (refusal, message) in zip(refusals, batch) {
            if let refusal { deadLetterOutgoing(message.payload, topic: message.topic, why: refusal) }
        }
        return refusals
    }

    /// A message this service made and the broker or libmosquitto will never take: counted,
    /// logged, and put on this service's dead-letter topic (cut to fit) so an operator sees
    /// what was not sent and why. The caller drops or parks it and goes on.
    func deadLetterOutgoing(_ bytes: [UInt8], topic: String, why: BusError) {
        state.withLock { $0.stats.refusedOutgoing += 1 }
        logger.error("message refused for good; not sent", metadata: ["topic": "\(topic.prefix(200))", "bytes": "\(bytes.count)", "error": "\(why)"])
        guard topic != Topics.deadLetter(host: identity.host, service: identity.service) else { return }
        Task { await self.publishDeadLetter(topic: String(topic.prefix(1024)), payload: bytes, reason: "not sent: \(why)") }
    }

    /// Publishes a ``Bynar_V1_DeadLetter`` about `payload` (seen on or meant for `topic`) on
    /// this service's dead-letter topic, the payload cut to ``deadLetterPayloadLimit`` (so
    /// the letter stays under the broker's packet limit) and the reason saying so.
    private func publishDeadLetter(topic: String, payload: [UInt8], reason: String) async {
        var letter = Bynar_V1_DeadLetter()
        letter.topic = topic
        letter.payload = Data(payload.prefix(Bus.deadLetterPayloadLimit))
        letter.reason = payload.count > Bus.deadLetterPayloadLimit
            ? reason + " (payload cut to \(Bus.deadLetterPayloadLimit) of \(payload.count) bytes)"
            : reason
        letter.rejectedByService = identity.service
        letter.rejectedByHost = identity.host
        letter.receivedUnixMs = Bus.nowUnixMs()
        do {
            try await publish(letter, to: Topics.deadLetter(host: identity.host, service: identity.service))
            state.withLock { $0.stats.deadLettered += 1 }
        } catch {
            logger.error("cannot publish dead letter", metadata: ["topic": "\(topic.prefix(200))", "error": "\(error)"])
        }
    }

    func publish(bytes: [UInt8], to topic: String, retain: Bool, properties: PublishProperties) async throws {
        await inflight.acquire()
        defer { inflight.release() }
        let code = try await client.publish(
            topic: topic, payload: bytes, qos: 1, retain: retain, properties: properties,
            timeout: .milliseconds(config.publishTimeoutMs)
        )
        guard code < 0x80 else {
            throw BusError.publishRefused(topic: topic, reasonCode: code, reason: MosquittoClient.reasonString(code))
        }
        state.withLock { $0.stats.published += 1 }
    }

    // MARK: Subscribing

    /// Subscribes to `filter` (QoS 1; `$share/<group>/...` allowed) and yields the messages
    /// that carry a `P`. Anything else arriving there is rejected to the dead-letter topic.
    ///
    /// At most `buffer` (default `subscription_buffer`) messages wait for the consumer;
    /// beyond that new messages are dropped and counted in ``Stats/overflowed``.
    public func subscribe<P: BusPayload>(_ filter: String, as type: P.Type, buffer: Int? = nil) async throws -> Subscription<P> {
        let budget = ByteBudget(limit: config.subscriptionBufferBytes)
        return Subscription(bus: self, stream: try await addRoute(filter, buffer: buffer ?? config.subscriptionBuffer, budget: budget), budget: budget)
    }

    /// Subscribes to `filter` (`bynar/v1/notify`) and yields each notification, those of a
    /// ``Bynar_V1_NotificationBatch`` one by one (``Outbox`` batches the notifications of one
    /// commit). Anything else arriving there is rejected to the dead-letter topic.
    public func subscribeNotifications(_ filter: String, buffer: Int? = nil) async throws -> NotificationSubscription {
        let budget = ByteBudget(limit: config.subscriptionBufferBytes)
        let stream = try await addRoute(filter, buffer: buffer ?? config.subscriptionBuffer, budget: budget)
        return NotificationSubscription(batches: Subscription(bus: self, stream: stream, budget: budget) { bus, message in bus.decodeNotifications(message) })
    }

    /// Subscribes to `filter` and yields every envelope, whatever it carries (for taps and
    /// tools). Payloads that are not envelopes are rejected to the dead-letter topic.
    public func subscribeEnvelopes(_ filter: String, buffer: Int? = nil) async throws -> EnvelopeSubscription {
        let budget = ByteBudget(limit: config.subscriptionBufferBytes)
        return EnvelopeSubscription(bus: self, stream: try await addRoute(filter, buffer: buffer ?? config.subscriptionBuffer, budget: budget), budget: budget)
    }

    /// Subscribes to `filters` (in order) and yields what arrives, in the order the broker
    /// delivered it, whichever filter it came by (decoded by the consumer:
    /// ``OrderedSubscription/Message/decode(as:)``). Each copy the broker sends comes once;
    /// mosquitto sends a message that matches two of the filters twice, one copy per
    /// subscription, so filters that overlap see it twice. For a consumer whose handling
    /// of one topic depends on what came before on another (the notifier completes a
    /// notification from the incident events that arrived before it): separate
    /// subscriptions, read by separate tasks, can be read out of order.
    ///
    /// Its buffer (default) and byte bound are those of as many separate subscriptions.
    public func subscribeInOrder(_ filters: [String], buffer: Int? = nil) async throws -> OrderedSubscription {
        let budget = ByteBudget(limit: config.subscriptionBufferBytes * filters.count)
        let stream = try await addRoutes(filters, buffer: buffer ?? config.subscriptionBuffer * filters.count, budget: budget)
        return OrderedSubscription(bus: self, filters: filters.map(Topics.matchingFilter), stream: stream, budget: budget)
    }

    func addRoute(_ filter: String, buffer: Int, budget: ByteBudget) async throws -> AsyncStream<MQTTMessage> {
        try await addRoutes([filter], buffer: buffer, budget: budget)
    }

    /// One stream fed by a route per filter. The routes are one group: a copy that matches
    /// several of them is yielded once (``dispatch(_:)``).
    private func addRoutes(_ filters: [String], buffer: Int, budget: ByteBudget) async throws -> AsyncStream<MQTTMessage> {
        let (stream, continuation) = AsyncStream.makeStream(of: MQTTMessage.self, bufferingPolicy: .bufferingOldest(buffer))
        let deliver: @Sendable (MQTTMessage) -> Bool = { message in
            // Bounded by count and by bytes: 4096 messages of up to 256 KiB would be 1 GiB.
            guard budget.take(message.payload.count) else { return false }
            if case .dropped = continuation.yield(message) {
                budget.give(message.payload.count)
                return false
            }
            return true
        }
        let ids = state.withLock { state -> [UInt64] in
            // Group 0: a route of its own (no bookkeeping per message in dispatch).
            let group = filters.count > 1 ? state.nextRouteId + 1 : 0
            let routes = filters.map { Route(filter: $0, match: Topics.matchingFilter($0), group: group, deliver: deliver, finish: { continuation.finish() }) }
            var ids: [UInt64] = []
            for route in routes {
                state.nextRouteId += 1
                state.routes[state.nextRouteId] = route
                ids.append(state.nextRouteId)
            }
            // What arrived for these filters before they were registered goes first, in
            // order, under the same lock, so no later message can overtake it. A shared route
            // takes it too: the broker queued it for this session because the session is a
            // member of the group (it gives each message to one member; queued while a killed
            // ticketing was away, it would otherwise be lost). A Bynar service never
            // subscribes to one topic both plainly and shared, so the copy is not another
            // subscription's.
            var kept: [(message: MQTTMessage, at: ContinuousClock.Instant)] = []
            for entry in state.held {
                if routes.contains(where: { Topics.matches(filter: $0.match, topic: entry.message.topic) }) {
                    if !deliver(entry.message) { state.stats.overflowed += 1 }
                } else {
                    kept.append(entry)
                }
            }
            state.held = kept
            state.heldBytes = kept.reduce(0) { $0 + $1.message.payload.count }
            return ids
        }
        continuation.onTermination = { [weak self] _ in
            for id in ids { self?.removeRoute(id) }
        }
        do {
            for filter in filters { try await ensureSubscribed(filter) }
        } catch {
            continuation.finish()
            throw error
        }
        return stream
    }

    private func removeRoute(_ id: UInt64) {
        let unused = state.withLock { state -> String? in
            guard let route = state.routes.removeValue(forKey: id) else { return nil }
            if state.routes.values.contains(where: { $0.filter == route.filter }) { return nil }
            state.confirmed.remove(route.filter)
            return route.filter
        }
        // In a persistent session the subscription belongs to the session, not to this run:
        // a service stopping (its consumers end before the bus shuts down) must leave it at
        // the broker, which then queues what comes while the service is away; unsubscribing
        // here made the broker answer a command sent to a stopped disk-manager with "no
        // matching subscribers" and drop it. Only a clean-session client (the CLI) lets go.
        guard let unused, config.sessionExpirySeconds == 0, !state.withLock({ $0.shutDown }) else { return }
        client.unsubscribe(filter: unused)
    }

    private func ensureSubscribed(_ filter: String) async throws {
        do {
            try await subscribeOnce(filter)
            // Not sent because no connection was up: the next CONNACK subscribes every
            // route again. Should one have come up meanwhile (after its handler listed the
            // routes), nothing would: keep trying until confirmed.
            if client.isConnected, !state.withLock({ $0.confirmed.contains(filter) }) { retrySubscribe(filter) }
        } catch BusError.timedOut(let what) {
            // A transient broker condition (the connection dropped under the SUBSCRIBE, a
            // slow broker) is no reason to stop a service: try again until it is confirmed;
            // the route is registered, so what arrives meanwhile is held for it.
            logger.warning("subscribe not acknowledged; retrying", metadata: ["filter": "\(filter)", "waited_for": "\(what)"])
            retrySubscribe(filter)
        }
    }

    /// One SUBSCRIBE unless `filter` is confirmed already; returns without confirming when
    /// not connected (the next connect subscribes again).
    /// - Throws: ``BusError/subscribeRefused(filter:reasonCode:reason:)``, or the client's
    ///   error (a timeout) when no SUBACK came.
    private func subscribeOnce(_ filter: String) async throws {
        if state.withLock({ $0.confirmed.contains(filter) }) { return }
        guard let granted = try await client.subscribe(filter: filter, qos: 1, timeout: .milliseconds(config.publishTimeoutMs)) else { return }
        guard granted < 0x80 else {
            throw BusError.subscribeRefused(filter: filter, reasonCode: granted, reason: MosquittoClient.reasonString(granted))
        }
        state.withLock { _ = $0.confirmed.insert(filter) }
    }

    /// Subscribes to `filter` again every second until the broker confirms it, the route is
    /// gone, or the bus stops; a refusal is logged (it will not change by retrying).
    private func retrySubscribe(_ filter: String) {
        Task {
            while true {
                try? await Task.sleep(for: .seconds(1))
                let (done, wanted) = state.withLock { state in
                    (state.shutDown || state.confirmed.contains(filter), state.routes.values.contains { $0.filter == filter })
                }
                if done || !wanted { return }
                do {
                    try await subscribeOnce(filter)
                    guard state.withLock({ $0.confirmed.contains(filter) }) else { continue }  // not connected
                    logger.notice("subscribed after retrying", metadata: ["filter": "\(filter)"])
                    return
                } catch BusError.subscribeRefused(_, _, let reason) {
                    logger.error("broker refused subscription", metadata: ["filter": "\(filter)", "reason": "\(reason)"])
                    return
                } catch BusError.stopped {
                    return
                } catch {
                    logger.warning("subscribe not acknowledged; retrying", metadata: ["filter": "\(filter)", "error": "\(error)"])
                }
            }
        }
    }

    /// Runs on the network thread for every incoming message.
    private func dispatch(_ message: MQTTMessage) {
        // A zero-length message clears a retained topic (``clearRetained(_:)``); it carries
        // no envelope and is nobody's to decode.
        if message.payload.isEmpty { return }
        var expired: [MQTTMessage] = []
        // `received` is counted once the message is dealt with (held, or offered to every
        // subscription with its overflow counted), so a reader that sees `received` reach N
        // also sees the overflow of those N.
        let targets = state.withLock { state -> [Route] in
            let targets = state.routes.values.filter { Topics.matches(filter: $0.match, topic: message.topic) }
            if targets.isEmpty {
                state.stats.received += 1
                // Queued for this session before the service subscribed to it again (the
                // broker delivers a persistent session's queue on connect): hold it for the
                // subscription that is about to be registered, within bounds.
                state.held.append((message, ContinuousClock.now))
                state.heldBytes += message.payload.count
                state.stats.held += 1
                expired = Self.expireHeld(&state)
            }
            return targets
        }
        for message in expired {
            logger.warning("no subscription took a message in time; dropped", metadata: ["topic": "\(message.topic)", "bytes": "\(message.payload.count)"])
        }
        guard !targets.isEmpty else { return }
        var dropped = 0
        var groups: [UInt64] = []
        for route in targets where route.group == 0 || !groups.contains(route.group) {
            if route.group != 0 { groups.append(route.group) }
            if !route.deliver(message) { dropped += 1 }
        }
        let shouldLog = state.withLock { state -> Bool in
            state.stats.received += 1
            guard dropped > 0 else { return false }
            state.stats.overflowed += UInt64(dropped)
            let now = ContinuousClock.now
            if let last = state.lastOverflowLog, now - last < .seconds(10) { return false }
            state.lastOverflowLog = now
            return true
        }
        if shouldLog {
            logger.warning("subscriber buffer full: dropped message", metadata: ["topic": "\(message.topic)", "overflowed_total": "\(stats.overflowed)"])
        }
    }

    /// At most this many messages (and ``heldBytesLimit`` bytes) are held for subscriptions
    /// not registered yet...
    public static let heldLimit = 10_000
    public static let heldBytesLimit = 16 << 20
    /// ...for at most this long.
    public static let heldSeconds = 120

    /// Drops held messages beyond ``heldLimit`` or older than ``heldSeconds``; returns them.
    private static func expireHeld(_ state: inout State) -> [MQTTMessage] {
        let cutoff = ContinuousClock.now - .seconds(heldSeconds)
        var dropped: [MQTTMessage] = []
        while let first = state.held.first, state.held.count > heldLimit || state.heldBytes > heldBytesLimit || first.at < cutoff {
            dropped.append(first.message)
            state.heldBytes -= first.message.payload.count
            state.held.removeFirst()
        }
        state.stats.unrouted += UInt64(dropped.count)
        return dropped
    }

    /// Decodes an incoming message as an envelope carrying `P`, or says why not.
    func decode<P: BusPayload>(_ message: MQTTMessage, as type: P.Type) -> Result<Received<P>, RejectReason> {
        switch decodeEnvelope(message) {
        case .failure(let reason):
            return .failure(reason)
        case .success(let envelope):
            guard let payload = P.extract(from: envelope) else {
                let carried = envelope.payload?.payloadName ?? "nothing"
                return .failure(RejectReason(text: "envelope carries \(carried), expected \(P.payloadName)"))
            }
            return .success(Received(payload: payload, envelope: envelope, message: message))
        }
    }

    /// A message on `bynar/v1/notify`: a ``Bynar_V1_NotificationBatch`` as it is, a single
    /// ``Bynar_V1_Notification`` as a batch of one.
    func decodeNotifications(_ message: MQTTMessage) -> Result<Received<Bynar_V1_NotificationBatch>, RejectReason> {
        switch decodeEnvelope(message) {
        case .failure(let reason):
            return .failure(reason)
        case .success(let envelope):
            switch envelope.payload {
            case .notificationBatch(let batch)?:
                return .success(Received(payload: batch, envelope: envelope, message: message))
            case .notification(let note)?:
                var batch = Bynar_V1_NotificationBatch()
                batch.notifications = [note]
                return .success(Received(payload: batch, envelope: envelope, message: message))
            default:
                let carried = envelope.payload?.payloadName ?? "nothing"
                return .failure(RejectReason(text: "envelope carries \(carried), expected notification or notification_batch"))
            }
        }
    }

    func decodeEnvelope(_ message: MQTTMessage) -> Result<Envelope, RejectReason> {
        let envelope: Envelope
        do {
            envelope = try Envelope(serializedBytes: message.payload)
        } catch {
            return .failure(RejectReason(text: "not a bynar.v1.Envelope (\(message.payload.count) bytes): \(error)"))
        }
        // The topic is what the broker checked; a payload claiming otherwise is not believed.
        if let mismatch = TopicClaims.mismatch(topic: message.topic, envelope: envelope) {
            return .failure(RejectReason(text: "claims disagree with the topic: \(mismatch)"))
        }
        return .success(envelope)
    }

    /// Counts, logs and dead-letters a message that could not be used; answers a request
    /// with an ErrorReply so the caller is not left waiting.
    func reject(_ message: MQTTMessage, reason: RejectReason) {
        state.withLock { $0.stats.rejected += 1 }
        logger.warning("rejected message", metadata: ["topic": "\(message.topic)", "reason": "\(reason.text)"])
        guard !message.topic.hasPrefix("\(Topics.root)/deadletter/") else { return }
        Task {
            await self.publishDeadLetter(topic: message.topic, payload: message.payload, reason: reason.text)
            if let responseTopic = message.responseTopic {
                var reply = Bynar_V1_ErrorReply()
                reply.code = .malformed
                reply.message = reason.text
                try? await self.send(reply, to: responseTopic, correlationData: message.correlationData ?? [], correlationId: "")
            }
        }
    }

    // MARK: Request / response

    /// Sends `request` to `topic` with an MQTT 5 response topic, correlation data and a
    /// message expiry of `timeout`, and waits for the reply.
    /// - Throws: ``BusError/timedOut(what:)`` when no reply comes in time,
    ///   ``BusError/requestRefused(code:message:)`` when the responder answers with an
    ///   ErrorReply, ``BusError/badReply(_:)`` when the reply is not a `Res`.
    public func request<Req: BusPayload, Res: BusPayload>(
        _ request: Req, to topic: String, expecting: Res.Type, timeout: Duration, correlationId: String = ""
    ) async throws -> Received<Res> {
        try await ensureReplyRoute()
        let envelope = envelope(request, correlationId: correlationId)
        let key = Array(envelope.messageID.utf8)
        let bytes = try Bus.serialize(envelope)
        let seconds = timeout.components.seconds + (timeout.components.attoseconds > 0 ? 1 : 0)
        let properties = PublishProperties(responseTopic: replyTopic, correlationData: key, messageExpirySeconds: UInt32(max(1, seconds)))
        let (message, reply): (MQTTMessage, Envelope) = try await withCheckedThrowingContinuation { continuation in
            let responder = Topics.responder(forRequestTopic: topic)
            let deadline = ContinuousClock.now + timeout
            state.withLock { state in
                state.requests[key] = PendingRequest(continuation: continuation, deadline: deadline, topic: topic, responder: responder)
                state.nextDeadline = min(state.nextDeadline ?? deadline, deadline)
            }
            Task {
                do {
                    try await self.publish(bytes: bytes, to: topic, retain: false, properties: properties)
                } catch {
                    self.state.withLock { $0.requests.removeValue(forKey: key) }?.continuation.resume(throwing: error)
                }
            }
        }
        if let error = Bynar_V1_ErrorReply.extract(from: reply) {
            throw BusError.requestRefused(code: "\(error.code)", message: error.message)
        }
        guard let payload = Res.extract(from: reply) else {
            throw BusError.badReply("expected \(Res.payloadName), got \(reply.payload?.payloadName ?? "nothing")")
        }
        return Received(payload: payload, envelope: reply, message: message)
    }

    /// Answers a request received on a subscription, with its correlation data, on
    /// ``Topics/reply(to:host:service:)`` below its response topic: the topic names this
    /// service, which the broker lets nobody else publish on. Does nothing for a message
    /// that asked for no answer.
    /// - Throws: ``BusError/encoding(_:)`` when the response topic is not a Bynar reply
    ///   topic (a forged request must not make a responder publish anywhere else).
    public func reply<Req, Res: BusPayload>(to request: Received<Req>, with response: Res) async throws {
        guard let topic = request.responseTopic else { return }
        try await send(response, to: topic, correlationData: request.correlationData ?? [], correlationId: request.envelope.correlationID)
    }

    /// Answers as `service` on `host` instead of this bus's own identity: for
    /// `DiskManagerSimulator`, which stands in for many hosts' disk-managers on one
    /// connection. The broker's ACL decides whether the connection may publish there; a
    /// production identity may answer only as itself.
    public func reply<Req, Res: BusPayload>(to request: Received<Req>, with response: Res, asHost host: String, service: String) async throws {
        guard let topic = request.responseTopic else { return }
        var responder = identity
        responder.host = host
        responder.service = service
        try await send(response, to: topic, correlationData: request.correlationData ?? [], correlationId: request.envelope.correlationID, as: responder)
    }

    private func send<P: BusPayload>(
        _ payload: P, to responseTopic: String, correlationData: [UInt8], correlationId: String, as responder: Identity? = nil
    ) async throws {
        if let reason = Topics.invalidResponseTopicReason(responseTopic) {
            logger.warning("not answering a request", metadata: ["reason": "\(reason)"])
            throw BusError.encoding(reason)
        }
        let responder = responder ?? identity
        var envelope = envelope(payload, correlationId: correlationId)
        envelope.sourceHost = responder.host
        envelope.sourceService = responder.service
        let bytes = try Bus.serialize(envelope)
        let topic = Topics.reply(to: responseTopic, host: responder.host, service: responder.service)
        try await publish(bytes: bytes, to: topic, retain: false, properties: PublishProperties(correlationData: correlationData))
    }

    /// Hands a reply to the request it answers, if it came from whom the request was sent to
    /// (the reply topic's last two levels, which the broker's ACL vouches for) and its claims
    /// agree with that topic. Anything else is rejected (counted, logged, dead-lettered) and
    /// the request keeps waiting for its real answer.
    private func deliverReply(_ message: MQTTMessage) {
        guard let key = message.correlationData else {
            reject(message, reason: RejectReason(text: "reply without correlation data"))
            return
        }
        let (pending, receiptTaker) = state.withLock { ($0.requests[key], $0.receiptTaker) }
        guard let responder = Topics.responder(ofReply: message.topic, responseTopic: replyTopic) else {
            reject(message, reason: RejectReason(text: "reply on \(message.topic) names no responder (expected \(replyTopic)/{host}/{service})"))
            return
        }
        guard let pending else {
            // A receipt for an event the outbox sent "until answered" (which checks that the
            // responder is the one the event waits for), or a late or duplicate reply.
            if let receiptTaker { receiptTaker(String(decoding: key, as: UTF8.self), responder) } else {
                state.withLock { $0.stats.lateReplies += 1 }
                logger.debug("reply for no pending request (late or duplicate)", metadata: ["topic": "\(message.topic)"])
            }
            return
        }
        if let expected = pending.responder, !expected.admits(responder) {
            reject(message, reason: RejectReason(text: "reply to the request on \(pending.topic) came from \(responder), which was not asked (expected \(expected))"))
            return
        }
        let envelope: Envelope
        switch decodeEnvelope(message) {
        case .failure(let reason):
            reject(message, reason: reason)
            return
        case .success(let decoded):
            envelope = decoded
        }
        if let taken = state.withLock({ state in
            state.requests.removeValue(forKey: key).map { taken in
                state.stats.replies += 1
                return taken
            }
        }) {
            taken.continuation.resume(returning: (message, envelope))
        }
    }

    /// Hands replies that answer no pending request to `taker` (the outbox's receipts).
    func takeReceipts(_ taker: @escaping @Sendable (_ messageId: String, _ responder: Responder) -> Void) {
        state.withLock { $0.receiptTaker = taker }
    }

    /// Subscribes this client's reply topic (once). Every caller returns only once the
    /// first one's SUBSCRIBE was answered (or found no connection, which subscribes it on
    /// connect): a request sent before could have its reply dropped by the broker.
    func ensureReplyRoute() async throws {
        let subscribing = state.withLock { state -> Task<Void, any Error> in
            if let existing = state.replyRoute { return existing }
            let filter = replyTopic + "/+/+"
            state.nextRouteId += 1
            state.routes[state.nextRouteId] = Route(filter: filter, match: filter) { [weak self] message in
                self?.deliverReply(message)
                return true
            }
            let id = state.nextRouteId
            let task = Task {
                do { try await self.ensureSubscribed(filter) } catch {
                    // Refused, or the library failed: the next request tries again.
                    self.state.withLock { state in
                        state.routes.removeValue(forKey: id)
                        state.replyRoute = nil
                    }
                    throw error
                }
            }
            state.replyRoute = task
            return task
        }
        try await subscribing.value
    }

    /// Runs on the network thread: fails requests whose deadline passed.
    private func expireRequests() {
        let now = ContinuousClock.now
        let (expired, route) = state.withLock { state -> ([PendingRequest], String) in
            // Ten times a second: with thousands of requests pending, looking through them
            // all each time was a few percent of the orchestrator's CPU in a flood.
            guard let next = state.nextDeadline, next <= now else { return ([], "") }
            var keys: [[UInt8]] = []
            var earliest: ContinuousClock.Instant?
            for (key, request) in state.requests {
                if request.deadline <= now { keys.append(key) } else { earliest = min(earliest ?? request.deadline, request.deadline) }
            }
            state.nextDeadline = earliest
            // What a timeout's reader needs to tell a silent responder from a deaf requester.
            let route = "reply route \(state.confirmed.contains(replyTopic + "/+/+") ? "subscribed" : "NOT subscribed"), "
                + "\(state.stats.replies) replies taken and \(state.stats.lateReplies) late ones this run"
            return (keys.compactMap { state.requests.removeValue(forKey: $0) }, route)
        }
        for request in expired {
            request.continuation.resume(throwing: BusError.timedOut(what: "reply to request on \(request.topic) (\(route))"))
        }
    }

    // MARK: Connection

    private func handle(_ event: ConnectionEvent) {
        switch event {
        case .connected(let sessionPresent):
            let (waiters, resubscribe) = state.withLock { state -> ([CheckedContinuation<Void, any Error>], Set<String>) in
                state.connected = true
                state.stats.connects += 1
                if !sessionPresent {
                    state.confirmed = []
                } else {
                    // mosquitto (2.0.11) brings a session back from its persistence file after
                    // a crash with its plain subscriptions but not its shared ones, and still
                    // says "session present": ticketing went deaf to ticket/cmd for good
                    // (scripts/chaos). Shared filters are subscribed again on every connect;
                    // a shared subscription gets no retained messages, so nothing comes twice.
                    state.confirmed = state.confirmed.filter { !$0.hasPrefix("$share/") }
                }
                defer { state.connectWaiters = [:] }
                return (Array(state.connectWaiters.values), Set(state.routes.values.map(\.filter)).subtracting(state.confirmed))
            }
            logger.info("connected to broker", metadata: ["broker": "\(config.host):\(config.port)", "session_present": "\(sessionPresent)", "client_id": "\(clientId)"])
            for waiter in waiters { waiter.resume() }
            if stats.connects > 1 {
                for watcher in reconnectWatchers.withLock({ Array($0.streams.values) }) { watcher.yield() }
            }
            Task {
                for filter in resubscribe.sorted() {
                    do { try await self.ensureSubscribed(filter) } catch {
                        self.logger.error("cannot subscribe after reconnect", metadata: ["filter": "\(filter)", "error": "\(error)"])
                    }
                }
                if self.announce && self.state.withLock({ $0.ready }) { await self.announceBirth() }
            }
        case .connectFailed(let reason):
            state.withLock { $0.lastError = reason }
            logger.warning("cannot connect to broker", metadata: ["reason": "\(reason)"])
        case .refused(let reason):
            // Tell whoever waits now; the network thread keeps retrying (with backoff) in
            // case the broker's configuration is being fixed.
            let waiters = state.withLock { state in
                state.lastError = reason
                defer { state.connectWaiters = [:] }
                return Array(state.connectWaiters.values)
            }
            logger.error("broker refused the connection", metadata: ["reason": "\(reason)"])
            let broker = "\(config.host):\(config.port)"
            for waiter in waiters { waiter.resume(throwing: BusError.unreachable(broker: broker, lastError: reason)) }
        case .disconnected(let reason):
            let shuttingDown = state.withLock { state -> Bool in
                state.connected = false
                state.lastError = "connection lost: \(reason)"
                return state.shutDown
            }
            logger.log(level: shuttingDown ? .info : .warning, "disconnected from broker", metadata: ["reason": "\(reason)"])
        }
    }

    /// Says the service is ready to take messages (it has subscribed and set itself up): the
    /// retained birth goes out now if connected, and on every later connect. Until then a
    /// caller watching for the birth does not send into subscriptions that do not exist yet.
    public func markReady() async {
        let connected = state.withLock { state -> Bool in
            state.ready = true
            return state.connected
        }
        if announce && connected { await announceBirth() }
    }

    private func announceBirth() async {
        // Once per connection: markReady and the connect handler can both get here for the
        // same connection, and a second birth reads as a second "up" to whoever watches.
        let first = state.withLock { state -> Bool in
            guard state.birthConnection != state.stats.connects else { return false }
            state.birthConnection = state.stats.connects
            return true
        }
        guard first else { return }
        let birth = Bus.status(identity, .birth, cause: .unspecified, startedUnixMs: startedUnixMs)
        do {
            try await publish(birth, to: Topics.serviceStatus(host: identity.host, service: identity.service), retain: true)
        } catch {
            logger.error("cannot publish birth", metadata: ["error": "\(error)"])
        }
    }

    /// Publishes a clean death (when announcing), disconnects normally so the broker drops
    /// the will, and stops the network thread. Pending waits fail with ``BusError/stopped``.
    public func shutdown() async {
        if announce && isConnected {
            let death = Bus.status(identity, .death, cause: .cleanShutdown, startedUnixMs: startedUnixMs)
            do {
                try await publish(death, to: Topics.serviceStatus(host: identity.host, service: identity.service), retain: true)
            } catch {
                logger.error("cannot publish death", metadata: ["error": "\(error)"])
            }
        }
        state.withLock { $0.shutDown = true }
        await client.stop()
        let (requests, waiters, routes) = state.withLock { state in
            defer { state.requests = [:]; state.connectWaiters = [:] }
            return (Array(state.requests.values), Array(state.connectWaiters.values), Array(state.routes.values))
        }
        for route in routes { route.finish() }
        for request in requests { request.continuation.resume(throwing: BusError.stopped) }
        for waiter in waiters { waiter.resume(throwing: BusError.stopped) }
    }

    // MARK: Helpers

    /// Most bytes of a rejected payload a dead letter carries.
    public static let deadLetterPayloadLimit = 64 * 1024

    static func stamp(identity: Identity, sequence: UInt64, correlationId: String) -> Envelope {
        var envelope = Envelope()
        envelope.messageID = messageIDs.next()
        envelope.sourceService = identity.service
        envelope.sourceHost = identity.host
        envelope.createdUnixMs = nowUnixMs()
        envelope.session = identity.session
        envelope.sequence = sequence
        envelope.correlationID = correlationId
        return envelope
    }

    static func status(_ identity: Identity, _ state: Bynar_V1_ServiceStatus.State, cause: Bynar_V1_ServiceStatus.DeathCause, startedUnixMs: Int64) -> Bynar_V1_ServiceStatus {
        var status = Bynar_V1_ServiceStatus()
        status.service = identity.service
        status.host = identity.host
        status.state = state
        status.session = identity.session
        status.pid = UInt32(getpid())
        status.version = bynarVersion
        status.startedUnixMs = startedUnixMs
        status.deathCause = cause
        return status
    }

    /// An envelope's wire bytes.
    public static func serialize(_ envelope: Envelope) throws -> [UInt8] {
        do { return try envelope.serializedBytes() } catch { throw BusError.encoding("\(error)") }
    }

    /// Wall-clock time in Unix epoch milliseconds.
    public static func nowUnixMs() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }

    private static func readFirstLine(_ path: String) throws -> String {
        guard let file = fopen(path, "r") else {
            throw BusError.encoding("cannot read broker.password_file \(path): \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 4096)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { return "" }
        let line = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return line.hasSuffix("\n") ? String(line.dropLast()) : line
    }
}

/// The version every service reports in its birth message.
public let bynarVersion = "0.1.0"

/// Why an incoming message was rejected.
struct RejectReason: Error, Sendable {
    var text: String
}

/// Bytes a subscription's buffer holds for its consumer, bounded: a message that would
/// pass the limit is refused (counted as overflow), except into an empty buffer, so one
/// large message is never refused for ever.
final class ByteBudget: Sendable {
    let limit: Int
    private let used = Mutex(0)

    init(limit: Int) { self.limit = limit }

    /// Reserves `bytes`; false when they do not fit.
    func take(_ bytes: Int) -> Bool {
        used.withLock { used in
            guard used == 0 || used + bytes <= limit else { return false }
            used += bytes
            return true
        }
    }

    /// The consumer took a message of `bytes` out of the buffer.
    func give(_ bytes: Int) {
        used.withLock { $0 = max(0, $0 - bytes) }
    }
}
