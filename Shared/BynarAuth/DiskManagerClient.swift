public import BynarBus
public import BynarProto
public import Crypto
import FoundationEssentials

/// Sends signed commands to a host's disk-manager and waits for the answer. The one way the
/// orchestrator and the `bynar` CLI talk to disk-managers.
public struct DiskManagerClient: Sendable {
    public let bus: Bus
    /// The key commands are signed with.
    public var signer: CommandSigner
    /// The signing key's id.
    public var keyID: String { signer.keyID }
    /// How long a signed command stays valid (its expiry).
    public var commandLifetime: Duration {
        get { signer.commandLifetime }
        set { signer.commandLifetime = newValue }
    }

    /// Called with each signed request just before it is published (tests: a pause point).
    public var beforeSend: (@Sendable (Bynar_V1_DiskManagerRequest) -> Void)?

    public init(bus: Bus, keyID: String, key: Curve25519.Signing.PrivateKey, commandLifetime: Duration = .seconds(300)) {
        self.bus = bus
        signer = CommandSigner(keyID: keyID, key: key, commandLifetime: commandLifetime)
    }

    /// Loads the private key from a file written by `bynar keys generate`.
    public init(bus: Bus, privateKeyFile: String, commandLifetime: Duration = .seconds(300)) throws(KeyFileError) {
        self.bus = bus
        signer = try CommandSigner(privateKeyFile: privateKeyFile, commandLifetime: commandLifetime)
    }

    /// Signs and sends one operation to `host`'s disk-manager, waiting at most `timeout`
    /// (also the command's deadline). `requestID` makes a retry idempotent: send the same id
    /// again and the disk-manager answers ALREADY_DONE with the first outcome.
    /// - Throws: ``BusError`` (timeout, refused with an ErrorReply, broker down) or
    ///   ``CommandSigning/SigningError``.
    public func send(
        _ operation: Bynar_V1_DiskManagerRequest.OneOf_Operation, to host: String,
        requestID: String? = nil, simulate: Bool = false,
        timeout: Duration = .seconds(30), correlationID: String = ""
    ) async throws -> Bynar_V1_DiskManagerResponse {
        let now = Bus.nowUnixMs()
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = requestID ?? UUID().uuidString.lowercased()
        request.host = host
        request.simulate = simulate
        request.deadlineUnixMs = now + CommandSigning.milliseconds(timeout)
        request.operation = operation
        let signed = try signer.sign(request, nowMs: now)
        beforeSend?(signed)
        let response = try await bus.request(
            signed, to: Topics.diskManagerCommands(host: host), expecting: Bynar_V1_DiskManagerResponse.self,
            timeout: timeout, correlationId: correlationID
        ).payload
        if let mismatch = Self.mismatch(response, request: request) { throw BusError.badReply(mismatch) }
        return response
    }

    /// The operation's name ("Remove"), for logs, the audit table and test pause points.
    public static func operationName(_ request: Bynar_V1_DiskManagerRequest) -> String {
        switch request.operation {
        case .list: "List"
        case .safeToRemove: "SafeToRemove"
        case .remove: "Remove"
        case .add: "Add"
        case .deploy: "Deploy"
        case .jobStatus: "JobStatus"
        case nil: "(none)"
        }
    }

    /// Nil when `response` answers `request` (it echoes its request id and host); otherwise
    /// what differs. The bus has already checked the answer came from that host's
    /// disk-manager; this catches a responder answering a different question.
    public static func mismatch(_ response: Bynar_V1_DiskManagerResponse, request: Bynar_V1_DiskManagerRequest) -> String? {
        if response.requestID != request.requestID {
            return "the answer is for request \"\(response.requestID)\", not \"\(request.requestID)\""
        }
        if response.host != request.host {
            return "the answer about request \"\(request.requestID)\" is for host \"\(response.host)\", not \"\(request.host)\""
        }
        return nil
    }
}

extension Bynar_V1_DiskSelector {
    /// A selector by the disk's stable key (WWN, else serial-…).
    public static func key(_ key: String) -> Self {
        var selector = Self()
        selector.key = key
        return selector
    }
}
