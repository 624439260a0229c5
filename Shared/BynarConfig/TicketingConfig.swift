/// The ticketing's section of the host config (`"ticketing": {...}`).
public struct TicketingConfig: Codable, Sendable, Equatable {
    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "ticketing." + field, problem: text)) }
        _ = problem
        return problems
    }
}
