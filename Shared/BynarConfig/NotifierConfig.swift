/// The notifier's section of the host config (`"notifier": {...}`).
public struct NotifierConfig: Codable, Sendable, Equatable {
    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "notifier." + field, problem: text)) }
        _ = problem
        return problems
    }
}
