import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The real bynar-disk-manager picks up a changed trusted-keys file without a restart: by
/// its file watch and on SIGHUP; a file that no longer parses is refused and the keys read
/// before stay in force.
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed"))
struct KeyReloadTests {
    @Test(.timeLimit(.minutes(2)))
    func aKeyAddedToOrTakenOutOfTheFileCountsWithoutARestart() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-dm-keys")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let keysPath = directory + "/trusted-keys"
        let ops = try KeyFiles.generate(keyID: "ops")
        let newcomer = try KeyFiles.generate(keyID: "newcomer")
        try keyFile(ops.trustedKeysLine).write(toFile: keysPath, atomically: true, encoding: .utf8)
        let bus = try await connectedBus(broker, service: "tester")
        let statuses = Collector(try await bus.subscribe(Topics.serviceStatus(host: "h1", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        let manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: directory, extraConfig: """
            "disk_manager": {"trusted_keys_file": "\(keysPath)"}
            """)
        defer { manager.signal(SIGTERM) }
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } }, "\(manager.log)")
        let opsLine = try await DiskManagerLine(bus: bus, host: "h1", keyID: "ops", privateKeyText: ops.privateKeyFileText)
        let newLine = try await DiskManagerLine(bus: bus, host: "h1", keyID: "newcomer", privateKeyText: newcomer.privateKeyFileText)
        func answer(_ line: DiskManagerLine) async -> Bynar_V1_DiskManagerResponse? {
            try? await line.send("list-\(UUID().uuidString)", .list(.init()), timeout: .seconds(10))
        }
        #expect(await answer(opsLine)?.outcome == .success)
        let unknown = await answer(newLine)
        #expect(unknown?.outcome == .refused && unknown?.reason.contains("newcomer") == true, "\(String(describing: unknown))")

        // Added to the file (as configuration management would): trusted within the watch's
        // interval, no signal needed.
        try keyFile(ops.trustedKeysLine, newcomer.trustedKeysLine).write(toFile: keysPath, atomically: true, encoding: .utf8)
        var trusted = false
        let deadline = ContinuousClock.now + .seconds(15)
        while !trusted && ContinuousClock.now < deadline {
            trusted = await answer(newLine)?.outcome == .success
            if !trusted { try await Task.sleep(for: .milliseconds(500)) }
        }
        #expect(trusted, "\(manager.log.suffix(2000))")
        #expect(manager.log.contains("trusted keys read again"))

        // A file that does not parse (a half-written copy): refused, both keys still trusted.
        try keyFile(ops.trustedKeysLine, "newcomer ed25519 not-base64!").write(toFile: keysPath, atomically: true, encoding: .utf8)
        manager.process.signal(SIGHUP)
        #expect(await Collector<Int>.poll(timeout: .seconds(10)) { manager.log.contains("trusted keys file refused") }, "\(manager.log.suffix(2000))")
        let newStill = await answer(newLine)?.outcome, opsStill = await answer(opsLine)?.outcome
        #expect(newStill == .success && opsStill == .success, "the keys read before stay in force")
        #expect(manager.process.isRunning, "SIGHUP reloads; it does not stop the service")

        // Taken out (SIGHUP: at once): refused from then on.
        try keyFile(newcomer.trustedKeysLine).write(toFile: keysPath, atomically: true, encoding: .utf8)
        manager.process.signal(SIGHUP)
        var revoked = false
        let revokeDeadline = ContinuousClock.now + .seconds(10)
        while !revoked && ContinuousClock.now < revokeDeadline {
            revoked = await answer(opsLine)?.outcome == .refused
            if !revoked { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(revoked, "\(manager.log.suffix(2000))")
        #expect(await answer(newLine)?.outcome == .success)
        await bus.shutdown()
    }
}
