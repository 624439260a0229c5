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

extension Bynar_V1_DiskState {
    /// The health state as people and labels read it: "healthy", "suspect", "failing",
    /// "failed", "missing", "replaced"; "unknown" for none or a value from a newer schema.
    /// Tickets and the orchestrator's status page print it.
    public var readableName: String {
        switch self {
        case .healthy: "healthy"
        case .suspect: "suspect"
        case .failing: "failing"
        case .failed: "failed"
        case .missing: "missing"
        case .replaced: "replaced"
        case .unspecified, .UNRECOGNIZED: "unknown"
        }
    }
}
