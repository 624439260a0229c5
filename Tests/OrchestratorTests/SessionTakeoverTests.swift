import BynarBus
import BynarConfig
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// Session takeover, against the production broker configuration (``ProductionBroker``).
/// Before client ids were bound to identities, `detector.h2` connecting with client id
/// `disk-manager-h1` made the broker close the real disk-manager's connection: it came back
/// with `session_present=false` (its queued commands gone) and its will fired host-down
/// hooks. Now a storage identity's client id is its username, whatever it asks for.
@Suite(.serialized)
struct SessionTakeoverTests {
    @Test("a host's password cannot take over another host's session")
    func anotherHostsClientIdCannotBeTaken() async throws {
        let production = try ProductionBroker(hosts: ["h1", "h2"])
        let dm1 = try await production.bus(service: "disk-manager", host: "h1", announce: true)
        await dm1.markReady()
        let commands = Collector(try await dm1.subscribe(Topics.diskManagerCommands(host: "h1"), as: Bynar_V1_DiskManagerRequest.self))
        let admin = try await production.bus(service: "cli", host: "c1", identity: "admin.ops", clientId: "bynar-cli-c1-7")
        let statuses = Collector(try await admin.subscribe(Topics.serviceStatus(host: "h1", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        #expect(await statuses.wait(timeout: .seconds(5)) { $0.contains { $0.payload.state == .birth } })

        // The attacker holds detector.h2's password and asks for h1's client ids (the one
        // the service configures and the one the broker forces).
        var attackers: [Bus] = []
        for stolen in ["disk-manager-h1", "disk-manager.h1"] {
            attackers.append(try await production.bus(service: "detector", host: "h2", clientId: stolen))
        }
        // And it cannot reach the central listener, where client ids are free.
        await #expect(throws: BusError.self) {
            _ = try await production.bus(service: "detector", host: "h2", clientId: "disk-manager.h1", port: production.centralPort)
        }
        try await Task.sleep(for: .seconds(2))
        #expect(dm1.stats.connects == 1, "disk-manager.h1 was never disconnected")
        #expect(!statuses.all.contains { $0.payload.state == .death }, "no will fired: \(statuses.all.map(\.payload.state))")
        let log = production.broker.log
        #expect(!log.contains("Client disk-manager.h1 already connected") && !log.contains("Client disk-manager-h1 already connected"), "the broker closed none of h1's connections")
        #expect(log.contains("as detector.h2"), "the attacker's connections run under its own name")

        // disk-manager.h1 still gets its commands.
        let orchestrator = try await production.bus(service: "orchestrator", host: "c1")
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = "after-takeover-try"
        request.host = "h1"
        try await orchestrator.publish(request, to: Topics.diskManagerCommands(host: "h1"))
        #expect(await commands.wait(timeout: .seconds(5)) { $0.contains { $0.payload.requestID == "after-takeover-try" } })
        for bus in attackers + [dm1, admin, orchestrator] { await bus.shutdown() }
    }
}
