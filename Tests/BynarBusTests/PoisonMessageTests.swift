import BynarBus
import BynarConfig
import BynarProto
import BynarStore
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// One bad outgoing message must not block the ones after it, and a late acknowledgement
/// must never acknowledge a different message. Real broker throughout.
@Suite(.serialized)
struct PoisonMessageTests {
    @Test func topicLevelsFromDataAreAlwaysValid() {
        #expect(Topics.level("stor-07.dc1") == "stor-07.dc1")
        #expect(Topics.level("fz-a#b") == "fz-a%23b")
        #expect(Topics.level("a/b+c%d") == "a%2Fb%2Bc%25d")
        #expect(Topics.level("tab\there\u{1}") == "tab%09here%01")
        #expect(Topics.level("") == "%00")
        #expect(Topics.level("+") == "+" && Topics.level("#") == "#", "wildcards of filters pass")
        let long = Topics.level(String(repeating: "é", count: 500))
        #expect(long.utf8.count <= Topics.maxLevelBytes && long.contains("~"))
        #expect(Topics.level(String(repeating: "x", count: 300) + "1") != Topics.level(String(repeating: "x", count: 300) + "2"), "cut values stay distinct")
        #expect(Topics.incidentState(id: "h2.fz-a#b.1") == "bynar/v1/incident/state/h2.fz-a%23b.1")
        // A topic the orchestrator builds from a forged key has exactly its levels.
        #expect(Topics.diskHealth(host: "h2", disk: "k/x#").split(separator: "/").count == 6)
    }

    @Test("an invalid topic and an oversized message are dead-lettered; the rest of the batch goes")
    func poisonInABatch() async throws {
        let broker = try TestBroker(extraConfig: "allow_anonymous true\nmax_packet_size 262144")
        let publisher = try await connectedBus(broker, service: "pub", host: "h7")
        let watcher = try await connectedBus(broker, service: "watch")
        let good = Collector(try await watcher.subscribe("test/good", as: Bynar_V1_Notification.self))
        let letters = Collector(try await watcher.subscribe(Topics.deadLetter(host: "h7", service: "pub"), as: Bynar_V1_DeadLetter.self))
        func bytes(_ title: String, padding: Int = 0) throws -> [UInt8] {
            var note = Bynar_V1_Notification()
            note.title = title
            note.text = String(repeating: "x", count: padding)
            return try Bus.serialize(publisher.envelope(note))
        }
        let outcomes = try await publisher.publish(batch: [
            (try bytes("first"), "test/good", false),
            (try bytes("bad topic"), "test/fz-a#b/x", false),
            (try bytes("control"), "test/ctl\u{1}", false),
            (try bytes("huge", padding: 300_000), "test/good", false),
            (try bytes("last"), "test/good", false),
        ])
        print("poison batch outcomes: \(outcomes.map { $0.map { "\($0)" } ?? "ok" })")
        #expect(outcomes[0] == nil && outcomes[4] == nil)
        #expect(outcomes[1] != nil && outcomes[2] != nil && outcomes[3] != nil)
        #expect(await good.wait(for: 2, timeout: .seconds(5)).map(\.payload.title) == ["first", "last"])
        let dead = await letters.wait(for: 3, timeout: .seconds(5))
        #expect(dead.count == 3 && dead.allSatisfy { $0.payload.reason.hasPrefix("not sent: ") }, "\(dead.map(\.payload.reason))")
        #expect(dead.contains { $0.payload.reason.contains("cut to") }, "the huge one is cut to fit")
        #expect(publisher.stats.refusedOutgoing == 3)
        for bus in [publisher, watcher] { await bus.shutdown() }
    }

    @Test("an outbox with a poison message parks it and delivers everything after it")
    func outboxGoesOnPastPoison() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-poison")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try LocalStore(path: directory + "/pub.sqlite")
        let publisher = try await connectedBus(broker, service: "pub", host: "h7")
        let watcher = try await connectedBus(broker, service: "watch")
        let good = Collector(try await watcher.subscribe("test/after", as: Bynar_V1_Notification.self))
        let outbox = Outbox(bus: publisher, store: store)
        try outbox.publish(Bynar_V1_Notification(), to: "test/poison/#")
        for index in 0..<50 {
            var note = Bynar_V1_Notification()
            note.title = "n\(index)"
            try outbox.publish(note, to: "test/after")
        }
        let sender = Task { await outbox.run() }
        #expect(await good.wait(for: 50, timeout: .seconds(10)).count == 50, "every later message went out")
        #expect(await outbox.drain(timeout: .seconds(5)))
        #expect(try store.outboxCounts().refused == 1, "the poison one is parked, not retried")
        sender.cancel()
        for bus in [publisher, watcher] { await bus.shutdown() }
    }

    @Test("a PUBACK that comes after its publish timed out never acknowledges a later publish")
    func lateAckIsNotTakenForAnother() async throws {
        // The broker denies "test/denied": a publish there must come back refused (135).
        let directory = try makeTemporaryDirectory(prefix: "bynar-late-ack")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "topic readwrite test/ok\ntopic readwrite test/slow\n".write(toFile: directory + "/acl", atomically: true, encoding: .utf8)
        let broker = try TestBroker(extraConfig: "allow_anonymous true\nacl_file \(directory)/acl")
        let bus = try await connectedBus(broker, service: "pub") { $0.publishTimeoutMs = 300 }
        // 1. The broker hangs: a publish times out; its PUBACK comes once it resumes.
        broker.signal(SIGSTOP)
        await #expect(throws: BusError.self) { try await bus.publish(Bynar_V1_Notification(), to: "test/slow") }
        broker.signal(SIGCONT)
        try await Task.sleep(for: .seconds(1))
        // 2. Publish until libmosquitto's 16-bit message id comes round to that publish's.
        let note = try Bus.serialize(bus.envelope(Bynar_V1_Notification()))
        var remaining = 65_534
        let started = ContinuousClock.now
        while remaining > 0 {
            let count = min(remaining, Bus.maxBatch)
            let outcomes = try await bus.publish(batch: Array(repeating: (note, "test/ok", false), count: count))
            #expect(outcomes.allSatisfy { $0 == nil })
            remaining -= count
        }
        print("late ack: 65534 publishes in \(ContinuousClock.now - started)")
        // 3. This publish reuses the timed-out one's id; the broker refuses it. Taking the
        //    stale PUBACK would report success for a message the broker never took.
        await #expect(throws: BusError.publishRefused(topic: "test/denied", reasonCode: 135, reason: "Not authorized")) {
            try await bus.publish(Bynar_V1_Notification(), to: "test/denied")
        }
        await bus.shutdown()
    }
}
