import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Crypto
import DiskManager
import Foundation
import Testing

/// The real bynar-disk-manager process on a real broker, with a real trusted key.
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed"))
struct DiskManagerServiceTests {
    @Test func signedCommandsAreServedOnceUnsignedAndReplayedOnesRefused() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-dm")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let files = try KeyFiles.generate(keyID: "orchestrator-1")
        try files.trustedKeysLine.write(toFile: directory + "/trusted-keys", atomically: true, encoding: .utf8)
        let (keyID, key) = try KeyFiles.loadPrivateKey(text: files.privateKeyFileText)
        let watcher = try await connectedBus(broker, service: "watcher")
        let statuses = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        let manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: directory, extraConfig: """
            "disk_manager": {"trusted_keys_file": "\(directory)/trusted-keys", "max_disks_out": 1}
            """)
        defer { manager.signal(SIGTERM) }
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } }, "\(manager.log)")

        func send(_ request: Bynar_V1_DiskManagerRequest) async throws -> Bynar_V1_DiskManagerResponse {
            try await watcher.request(request, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(10)).payload
        }
        func signed(_ request: Bynar_V1_DiskManagerRequest) throws -> Bynar_V1_DiskManagerRequest {
            try CommandSigning.sign(request, keyID: keyID, key: key, lifetime: .seconds(60), nowMs: Bus.nowUnixMs())
        }

        var list = Bynar_V1_DiskManagerRequest()
        list.requestID = "list-1"
        list.host = "h1"
        list.list = .init()
        // Unsigned: refused.
        let unsigned = try await send(list)
        #expect(unsigned.outcome == .refused && unsigned.reason.contains("not signed"), "\(unsigned.reason)")
        // Signed: the disks, the root disk flagged as a system disk.
        let first = try signed(list)
        let listed = try await send(first)
        #expect(listed.outcome == .success, "\(listed.reason)")
        let root = listed.diskList.disks.first { $0.systemDisk }
        #expect(root != nil, "the machine's root disk is listed as a system disk")
        // The very same message again: a replay, refused.
        let replay = try await send(first)
        #expect(replay.outcome == .refused && replay.reason.contains("replay"), "\(replay.reason)")
        // The same request id, freshly signed: the first outcome, not a second run.
        let repeated = try await send(try signed(list))
        #expect(repeated.outcome == .alreadyDone && repeated.originalOutcome == .success)
        // A forged signature (tampered after signing): refused.
        var forged = try signed(list)
        forged.requestID = "list-2"
        #expect(try await send(forged).reason.contains("signature"))

        // Never the system disk, whatever the signer says.
        if let root {
            var remove = Bynar_V1_DiskManagerRequest()
            remove.requestID = "remove-root"
            remove.host = "h1"
            remove.remove.disk.key = root.disk.key
            let answer = try await send(try signed(remove))
            #expect(answer.outcome == .refused && answer.reason.contains("system disk"), "\(answer.reason)")
        }
        // A command for another host on this host's topic: refused by the bus before the
        // disk-manager sees it (the topic names the host), with an ErrorReply naming why.
        var elsewhere = list
        elsewhere.requestID = "list-3"
        elsewhere.host = "h2"
        do {
            let answer = try await send(try signed(elsewhere))
            Issue.record("answered: \(answer)")
        } catch {
            #expect("\(error)".contains("disk_manager_request.host \"h2\""), "\(error)")
        }
        #expect(manager.log.contains("disk-manager command"))
        await watcher.shutdown()
    }
}
