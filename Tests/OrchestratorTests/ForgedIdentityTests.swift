import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The issue's live attacks on identity, run as it ran them: the real bynar-orchestrator on
/// the production broker configuration (``ProductionBroker``: TLS, generated ACL, bound
/// client ids), the attacker holding `detector.h2`'s password and publishing only where the
/// ACL lets it, on h2's own topics, payloads claiming h1. Before the topic check
/// (`TopicClaims`) the orchestrator opened `incident=h1.<key>` and sent its own signed
/// SafeToRemove to h1, and a forged retained DEATH marked h1 down and ran its hooks.
@Suite(.serialized)
struct ForgedIdentityTests {
    @Test("h2's password cannot steer h1: a FAILED disk and a DEATH claiming h1 are refused")
    func payloadsClaimingAnotherHostAreRefused() async throws {
        let production = try ProductionBroker(hosts: ["h1", "h2"])
        let directory = try makeTemporaryDirectory(prefix: "bynar-forged-identity")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = try makeSigningKey(in: directory)
        let hookLog = directory + "/hook.log"
        let hook = directory + "/hook"
        try "#!/bin/sh\necho \"$1 $2 $3 host=$BYNAR_HOST\" >> \(hookLog)\n".write(toFile: hook, atomically: true, encoding: .utf8)
        chmod(hook, 0o755)

        let admin = try await production.bus(service: "cli", host: "c1", identity: "admin.ops", clientId: "bynar-cli-c1-9")
        let commands = Collector(try await admin.subscribe(Topics.diskManagerCommands(host: "+"), as: Bynar_V1_DiskManagerRequest.self))
        let letters = Collector(try await admin.subscribe(Topics.deadLetter(host: "c1", service: "orchestrator"), as: Bynar_V1_DeadLetter.self))
        let h1State = Collector(try await admin.subscribe(Topics.hostState(host: "h1"), as: Bynar_V1_HostState.self))
        let births = Collector(try await admin.subscribe(Topics.serviceStatus(host: "c1", service: "orchestrator"), as: Bynar_V1_ServiceStatus.self))

        let orchestrator = try ServiceProcess(
            "bynar-orchestrator", brokerPort: production.centralPort, host: "c1", directory: directory,
            extraConfig: #""orchestrator": {"signing_key_file": "\#(key.path)", "hooks": [{"command": "\#(hook)"}]}"#,
            brokerExtra: production.brokerConfigJSON(identity: "orchestrator"))
        defer { orchestrator.signal(SIGTERM) }
        #expect(await births.wait(timeout: .seconds(20)) { $0.contains { $0.payload.state == .birth } }, "orchestrator up; log: \(orchestrator.log.suffix(2000))")
        try await Task.sleep(for: .milliseconds(500))
        // h1's real disk-manager comes up (a live birth: the hook runs for it).
        let dm1 = try await production.bus(service: "disk-manager", host: "h1", announce: true)
        await dm1.markReady()
        #expect(await h1State.wait(timeout: .seconds(10)) { $0.last?.payload.up == true })
        #expect(await Collector<Int>.poll(timeout: .seconds(10)) { ((try? String(contentsOfFile: hookLog, encoding: .utf8)) ?? "").contains(" up host=h1") })

        // The attacker: detector.h2, on its own topics only.
        let attacker = try await production.bus(service: "detector", host: "h2")
        var disk = DetectorVoice.identity(host: "h1", key: "serial-VICTIM")
        disk.devPath = "/dev/sdb"
        var event = Bynar_V1_DiskHealthEvent()
        event.disk = disk
        event.fromState = .failing
        event.toState = .failed
        event.reasons = [Bynar_V1_HealthReason.with { $0.rule = "smart.failed"; $0.detail = "forged" }]
        try await attacker.publish(event, to: Topics.diskEvents(host: "h2"))
        var health = Bynar_V1_DiskHealth()
        health.disk = disk
        health.state = .failed
        try await attacker.publish(health, to: Topics.diskHealth(host: "h2", disk: disk.key), retain: true)
        var death = Bynar_V1_ServiceStatus()
        death.host = "h1"
        death.service = "disk-manager"
        death.state = .death
        death.session = UInt64.max
        try await attacker.publish(death, to: Topics.serviceStatus(host: "h2", service: "detector"), retain: true)
        // And where it would have to publish to be believed, the broker refuses.
        await #expect(throws: BusError.self) { try await attacker.publish(event, to: Topics.diskEvents(host: "h1")) }
        await #expect(throws: BusError.self) { try await attacker.publish(death, to: Topics.serviceStatus(host: "h1", service: "disk-manager"), retain: true) }

        #expect(await letters.wait(timeout: .seconds(10)) { $0.count >= 3 }, "the three forgeries are dead-lettered: \(letters.all.map(\.payload.reason))")
        let reasons = letters.all.map(\.payload.reason)
        print("forged identity: orchestrator dead letters: \(reasons)")
        #expect(reasons.contains { $0.contains("disk.host \"h1\"") })
        #expect(reasons.contains { $0.contains("service_status.host \"h1\"") })
        try await Task.sleep(for: .seconds(3))
        #expect(commands.all.isEmpty, "no command to any disk-manager: \(commands.all.map(\.topic))")
        #expect(!orchestrator.log.contains("incident opened"))
        #expect(h1State.all.last?.payload.up == true, "h1 stays up")
        let hooks = (try? String(contentsOfFile: hookLog, encoding: .utf8)) ?? ""
        #expect(!hooks.split(separator: "\n").contains { $0.contains(" down host=h1") }, "no hook ran for h1 going down: \(hooks)")
        #expect(hooks.contains("disk-manager") && hooks.contains(" up host=h1"), "the hook did run for h1's real birth: \(hooks)")
        try await attacker.clearRetained(Topics.diskHealth(host: "h2", disk: disk.key))
        try await attacker.clearRetained(Topics.serviceStatus(host: "h2", service: "detector"))
        for bus in [attacker, dm1, admin] { await bus.shutdown() }
    }
}
