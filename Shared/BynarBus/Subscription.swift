public import BynarProto

/// A message taken off the bus: the typed payload, its envelope and how it arrived.
public struct Received<P: BusPayload>: Sendable {
    public var payload: P
    public var envelope: Envelope
    public var topic: String
    /// True when the broker delivered it as the retained message on subscribe.
    public var retained: Bool
    /// Set when the sender expects an answer (see ``Bus/reply(to:with:)``).
    public var responseTopic: String?
    public var correlationData: [UInt8]?

    init(payload: P, envelope: Envelope, message: MQTTMessage) {
        self.payload = payload
        self.envelope = envelope
        self.topic = message.topic
        self.retained = message.retain
        self.responseTopic = message.responseTopic
        self.correlationData = message.correlationData
    }

    /// `payload`, taken from the message `other` came in (one notification of a batch).
    init<Q>(payload: P, from other: Received<Q>) {
        self.payload = payload
        self.envelope = other.envelope
        self.topic = other.topic
        self.retained = other.retained
        self.responseTopic = other.responseTopic
        self.correlationData = other.correlationData
    }
}

/// Notifications from one topic filter, one at a time: a ``Bynar_V1_NotificationBatch``
/// yields each of its notifications in order (each with the batch's envelope), a single
/// ``Bynar_V1_Notification`` itself (``Bus/subscribeNotifications(_:buffer:)``).
public struct NotificationSubscription: AsyncSequence, Sendable {
    public typealias Element = Received<Bynar_V1_Notification>
    /// Every message as a batch (of one for a single notification).
    let batches: Subscription<Bynar_V1_NotificationBatch>

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: Subscription<Bynar_V1_NotificationBatch>.AsyncIterator
        var waiting: [Element] = []

        public mutating func next() async -> Element? {
            await next(isolation: nil)
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> Element? {
            while waiting.isEmpty, let batch = await base.next(isolation: actor) {
                waiting = batch.payload.notifications.reversed().map { Received(payload: $0, from: batch) }
            }
            return waiting.popLast()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: batches.makeAsyncIterator())
    }
}

/// Decoded messages of one type from one topic filter. Ends when the bus shuts down or
/// the consuming task is cancelled (which unsubscribes only a clean-session client: a
/// persistent session keeps its subscriptions for the next run).
public struct Subscription<P: BusPayload>: AsyncSequence, Sendable {
    public typealias Element = Received<P>
    let bus: Bus
    let stream: AsyncStream<MQTTMessage>
    let budget: ByteBudget
    /// How a message becomes a `P` (a notification subscription takes a single
    /// notification as a batch of one: ``Bus/decodeNotifications(_:)``).
    var decode: @Sendable (Bus, MQTTMessage) -> Result<Received<P>, RejectReason> = { bus, message in bus.decode(message, as: P.self) }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let bus: Bus
        var base: AsyncStream<MQTTMessage>.Iterator
        let budget: ByteBudget
        let decode: @Sendable (Bus, MQTTMessage) -> Result<Received<P>, RejectReason>

        public mutating func next() async -> Received<P>? {
            await next(isolation: nil)
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> Received<P>? {
            while let message = await base.next(isolation: actor) {
                budget.give(message.payload.count)
                switch decode(bus, message) {
                case .success(let received): return received
                case .failure(let reason): bus.reject(message, reason: reason)
                }
            }
            return nil
        }

    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(bus: bus, base: stream.makeAsyncIterator(), budget: budget, decode: decode)
    }
}

/// Every envelope from one topic filter, whatever it carries, with the topic it came on.
public struct EnvelopeSubscription: AsyncSequence, Sendable {
    public struct Element: Sendable {
        public var topic: String
        public var retained: Bool
        public var envelope: Envelope
    }
    let bus: Bus
    let stream: AsyncStream<MQTTMessage>
    let budget: ByteBudget

    public struct AsyncIterator: AsyncIteratorProtocol {
        let bus: Bus
        var base: AsyncStream<MQTTMessage>.Iterator
        let budget: ByteBudget

        public mutating func next() async -> Element? {
            await next(isolation: nil)
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> Element? {
            while let message = await base.next(isolation: actor) {
                budget.give(message.payload.count)
                switch bus.decodeEnvelope(message) {
                case .success(let envelope): return Element(topic: message.topic, retained: message.retain, envelope: envelope)
                case .failure(let reason): bus.reject(message, reason: reason)
                }
            }
            return nil
        }

    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(bus: bus, base: stream.makeAsyncIterator(), budget: budget)
    }
}

/// Messages from several topic filters in the order the broker delivered them
/// (``Bus/subscribeInOrder(_:buffer:)``). Each is decoded by the consumer, by the filter it
/// came by.
public struct OrderedSubscription: AsyncSequence, Sendable {
    public struct Message: Sendable {
        let bus: Bus
        let message: MQTTMessage
        public var topic: String { message.topic }
        /// Which of the subscribed filters (their index) the topic matches; the first one
        /// when it matches several.
        public let filterIndex: Int

        /// The payload as `P`; nil when it is not one (rejected to the dead-letter topic,
        /// as a ``Subscription`` would).
        public func decode<P: BusPayload>(as type: P.Type) -> Received<P>? {
            accepted(bus.decode(message, as: P.self))
        }

        /// The notifications a ``Bynar_V1_Notification`` or ``Bynar_V1_NotificationBatch``
        /// carries, as a batch (of one for a single notification); nil, rejected, otherwise.
        public func decodeNotifications() -> Received<Bynar_V1_NotificationBatch>? {
            accepted(bus.decodeNotifications(message))
        }

        /// The decoded message, or nil with the message rejected to the dead-letter topic.
        private func accepted<P>(_ decoded: Result<Received<P>, RejectReason>) -> Received<P>? {
            switch decoded {
            case .success(let received): return received
            case .failure(let reason):
                bus.reject(message, reason: reason)
                return nil
            }
        }
    }
    public typealias Element = Message
    let bus: Bus
    /// The filters topics are matched against, in the order subscribed.
    let filters: [String]
    let stream: AsyncStream<MQTTMessage>
    let budget: ByteBudget

    public struct AsyncIterator: AsyncIteratorProtocol {
        let bus: Bus
        let filters: [String]
        var base: AsyncStream<MQTTMessage>.Iterator
        let budget: ByteBudget

        public mutating func next() async -> Message? {
            await next(isolation: nil)
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> Message? {
            guard let message = await base.next(isolation: actor) else { return nil }
            budget.give(message.payload.count)
            let index = filters.firstIndex { Topics.matches(filter: $0, topic: message.topic) } ?? 0
            return Message(bus: bus, message: message, filterIndex: index)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(bus: bus, filters: filters, base: stream.makeAsyncIterator(), budget: budget)
    }
}
