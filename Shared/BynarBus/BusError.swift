/// Everything that can go wrong on the bus, with enough detail to act on.
public enum BusError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The broker answered a publish with a failure reason code (>= 0x80), e.g. 135
    /// "not authorised" for an ACL denial.
    case publishRefused(topic: String, reasonCode: Int32, reason: String)
    /// The broker refused a subscription (SUBACK failure code).
    case subscribeRefused(filter: String, reasonCode: Int32, reason: String)
    /// No acknowledgement or reply came in time.
    case timedOut(what: String)
    /// The broker could not be reached or refused the connection within the wait.
    case unreachable(broker: String, lastError: String)
    /// The responder answered with an ErrorReply.
    case requestRefused(code: String, message: String)
    /// The reply did not decode, or carried an unexpected payload.
    case badReply(String)
    /// A libmosquitto call failed.
    case mosquitto(call: String, code: Int32, detail: String)
    /// A message could not be encoded.
    case encoding(String)
    /// The bus was shut down.
    case stopped

    public var description: String {
        switch self {
        case .publishRefused(let topic, let code, let reason): "broker refused publish to \(topic): \(reason) (reason code \(code))"
        case .subscribeRefused(let filter, let code, let reason): "broker refused subscription to \(filter): \(reason) (reason code \(code))"
        case .timedOut(let what): "timed out waiting for \(what)"
        case .unreachable(let broker, let lastError): "cannot reach MQTT broker \(broker): \(lastError)"
        case .requestRefused(let code, let message): "request refused (\(code)): \(message)"
        case .badReply(let detail): "bad reply: \(detail)"
        case .mosquitto(let call, let code, let detail): "\(call) failed: \(detail) (libmosquitto error \(code))"
        case .encoding(let detail): "cannot encode message: \(detail)"
        case .stopped: "the bus is shut down"
        }
    }
}
