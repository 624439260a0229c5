import BynarBus
import BynarConfig
import BynarProto
import BynarStore
import BynarTestSupport
import Foundation
import Synchronization
import Testing

@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct OutboxTests {
    /// A payload told apart by its title.
    static func note(_ title: String) -> Bynar_V1_Notification {
        var note = Bynar_V1_Notification()
        note.title = title
        return note
    }

    /// A broker, a publisher's store in a new directory (the caller removes it), and a
    /// publishing and a reading bus.
    static func rig() async throws -> (broker: TestBroker, directory: String, store: LocalStore, publisher: Bus, reader: Bus) {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-outbox")
        let store = try LocalStore(path: directory + "/pub.sqlite")
        return (broker, directory, store, try await connectedBus(broker, service: "pub"), try await connectedBus(broker, service: "reader"))
    }

    /// How a test that restarts its broker connects: again after a second, its session
    /// kept 10 minutes, a batch's acknowledgements awaited `publishTimeoutMs`.
    static func reconnectingFast(publishTimeoutMs: Int) -> (inout BrokerConfig) -> Void {
        { config in
            config.reconnectMinSeconds = 1
            config.reconnectMaxSeconds = 1
            config.sessionExpirySeconds = 600
            config.publishTimeoutMs = publishTimeoutMs
        }
    }

    /// A publisher keeps publishing through its outbox while the broker restarts; the
    /// subscriber (persistent session) ends up with every event. Duplicates are allowed
    /// (at least once) and recognisable by message id.
    @Test func brokerRestartMidStreamLosesNothing() async throws {
        let broker = try TestBroker(persistence: true)
        let directory = try makeTemporaryDirectory(prefix: "bynar-outbox")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try LocalStore(path: directory + "/pub.sqlite")
        let fast = Self.reconnectingFast(publishTimeoutMs: 2000)
        let subscriber = try await connectedBus(broker, service: "sub", clientId: "restart-sub", configure: fast)
        let received = Collector(try await subscriber.subscribe("test/stream", as: Bynar_V1_DiskHealthEvent.self))
        let publisher = try await connectedBus(broker, service: "pub", clientId: "restart-pub", configure: fast)
        let outbox = Outbox(bus: publisher, store: store)
        let sender = Task { await outbox.run() }

        let total = 300
        var sentIds: [String] = []
        for index in 0..<total {
            var event = Bynar_V1_DiskHealthEvent()
            event.disk.serial = "S\(index)"
            sentIds.append(try outbox.publish(event, to: "test/stream").messageID)
            if index == 100 { broker.stop() }           // SIGTERM: broker saves sessions and queues
            if index == 180 { try broker.start() }      // back on the same port
            try await Task.sleep(for: .milliseconds(5))
        }
        let complete = await received.wait(timeout: .seconds(30)) { Set($0.map(\.envelope.messageID)).isSuperset(of: sentIds) }
        let got = received.all
        let missing = Set(sentIds).subtracting(got.map(\.envelope.messageID))
        #expect(complete, "missing \(missing.count) of \(total) events")
        #expect(Set(got.map(\.payload.disk.serial)) == Set((0..<total).map { "S\($0)" }))
        // Events left in the order they were written.
        let firstSeen = got.reduce(into: [String]()) { seen, item in if !seen.contains(item.envelope.messageID) { seen.append(item.envelope.messageID) } }
        #expect(firstSeen == sentIds.filter { firstSeen.contains($0) })
        #expect(await outbox.drain(timeout: .seconds(10)))
        #expect(try store.outboxCounts().pending == 0)
        #expect(publisher.stats.connects >= 2 && subscriber.stats.connects >= 2)
        sender.cancel()
        await publisher.shutdown()
        await subscriber.shutdown()
    }

    /// Thousands of events at once go in several batches, each queued at the broker behind
    /// the one whose acknowledgements are awaited. The broker stops while batches are in
    /// flight, long enough for them to time out, and comes back: every event arrives, first
    /// copies in the order written, and every retained topic ends with its newest state
    /// (what was queued behind a batch that went unacknowledged is sent again after it,
    /// never before).
    @Test(.timeLimit(.minutes(2))) func batchesInFlightBehindOneAnotherSurviveABrokerRestartInOrder() async throws {
        let broker = try TestBroker(extraConfig: "allow_anonymous true\nmax_queued_messages 100000\nmax_inflight_messages 100", persistence: true)
        let directory = try makeTemporaryDirectory(prefix: "bynar-outbox")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try LocalStore(path: directory + "/pub.sqlite")
        let fast = Self.reconnectingFast(publishTimeoutMs: 500)
        let subscriber = try await connectedBus(broker, service: "sub", clientId: "flight-sub", configure: fast)
        let received = Collector(try await subscriber.subscribe("test/flight/+", as: Bynar_V1_DiskHealthEvent.self, buffer: 1 << 16))
        let publisher = try await connectedBus(broker, service: "pub", clientId: "flight-pub", configure: fast)
        let outbox = Outbox(bus: publisher, store: store)

        let topics = 20, rounds = 250
        var sentIds: [String] = []
        for round in 0..<rounds {
            let events = (0..<topics).map { topic in
                var event = Bynar_V1_DiskHealthEvent()
                event.disk.serial = "T\(topic)-\(round)"
                return Outbox.Event(event, to: "test/flight/\(topic)", retain: true)
            }
            sentIds += try outbox.commit(events).map(\.messageID)
        }
        // Every event is written before the sender starts; the broker stops as the first
        // batch arrives, with batches in flight and more to go.
        let sender = Task { await outbox.run() }
        #expect(await received.wait(timeout: .seconds(20)) { $0.count >= 100 })
        #expect(try store.outboxCounts().pending > 1024, "the broker was to stop with batches still to go")
        broker.stop()
        // Away longer than a batch's acknowledgements are awaited: the batch in flight times
        // out and is sent again with what was queued behind it.
        try await Task.sleep(for: .seconds(4))
        let timedOut = try await store.database.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM outbox WHERE last_error IS NOT NULL") ?? 0 }
        #expect(timedOut > 0, "no batch timed out while the broker was away")
        try broker.start()
        let complete = await received.wait(timeout: .seconds(60)) { Set($0.map(\.envelope.messageID)).isSuperset(of: sentIds) }
        let got = received.all
        #expect(complete, "missing \(Set(sentIds).subtracting(got.map(\.envelope.messageID)).count) of \(sentIds.count) events")
        var seen = Set<String>()
        let firstSeen = got.map(\.envelope.messageID).filter { seen.insert($0).inserted }
        #expect(firstSeen == sentIds.filter { seen.contains($0) }, "first copies out of the order written")
        #expect(await outbox.drain(timeout: .seconds(10)))
        #expect(publisher.stats.connects >= 2)

        // A reader that comes now finds each topic's newest state.
        let reader = try await connectedBus(broker, service: "late-reader")
        let retained = Collector(try await reader.subscribe("test/flight/+", as: Bynar_V1_DiskHealthEvent.self))
        #expect(await retained.wait(timeout: .seconds(10)) { Set($0.map(\.topic)).count == topics })
        let newest = Dictionary(retained.all.map { ($0.topic, $0.payload.disk.serial) }, uniquingKeysWith: { _, last in last })
        #expect(newest == Dictionary(uniqueKeysWithValues: (0..<topics).map { ("test/flight/\($0)", "T\($0)-\(rounds - 1)") }))
        sender.cancel()
        await publisher.shutdown()
        await subscriber.shutdown()
        await reader.shutdown()
    }

    /// A broker that crashes comes back with the retained messages of its last save. After
    /// the reconnect the outbox says every retained message again (the same envelope, so the
    /// same message id) and clears again what it cleared: a reader finds the newest state,
    /// not the saved one, on every topic.
    @Test func aBrokerBackFromAnOlderSaveGetsTheNewestRetainedStates() async throws {
        let persistence = try makeTemporaryDirectory(prefix: "bynar-outbox-persist")
        defer { try? FileManager.default.removeItem(atPath: persistence) }
        // Saves only when stopped cleanly: production's autosave window, made certain.
        let broker = try TestBroker(extraConfig: "allow_anonymous true\npersistence true\npersistence_location \(persistence)/\nautosave_interval 3600")
        let directory = try makeTemporaryDirectory(prefix: "bynar-outbox")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try LocalStore(path: directory + "/pub.sqlite")
        let publisher = try await connectedBus(broker, service: "pub", clientId: "older-save-pub") {
            $0.reconnectMinSeconds = 1
            $0.reconnectMaxSeconds = 1
        }
        let outbox = Outbox(bus: publisher, store: store)
        let sender = Task { await outbox.run() }
        // Saved: a = "old", b = "old", c = "old".
        try outbox.commit(["a", "b", "c"].map { Outbox.Event(Self.note("old"), to: "test/retained/\($0)", retain: true) })
        #expect(await outbox.drain(timeout: .seconds(10)))
        broker.stop()
        try broker.start()
        // Since the save: a changes, b is cleared, c stays.
        let newA = try outbox.commit([Outbox.Event(Self.note("new"), to: "test/retained/a", retain: true), .clearRetained("test/retained/b")])[0]
        #expect(await outbox.drain(timeout: .seconds(10)))
        // Crash: back from the save.
        broker.signal(SIGKILL)
        try await Task.sleep(for: .milliseconds(300))
        try broker.start()
        #expect(await Collector<Int>.poll(timeout: .seconds(15)) { publisher.stats.connects >= 3 })
        #expect(await outbox.drain(timeout: .seconds(10)))
        try await Task.sleep(for: .milliseconds(300))
        let reader = try await connectedBus(broker, service: "reader")
        let retained = Collector(try await reader.subscribe("test/retained/+", as: Bynar_V1_Notification.self))
        try await Task.sleep(for: .seconds(1))
        let byTopic = Dictionary(retained.all.map { ($0.topic, $0) }, uniquingKeysWith: { _, last in last })
        #expect(byTopic["test/retained/a"]?.payload.title == "new", "\(retained.all.map { "\($0.topic)=\($0.payload.title)" })")
        #expect(byTopic["test/retained/a"]?.envelope.messageID == newA.messageID, "said again as the same message")
        #expect(byTopic["test/retained/b"] == nil, "the cleared topic came back from the save")
        #expect(byTopic["test/retained/c"]?.payload.title == "old")
        #expect(try store.outboxCounts().pending == 0)
        sender.cancel()
        await reader.shutdown()
        await publisher.shutdown()
    }

    /// An event with a retained copy (an incident's step on the incident stream and as the
    /// incident's retained state) is one row and one envelope: the stream gets it live, the
    /// copy's topic keeps it retained with the same message id, and the retained ledger
    /// has it for a broker back from an older save. More events with copies than one
    /// broker batch holds (1,024 messages) go out in several, none lost.
    @Test(.timeLimit(.minutes(1))) func anEventAndItsRetainedCopyAreOneRowWithOneMessageID() async throws {
        let (broker, directory, store, publisher, reader) = try await Self.rig()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let stream = Collector(try await reader.subscribe("test/stream", as: Bynar_V1_Notification.self))
        let outbox = Outbox(bus: publisher, store: store)
        // 700 events with copies: 1,400 messages, more than one batch to the broker.
        let envelopes = try outbox.commit((0..<700).map { Outbox.Event(Self.note("step \($0)"), to: "test/stream", retainedCopy: "test/retained/x\($0 % 3)") })
        #expect(try store.pendingOutbox(limit: 2_000).count == 700, "one row per event, not one per copy")
        let sender = Task { await outbox.run() }
        #expect(await outbox.drain(timeout: .seconds(20)))
        let live = await stream.wait(for: 700, timeout: .seconds(10))
        #expect(live.map(\.payload.title) == (0..<700).map { "step \($0)" }, "every event on the stream, in order")
        #expect(live.allSatisfy { !$0.retained }, "the stream's copies are not retained")
        // A subscriber that comes later finds the last copy of each topic, the same message.
        let late = try await connectedBus(broker, service: "late")
        let retained = Collector(try await late.subscribe("test/retained/+", as: Bynar_V1_Notification.self))
        #expect(await retained.wait(timeout: .seconds(5)) { $0.count >= 3 })
        try await Task.sleep(for: .milliseconds(300))
        let byTopic = Dictionary(retained.all.map { ($0.topic, $0) }, uniquingKeysWith: { _, last in last })
        #expect(retained.all.count == 3, "\(retained.all.map(\.topic))")
        for index in 697..<700 {
            let topic = "test/retained/x\(index % 3)"
            #expect(byTopic[topic]?.payload.title == "step \(index)")
            #expect(byTopic[topic]?.retained == true)
            #expect(byTopic[topic]?.envelope.messageID == envelopes[index].messageID, "the retained copy is the stream's message")
        }
        #expect(try store.outboxCounts().pending == 0)
        // The ledger has the copies (said again after a broker loses them).
        #expect(try store.reassertRetained(nowMs: Bus.nowUnixMs(), clearsKeptMs: 60_000, idPrefix: "test") == (said: 3, cleared: 0))
        sender.cancel()
        await late.shutdown()
        await reader.shutdown()
        await publisher.shutdown()
    }

    /// `clearRetained` goes out in order after what was stored before it: a subscriber that
    /// comes later finds nothing retained (the detector clears a replaced disk's health).
    @Test func clearRetainedForgetsTheRetainedMessageInOrder() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-outbox")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try LocalStore(path: directory + "/pub.sqlite")
        let publisher = try await connectedBus(broker, service: "pub")
        let outbox = Outbox(bus: publisher, store: store)
        var health = Bynar_V1_DiskHealth()
        health.state = .missing
        try outbox.publish(health, to: "test/retained/a", retain: true)
        try outbox.publish(health, to: "test/retained/b", retain: true)
        try outbox.clearRetained("test/retained/a")
        let sender = Task { await outbox.run() }
        #expect(await outbox.drain(timeout: .seconds(10)))
        let late = try await connectedBus(broker, service: "late")
        let seen = Collector(try await late.subscribe("test/retained/+", as: Bynar_V1_DiskHealth.self))
        #expect(await seen.wait(timeout: .seconds(5)) { $0.contains { $0.topic == "test/retained/b" } })
        try await Task.sleep(for: .milliseconds(500))
        #expect(seen.all.map(\.topic) == ["test/retained/b"], "\(seen.all.map(\.topic))")
        sender.cancel()
        await late.shutdown()
        await publisher.shutdown()
    }

    /// Events stored while the broker was never reachable go out once it is.
    @Test func eventsWrittenBeforeTheBrokerExistsAreDelivered() async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-outbox")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort()
        var config = BrokerConfig()
        config.port = port
        config.clientId = "early-pub"
        config.reconnectMaxSeconds = 1
        config.publishTimeoutMs = 1000
        let store = try LocalStore(path: directory + "/pub.sqlite")
        let publisher = try Bus(config: config, identity: .init(service: "pub", host: "h1", session: 1), logger: .init(label: "t"), announce: false)
        publisher.start()
        let outbox = Outbox(bus: publisher, store: store)
        let sender = Task { await outbox.run() }
        for index in 0..<5 {
            var event = Bynar_V1_DiskHealthEvent()
            event.disk.serial = "E\(index)"
            try outbox.publish(event, to: "test/early")
        }
        #expect(try store.outboxCounts().pending == 5)
        _ = port
        sender.cancel()
        await publisher.shutdown()

        // The same store, a new process life, a broker now: everything leaves.
        let broker = try TestBroker()
        config.port = broker.port
        let subscriber = try await connectedBus(broker, service: "sub")
        let received = Collector(try await subscriber.subscribe("test/early", as: Bynar_V1_DiskHealthEvent.self))
        let reopened = try LocalStore(path: directory + "/pub.sqlite")
        let second = try Bus(config: config, identity: .init(service: "pub", host: "h1", session: 2), logger: .init(label: "t"), announce: false)
        second.start()
        let secondOutbox = Outbox(bus: second, store: reopened)
        let secondSender = Task { await secondOutbox.run() }
        let got = await received.wait(for: 5, timeout: .seconds(10))
        #expect(got.map(\.payload.disk.serial) == (0..<5).map { "E\($0)" })
        #expect(got.allSatisfy { $0.envelope.session == 1 }, "re-sent events keep their original envelope")
        #expect(await secondOutbox.drain(timeout: .seconds(5)))
        secondSender.cancel()
        await second.shutdown()
        await subscriber.shutdown()
    }

    /// An event sent "until answered": the broker's ack does not end it. The first copy is
    /// taken and not answered (a receiver killed after libmosquitto acknowledged it, before
    /// it stored it); a reply from a service the event does not wait for confirms nothing;
    /// the copy sent again (same message id) is answered by the right service, and then no
    /// more copies come.
    @Test(.timeLimit(.minutes(1))) func anEventSentUntilAnsweredComesAgainUntilTheRightServiceAnswers() async throws {
        let broker = try TestBroker()
        let store = try LocalStore(path: ":memory:")
        let sender = try await connectedBus(broker, service: "orchestrator")
        let receiver = try await connectedBus(broker, service: "ticketing")
        let other = try await connectedBus(broker, service: "notifier")
        let copies = Collector(try await receiver.subscribe("test/cmd", as: Bynar_V1_TicketRequest.self))
        let seenByOther = Collector(try await other.subscribe("test/cmd", as: Bynar_V1_TicketRequest.self))
        let outbox = Outbox(bus: sender, store: store)
        let running = Task { await outbox.run() }
        defer { running.cancel() }

        var request = Bynar_V1_TicketRequest()
        request.incidentID = "inc-receipt"
        request.action = .close
        let sent = try outbox.commit([Outbox.Event(request, to: "test/cmd", receipt: .init(from: "ticketing", resendAfter: .seconds(1)))])[0]
        #expect(await copies.wait(timeout: .seconds(5)) { $0.count == 1 })
        // Taken by the broker, not confirmed: kept.
        #expect(await Collector<Int>.poll(timeout: .seconds(5)) { (try? store.awaitingReceipts()) == 1 })
        #expect(await seenByOther.wait(timeout: .seconds(5)) { $0.count == 1 })
        try await other.reply(to: seenByOther.all[0], with: Bynar_V1_TicketResponse())
        #expect(await copies.wait(timeout: .seconds(5)) { $0.count == 2 }, "sent again after resend_after")
        #expect(copies.all.allSatisfy { $0.envelope.messageID == sent.messageID && $0.correlationData == Array(sent.messageID.utf8) })
        #expect(try store.awaitingReceipts() + store.outboxCounts().pending == 1, "a reply from notifier confirms nothing")
        try await receiver.reply(to: copies.all[1], with: Bynar_V1_TicketResponse())
        #expect(await Collector<Int>.poll(timeout: .seconds(5)) { (try? store.awaitingReceipts()) == 0 && (try? store.outboxCounts().pending) == 0 })
        try await Task.sleep(for: .milliseconds(2500))
        #expect(copies.all.count == 2, "confirmed: not sent again")
        await sender.shutdown()
        await receiver.shutdown()
        await other.shutdown()
    }

    /// Events sent until answered go one at a time per receipt group, and the sender reads
    /// on past a held one (it does not read the events it already sent again): a ticket's
    /// close held behind its comment, with an event of no group written after both, goes
    /// as soon as the comment is answered, not at the comment's next resend a minute later.
    @Test(.timeLimit(.minutes(1))) func anEventHeldBehindItsGroupGoesWhenTheEarlierOneIsAnswered() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-outbox-group")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try LocalStore(path: directory + "/orchestrator.sqlite")
        let sender = try await connectedBus(broker, service: "orchestrator")
        let receiver = try await connectedBus(broker, service: "ticketing")
        let requests = Collector(try await receiver.subscribe("test/cmd", as: Bynar_V1_TicketRequest.self))
        let others = Collector(try await receiver.subscribe("test/other", as: Bynar_V1_DiskHealthEvent.self))
        let outbox = Outbox(bus: sender, store: store)
        let running = Task { await outbox.run() }
        defer { running.cancel() }

        let receipt = Outbox.Receipt(from: "ticketing", resendAfter: .seconds(60))
        func request(_ action: Bynar_V1_TicketRequest.Action) -> Bynar_V1_TicketRequest {
            var request = Bynar_V1_TicketRequest()
            request.incidentID = "inc-group"
            request.action = action
            return request
        }
        try outbox.commit([
            Outbox.Event(request(.comment), to: "test/cmd", correlationId: "inc-group", receipt: receipt),
            Outbox.Event(request(.close), to: "test/cmd", correlationId: "inc-group", receipt: receipt),
            Outbox.Event(Bynar_V1_DiskHealthEvent(), to: "test/other"),
        ])
        #expect(await others.wait(timeout: .seconds(5)) { $0.count == 1 }, "the event of no group is not held")
        try #require(await requests.wait(timeout: .seconds(5)) { $0.count == 1 })
        try await Task.sleep(for: .milliseconds(500))
        #expect(requests.all.map(\.payload.action) == [.comment], "the close waits for the comment's receipt")
        try await receiver.reply(to: requests.all[0], with: Bynar_V1_TicketResponse())
        try #require(await requests.wait(timeout: .seconds(5)) { $0.count == 2 }, "the close goes once the comment is answered")
        #expect(requests.all.map(\.payload.action) == [.comment, .close])
        try await receiver.reply(to: requests.all[1], with: Bynar_V1_TicketResponse())
        #expect(await Collector<Int>.poll(timeout: .seconds(5)) { (try? store.awaitingReceipts()) == 0 && (try? store.outboxCounts().pending) == 0 })
        await sender.shutdown()
        await receiver.shutdown()
    }

    /// The notifications of one commit go as one NotificationBatch, one outbox row, in the
    /// place of the last of them: every event committed before any of them still arrives
    /// before it (the notifier completes a notification from the incident events it has
    /// seen). A commit with one notification sends it as it is; a batch over 256
    /// notifications or 96 KiB goes in parts, in order. A subscriber of notifications
    /// (``Bus/subscribeNotifications(_:buffer:)``) gets each one, in the order committed.
    @Test(.timeLimit(.minutes(1))) func theNotificationsOfOneCommitAreOneMessageAfterTheEventsBeforeThem() async throws {
        let (broker, directory, store, publisher, reader) = try await Self.rig()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let arrivals = Mutex<[String]>([])
        let ordered = try await reader.subscribeInOrder([Topics.notifications, "test/events"])
        let watcher = Task {
            for await message in ordered {
                let what: String
                if message.filterIndex == 0, let batch = message.decodeNotifications() {
                    let kind = if case .notificationBatch? = batch.envelope.payload { "batch" } else { "single" }
                    what = "\(kind)(\(batch.payload.notifications.map(\.title).joined(separator: ",")))"
                } else if let event = message.decode(as: Bynar_V1_DiskHealthEvent.self) {
                    what = event.payload.disk.serial
                } else {
                    what = "?"
                }
                arrivals.withLock { $0.append(what) }
            }
        }
        let notes = Collector(try await reader.subscribeNotifications(Topics.notifications))
        func event(_ serial: String) -> Outbox.Event {
            var event = Bynar_V1_DiskHealthEvent()
            event.disk.serial = serial
            return Outbox.Event(event, to: "test/events")
        }
        let outbox = Outbox(bus: publisher, store: store)
        try outbox.commit([Outbox.notification(Self.note("a")), event("e1"), Outbox.notification(Self.note("b")), event("e2"),
                           Outbox.notification(Self.note("c")), event("e3")])
        #expect(try store.pendingOutbox(limit: 100).count == 4, "three events and one batch")
        try outbox.commit([Outbox.notification(Self.note("solo")), event("e4")])
        // 300 small ones: 256 and 44.
        try outbox.commit((0..<300).map { Outbox.notification(Self.note("s\($0)")) })
        // 200 of 1 KiB: over 96 KiB, so halved until each part is under it.
        let long = String(repeating: "x", count: 1024)
        try outbox.commit((0..<200).map {
            var note = Self.note("l\($0)")
            note.text = long
            return Outbox.notification(note)
        })
        let sender = Task { await outbox.run() }
        #expect(await outbox.drain(timeout: .seconds(20)))
        let expected = ["a", "b", "c", "solo"] + (0..<300).map { "s\($0)" } + (0..<200).map { "l\($0)" }
        let got = await notes.wait(for: expected.count, timeout: .seconds(10))
        #expect(got.map(\.payload.title) == expected, "every notification once, in the order committed")
        // The ordered subscription is a second route: it may still be behind the collector.
        #expect(await Collector<Int>.poll(timeout: .seconds(10)) { arrivals.withLock { $0.last?.hasSuffix(",l199)") ?? false } })
        let seen = arrivals.withLock { $0 }
        #expect(Array(seen.prefix(6)) == ["e1", "e2", "batch(a,b,c)", "e3", "single(solo)", "e4"], "\(seen.prefix(6))")
        #expect(seen.count > 8 && seen[6].hasPrefix("batch(s0,") && seen[6].hasSuffix(",s255)") && seen[7].hasPrefix("batch(s256,") && seen[7].hasSuffix(",s299)"),
                "\(seen.dropFirst(6).map { $0.prefix(30) })")
        let longParts = seen.dropFirst(8)
        #expect(longParts.count >= 3 && longParts.allSatisfy { $0.hasPrefix("batch(l") }, "\(longParts.map { $0.prefix(30) })")
        #expect(try store.pendingOutbox(limit: 100).isEmpty)
        sender.cancel()
        watcher.cancel()
        await publisher.shutdown()
        await reader.shutdown()
        withExtendedLifetime(broker) {}
    }
}
