import BynarAuth
import BynarProto
import BynarStore
import BynarTestSupport
import DiskManager
import Foundation
import Testing

/// `bynar keys generate` as an operator runs it: its key pair signs a command that a
/// disk-manager's verifier accepts.
struct KeysCommandTests {
    @Test func generatedKeysSignWhatTheVerifierAccepts() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-keys")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let keyPath = directory + "/orchestrator.key"
        let log = directory + "/out.txt"
        let process = try ChildProcess(builtExecutable("bynar"), ["keys", "generate", "--id", "orchestrator-1", "--out", keyPath], outputPath: log)
        _ = process.waitForExit(timeout: .seconds(30))
        #expect(process.exitCode == 0)
        let trustedLine = try String(contentsOfFile: log, encoding: .utf8)
        #expect(trustedLine.hasPrefix("orchestrator-1 ed25519 "))
        let mode = try FileManager.default.attributesOfItem(atPath: keyPath)[.posixPermissions] as? Int
        #expect(mode == 0o600)

        let (keyID, key) = try KeyFiles.loadPrivateKey(path: keyPath)
        #expect(keyID == "orchestrator-1")
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = "r-1"
        request.host = "h1"
        request.list = .init()
        let signed = try CommandSigning.sign(request, keyID: keyID, key: key, lifetime: .seconds(60), nowMs: 1_000)
        let store = try LocalStore(path: directory + "/dm.sqlite", migrations: CommandVerifier.migrations)
        let verifier = CommandVerifier(trustedKeys: try TrustedKeys(fileText: trustedLine), store: store)
        guard case .success(let verified) = verifier.verify(signed, nowMs: 2_000) else {
            Issue.record("a freshly generated key pair must verify")
            return
        }
        #expect(verified.keyID == "orchestrator-1")

        // Refuses to overwrite an existing key.
        let again = try ChildProcess(builtExecutable("bynar"), ["keys", "generate", "--id", "x", "--out", keyPath], outputPath: log)
        _ = again.waitForExit(timeout: .seconds(30))
        #expect(again.exitCode != 0)
    }
}
