import BynarConfig
public import BynarProto
public import BynarStore
public import GRDB
import Logging
import Synchronization

/// Publishes events so that a broker outage or a crash loses none: each event is written
/// to the service's local store first and deleted only once the broker has acknowledged it.
///
/// Delivery is at least once: after a crash between the broker's acknowledgement and the
/// delete, the event is sent again with the same message id, so receivers can drop it.
/// Events leave in the order they were written.
///
/// The broker's acknowledgement says the broker has an event, not that its receiver acted
/// on it: libmosquitto 2.0 acknowledges a message to the broker as it hands it over, so a
/// receiver killed before it stored the message loses it. An event whose loss matters and
/// that nothing else confirms is sent "until answered" (``Receipt``): it carries a response
/// topic and its message id as correlation data, stays in the store after the broker took
/// it, and is sent again (same message id, so the receiver drops a copy it has) every
/// `resendAfter` until a reply from the named service comes back. Such events with one
/// correlation id (an incident) go one at a time, in the order they were written.
public final class Outbox: Sendable {
    private let bus: Bus
    private let store: LocalStore
    private let wake = WakeSignal()
    private let receipts: AsyncStream<(messageId: String, responder: Responder)>
    private let receiptsIn: AsyncStream<(messageId: String, responder: Responder)>.Continuation
    /// While false, nothing is sent (a coordinated leader not sure it still leads: a stale
    /// leader must not overwrite a newer one's retained states).
    private let gate: (@Sendable () -> Bool)?
    /// Set when a receipt let a later event of its group go: the sender reads from the start.
    private let rescan = Mutex(false)

    public init(bus: Bus, store: LocalStore, gate: (@Sendable () -> Bool)? = nil) {
        self.bus = bus
        self.store = store
        self.gate = gate
        (receipts, receiptsIn) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1 << 16))
    }

    /// Whose reply confirms an event sent "until answered", and how long to wait for it
    /// before sending the event again. The receiver answers on the event's response topic
    /// with its correlation data (`bus.reply(to:with:)`) once it has stored or done it, and
    /// answers again when a copy it already has comes back.
    public struct Receipt: Sendable, Equatable {
        public var service: String
        public var resendAfter: Duration
        /// Unanswered this long after it was written: given up (logged, kept in the store
        /// as "unanswered", not sent again). Nil: sent until answered, however long.
        public var giveUpAfter: Duration?
        /// True: such events with one correlation id go one at a time, in the order written
        /// (a ticket's comment before its close). False: each on its own.
        public var inOrder: Bool

        public init(from service: String, resendAfter: Duration, giveUpAfter: Duration? = nil, inOrder: Bool = true) {
            self.service = service
            self.resendAfter = resendAfter
            self.giveUpAfter = giveUpAfter
            self.inOrder = inOrder
        }
    }

    /// An event to send once committed.
    public struct Event: Sendable {
        /// Nil: an empty retained message, which clears the topic's retained one.
        public var payload: (any BusPayload)?
        public var topic: String
        public var retain: Bool
        public var correlationId: String
        /// Set: sent until this receipt comes (see ``Outbox``).
        public var receipt: Receipt?
        /// Set: the same envelope (same message id) also goes, retained, to this topic,
        /// right after `topic`: an event on a stream and the retained state it sets, kept
        /// and sent as one (one row, one envelope), the retained ledger told of the copy.
        public var retainedCopy: String?

        public init(_ payload: any BusPayload, to topic: String, retain: Bool = false, correlationId: String = "", receipt: Receipt? = nil,
                    retainedCopy: String? = nil) {
            self.init(payload: payload, topic: topic, retain: retain, correlationId: correlationId)
            self.receipt = receipt
            self.retainedCopy = retainedCopy
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
        var work = Self.batchingNotifications(events)[...]
        // The envelope of a batch found too large: its message id and sequence number go
        // with its first half, so a split leaves no gap in the sequence.
        var unsent: Envelope?
        while let event = work.popFirst() {
            guard let payload = event.payload else {
                messages.append(.init(messageId: "clear-\(Bus.messageIDs.next())", topic: event.topic, payload: [], retain: true, createdUnixMs: Bus.nowUnixMs()))
                continue
            }
            var envelope: Envelope
            if var reused = unsent.take() {
                reused.payload = payload.envelopePayload
                reused.correlationID = event.correlationId
                envelope = reused
            } else {
                envelope = bus.envelope(payload, correlationId: event.correlationId)
            }
            let bytes = try Bus.serialize(envelope)
            if bytes.count > Self.largestBatchBytes, let batch = payload as? Bynar_V1_NotificationBatch, batch.notifications.count > 1 {
                // Too large for one message (long texts): each half on its own, in order.
                unsent = envelope
                let half = batch.notifications.count / 2
                work = [Self.notificationBatch(batch.notifications[..<half], receipt: event.receipt),
                        Self.notificationBatch(batch.notifications[half...], receipt: event.receipt)] + work
                continue
            }
            envelopes.append(envelope)
            messages.append(.init(messageId: envelope.messageID, topic: event.topic, payload: bytes, retain: event.retain,
                                  createdUnixMs: envelope.createdUnixMs, receiptFrom: event.receipt?.service, receiptGroup: event.receipt?.inOrder == false ? envelope.messageID : event.correlationId,
                                  resendAfterMs: event.receipt.map { max(1, $0.resendAfter.wholeMilliseconds) },
                                  giveUpUnixMs: event.receipt?.giveUpAfter.map { envelope.createdUnixMs + $0.wholeMilliseconds },
                                  retainedCopy: event.retainedCopy))
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

    /// How long a cleared retained topic is cleared again after each reconnect.
    static let clearsKeptMs: Int64 = 86_400_000

    /// Sends stored events until the task is cancelled, and takes their receipts.
    public func run() async {
        bus.takeReceipts { [receiptsIn] messageId, responder in receiptsIn.yield((messageId, responder)) }
        let reconnects = bus.reconnects()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.confirmReceipts() }
            group.addTask {
                for await _ in reconnects { self.reassertRetained() }
            }
            await self.send()
            group.cancelAll()
        }
    }

    /// After a reconnect the broker may be back from an older save (mosquitto writes its
    /// retained messages every `autosave_interval` and on a clean stop): every retained
    /// message this service committed is said again, and what it cleared within a day is
    /// cleared again, so no state it has changed since comes back (found by scripts/chaos:
    /// a replaced disk's MISSING revived). The disk health, incident, ticket and
    /// maintenance states all go through here.
    func reassertRetained() {
        do {
            let (said, cleared) = try store.reassertRetained(nowMs: Bus.nowUnixMs(), clearsKeptMs: Self.clearsKeptMs, idPrefix: Bus.messageIDs.next())
            if said + cleared > 0 {
                bus.logger.info("reconnected: retained messages said again", metadata: ["said": "\(said)", "cleared": "\(cleared)"])
                wake.signal()
            }
        } catch {
            bus.logger.error("cannot say the retained messages again after a reconnect", metadata: ["error": "\(error)"])
        }
    }

    /// Forgets each event whose receipt came from the service it waits for.
    private func confirmReceipts() async {
        for await (messageId, responder) in receipts {
            do {
                let confirmation = try store.confirmReceipt(messageId: messageId, from: responder.service)
                if confirmation.confirmed {
                    bus.logger.debug("receipt came; event confirmed", metadata: ["message_id": "\(messageId)", "from": "\(responder)"])
                    if confirmation.unblocks {
                        // The next event of its group may go now: it is earlier than what
                        // the sender read last, so it reads from the start again.
                        rescan.withLock { $0 = true }
                        wake.signal()
                    }
                } else {
                    bus.logger.debug("reply confirms no waiting event (late, a copy's, or not from the service it waits for)",
                                     metadata: ["message_id": "\(messageId)", "from": "\(responder)"])
                }
            } catch {
                // Kept: the event is sent again and the receiver answers again.
                bus.logger.error("cannot record a receipt", metadata: ["message_id": "\(messageId)", "error": "\(error)"])
            }
        }
    }

    /// Most events in one batch to the broker.
    static let batchSize = 1024
    /// What the broker took is written to the store (removed, or kept awaiting its receipt)
    /// once this many have accumulated, or as soon as nothing is left to send: one store
    /// write per this many events, not one per batch, and written while the next batch is
    /// on its way to the broker. A crash before the write sends them again (same message
    /// ids; receivers drop copies).
    static let settleEvery = 2048

    /// Events the broker took whose removal (or wait for a receipt) is not yet written.
    private struct Unsettled {
        var delivered: [Int64] = []
        var awaiting: [Int64] = []
        /// The shortest resend wait among `awaiting` (nil: none, or one without a wait).
        var shortestWait: Int64?
        var waitUnknown = false
        var count: Int { delivered.count + awaiting.count }
    }

    /// Writes what the broker took; returns when the earliest awaiting event is due again
    /// (`resendDue` when none of these awaits).
    private func settle(_ unsettled: inout Unsettled, resendDue: Int64?) throws -> Int64? {
        guard unsettled.count > 0 else { return resendDue }
        let now = Bus.nowUnixMs()
        try store.settleOutbox(delivered: unsettled.delivered, awaiting: unsettled.awaiting, nowMs: now)
        defer { unsettled = Unsettled() }
        guard !unsettled.awaiting.isEmpty else { return resendDue }
        // Each is due again its `resend_after_ms` from now: the earliest is known without
        // scanning every awaiting event in the store.
        if let wait = unsettled.shortestWait, !unsettled.waitUnknown {
            return min(resendDue ?? (now + wait), now + wait)
        }
        return try store.nextResendUnixMs()
    }

    /// A batch handed to the broker whose acknowledgements are awaited.
    private struct Flight {
        var entries: [LocalStore.OutboxEntry]
        var queued: Bus.QueuedPublish
    }

    /// What became of a batch in flight: acknowledged, sent again from its first event
    /// after a pause, or the bus stopped.
    private enum Landing { case landed, stalled, stopped }

    private func send() async {
        var retryDelay = Duration.milliseconds(200)
        // When the earliest event awaiting its receipt is due to go again (nil: none awaits):
        // read at start (events sent before a restart) and after a batch left some awaiting,
        // so the store is written for resends only when one is due, not on every wake.
        var resendDue = try? store.nextResendUnixMs()
        var listening = false
        var unsettled = Unsettled()
        // Every pending event up to this id was acknowledged by the broker (or parked): the
        // next read starts after it (or after the batch in flight). Back to 0, once what the
        // broker took is written, when an earlier event may have become sendable (a
        // receipt, a resend, a failed batch).
        var sentThrough: Int64 = 0
        // The batch queued at the broker whose acknowledgements are still to come: the next
        // batch is read and queued behind it before they are awaited, so the broker's
        // window of unacknowledged messages does not run dry between batches.
        var flight: Flight?
        // Lands `landing`; when its acknowledgements did not come, stalls, to send it again
        // with `behind` (queued after it) from its first event.
        func landed(_ landing: Flight, behind: [LocalStore.OutboxEntry] = []) async -> Landing {
            guard let error = await land(landing, into: &unsettled, sentThrough: &sentThrough) else {
                retryDelay = .milliseconds(200)
                return .landed
            }
            if case BusError.stopped = error { return .stopped }
            await stall(&retryDelay, failed: landing.entries + behind, error: error, unsettled: &unsettled, resendDue: &resendDue, sentThrough: &sentThrough)
            return .stalled
        }
        while !Task.isCancelled {
            if let gate, !gate() {
                try? await Task.sleep(for: .milliseconds(100))
                continue
            }
            let batch: [LocalStore.OutboxEntry]
            do {
                let overdue = resendDue.map { $0 <= Bus.nowUnixMs() } ?? false
                let restart = overdue || rescan.withLock({ flag in defer { flag = false }; return flag })
                if restart, let landing = flight.take() {
                    // Read from the start again only once what is in flight has landed.
                    switch await landed(landing) {
                    case .landed: break
                    case .stalled: continue
                    case .stopped: return
                    }
                }
                if restart {
                    resendDue = try settle(&unsettled, resendDue: resendDue)
                    sentThrough = 0
                }
                if overdue {
                    for given in try store.releaseOverdueReceipts(nowMs: Bus.nowUnixMs()) {
                        bus.logger.error("no receipt came in time; given up, kept in the outbox as unanswered",
                                         metadata: ["topic": "\(given.topic)", "receiver": "\(given.receiptFrom)"])
                    }
                    resendDue = try store.nextResendUnixMs()
                }
                batch = Self.fitting(try store.pendingOutbox(after: flight?.entries.last?.id ?? sentThrough, limit: Self.batchSize))
                if !listening, resendDue != nil || batch.contains(where: { $0.receiptFrom != nil }) {
                    // Receipts come to this client's reply topic (for events sent before a
                    // restart too: its session kept the subscription; the bus holds them).
                    try await bus.ensureReplyRoute()
                    listening = true
                }
                if batch.isEmpty && flight == nil && unsettled.count > 0 {
                    resendDue = try settle(&unsettled, resendDue: resendDue)
                    continue
                }
            } catch BusError.stopped {
                return
            } catch {
                bus.logger.error("cannot read outbox", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            if batch.isEmpty {
                if let landing = flight.take() {
                    if await landed(landing) == .stopped { return }
                    continue
                }
                // Idle until publish() signals or an event's receipt is overdue: no polling,
                // so an idle agent runs no SQL.
                if let resendDue {
                    await wake.wait(upTo: .milliseconds(max(10, resendDue - Bus.nowUnixMs())))
                } else {
                    await wake.wait()
                }
                continue
            }
            // Queued behind the batch in flight, in order; then that one's acknowledgements
            // are awaited while this one goes. Meanwhile what earlier batches delivered is
            // written, when enough has gathered.
            let queued: Bus.QueuedPublish
            do {
                queued = try bus.enqueue(batch: batch.flatMap(outgoing))
            } catch BusError.stopped {
                return
            } catch {
                // What is in flight and this batch go again, in order.
                await stall(&retryDelay, failed: (flight.take()?.entries ?? []) + batch, error: error, unsettled: &unsettled, resendDue: &resendDue, sentThrough: &sentThrough)
                continue
            }
            let next = Flight(entries: batch, queued: queued)
            if let landing = flight.take() {
                // What was queued behind it goes again too, after it, keeping order.
                switch await landed(landing, behind: batch) {
                case .landed: break
                case .stalled: continue
                case .stopped: return
                }
            }
            flight = next
            if unsettled.count >= Self.settleEvery {
                do {
                    resendDue = try settle(&unsettled, resendDue: resendDue)
                } catch {
                    // Kept unsettled: written with the next settle (a crash before that
                    // sends them again; receivers drop copies by id).
                    bus.logger.error("cannot write what the broker took", metadata: ["error": "\(error)"])
                }
            }
        }
    }

    /// Awaits the acknowledgements of `flight` and notes what the broker took (removed
    /// or awaiting its receipt once written) and what it refused (parked). Returns why
    /// they did not come (timed out, broker away; nothing of it noted), nil when they did.
    private func land(_ flight: Flight, into unsettled: inout Unsettled, sentThrough: inout Int64) async -> (any Error)? {
        let refusals: [BusError?]
        do {
            refusals = try await bus.refusals(of: flight.queued)
        } catch {
            return error
        }
        var outcomes = refusals[...]
        for entry in flight.entries {
            // An event and its retained copy: refused if either was.
            let copies = entry.retainedCopy == nil ? 1 : 2
            let refusal = outcomes.prefix(copies).compactMap { $0 }.first
            outcomes = outcomes.dropFirst(copies)
            guard let refusal else {
                if entry.receiptFrom == nil {
                    unsettled.delivered.append(entry.id)
                } else {
                    unsettled.awaiting.append(entry.id)
                    if let wait = entry.resendAfterMs {
                        unsettled.shortestWait = min(unsettled.shortestWait ?? wait, wait)
                    } else {
                        unsettled.waitUnknown = true
                    }
                }
                continue
            }
            // The broker will never take it (ACL): park it, loudly, and go on. A later
            // event of its receipt group, passed over while it was pending, may go now:
            // read from the start again.
            bus.logger.error("broker refused outbox event; parked", metadata: ["topic": "\(entry.topic)", "message_id": "\(entry.messageId)", "error": "\(refusal)"])
            try? store.recordOutboxFailure(id: entry.id, error: "\(refusal)", refused: true)
            if entry.receiptFrom != nil { rescan.withLock { $0 = true } }
        }
        sentThrough = flight.entries.last!.id
        return nil
    }

    /// After a batch went unacknowledged (or could not be queued): its events, and any
    /// queued behind it, are sent again from the first, keeping order (receivers drop
    /// duplicates by id), after a pause (capped backoff) and only once connected:
    /// libmosquitto still holds the unacknowledged copies and sends them itself on
    /// reconnect, so re-sending while away would only pile up.
    private func stall(_ retryDelay: inout Duration, failed: [LocalStore.OutboxEntry], error: any Error, unsettled: inout Unsettled, resendDue: inout Int64?, sentThrough: inout Int64) async {
        bus.logger.warning("outbox batch not acknowledged; will retry", metadata: ["events": "\(failed.count)", "error": "\(error)"])
        for entry in failed { try? store.recordOutboxFailure(id: entry.id, error: "\(error)", refused: false) }
        resendDue = (try? settle(&unsettled, resendDue: resendDue)) ?? resendDue
        sentThrough = 0
        try? await Task.sleep(for: retryDelay)
        retryDelay = min(retryDelay * 2, .seconds(5))
        while !bus.isConnected && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// An event as sent: one sent "until answered" asks for its receipt on this client's
    /// reply topic, and expires at the broker when the next copy is due (a receiver away
    /// for days finds one copy queued, not one per resend). An event with a retained copy
    /// is two messages, the copy second.
    private func outgoing(_ entry: LocalStore.OutboxEntry) -> [MosquittoClient.Outgoing] {
        var properties = PublishProperties()
        if entry.receiptFrom != nil {
            properties.responseTopic = bus.replyTopic
            properties.correlationData = Array(entry.messageId.utf8)
            properties.messageExpirySeconds = UInt32(clamping: max(1, (entry.resendAfterMs ?? 1000) / 1000))
        }
        let own = MosquittoClient.Outgoing(topic: entry.topic, payload: entry.payload, retain: entry.retain, properties: properties)
        guard let copy = entry.retainedCopy else { return [own] }
        return [own, MosquittoClient.Outgoing(topic: copy, payload: entry.payload, retain: true)]
    }

    /// The first events of `entries` whose messages (with their retained copies) fit one
    /// batch to the broker; the rest are read again next time.
    static func fitting(_ entries: [LocalStore.OutboxEntry]) -> [LocalStore.OutboxEntry] {
        var messages = 0
        return Array(entries.prefix { entry in
            messages += entry.retainedCopy == nil ? 1 : 2
            return messages <= Bus.maxBatch
        })
    }

    /// How every service sends a notification (`bynar/v1/notify`): until a notifier answers
    /// it, every 5 minutes, for a day (a Bynar run without a notifier gives up, logged); not
    /// held behind one another (the notifier orders and coalesces them itself). Several
    /// committed together go as one ``Bynar_V1_NotificationBatch`` (``commit(_:state:)``).
    public static func notification(_ note: Bynar_V1_Notification, correlationId: String = "") -> Event {
        Event(note, to: Topics.notifications, correlationId: correlationId,
              receipt: Receipt(from: "notifier", resendAfter: .seconds(300), giveUpAfter: .seconds(86_400), inOrder: false))
    }

    /// Most notifications in one batch message.
    static let largestBatch = 256
    /// A batch message (serialized envelope) larger than this is split in two: well under
    /// the broker's `max_packet_size` (256 KiB in deploy/mosquitto/mosquitto.conf).
    static let largestBatchBytes = 96 * 1024

    /// `events` with the notifications among them (``notification(_:correlationId:)``) as
    /// one ``Bynar_V1_NotificationBatch`` (or one per ``largestBatch``), in the place of the
    /// last of them: every event committed before a notification still goes before it (the
    /// notifier completes a notification from the incident events it has seen). A flood of
    /// failures decided in one batch is then one message, one outbox row, one delivery and
    /// one receipt, not one of each per disk. A single notification goes as it is.
    static func batchingNotifications(_ events: [Event]) -> [Event] {
        func isNotification(_ event: Event) -> Bool {
            event.topic == Topics.notifications && !event.retain && event.retainedCopy == nil && event.receipt != nil && event.payload is Bynar_V1_Notification
        }
        // Those sent until the same receipt as the last (all, unless one was made otherwise).
        guard let receipt = events.last(where: isNotification)?.receipt else { return events }
        func batchable(_ event: Event) -> Bool { isNotification(event) && event.receipt == receipt }
        guard let last = events.lastIndex(where: batchable), events.firstIndex(where: batchable) != last else { return events }
        var result: [Event] = []
        result.reserveCapacity(events.count)
        var notes: [Event] = []
        for (index, event) in events.enumerated() {
            guard batchable(event) else {
                result.append(event)
                continue
            }
            notes.append(event)
            if index == last {
                for start in stride(from: 0, to: notes.count, by: largestBatch) {
                    let chunk = notes[start..<min(start + largestBatch, notes.count)]
                    result.append(chunk.count == 1 ? chunk.first! : notificationBatch(chunk.compactMap { $0.payload as? Bynar_V1_Notification }[...], receipt: receipt))
                }
            }
        }
        return result
    }

    /// Several notifications as a batch sent until `receipt`; one as it is (its incident its
    /// correlation id).
    static func notificationBatch(_ notes: ArraySlice<Bynar_V1_Notification>, receipt: Receipt?) -> Event {
        guard notes.count > 1 else { return Event(notes.first!, to: Topics.notifications, correlationId: notes.first!.incidentID, receipt: receipt) }
        var batch = Bynar_V1_NotificationBatch()
        batch.notifications = Array(notes)
        return Event(batch, to: Topics.notifications, receipt: receipt)
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
