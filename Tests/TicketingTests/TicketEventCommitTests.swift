import BynarBus
import BynarProto
import BynarStore
import BynarTestSupport
import Foundation
import GRDB
import Testing
@testable import Ticketing

/// A TicketEvent and the incident's retained ticket state it sets are kept together or not
/// at all (`TicketingService.commit(_:retainAsState:to:)`). Real parts: mosquitto, and the
/// service's SQLite store in a file; the failed write is a trigger on the outbox table that
/// refuses the event's row, as a full disk or an I/O error would refuse it.
@Suite struct TicketEventCommitTests {
    static func event(_ incident: String, _ state: Bynar_V1_TicketState) -> Bynar_V1_TicketEvent {
        var event = Bynar_V1_TicketEvent()
        event.incidentID = incident
        event.state = state
        event.ticketKey = "BYN-7"
        event.detail = "test"
        event.changedUnixMs = 1_765_000_000_000
        return event
    }

    @Test func aTicketEventAndItsRetainedStateAreOneTransaction() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-ticket-commit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try LocalStore(path: directory + "/ticketing.sqlite")
        let ticketing = try await connectedBus(broker, service: "ticketing")
        let outbox = Outbox(bus: ticketing, store: store)

        // The second write of the pair fails: before, the state's own transaction had
        // already committed, and the state went out without its event.
        try store.write { db in
            try db.execute(sql: """
                CREATE TRIGGER test_refuse_ticket_event BEFORE INSERT ON outbox WHEN NEW.topic = '\(Topics.ticketEvents)'
                BEGIN SELECT RAISE(ABORT, 'test: the event cannot be stored'); END
                """)
        }
        #expect(throws: (any Error).self) { try TicketingService.commit(Self.event("inc-1", .failed), retainAsState: true, to: outbox) }
        #expect(try store.pendingOutbox(limit: 10).isEmpty, "neither row kept")
        let ledger = try await store.database.read { try Int.fetchOne($0, sql: "SELECT count(*) FROM retained_ledger") }
        #expect(ledger == 0, "the retained ledger has no state whose event was not kept")

        // Once the store takes writes again: both rows, the retained state first, and on
        // the broker in that order.
        try store.write { db in try db.execute(sql: "DROP TRIGGER test_refuse_ticket_event") }
        let listener = try await connectedBus(broker, service: "orchestrator")
        let heard = Collector(try await listener.subscribe("bynar/v1/ticket/#", as: Bynar_V1_TicketEvent.self))
        try TicketingService.commit(Self.event("inc-1", .opened), retainAsState: true, to: outbox)
        try TicketingService.commit(Self.event("inc-1", .resolved), retainAsState: false, to: outbox)
        #expect(try store.pendingOutbox(limit: 10).map(\.topic) == [Topics.ticketState(incident: "inc-1"), Topics.ticketEvents, Topics.ticketEvents])
        let sending = Task { await outbox.run() }
        defer { sending.cancel() }
        let got = await heard.wait(for: 3, timeout: .seconds(10))
        #expect(got.map(\.topic) == [Topics.ticketState(incident: "inc-1"), Topics.ticketEvents, Topics.ticketEvents])
        #expect(got.map(\.payload.state) == [.opened, .opened, .resolved])
        // A late subscriber finds the state the pair set, not the resolved event's (not retained).
        let late = try await connectedBus(broker, service: "orchestrator", host: "h2")
        let states = Collector(try await late.subscribe(Topics.allTicketStates, as: Bynar_V1_TicketEvent.self))
        let retained = await states.wait(for: 1, timeout: .seconds(10))
        #expect(retained.count == 1 && retained.first?.retained == true && retained.first?.payload.state == .opened, "\(retained)")
        await late.shutdown()
        await listener.shutdown()
        await ticketing.shutdown()
        broker.stop()
    }
}
