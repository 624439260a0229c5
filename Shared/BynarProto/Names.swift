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

extension Bynar_V1_HardwarePart {
    /// The kind as people say it: "power supply" for `power_supply`; "part" when none is given.
    /// Tickets, notifications and the status page print it.
    public var spokenKind: String { kind.isEmpty ? "part" : kind.split(separator: "_").joined(separator: " ") }

    /// Where a technician finds it: its location label, else its name, else its Redfish id.
    public var place: String { !location.isEmpty ? location : (!name.isEmpty ? name : id) }
}
