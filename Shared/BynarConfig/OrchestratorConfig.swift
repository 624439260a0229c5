/// The orchestrator's section of the host config (`"orchestrator": {...}`).
public struct OrchestratorConfig: Codable, Sendable, Equatable {
    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "orchestrator." + field, problem: text)) }
        _ = problem
        return problems
    }
}
