public import BynarBus
public import BynarProto
public import Crypto
import FoundationEssentials

/// Sends an operator's signed commands to the orchestrator (`bynar incidents
/// show|retry|cancel|resolve`, `bynar maintenance`) on ``Topics/operatorCommands`` and waits
/// for its answer, which only an orchestrator may give (the reply topic names it).
public struct OperatorClient: Sendable {
    public let bus: Bus
    public let keyID: String
    /// The private key's raw bytes (the key type itself is not Sendable).
    private let rawKey: [UInt8]
    /// How long a signed command stays valid (its expiry).
    public var commandLifetime: Duration

    public init(bus: Bus, keyID: String, key: Curve25519.Signing.PrivateKey, commandLifetime: Duration = .seconds(300)) {
        self.bus = bus
        self.keyID = keyID
        self.rawKey = [UInt8](key.rawRepresentation)
        self.commandLifetime = commandLifetime
    }

    /// Loads the private key from a file written by `bynar keys generate`.
    public init(bus: Bus, privateKeyFile: String, commandLifetime: Duration = .seconds(300)) throws(KeyFileError) {
        let loaded = try KeyFiles.loadPrivateKey(path: privateKeyFile)
        self.init(bus: bus, keyID: loaded.keyID, key: loaded.key, commandLifetime: commandLifetime)
    }

    /// Signs `action` with `reason` and a fresh request id, sends it, and waits at most
    /// `timeout` for the orchestrator's answer.
    /// - Throws: ``BusError`` (timeout, broker down, a reply that is no OperatorResponse or
    ///   answers another request) or ``CommandSigning/SigningError``.
    public func send(_ action: Bynar_V1_OperatorCommand.OneOf_Action, reason: String, timeout: Duration = .seconds(60)) async throws -> Bynar_V1_OperatorResponse {
        var command = Bynar_V1_OperatorCommand()
        command.requestID = UUID().uuidString.lowercased()
        command.reason = reason
        command.action = action
        let key = try Curve25519.Signing.PrivateKey(rawRepresentation: rawKey)
        let signed = try CommandSigning.sign(command, keyID: keyID, key: key, lifetime: commandLifetime, nowMs: Bus.nowUnixMs())
        return try await Self.send(signed, on: bus, timeout: timeout)
    }

    /// Sends `command` exactly as it is (signed or not) and waits for the answer: the one
    /// way commands reach the orchestrator (tests use it to send forged ones).
    public static func send(_ command: Bynar_V1_OperatorCommand, on bus: Bus, timeout: Duration) async throws -> Bynar_V1_OperatorResponse {
        let response = try await bus.request(command, to: Topics.operatorCommands, expecting: Bynar_V1_OperatorResponse.self, timeout: timeout).payload
        if response.requestID != command.requestID {
            throw BusError.badReply("the answer is for request \"\(response.requestID.prefix(200))\", not \"\(command.requestID)\"")
        }
        return response
    }
}
