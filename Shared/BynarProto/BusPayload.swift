public import SwiftProtobuf

/// A message that can ride in a ``Bynar_V1_Envelope``.
///
/// Every case of the envelope's `payload` oneof conforms (see `Payloads.generated.swift`,
/// written by `scripts/gen-proto`), so subscribers ask for a type and get exactly that
/// case or a dead letter.
public protocol BusPayload: SwiftProtobuf.Message, Sendable {
    /// The oneof field's name in `envelope.proto`, e.g. `disk_health`.
    static var payloadName: String { get }
    /// The oneof field's number in `envelope.proto`.
    static var payloadFieldNumber: Int { get }
    /// The payload when `envelope` carries this type, otherwise nil.
    static func extract(from envelope: Bynar_V1_Envelope) -> Self?
    /// This payload as the envelope's oneof case.
    var envelopePayload: Bynar_V1_Envelope.OneOf_Payload { get }
}

public typealias Envelope = Bynar_V1_Envelope
