public import BynarBus
public import BynarProto
import FoundationEssentials

/// A signed operator command and the answer it gets: an orchestrator command
/// (``Bynar_V1_OperatorCommand``) or a ticketing command (``Bynar_V1_TicketOperatorCommand``).
/// Each kind travels on its own topic, which only operator identities may publish (ACL), and
/// is answered only by the service that topic names (``Topics/responder(forRequestTopic:)``).
public protocol OperatorCommandKind: SignedCommand, BusPayload {
    associatedtype Answer: OperatorAnswer
    /// Where commands of this kind are published.
    static var topic: String { get }
    /// Who answers, in messages ("orchestrator", "ticketing").
    static var answeredBy: String { get }
    /// The setting that holds the trusted-keys file of the operators the answerer takes
    /// commands from.
    static var keysSetting: String { get }
    var requestID: String { get set }
    var reason: String { get set }
}

/// The answer to an operator command: which request, done or not, and why.
public protocol OperatorAnswer: BusPayload {
    var requestID: String { get }
    var outcome: Bynar_V1_Outcome { get }
    var reason: String { get }
}

extension Bynar_V1_OperatorResponse: OperatorAnswer {}
extension Bynar_V1_TicketOperatorResponse: OperatorAnswer {}

extension Bynar_V1_OperatorCommand: OperatorCommandKind {
    public typealias Answer = Bynar_V1_OperatorResponse
    public static var topic: String { Topics.operatorCommands }
    public static var answeredBy: String { "orchestrator" }
    public static var keysSetting: String { "orchestrator.operator_keys_file" }
}

extension Bynar_V1_TicketOperatorCommand: OperatorCommandKind {
    public typealias Answer = Bynar_V1_TicketOperatorResponse
    public static var topic: String { Topics.ticketOperatorCommands }
    public static var answeredBy: String { "ticketing" }
    public static var keysSetting: String { "ticketing.operator_keys_file" }
}

/// Sends an operator's signed commands (`bynar incidents show|retry|cancel|resolve`,
/// `bynar maintenance` to the orchestrator on ``Topics/operatorCommands``; `bynar tickets
/// resolve` to ticketing on ``Topics/ticketOperatorCommands``) and waits for the answer,
/// which only the service asked may give (the reply topic names it).
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

    /// Signs `action` with `reason` and a fresh request id, sends it to the orchestrator, and
    /// waits at most `timeout` for its answer.
    /// - Throws: ``BusError`` (timeout, broker down, a reply that is no OperatorResponse or
    ///   answers another request) or ``CommandSigning/SigningError``.
    public func send(_ action: Bynar_V1_OperatorCommand.OneOf_Action, reason: String, timeout: Duration = .seconds(60)) async throws -> Bynar_V1_OperatorResponse {
        var command = Bynar_V1_OperatorCommand()
        command.action = action
        return try await send(command, reason: reason, timeout: timeout)
    }

    /// `command` with `reason` and a fresh request id, signed, sent, answered.
    public func send<Command: OperatorCommandKind>(_ command: Command, reason: String, timeout: Duration) async throws -> Command.Answer {
        var command = command
        command.requestID = UUID().uuidString.lowercased()
        command.reason = reason
        let signed = try signer.sign(command, nowMs: Bus.nowUnixMs())
        return try await Self.send(signed, on: bus, timeout: timeout)
    }

    /// Sends `command` exactly as it is (signed or not) and waits for the answer: the one
    /// way operator commands reach a service (tests use it to send forged ones).
    public static func send<Command: OperatorCommandKind>(_ command: Command, on bus: Bus, timeout: Duration) async throws -> Command.Answer {
        let response = try await bus.request(command, to: Command.topic, expecting: Command.Answer.self, timeout: timeout).payload
        if response.requestID != command.requestID {
            throw BusError.badReply("the answer is for request \"\(response.requestID.prefix(200))\", not \"\(command.requestID)\"")
        }
        return response
    }
}
