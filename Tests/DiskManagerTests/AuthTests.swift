import BynarAuth
import BynarProto
import BynarStore
import BynarTestSupport
import Crypto
import DiskManager
import Foundation
import SwiftProtobuf
import Testing

/// Command signing, trusted keys, the persistent nonce store and the audit log, with real
/// Ed25519 keys and real SQLite files.
struct AuthTests {
    static let now: Int64 = 1_800_000_000_000

    let key = Curve25519.Signing.PrivateKey()
    let directory: String

    init() throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-auth")
    }

    func openStore() throws -> LocalStore {
        try LocalStore(path: "\(directory)/disk-manager.sqlite", migrations: CommandVerifier.migrations + AuditLog.migrations)
    }

    /// A verifier allowing no clock skew, unless asked.
    func verifier(_ store: LocalStore, maxLifetime: Duration = .seconds(600), retention: Duration = .seconds(3600), skew: Duration = .zero) -> CommandVerifier {
        CommandVerifier(trustedKeys: TrustedKeys(keys: ["ops": key.publicKey]), store: store, maxLifetime: maxLifetime, nonceRetention: retention, allowedSkew: skew)
    }

    static func removeRequest() -> Bynar_V1_DiskManagerRequest {
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = "req-1"
        request.host = "storage-7"
        request.deadlineUnixMs = now + 30_000
        request.simulate = true
        var remove = Bynar_V1_DiskManagerRequest.Remove()
        remove.disk.wwn = "0x5000c500a1b2c3d4"
        remove.disk.serial = "ZA1ABC"
        request.remove = remove
        return request
    }

    func signed(_ request: Bynar_V1_DiskManagerRequest = removeRequest(), lifetime: Duration = .seconds(60), nowMs: Int64 = now, nonce: [UInt8]? = nil) throws -> Bynar_V1_DiskManagerRequest {
        try CommandSigning.sign(request, keyID: "ops", key: key, lifetime: lifetime, nowMs: nowMs, nonce: nonce)
    }

    func rejection(_ result: Result<VerifiedCommand, CommandRejection>) -> CommandRejection? {
        if case .failure(let why) = result { return why }
        return nil
    }

    // MARK: Round trip

    @Test func signedCommandVerifies() throws {
        let store = try openStore()
        let request = try signed()
        #expect(request.auth.keyID == "ops")
        #expect(request.auth.nonce.count == 16)
        #expect(request.auth.expiresUnixMs == Self.now + 60_000)
        #expect(request.auth.signature.count == 64)
        let verified = try verifier(store).verify(request, nowMs: Self.now + 1).get()
        #expect(verified.keyID == "ops")
        #expect(verified.nonce == [UInt8](request.auth.nonce))
        #expect(verified.request == request)
        // The signature is over exactly the documented bytes.
        var unsigned = request
        unsigned.auth.signature = Data()
        var options = BinaryEncodingOptions()
        options.useDeterministicOrdering = true
        let expected: [UInt8] = try unsigned.serializedBytes(options: options)
        #expect(try CommandSigning.signedBytes(request) == expected)
        #expect(key.publicKey.isValidSignature(request.auth.signature, for: expected))
    }

    @Test func survivesTheWire() throws {
        let store = try openStore()
        let bytes: [UInt8] = try signed().serializedBytes()
        let decoded = try Bynar_V1_DiskManagerRequest(serializedBytes: bytes)
        #expect(throws: Never.self) { try verifier(store).verify(decoded, nowMs: Self.now).get() }
    }

    @Test func randomNoncesDiffer() throws {
        #expect(try signed().auth.nonce != signed().auth.nonce)
    }

    @Test func signingRefusesNonsense() {
        #expect(throws: CommandSigning.SigningError.emptyKeyID) {
            try CommandSigning.sign(Self.removeRequest(), keyID: "", key: key, lifetime: .seconds(1), nowMs: Self.now)
        }
        #expect(throws: CommandSigning.SigningError.emptyNonce) {
            try CommandSigning.sign(Self.removeRequest(), keyID: "ops", key: key, lifetime: .seconds(1), nowMs: Self.now, nonce: [])
        }
        #expect(throws: CommandSigning.SigningError.nonPositiveLifetime) {
            try CommandSigning.sign(Self.removeRequest(), keyID: "ops", key: key, lifetime: .zero, nowMs: Self.now)
        }
    }

    // MARK: Rejections

    @Test func unsignedIsRejected() throws {
        let store = try openStore()
        #expect(rejection(verifier(store).verify(Self.removeRequest(), nowMs: Self.now)) == .unsigned)
        var noSignature = try signed()
        noSignature.auth.signature = Data()
        #expect(rejection(verifier(store).verify(noSignature, nowMs: Self.now)) == .unsigned)
    }

    @Test func unknownKeyIsRejected() throws {
        let store = try openStore()
        let other = Curve25519.Signing.PrivateKey()
        let request = try CommandSigning.sign(Self.removeRequest(), keyID: "intruder", key: other, lifetime: .seconds(60), nowMs: Self.now)
        #expect(rejection(verifier(store).verify(request, nowMs: Self.now)) == .unknownKey("intruder"))
    }

    @Test func otherKeyUnderTrustedIdIsRejected() throws {
        let store = try openStore()
        let other = Curve25519.Signing.PrivateKey()
        let request = try CommandSigning.sign(Self.removeRequest(), keyID: "ops", key: other, lifetime: .seconds(60), nowMs: Self.now)
        #expect(rejection(verifier(store).verify(request, nowMs: Self.now)) == .badSignature)
    }

    @Test func expiredIsRejected() throws {
        let store = try openStore()
        let request = try signed(lifetime: .seconds(60))
        let expiry = Self.now + 60_000
        let strict = verifier(store)
        #expect(rejection(strict.verify(request, nowMs: expiry)) == .expired(at: expiry, clock: ClockReading(nowMs: expiry, allowedSkewMs: 0)))
        #expect(rejection(strict.verify(request, nowMs: expiry + 1)) == .expired(at: expiry, clock: ClockReading(nowMs: expiry + 1, allowedSkewMs: 0)))
        #expect(throws: Never.self) { try strict.verify(request, nowMs: expiry - 1).get() }
    }

    @Test("a sender's clock a little behind is tolerated; a refusal says the measured skew")
    func clockSkew() throws {
        let store = try openStore()
        let skewed = verifier(store, skew: .seconds(30))
        // Signed by a sender 70 s behind this host, with a 60 s lifetime: expired 10 s ago by
        // our clock, within the 30 s allowed.
        let behind = try signed(lifetime: .seconds(60))
        #expect(throws: Never.self) { try skewed.verify(behind, nowMs: Self.now + 70_000, sentUnixMs: Self.now).get() }
        // 100 s behind: refused, and the refusal names the skew it measured.
        let late = try signed(lifetime: .seconds(60), nowMs: Self.now + 1)
        let refusal = rejection(skewed.verify(late, nowMs: Self.now + 100_001, sentUnixMs: Self.now + 1))
        let text = refusal.map { "\($0)" } ?? ""
        #expect(text.contains("40000 ms ago by this host's clock") && text.contains("allowed clock skew 30000 ms")
                && text.contains("the sender's clock is 100000 ms behind this host's") && text.contains("check NTP"), "\(text)")
        // A sender ahead: its expiry may exceed the maximum lifetime by the allowed skew.
        let ahead = try signed(lifetime: .seconds(600), nowMs: Self.now + 20_000)
        #expect(throws: Never.self) { try skewed.verify(ahead, nowMs: Self.now, sentUnixMs: Self.now + 20_000).get() }
        let tooFar = try signed(lifetime: .seconds(600), nowMs: Self.now + 40_000)
        guard case .lifetimeTooLong? = rejection(skewed.verify(tooFar, nowMs: Self.now)) else { Issue.record("accepted"); return }
    }

    @Test("replay protection holds when the clock steps back past pruned nonces")
    func clockStepsBack() throws {
        let store = try openStore()
        let verifier = verifier(store, skew: .seconds(30))
        let request = try signed(lifetime: .seconds(600))
        #expect(throws: Never.self) { try verifier.verify(request, nowMs: Self.now).get() }
        // The clock jumps two hours ahead (a bad NTP source); another command prunes the old nonce.
        let later = try signed(lifetime: .seconds(60), nowMs: Self.now + 7_200_000)
        #expect(throws: Never.self) { try verifier.verify(later, nowMs: Self.now + 7_200_000).get() }
        #expect(try verifier.floor() == Self.now + 3_600_000)
        // Back to the true time: the first command is within its lifetime again, but its nonce
        // is forgotten: it must not be taken a second time.
        let replay = rejection(verifier.verify(request, nowMs: Self.now + 1_000))
        guard case .beforeReplayFloor(let at, let floor)? = replay else { Issue.record("replay taken: \(String(describing: replay))"); return }
        #expect(at == Self.now + 600_000 && floor == Self.now + 3_600_000)
        #expect("\(replay!)".contains("a replay cannot be ruled out"))
    }

    @Test func tooLongLifetimeIsRejected() throws {
        let store = try openStore()
        let request = try signed(lifetime: .seconds(601))
        #expect(rejection(verifier(store).verify(request, nowMs: Self.now)) == .lifetimeTooLong(at: Self.now + 601_000, clock: ClockReading(nowMs: Self.now, allowedSkewMs: 0)))
        let justRight = try signed(lifetime: .seconds(600))
        #expect(throws: Never.self) { try verifier(store).verify(justRight, nowMs: Self.now).get() }
    }

    @Test func badNonceIsRejected() throws {
        let store = try openStore()
        let long = try signed(nonce: [UInt8](repeating: 7, count: 65))
        #expect(rejection(verifier(store).verify(long, nowMs: Self.now)) == .badNonce(length: 65))
    }

    @Test func rejectionsDescribeThemselves() {
        #expect(CommandRejection.unsigned.description == "command is not signed")
        #expect(CommandRejection.unknownKey("x").description == "command signed with unknown key \"x\"")
        #expect(CommandRejection.expired(at: 5, clock: ClockReading(nowMs: 7, allowedSkewMs: 0)).description
                == "command expired at 5 (unix ms), 2 ms ago by this host's clock; allowed clock skew 0 ms")
        #expect(CommandRejection.lifetimeTooLong(at: 9, clock: ClockReading(nowMs: 7, allowedSkewMs: 0, senderAheadMs: 2)).description
                == "command expires too far in the future (at 9, 2 ms from now by this host's clock); allowed clock skew 0 ms; the sender's clock is 2 ms ahead of this host's (envelope created_unix_ms): check NTP on both")
        #expect(CommandRejection.badSignature.description == "command signature is not valid")
        #expect(CommandRejection.replayed("00ff").description == "command nonce 00ff was used before (replay)")
    }

    // MARK: Tampering

    @Test(arguments: [
        "request_id", "host", "deadline", "simulate", "wwn", "serial", "dev_path", "operation", "expiry", "nonce", "key_id",
        "unknown_field", "signature",
    ])
    func tamperingBreaksTheSignature(field: String) throws {
        let store = try openStore()
        var request = try signed()
        switch field {
        case "request_id": request.requestID = "req-2"
        case "host": request.host = "storage-8"
        case "deadline": request.deadlineUnixMs += 1
        case "simulate": request.simulate = false
        case "wwn": request.remove.disk.wwn = "0x5000c500a1b2c3d5"
        case "serial": request.remove.disk.serial = "ZA1ABD"
        case "dev_path": request.remove.disk.devPath = "/dev/sdb"
        case "operation":
            let disk = request.remove.disk
            request.add = .init()
            request.add.disk = disk
        case "expiry": request.auth.expiresUnixMs -= 1
        case "nonce": request.auth.nonce[0] ^= 1
        case "key_id":
            // A second trusted key id for the same key: the key id is signed too.
            request.auth.keyID = "ops2"
        case "unknown_field":
            var bytes: [UInt8] = try request.serializedBytes()
            bytes += [0xF8, 0x06, 0x01]  // field 111, varint 1: not in the schema
            request = try Bynar_V1_DiskManagerRequest(serializedBytes: bytes)
        case "signature": request.auth.signature[5] ^= 0x80
        default: Issue.record("unknown field \(field)")
        }
        let keys = TrustedKeys(keys: ["ops": key.publicKey, "ops2": key.publicKey])
        let verifier = CommandVerifier(trustedKeys: keys, store: store)
        #expect(rejection(verifier.verify(request, nowMs: Self.now)) == .badSignature)
        #expect(try verifier.rememberedNonceCount() == 0)
    }

    // MARK: Replay

    @Test func replayIsRefusedAlsoAfterReopening() throws {
        let nonce: [UInt8] = Array(0..<16)
        let request = try signed(nonce: nonce)
        do {
            let store = try openStore()
            #expect(throws: Never.self) { try verifier(store).verify(request, nowMs: Self.now).get() }
            #expect(rejection(verifier(store).verify(request, nowMs: Self.now + 1)) == .replayed("000102030405060708090a0b0c0d0e0f"))
        }
        let reopened = try openStore()
        #expect(rejection(verifier(reopened).verify(request, nowMs: Self.now + 2)) == .replayed("000102030405060708090a0b0c0d0e0f"))
        // A different command with the same nonce is a replay too.
        var other = Self.removeRequest()
        other.requestID = "req-other"
        let reused = try signed(other, nonce: nonce)
        #expect(rejection(verifier(reopened).verify(reused, nowMs: Self.now + 3)) == .replayed("000102030405060708090a0b0c0d0e0f"))
    }

    @Test func rejectedCommandsDoNotBurnTheirNonce() throws {
        let store = try openStore()
        let request = try signed(nonce: [9, 9, 9])
        guard case .lifetimeTooLong? = rejection(verifier(store, maxLifetime: .seconds(10)).verify(request, nowMs: Self.now)) else { Issue.record("accepted"); return }
        #expect(try verifier(store).rememberedNonceCount() == 0)
        #expect(throws: Never.self) { try verifier(store).verify(request, nowMs: Self.now).get() }
    }

    @Test("fencing: a command signed with a lower leader epoch than one seen for its group is refused, and burns no nonce; other groups and unfenced commands are not affected")
    func lowerEpochIsFenced() throws {
        let store = try openStore()
        func fenced(_ group: String, _ epoch: Int64, _ nonce: UInt8) throws -> Bynar_V1_DiskManagerRequest {
            try CommandSigning.sign(Self.removeRequest(), keyID: "ops", key: key, lifetime: .seconds(60), nowMs: Self.now, nonce: [nonce],
                                    fence: CommandSigner.Fence(group: group, epoch: epoch))
        }
        let check = verifier(store)
        #expect(throws: Never.self) { try check.verify(try fenced("ceph-a", 12, 1), nowMs: Self.now).get() }
        #expect(try check.highestEpoch(group: "ceph-a") == 12)
        // The same epoch again (the leader's next command) passes.
        #expect(throws: Never.self) { try check.verify(try fenced("ceph-a", 12, 2), nowMs: Self.now).get() }
        // A stale leader's command is refused and says why.
        let stale = rejection(check.verify(try fenced("ceph-a", 7, 3), nowMs: Self.now))
        #expect(stale == .fenced(group: "ceph-a", epoch: 7, highest: 12))
        #expect(stale?.description.contains("a leader with epoch 12 has spoken since") == true)
        #expect(try check.rememberedNonceCount() == 2, "the refused command's nonce is not taken")
        // Another group, and commands without an epoch (operators' CLI), are not fenced.
        #expect(throws: Never.self) { try check.verify(try fenced("ceph-b", 1, 4), nowMs: Self.now).get() }
        #expect(throws: Never.self) { try check.verify(try signed(nonce: [5]), nowMs: Self.now).get() }
        // Remembered across a restart of the disk-manager.
        let reopened = try openStore()
        #expect(rejection(verifier(reopened).verify(try fenced("ceph-a", 11, 6), nowMs: Self.now)) == .fenced(group: "ceph-a", epoch: 11, highest: 12))
        // The epoch is signed: raising it breaks the signature.
        var forged = try fenced("ceph-a", 7, 7)
        forged.auth.fenceEpoch = 99
        #expect(rejection(verifier(reopened).verify(forged, nowMs: Self.now)) == .badSignature)
    }

    @Test func expiredNoncesArePruned() throws {
        let store = try openStore()
        let verifier = verifier(store, retention: .seconds(10))
        let first = try signed(lifetime: .seconds(60), nonce: [1])
        let second = try signed(lifetime: .seconds(300), nonce: [2])
        _ = try verifier.verify(first, nowMs: Self.now).get()
        _ = try verifier.verify(second, nowMs: Self.now).get()
        #expect(try verifier.rememberedNonceCount() == 2)
        // Expired, but within the retention margin: kept.
        #expect(try verifier.pruneNonces(nowMs: Self.now + 60_000 + 10_000) == 0)
        #expect(try verifier.pruneNonces(nowMs: Self.now + 60_000 + 10_001) == 1)
        #expect(try verifier.rememberedNonceCount() == 1)
        // Accepting a command prunes too.
        let third = try CommandSigning.sign(Self.removeRequest(), keyID: "ops", key: key, lifetime: .seconds(60), nowMs: Self.now + 400_000, nonce: [3])
        _ = try verifier.verify(third, nowMs: Self.now + 400_000).get()
        #expect(try verifier.rememberedNonceCount() == 1)
        // The pruned nonce's command is still refused: as expired.
        #expect(rejection(verifier.verify(first, nowMs: Self.now + 400_000)) == .expired(at: Self.now + 60_000, clock: ClockReading(nowMs: Self.now + 400_000, allowedSkewMs: 0)))
    }

    // MARK: Key files

    @Test func generatedKeysRoundTrip() throws {
        let files = try KeyFiles.generate(keyID: "alice@ops")
        let loaded = try KeyFiles.loadPrivateKey(text: files.privateKeyFileText)
        #expect(loaded.keyID == "alice@ops")
        let trusted = try TrustedKeys(fileText: "# operators\n\n" + files.trustedKeysLine + "\n")
        #expect(trusted.keyIDs == ["alice@ops"])
        let request = try CommandSigning.sign(Self.removeRequest(), keyID: loaded.keyID, key: loaded.key, lifetime: .seconds(60), nowMs: Self.now)
        let verifier = CommandVerifier(trustedKeys: trusted, store: try openStore())
        #expect(throws: Never.self) { try verifier.verify(request, nowMs: Self.now).get() }
        #expect(files.trustedKeysLine.hasPrefix("alice@ops ed25519 "))
        #expect(files.privateKeyFileText.contains("alice@ops ed25519-private "))
    }

    @Test func keyFilesFromPathsAndKnownBase64() throws {
        // RFC 8032 test 1 key pair.
        let seed: [UInt8] = hexBytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        let key = try Curve25519.Signing.PrivateKey(rawRepresentation: seed)
        let files = try KeyFiles.files(keyID: "rfc", key: key)
        #expect(files.trustedKeysLine == "rfc ed25519 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
        try files.privateKeyFileText.write(toFile: "\(directory)/rfc.key", atomically: true, encoding: .utf8)
        try "\t# indented comment\nrfc\ted25519   11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\r\n".write(toFile: "\(directory)/trusted", atomically: true, encoding: .utf8)
        #expect(try KeyFiles.loadPrivateKey(path: "\(directory)/rfc.key").key.rawRepresentation == key.rawRepresentation)
        #expect(try TrustedKeys(path: "\(directory)/trusted")["rfc"]?.rawRepresentation == key.publicKey.rawRepresentation)
        #expect(throws: KeyFileError.self) { try TrustedKeys(path: "\(directory)/missing") }
    }

    @Test func trustedKeysErrorsNameTheLine() throws {
        let good = KeyFiles.trustedKeysLine(keyID: "a", publicKey: key.publicKey)
        let base64 = String(good.split(separator: " ")[2])
        func error(_ text: String) -> KeyFileError? {
            do throws(KeyFileError) { _ = try TrustedKeys(fileText: text); return nil } catch { return error }
        }
        #expect(error("# c\n\(good)\n") == nil)
        #expect(error("# c\n\nb ed25519 not*base64=\n") == KeyFileError(line: 3, .badBase64))
        #expect(error("b ed25519 \(base64.dropLast())\n") == KeyFileError(line: 1, .badBase64))
        #expect(error("b ed25519  \(base64) \n") == nil)
        #expect(error("\(good)\nb ed25519 AAAA\n") == KeyFileError(line: 2, .wrongKeyLength(3)))
        #expect(error("\(good)\n#\n\(good)\n") == KeyFileError(line: 3, .duplicateKeyID("a", firstLine: 1)))
        #expect(error("\n\nb rsa \(base64)\n") == KeyFileError(line: 3, .unknownAlgorithm("rsa")))
        #expect(error("b ed25519\n") == KeyFileError(line: 1, .malformed(fieldCount: 2)))
        #expect(error("b ed25519 \(base64) extra\n") == KeyFileError(line: 1, .malformed(fieldCount: 4)))
        #expect(KeyFileError(line: 4, .duplicateKeyID("a", firstLine: 1)).description == "line 4: duplicate key id \"a\" (first on line 1)")
        #expect(KeyFileError(line: 2, .badBase64).description == "line 2: key is not valid base64")
        // Non-canonical base64 (stray bits before the padding) is refused, not silently accepted.
        // (RFC 8032 test 1 public key, canonically ...URo=, with a low bit set in the 'o'.)
        #expect(error("b ed25519 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n") == nil)
        #expect(error("b ed25519 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURp=\n") == KeyFileError(line: 1, .badBase64))
    }

    @Test func privateKeyFileErrors() throws {
        let files = try KeyFiles.generate(keyID: "k")
        let keyLine = files.privateKeyFileText.split(separator: "\n").first { !$0.hasPrefix("#") }!
        func error(_ text: String) -> KeyFileError? {
            do throws(KeyFileError) { _ = try KeyFiles.loadPrivateKey(text: text); return nil } catch { return error }
        }
        #expect(error("# nothing\n") == KeyFileError(line: 0, .noKey))
        #expect(error("\(keyLine)\n\(keyLine)\n") == KeyFileError(line: 2, .moreThanOneKey))
        #expect(error("# x\nk ed25519 AAAA\n") == KeyFileError(line: 2, .unknownAlgorithm("ed25519")))
        #expect(error("k ed25519-private AAAA\n") == KeyFileError(line: 1, .wrongKeyLength(3)))
        #expect(throws: KeyFileError(line: 0, .malformed(fieldCount: 2))) { try KeyFiles.generate(keyID: "two words") }
        #expect(throws: KeyFileError(line: 0, .malformed(fieldCount: 0))) { try KeyFiles.generate(keyID: "") }
    }

    // MARK: Audit log and request ids

    @Test func auditRecordsRoundTripNewestFirst() throws {
        let log = AuditLog(store: try openStore())
        var refused = Bynar_V1_DiskManagerResponse()
        refused.outcome = .refused
        refused.reason = "command is not signed"
        let unsigned = Self.removeRequest()
        try log.record(AuditRecord(request: unsigned, receivedUnixMs: Self.now, verification: .failure(.unsigned), response: refused))

        let request = try signed()
        let verification = verifier(try openStore()).verify(request, nowMs: Self.now + 5)
        var failed = Bynar_V1_DiskManagerResponse()
        failed.outcome = .failed
        failed.reason = "osd would not stop"
        failed.failedStep = "stop osd.12"
        try log.record(AuditRecord(request: request, receivedUnixMs: Self.now + 5, verification: verification, response: failed))

        var list = Bynar_V1_DiskManagerRequest()
        list.requestID = "req-list"
        list.list = .init()
        try log.record(AuditRecord(request: list, receivedUnixMs: Self.now + 9, verification: .failure(.unknownKey("x")), response: refused))

        // Reopen: the log is in the file.
        let records = try AuditLog(store: try openStore()).recent(limit: 2)
        #expect(records.count == 2)
        #expect(records[0] == AuditRecord(
            receivedUnixMs: Self.now + 9, requestID: "req-list", operation: "List", disk: "", signerKeyID: "", verified: false,
            rejection: "command signed with unknown key \"x\"", simulate: false, outcome: .refused, reason: "command is not signed", failedStep: ""
        ))
        #expect(records[1] == AuditRecord(
            receivedUnixMs: Self.now + 5, requestID: "req-1", operation: "Remove", disk: "wwn=0x5000c500a1b2c3d4 serial=ZA1ABC",
            signerKeyID: "ops", verified: true, rejection: "", simulate: true, outcome: .failed, reason: "osd would not stop",
            failedStep: "stop osd.12"
        ))
        #expect(try log.recent(limit: 10).last?.rejection == "command is not signed")
    }

    @Test func auditLogIsAppendOnly() throws {
        let store = try openStore()
        let log = AuditLog(store: store)
        try log.record(AuditRecord(
            receivedUnixMs: 1, requestID: "r", operation: "List", disk: "", signerKeyID: "", verified: false, rejection: "x",
            simulate: false, outcome: .refused, reason: "", failedStep: ""
        ))
        #expect(throws: (any Error).self) { try store.database.write { try $0.execute(sql: "DELETE FROM dm_audit") } }
        #expect(throws: (any Error).self) { try store.database.write { try $0.execute(sql: "UPDATE dm_audit SET verified = 1") } }
        #expect(try log.recent(limit: 5).count == 1)
    }

    @Test func firstOutcomeIsKept() throws {
        let log = AuditLog(store: try openStore())
        #expect(try log.firstOutcome(requestID: "req-1") == nil)
        var first = Bynar_V1_DiskManagerResponse()
        first.requestID = "req-1"
        first.host = "storage-7"
        first.outcome = .success
        first.steps = ["mark osd.12 out", "stop osd.12"]
        #expect(try log.remember(requestID: "req-1", response: first, nowMs: Self.now))
        var second = first
        second.outcome = .failed
        #expect(try log.remember(requestID: "req-1", response: second, nowMs: Self.now + 1) == false)
        #expect(try log.remember(requestID: "", response: second, nowMs: Self.now) == false)
        #expect(try log.firstOutcome(requestID: "") == nil)

        let reopened = AuditLog(store: try openStore())
        let bytes = try #require(try reopened.firstOutcome(requestID: "req-1"))
        let firstBytes: [UInt8] = try first.serializedBytes()
        #expect(bytes == firstBytes)
        #expect(try reopened.firstResponse(requestID: "req-1") == first)
        #expect(try reopened.firstResponse(requestID: "req-2") == nil)
    }

    @Test func selectorText() {
        var selector = Bynar_V1_DiskSelector()
        #expect(AuditLog.selectorText(selector) == "")
        selector.devPath = "/dev/sdc"
        selector.key = "slot-3"
        #expect(AuditLog.selectorText(selector) == "key=slot-3 dev_path=/dev/sdc")
    }
}

private func hexBytes(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}
