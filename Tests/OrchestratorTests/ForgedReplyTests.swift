import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Crypto
import Foundation
import Synchronization
import Testing

/// Attacks on request/response, run against the production broker configuration
/// (``ProductionBroker``: TLS, the ACL `bynar-broker-auth` generates) as an attacker holding
/// `disk-manager.h2`'s password would. Before reply topics named their responder, any
/// disk-manager could publish on every `bynar/v1/reply/{client}` and the requester took the
/// first answer whose correlation data matched: `disk-manager.h2` answered the
/// orchestrator's SafeToRemove for an h1 disk and was believed.
@Suite(.serialized)
struct ForgedReplyTests {
    static func safeToRemove(_ safe: Bool, host: String, requestID: String) -> Bynar_V1_DiskManagerResponse {
        var response = Bynar_V1_DiskManagerResponse()
        response.requestID = requestID
        response.host = host
        response.outcome = .success
        var answer = Bynar_V1_DiskManagerResponse.SafeToRemove()
        answer.safe = safe
        answer.detail = safe ? "forged: go ahead" : "osd.3 is not ok to stop"
        response.result = .safeToRemove(answer)
        return response
    }

    @Test("a disk-manager that was not asked cannot answer, even with the right correlation data")
    func aReplyFromAnotherHostIsRefused() async throws {
        let production = try ProductionBroker(hosts: ["h1", "h2"])
        let orchestrator = try await production.bus(service: "orchestrator", host: "c1")
        let dm1 = try await production.bus(service: "disk-manager", host: "h1")
        let attacker = try await production.bus(service: "disk-manager", host: "h2")
        let admin = try await production.bus(service: "cli", host: "c1", identity: "admin.ops", clientId: "bynar-cli-c1-1")
        let letters = Collector(try await admin.subscribe(Topics.deadLetter(host: "c1", service: "orchestrator"), as: Bynar_V1_DeadLetter.self))
        let commands = try await dm1.subscribe(Topics.diskManagerCommands(host: "h1"), as: Bynar_V1_DiskManagerRequest.self)
        let forgeries = ForgeryLog()
        let responder = Task {
            for await command in commands {
                let id = command.payload.requestID
                // The attacker knows the request (as if it had predicted the ids, which the
                // issue showed for xoshiro ids): its perfect forgery answers on its own reply
                // topic, which the ACL allows, with the request's correlation data.
                do {
                    try await attacker.reply(to: command, with: Self.safeToRemove(true, host: "h1", requestID: id))
                    forgeries.add("own topic: published")
                } catch { forgeries.add("own topic: \(error)") }
                // Posing as h1's disk-manager is refused by the broker.
                do {
                    try await attacker.reply(to: command, with: Self.safeToRemove(true, host: "h1", requestID: id), asHost: "h1", service: "disk-manager")
                    forgeries.add("as h1: published")
                } catch { forgeries.add("as h1: \(error)") }
                // So is the bare response topic (no responder named).
                do {
                    try await attacker.publish(Self.safeToRemove(true, host: "h1", requestID: id), to: Topics.replies(clientId: orchestrator.clientId))
                    forgeries.add("bare: published")
                } catch { forgeries.add("bare: \(error)") }
                try? await Task.sleep(for: .milliseconds(300))
                try? await dm1.reply(to: command, with: Self.safeToRemove(false, host: "h1", requestID: id))
            }
        }
        defer { responder.cancel() }

        let client = DiskManagerClient(bus: orchestrator, keyID: "orchestrator", key: Curve25519.Signing.PrivateKey())
        let answer = try await client.send(.safeToRemove(.with { $0.disk = .key("serial-A") }), to: "h1", timeout: .seconds(10))
        #expect(answer.safeToRemove.safe == false, "the real disk-manager's answer is taken: \(answer.safeToRemove.detail)")
        let log = forgeries.all
        print("forgeries: \(log)")
        #expect(log.contains("own topic: published"))
        #expect(log.contains { $0.hasPrefix("as h1: ") && $0.contains("reason code 135") }, "\(log)")
        #expect(log.contains { $0.hasPrefix("bare: ") && $0.contains("reason code 135") }, "\(log)")
        let dead = await letters.wait(for: 1, timeout: .seconds(5))
        #expect(dead.first?.payload.reason.contains("came from disk-manager on h2, which was not asked (expected disk-manager on h1)") == true,
                "\(dead.map(\.payload.reason))")
        #expect(orchestrator.stats.rejected == 1)
        for bus in [orchestrator, dm1, attacker, admin] { await bus.shutdown() }
    }

    @Test("an answer about another request or another host is not believed")
    func echoedIdsAreChecked() {
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = "r-1"
        request.host = "h1"
        #expect(DiskManagerClient.mismatch(Self.safeToRemove(false, host: "h1", requestID: "r-1"), request: request) == nil)
        #expect(DiskManagerClient.mismatch(Self.safeToRemove(true, host: "h2", requestID: "r-1"), request: request)?.contains("for host \"h2\", not \"h1\"") == true)
        #expect(DiskManagerClient.mismatch(Self.safeToRemove(true, host: "h1", requestID: "r-0"), request: request)?.contains("request \"r-0\"") == true)
    }
}

/// What the attacker's attempts came to, in order.
final class ForgeryLog: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
}
