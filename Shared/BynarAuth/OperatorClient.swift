public import BynarBus
public import BynarProto
import FoundationEssentials

/// Sends an operator's signed commands to the orchestrator (`bynar incidents
/// show|retry|cancel|resolve`, `bynar maintenance`) on ``Topics/operatorCommands`` and waits
/// for its answer, which only an orchestrator may give (the reply topic names it).
public struct OperatorClient: Sendable {
    /// The bus the commands go out on (its reply topic gets the answers).
    public let bus: Bus
    /// The operator's key.
    public var signer: CommandSigner

    /// A client signing with `signer`.
    public init(bus: Bus, signer: CommandSigner) {
        self.bus = bus
        self.signer = signer
    }

    /// Loads the operator's private key from a file written by `bynar keys generate`.
    public init(bus: Bus, privateKeyFile: String, commandLifetime: Duration = .seconds(300)) throws(KeyFileError) {
        self.init(bus: bus, signer: try CommandSigner(privateKeyFile: privateKeyFile, commandLifetime: commandLifetime))
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
        let signed = try signer.sign(command, nowMs: Bus.nowUnixMs())
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
