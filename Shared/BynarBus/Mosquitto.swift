// The one place that touches libmosquitto. Everything above speaks Swift types.
//
// Threading: libmosquitto runs in "external thread" mode (mosquitto_threaded_set) and this
// file owns the network thread: it polls the socket itself and calls libmosquitto's read,
// write and keepalive steps (``MosquittoClient/turn(timeoutMs:)``), reconnects with capped
// backoff, and expires acknowledgements that never came. We do not use mosquitto_loop_start
// because libmosquitto 2.0's own reconnect sends CONNECT without properties, which would
// silently drop the session expiry interval (and with it the persistent session) after the
// first reconnect. C callbacks arrive on the network thread and are bridged here, once.
import CMosquitto
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

private let mosquittoLibraryReady: Bool = {
    mosquitto_lib_init()
    return true
}()

/// A message as it arrived from the broker.
struct MQTTMessage: Sendable {
    var topic: String
    var payload: [UInt8]
    var qos: Int32
    var retain: Bool
    var responseTopic: String?
    var correlationData: [UInt8]?
    var messageExpirySeconds: UInt32?
}

/// MQTT 5 properties of an outgoing publish.
struct PublishProperties: Sendable {
    var responseTopic: String?
    var correlationData: [UInt8]?
    var messageExpirySeconds: UInt32?
}

/// What happened to the connection, as seen from the network thread.
enum ConnectionEvent: Sendable {
    /// CONNACK accepted. `sessionPresent` is false when the broker has no session for us
    /// (first start, or it expired): subscriptions must be made again.
    case connected(sessionPresent: Bool)
    /// The TCP/TLS connect failed.
    case connectFailed(String)
    /// The broker answered CONNECT with a failure reason (bad credentials, not
    /// authorised, ...): retrying will not help until someone fixes the configuration.
    case refused(String)
    /// An established connection ended.
    case disconnected(String)
}

/// Options the client connects with; all taken from ``BrokerConfig``.
struct MosquittoOptions: Sendable {
    var clientId: String
    var host: String
    var port: Int32
    var keepaliveSeconds: Int32
    var sessionExpirySeconds: UInt32
    var username: String?
    var password: String?
    var tls: (caFile: String?, caPath: String?, certFile: String?, keyFile: String?)?
    var will: (topic: String, payload: [UInt8])?
    var reconnectMinSeconds: Int
    var reconnectMaxSeconds: Int
    var maxInflight: Int32
}

/// A libmosquitto client running MQTT 5 with its own network thread.
///
/// `@unchecked Sendable`: the C handle is used from several threads, which libmosquitto
/// allows in threaded mode; every piece of Swift state sits in `state` behind a Mutex.
final class MosquittoClient: @unchecked Sendable {
    private let handle: OpaquePointer
    private let options: MosquittoOptions
    private let state = Mutex(State())
    /// Held while the network thread (re)connects and while a subscribe or unsubscribe is
    /// handed over. libmosquitto writes a SUBSCRIBE at once on the calling thread as soon as
    /// the socket exists, even before CONNECT went out: the broker then saw a SUBSCRIBE as a
    /// new connection's first packet ("Client <unknown> disconnected due to protocol error")
    /// and the subscribe was never acknowledged (about 1 start in 9). So a subscribe is only
    /// sent on a connection whose CONNACK arrived, never while one is being made.
    private let connectLock = Mutex(())
    private let handlers = Mutex<Handlers?>(nil)
    /// A pipe whose read end the network thread polls beside the socket: a thread that
    /// hands libmosquitto packets (publishes, a subscribe, the disconnect) writes a byte to
    /// it, once per call or batch, so they go out at once rather than at the next turn.
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// Packets libmosquitto handed to a callback (CONNACK, SUBACK, PUBACK, PUBLISH): counted
    /// on the network thread, so a turn knows whether its last read step took one.
    private let packetsHandled = Atomic<Int>(0)

    /// Where the network thread reports; set once by ``start(_:)``.
    struct Handlers: Sendable {
        var onMessage: @Sendable (MQTTMessage) -> Void
        var onEvent: @Sendable (ConnectionEvent) -> Void
        /// Called about every 100 ms from the network thread.
        var onTick: @Sendable () -> Void
    }

    private func onMessage(_ message: MQTTMessage) { handlers.withLock { $0 }?.onMessage(message) }
    private func onEvent(_ event: ConnectionEvent) { handlers.withLock { $0 }?.onEvent(event) }
    private func onTick() { handlers.withLock { $0 }?.onTick() }

    private struct Waiter {
        var continuation: CheckedContinuation<Int32, any Error>
        var deadline: ContinuousClock.Instant
        var what: String
    }

    /// Several publishes waited for together: one wake-up when the last ack arrives.
    private struct BatchWaiter {
        var continuation: CheckedContinuation<[Int32], any Error>
        var codes: [Int32]
        var remaining: Int
        var deadline: ContinuousClock.Instant
        var what: String
    }

    private struct State {
        var publishes: [Int32: Waiter] = [:]
        var batches: [UInt64: BatchWaiter] = [:]
        var batchOfMid: [Int32: (batch: UInt64, index: Int)] = [:]
        var nextBatch: UInt64 = 0
        var subscribes: [Int32: Waiter] = [:]
        /// Acknowledgements no waiter was registered for yet, with when they came: the ack of
        /// a message just handed over can beat its waiter's registration. A waiter takes one
        /// only if it came after its own send began; anything older is a late ack of a
        /// publish that timed out, for an earlier use of the same 16-bit message id, and
        /// must never acknowledge a new publish (pruned after a minute).
        var early: [Int32: (code: Int32, at: ContinuousClock.Instant)] = [:]
        var earlySubscribes: [Int32: (code: Int32, at: ContinuousClock.Instant)] = [:]
        var stopping = false
        var started = false
        var connected = false
        /// The network thread is making a connection (``connectOnce()`` holds `connectLock`).
        var connecting = false
        var stopRequestedAt: ContinuousClock.Instant?
        var stopped: CheckedContinuation<Void, Never>?
        var threadDone = false
    }

    init(options: MosquittoOptions) throws(BusError) {
        _ = mosquittoLibraryReady
        self.options = options
        guard let handle = mosquitto_new(options.clientId, false, nil) else {
            throw .mosquitto(call: "mosquitto_new", code: Int32(errno), detail: "cannot create client: \(String(cString: strerror(errno)))")
        }
        self.handle = handle
        var pipeEnds: [Int32] = [-1, -1]
        guard pipe(&pipeEnds) == 0 else {
            let code = errno
            mosquitto_destroy(handle)
            throw .mosquitto(call: "pipe", code: code, detail: "cannot create the network thread's wake-up pipe: \(String(cString: strerror(code)))")
        }
        for end in pipeEnds {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        (wakeRead, wakeWrite) = (pipeEnds[0], pipeEnds[1])
        mosquitto_user_data_set(handle, Unmanaged.passUnretained(self).toOpaque())
        try check("set protocol MQTT 5", mosquitto_int_option(handle, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5))
        try check("set send maximum", mosquitto_int_option(handle, MOSQ_OPT_SEND_MAXIMUM, options.maxInflight))
        try check("set TCP_NODELAY", mosquitto_int_option(handle, MOSQ_OPT_TCP_NODELAY, 1))
        try check("threaded mode", mosquitto_threaded_set(handle, true))
        if let username = options.username {
            try check("set credentials", mosquitto_username_pw_set(handle, username, options.password))
        }
        if let tls = options.tls {
            try check("set TLS", mosquitto_tls_set(handle, tls.caFile, tls.caPath, tls.certFile, tls.keyFile, nil))
        }
        if let will = options.will {
            try check("set will", will.payload.withUnsafeBytes { bytes in
                mosquitto_will_set_v5(handle, will.topic, Int32(bytes.count), bytes.baseAddress, 1, true, nil)
            })
        }
        mosquitto_connect_v5_callback_set(handle) { _, context, rc, flags, _ in
            MosquittoClient.from(context).handleConnect(rc: rc, flags: flags)
        }
        mosquitto_disconnect_v5_callback_set(handle) { _, context, rc, _ in
            MosquittoClient.from(context).handleDisconnect(rc: rc)
        }
        mosquitto_publish_v5_callback_set(handle) { _, context, mid, reason, _ in
            MosquittoClient.from(context).handlePublishAck(mid: mid, reason: reason)
        }
        mosquitto_subscribe_v5_callback_set(handle) { _, context, mid, count, granted, _ in
            let first = (count > 0 && granted != nil) ? granted![0] : 0x80
            MosquittoClient.from(context).handleSubscribeAck(mid: mid, granted: first)
        }
        mosquitto_message_v5_callback_set(handle) { _, context, message, properties in
            guard let message else { return }
            MosquittoClient.from(context).handleMessage(message.pointee, properties)
        }
    }

    deinit {
        mosquitto_destroy(handle)
        close(wakeRead)
        close(wakeWrite)
    }

    private static func from(_ context: UnsafeMutableRawPointer?) -> MosquittoClient {
        Unmanaged<MosquittoClient>.fromOpaque(context!).takeUnretainedValue()
    }

    private func check(_ what: String, _ rc: Int32) throws(BusError) {
        guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw .mosquitto(call: what, code: rc, detail: Self.describe(rc)) }
    }

    /// libmosquitto's words for an error code.
    static func describe(_ rc: Int32) -> String {
        if rc == MOSQ_ERR_ERRNO.rawValue { return String(cString: strerror(errno)) }
        return String(cString: mosquitto_strerror(rc))
    }

    /// MQTT 5's words for a reason code.
    static func reasonString(_ code: Int32) -> String {
        String(cString: mosquitto_reason_string(code))
    }

    // MARK: - Network thread

    /// Starts the network thread, which connects and keeps reconnecting until ``stop()``.
    func start(_ handlers: Handlers) {
        self.handlers.withLock { $0 = handlers }
        let first = state.withLock { state -> Bool in
            defer { state.started = true }
            return !state.started
        }
        guard first else { return }
        let retained = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let client = Unmanaged<MosquittoClient>.fromOpaque(context!).takeRetainedValue()
            client.networkLoop()
            return nil
        }, retained)
        precondition(rc == 0, "cannot start the MQTT network thread: \(String(cString: strerror(rc)))")
        pthread_detach(thread)
    }

    private func networkLoop() {
        var backoff = options.reconnectMinSeconds
        var needsConnect = true
        var lastSweep = ContinuousClock.now
        while true {
            let (stopping, stopAsked) = state.withLock { ($0.stopping, $0.stopRequestedAt) }
            // Leave only once DISCONNECT is out (the socket closed), or after a grace period:
            // leaving earlier would make the broker publish our will over a clean death.
            if stopping && (needsConnect || !isConnected || stopAsked.map { ContinuousClock.now - $0 > .seconds(2) } ?? true) { break }
            if needsConnect {
                let rc = connectOnce()
                if rc != MOSQ_ERR_SUCCESS.rawValue {
                    onEvent(.connectFailed("\(options.host):\(options.port): \(Self.describe(rc))"))
                    pause(seconds: backoff)
                    backoff = min(backoff * 2, options.reconnectMaxSeconds)
                    continue
                }
                needsConnect = false
            }
            let rc = turn(timeoutMs: 100)
            // Deadlines are checked ten times a second, not on every wake-up: under load
            // the loop turns every few packets and a sweep per turn would cost O(in flight).
            if ContinuousClock.now - lastSweep >= .milliseconds(100) {
                lastSweep = ContinuousClock.now
                expireWaiters()
                onTick()
            }
            if rc != MOSQ_ERR_SUCCESS.rawValue {
                let wasConnected = state.withLock { state in
                    defer { state.connected = false }
                    return state.connected
                }
                needsConnect = true
                if state.withLock({ $0.stopping }) { continue }
                if wasConnected { backoff = options.reconnectMinSeconds }
                pause(seconds: backoff)
                backoff = min(backoff * 2, options.reconnectMaxSeconds)
            }
        }
        let waiting = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.threadDone = true
            defer { state.stopped = nil }
            return state.stopped
        }
        failAllWaiters(BusError.stopped)
        waiting?.resume()
    }

    /// One turn of the network loop: waits up to `timeoutMs` for the socket (or a wake-up),
    /// then lets libmosquitto read what came, write what is queued, and keep the connection
    /// alive. Returns a libmosquitto code, as `mosquitto_loop` does.
    ///
    /// Not `mosquitto_loop`: in threaded mode libmosquitto writes a byte to an internal
    /// socket pair for every packet it queues (each publish, each PUBACK) and its loop
    /// reads one such byte per turn, so under load it turned once per packet, a `pselect`
    /// and a `read` each (docs/bus.md, docs/performance.md). Here the thread is woken
    /// through ``wakeWrite`` once per call or batch; libmosquitto's socket pair, no longer
    /// read, fills and its writes fail at once (it ignores their result).
    private func turn(timeoutMs: Int32) -> Int32 {
        let socket = mosquitto_socket(handle)
        guard socket >= 0 else { return Int32(MOSQ_ERR_NO_CONN.rawValue) }
        var fds = [
            pollfd(fd: socket, events: Int16(POLLIN) | (mosquitto_want_write(handle) ? Int16(POLLOUT) : 0), revents: 0),
            pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
        ]
        if poll(&fds, 2, timeoutMs) < 0 {
            return errno == EINTR ? Int32(MOSQ_ERR_SUCCESS.rawValue) : Int32(MOSQ_ERR_ERRNO.rawValue)
        }
        if fds[1].revents != 0 {
            var drained = [UInt8](repeating: 0, count: 256)
            while read(wakeRead, &drained, drained.count) == drained.count {}
        }
        let events = fds[0].revents
        // With TLS, libmosquitto finishes its handshake in its read step, when the socket
        // is readable or (the handshake wanting to write) writable.
        if events & Int16(POLLIN | POLLERR | POLLHUP) != 0 || (options.tls != nil && events & Int16(POLLOUT) != 0) {
            // libmosquitto 2.0's read step reads as many packets as it has QoS messages in
            // flight (at least one) and stops early after any packet that leaves EAGAIN in
            // errno, which its own socket-pair write does when it queues the PUBACK. So a
            // turn took one packet under load: a poll and a PUBACK written alone per
            // message (strace of the orchestrator's flood). What has already arrived is
            // now read in one turn, up to `packetsPerTurn`, and its PUBACKs leave together
            // below. The read step is called again while the last one handed over a packet
            // (its callback ran); one that found nothing, a part of a packet or a packet
            // without a callback (PINGRESP) ends the reading, so the turn costs one `read`
            // that finds nothing, not a `poll` per packet.
            var packets = 0
            repeat {
                let before = packetsHandled.load(ordering: .relaxed)
                let rc = mosquitto_loop_read(handle, 1)
                if rc != MOSQ_ERR_SUCCESS.rawValue || mosquitto_socket(handle) < 0 { return rc }
                if packetsHandled.load(ordering: .relaxed) == before { break }
                packets += 1
            } while packets < Self.packetsPerTurn
        }
        // What is queued now (PUBACKs of what was just read, other threads' publishes) goes
        // out at once; a full socket keeps the rest for the next turn, polled for writing.
        // libmosquitto writes each packet with its own write(2), which TCP_NODELAY sent as
        // a segment of its own; corked for this step, they leave as full segments.
        if mosquitto_want_write(handle) {
            cork(socket, true)
            let rc = mosquitto_loop_write(handle, 1)
            // A failed write closes the socket; its number may already be another's.
            if mosquitto_socket(handle) == socket { cork(socket, false) }
            if rc != MOSQ_ERR_SUCCESS.rawValue || mosquitto_socket(handle) < 0 { return rc }
        }
        return mosquitto_loop_misc(handle)
    }

    /// Packets read in one turn at most before what is queued is written.
    private static let packetsPerTurn = 128

    /// TCP_CORK on or off; off sends what was held at once. Fails harmlessly on a socket
    /// that is not TCP.
    private func cork(_ socket: Int32, _ on: Bool) {
        var value: Int32 = on ? 1 : 0
        _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_CORK, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Wakes the network thread for packets just handed to libmosquitto.
    private func wake() {
        var byte: UInt8 = 1
        // A full pipe (EAGAIN) already holds a wake-up: nothing lost.
        _ = write(wakeWrite, &byte, 1)
    }

    private func connectOnce() -> Int32 {
        var properties: OpaquePointer? = nil
        defer { mosquitto_property_free_all(&properties) }
        mosquitto_property_add_int32(&properties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), options.sessionExpirySeconds)
        return connectLock.withLock { _ in
            state.withLock {
                $0.connected = false
                $0.connecting = true
            }
            defer { state.withLock { $0.connecting = false } }
            return mosquitto_connect_bind_v5(handle, options.host, options.port, options.keepaliveSeconds, nil, properties)
        }
    }

    /// Sleeps up to `seconds`, waking early when stopping. Deadlines keep running while the
    /// broker is away: a publish or request waiting for an answer times out on time instead
    /// of hanging until the broker comes back.
    private func pause(seconds: Int) {
        for _ in 0..<(seconds * 10) {
            if state.withLock({ $0.stopping }) { return }
            usleep(100_000)
            expireWaiters()
            onTick()
        }
    }

    private func expireWaiters() {
        let now = ContinuousClock.now
        let expired = state.withLock { state -> [Waiter] in
            var out: [Waiter] = []
            for (mid, waiter) in state.publishes where waiter.deadline <= now {
                out.append(waiter)
                state.publishes[mid] = nil
            }
            for (mid, waiter) in state.subscribes where waiter.deadline <= now {
                out.append(waiter)
                state.subscribes[mid] = nil
            }
            return out
        }
        for waiter in expired { waiter.continuation.resume(throwing: BusError.timedOut(what: waiter.what)) }
        state.withLock { state in
            state.early = state.early.filter { now - $0.value.at < .seconds(60) }
            state.earlySubscribes = state.earlySubscribes.filter { now - $0.value.at < .seconds(60) }
        }
        for batch in takeBatches(where: { $0.deadline <= now }) {
            batch.continuation.resume(throwing: BusError.timedOut(what: batch.what))
        }
    }

    private func failAllWaiters(_ error: BusError) {
        let all = state.withLock { state -> [Waiter] in
            defer { state.publishes = [:]; state.subscribes = [:] }
            return Array(state.publishes.values) + Array(state.subscribes.values)
        }
        for waiter in all { waiter.continuation.resume(throwing: error) }
        for batch in takeBatches(where: { _ in true }) { batch.continuation.resume(throwing: error) }
    }

    private func takeBatches(where predicate: (BatchWaiter) -> Bool) -> [BatchWaiter] {
        state.withLock { state in
            let ids = state.batches.filter { predicate($0.value) }.map(\.key)
            guard !ids.isEmpty else { return [] }
            let taken = Set(ids)
            state.batchOfMid = state.batchOfMid.filter { !taken.contains($0.value.batch) }
            return ids.compactMap { state.batches.removeValue(forKey: $0) }
        }
    }

    // MARK: - Callbacks (network thread)

    private func handleConnect(rc: Int32, flags: Int32) {
        packetsHandled.add(1, ordering: .relaxed)
        if rc == 0 {
            state.withLock { $0.connected = true }
            onEvent(.connected(sessionPresent: flags & 1 == 1))
        } else {
            onEvent(.refused("broker refused the connection: \(Self.reasonString(rc)) (reason \(rc))"))
        }
    }

    private func handleDisconnect(rc: Int32) {
        state.withLock { $0.connected = false }
        let stopping = state.withLock { $0.stopping }
        onEvent(.disconnected(stopping ? "stopped" : (rc == 0 ? "closed" : "\(Self.describe(rc)) (\(rc))")))
    }

    private func handlePublishAck(mid: Int32, reason: Int32) {
        packetsHandled.add(1, ordering: .relaxed)
        enum Wake { case single(Waiter), batch(BatchWaiter), none }
        let wake = state.withLock { state -> Wake in
            if let waiter = state.publishes.removeValue(forKey: mid) { return .single(waiter) }
            if let (id, index) = state.batchOfMid.removeValue(forKey: mid), var batch = state.batches[id] {
                batch.codes[index] = reason
                batch.remaining -= 1
                if batch.remaining == 0 {
                    state.batches[id] = nil
                    return .batch(batch)
                }
                state.batches[id] = batch
                return .none
            }
            state.early[mid] = (reason, .now)
            return .none
        }
        switch wake {
        case .single(let waiter): waiter.continuation.resume(returning: reason)
        case .batch(let batch): batch.continuation.resume(returning: batch.codes)
        case .none: break
        }
    }

    private func handleSubscribeAck(mid: Int32, granted: Int32) {
        packetsHandled.add(1, ordering: .relaxed)
        let waiter = state.withLock { state -> Waiter? in
            if let waiter = state.subscribes.removeValue(forKey: mid) { return waiter }
            state.earlySubscribes[mid] = (granted, .now)
            return nil
        }
        waiter?.continuation.resume(returning: granted)
    }

    private func handleMessage(_ message: mosquitto_message, _ properties: OpaquePointer?) {
        packetsHandled.add(1, ordering: .relaxed)
        var inbound = MQTTMessage(
            topic: String(cString: message.topic),
            payload: message.payloadlen > 0
                ? Array(UnsafeRawBufferPointer(start: message.payload, count: Int(message.payloadlen)))
                : [],
            qos: message.qos,
            retain: message.retain
        )
        var text: UnsafeMutablePointer<CChar>? = nil
        if mosquitto_property_read_string(properties, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), &text, false) != nil, let text {
            inbound.responseTopic = String(cString: text)
            free(text)
        }
        var data: UnsafeMutableRawPointer? = nil
        var length: UInt16 = 0
        if mosquitto_property_read_binary(properties, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), &data, &length, false) != nil {
            inbound.correlationData = data.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(length))) } ?? []
            free(data)
        }
        var expiry: UInt32 = 0
        if mosquitto_property_read_int32(properties, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), &expiry, false) != nil {
            inbound.messageExpirySeconds = expiry
        }
        onMessage(inbound)
    }

    // MARK: - Operations (any thread)

    /// Publishes and, for QoS 1, waits for the broker's PUBACK; returns its reason code.
    ///
    /// While disconnected libmosquitto keeps a QoS 1 message and sends it after the next
    /// connect, so the wait spans short outages up to `timeout`.
    func publish(topic: String, payload: [UInt8], qos: Int32, retain: Bool, properties: PublishProperties, timeout: Duration) async throws -> Int32 {
        let started = ContinuousClock.now
        let mid = try send(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
        wake()
        if qos == 0 { return 0 }
        return try await awaitAck(mid: mid, since: started, timeout: timeout, what: "acknowledgement of publish to \(topic)", subscribe: false)
    }

    /// libmosquitto refusing a message for good (the broker would never take it, whenever it
    /// is sent): an invalid topic, text that is not valid UTF-8 to MQTT (control
    /// characters), a packet over the broker's announced maximum, a payload too large.
    static func refusesForGood(_ rc: Int32) -> Bool {
        [MOSQ_ERR_INVAL, MOSQ_ERR_MALFORMED_UTF8, MOSQ_ERR_OVERSIZE_PACKET, MOSQ_ERR_PAYLOAD_SIZE].map { Int32($0.rawValue) }.contains(rc)
    }

    /// What became of one message of a batch.
    enum Outcome: Sendable, Equatable {
        /// The broker's PUBACK reason code (>= 0x80: refused).
        case acknowledged(Int32)
        /// libmosquitto refused it before sending (``refusesForGood(_:)``): error code, why.
        case notSent(Int32, String)
    }

    /// One message of a batch.
    struct Outgoing: Sendable {
        var topic: String
        var payload: [UInt8]
        var retain: Bool
        var properties = PublishProperties()
    }

    /// Messages handed to libmosquitto by ``enqueueBatch(_:)``, in order, and not yet
    /// acknowledged.
    struct QueuedBatch: Sendable {
        let count: Int
        let mids: [Int32]
        let notSent: [Int: Outcome]
        let started: ContinuousClock.Instant
    }

    /// Hands `messages` to libmosquitto at QoS 1, back to back, in order, before it returns
    /// (so batches queued one after the other go in that order) and wakes the network
    /// thread; ``outcomes(of:timeout:)`` waits once for all their acknowledgements.
    /// libmosquitto keeps the ones beyond the broker's receive maximum queued and sends them
    /// as acks come back. Throws when libmosquitto cannot queue one for a reason that may
    /// pass (those before it stay queued).
    func enqueueBatch(_ messages: [Outgoing]) throws -> QueuedBatch {
        let started = ContinuousClock.now
        // One message libmosquitto refuses for good must not hold back the others: it is
        // reported as not sent, and the rest go.
        var mids: [Int32] = []
        var notSent: [Int: Outcome] = [:]
        mids.reserveCapacity(messages.count)
        // The network thread is woken once for the batch, also when a send failed.
        defer { if !messages.isEmpty { wake() } }
        for (index, message) in messages.enumerated() {
            do {
                mids.append(try send(topic: message.topic, payload: message.payload, qos: 1, retain: message.retain, properties: message.properties))
            } catch BusError.mosquitto(_, let code, let detail) where Self.refusesForGood(code) {
                notSent[index] = .notSent(code, detail)
            }
        }
        return QueuedBatch(count: messages.count, mids: mids, notSent: notSent, started: started)
    }

    /// Waits up to `timeout` for the acknowledgements of a batch ``enqueueBatch(_:)`` queued;
    /// returns the outcomes in the order of its messages.
    func outcomes(of batch: QueuedBatch, timeout: Duration) async throws -> [Outcome] {
        guard batch.count > 0 else { return [] }
        let codes = try await awaitBatch(batch.mids, since: batch.started, timeout: timeout, what: "acknowledgement of \(batch.mids.count) publishes")
        var outcomes: [Outcome] = []
        var next = codes.makeIterator()
        for index in 0..<batch.count {
            if let refused = batch.notSent[index] { outcomes.append(refused) } else { outcomes.append(.acknowledged(next.next() ?? 0)) }
        }
        return outcomes
    }

    private func awaitBatch(_ mids: [Int32], since started: ContinuousClock.Instant, timeout: Duration, what: String) async throws -> [Int32] {
        guard !mids.isEmpty else { return [] }
        return try await withCheckedThrowingContinuation { continuation in
            let ready = state.withLock { state -> Result<[Int32], BusError>? in
                if state.threadDone { return .failure(.stopped) }
                var batch = BatchWaiter(continuation: continuation, codes: Array(repeating: 0, count: mids.count), remaining: mids.count, deadline: .now + timeout, what: what)
                state.nextBatch += 1
                let id = state.nextBatch
                for (index, mid) in mids.enumerated() {
                    if let early = state.early.removeValue(forKey: mid), early.at >= started {
                        batch.codes[index] = early.code
                        batch.remaining -= 1
                    } else {
                        state.batchOfMid[mid] = (id, index)
                    }
                }
                if batch.remaining == 0 { return .success(batch.codes) }
                state.batches[id] = batch
                return nil
            }
            switch ready {
            case .success(let codes)?: continuation.resume(returning: codes)
            case .failure(let error)?: continuation.resume(throwing: error)
            case nil: break
            }
        }
    }

    /// Hands one message to libmosquitto; returns its message id. The caller wakes the
    /// network thread (``wake()``) to send it; when this throws, nothing was queued.
    private func send(topic: String, payload: [UInt8], qos: Int32, retain: Bool, properties: PublishProperties) throws -> Int32 {
        var props: OpaquePointer? = nil
        defer { mosquitto_property_free_all(&props) }
        if let responseTopic = properties.responseTopic {
            mosquitto_property_add_string(&props, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), responseTopic)
        }
        if let correlation = properties.correlationData {
            correlation.withUnsafeBytes { bytes in
                _ = mosquitto_property_add_binary(&props, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), bytes.baseAddress, UInt16(bytes.count))
            }
        }
        if let expiry = properties.messageExpirySeconds {
            mosquitto_property_add_int32(&props, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), expiry)
        }
        var mid: Int32 = 0
        let rc = payload.withUnsafeBytes { bytes in
            mosquitto_publish_v5(handle, &mid, topic, Int32(bytes.count), bytes.baseAddress, qos, retain, props)
        }
        guard rc == MOSQ_ERR_SUCCESS.rawValue || (rc == MOSQ_ERR_NO_CONN.rawValue && qos > 0) else {
            throw BusError.mosquitto(call: "publish to \(topic)", code: rc, detail: Self.describe(rc))
        }
        return mid
    }

    /// Subscribes and waits for the SUBACK; returns the granted QoS or the refusal code.
    /// Returns nil when not connected: the caller subscribes again on the next connect.
    func subscribe(filter: String, qos: Int32, timeout: Duration) async throws -> Int32? {
        let started = ContinuousClock.now
        var mid: Int32 = 0
        // Not connected, or connecting right now (never wait for that here: a connect to an
        // unreachable broker blocks for long): the bus subscribes again on the next CONNACK.
        // The lock is also held for a moment by another subscribe: that is no reason to give
        // up. Taking it for "not connected" left a new leader's reply route unsubscribed
        // for its whole term when its first subscribes ran side by side (every request of the
        // term timed out; CoordinationTests' takeover, about 1 run in 4 under load).
        var rc = Int32(MOSQ_ERR_NO_CONN.rawValue)
        while true {
            if state.withLock({ $0.connecting || !$0.connected }) { return nil }
            if let sent = connectLock.withLockIfAvailable({ _ -> Int32 in
                guard state.withLock({ $0.connected }) else { return Int32(MOSQ_ERR_NO_CONN.rawValue) }
                return mosquitto_subscribe_v5(handle, &mid, filter, qos, 0, nil)
            }) {
                rc = sent
                break
            }
            try await Task.sleep(for: .milliseconds(1))
        }
        if rc == MOSQ_ERR_NO_CONN.rawValue { return nil }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else {
            throw BusError.mosquitto(call: "subscribe to \(filter)", code: rc, detail: Self.describe(rc))
        }
        wake()
        return try await awaitAck(mid: mid, since: started, timeout: timeout, what: "acknowledgement of subscribe to \(filter)", subscribe: true)
    }

    /// Removes a subscription from the broker session (no wait).
    func unsubscribe(filter: String) {
        // As in ``subscribe(filter:qos:timeout:)``: a lock held by a subscribe is waited
        // for (a moment), one held by a connect is not (that session starts without it).
        while !state.withLock({ $0.connecting || !$0.connected }) {
            let handed: Void? = connectLock.withLockIfAvailable { _ in
                guard state.withLock({ $0.connected }) else { return }
                _ = mosquitto_unsubscribe_v5(handle, nil, filter, nil)
            }
            if handed != nil {
                wake()
                return
            }
            usleep(200)
        }
    }

    private func awaitAck(mid: Int32, since started: ContinuousClock.Instant, timeout: Duration, what: String, subscribe: Bool) async throws -> Int32 {
        try await withCheckedThrowingContinuation { continuation in
            let early = state.withLock { state -> Int32? in
                // Only an ack that came after this send began is this send's.
                if subscribe, let early = state.earlySubscribes.removeValue(forKey: mid), early.at >= started { return early.code }
                if !subscribe, let early = state.early.removeValue(forKey: mid), early.at >= started { return early.code }
                if state.threadDone { return -1 }
                let waiter = Waiter(continuation: continuation, deadline: .now + timeout, what: what)
                if subscribe { state.subscribes[mid] = waiter } else { state.publishes[mid] = waiter }
                return nil
            }
            if early == -1 {
                continuation.resume(throwing: BusError.stopped)
            } else if let early {
                continuation.resume(returning: early)
            }
        }
    }

    /// Whether a CONNACK has been accepted and the connection not lost since.
    var isConnected: Bool { state.withLock { $0.connected } }

    /// Sends DISCONNECT (normal: the broker discards the will) and ends the network thread.
    func stop() async {
        let alreadyDone = state.withLock { state -> Bool in
            state.stopping = true
            state.stopRequestedAt = .now
            return state.threadDone || !state.started
        }
        _ = mosquitto_disconnect_v5(handle, 0, nil)
        wake()
        guard !alreadyDone else { return }
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                if state.threadDone { return true }
                state.stopped = continuation
                return false
            }
            if done { continuation.resume() }
        }
    }
}
