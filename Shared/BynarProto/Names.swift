extension Bynar_V1_Outcome {
    /// The outcome's name as the schema spells it, without the prefix ("SUCCESS",
    /// "ALREADY_DONE"); "UNRECOGNIZED(n)" for a value from a newer schema. Audit records
    /// store it, and the CLI prints it.
    public var name: String {
        switch self {
        case .unspecified: "UNSPECIFIED"
        case .success: "SUCCESS"
        case .skipped: "SKIPPED"
        case .alreadyDone: "ALREADY_DONE"
        case .refused: "REFUSED"
        case .failed: "FAILED"
        case .accepted: "ACCEPTED"
        case .UNRECOGNIZED(let value): "UNRECOGNIZED(\(value))"
        }
    }
}
