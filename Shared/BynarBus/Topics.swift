/// Builders for every topic in `docs/topics.md`, so no service spells a topic by hand.
public enum Topics {
    public static let root = "bynar/v1"

    /// Retained birth/death of one service.
    public static func serviceStatus(host: String, service: String) -> String { "\(root)/svc/\(host)/\(service)" }
    /// Every service's birth/death.
    public static let allServiceStatus = "\(root)/svc/+/+"
    /// Retained current health of one disk.
    public static func diskHealth(host: String, disk: String) -> String { "\(root)/disk/\(host)/\(disk)/health" }
    /// Disk state transitions on one host.
    public static func diskEvents(host: String) -> String { "\(root)/disk/\(host)/events" }
    /// Disk-manager commands for one host.
    public static func diskManagerCommands(host: String) -> String { "\(root)/dm/\(host)/cmd" }
    /// Disk-manager job progress on one host.
    public static func diskManagerProgress(host: String) -> String { "\(root)/dm/\(host)/progress" }
    /// Where replies to `clientId`'s requests go.
    public static func replies(clientId: String) -> String { "\(root)/reply/\(clientId)" }
    public static let incidentEvents = "\(root)/incident/events"
    /// Retained latest state of one incident (an IncidentEvent); emptied (a zero-length
    /// retained message) when the incident is resolved or cancelled and reported.
    public static func incidentState(id: String) -> String { "\(root)/incident/state/\(id)" }
    public static let allIncidentStates = "\(root)/incident/state/+"
    /// Retained latest TicketEvent of one incident's ticket.
    public static func ticketState(incident: String) -> String { "\(root)/ticket/state/\(incident)" }
    public static let allTicketStates = "\(root)/ticket/state/+"
    public static let ticketCommands = "\(root)/ticket/cmd"
    public static let ticketEvents = "\(root)/ticket/events"
    public static let notifications = "\(root)/notify"
    public static func hostState(host: String) -> String { "\(root)/host/\(host)/state" }
    public static let hookEvents = "\(root)/hook/events"
    /// Payloads `service` on `host` received and could not use.
    public static func deadLetter(host: String, service: String) -> String { "\(root)/deadletter/\(host)/\(service)" }

    /// A shared subscription: one of the group's members gets each message.
    public static func shared(group: String, _ filter: String) -> String { "$share/\(group)/\(filter)" }

    /// The filter part of a `$share/<group>/<filter>` subscription (the topic filter that
    /// messages are matched against); other filters are returned as they are.
    static func matchingFilter(_ subscription: String) -> String {
        guard subscription.hasPrefix("$share/") else { return subscription }
        let parts = subscription.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
        return parts.count == 3 ? String(parts[2]) : subscription
    }

    /// MQTT topic filter matching (`+` one level, `#` the rest).
    static func matches(filter: String, topic: String) -> Bool {
        let f = filter.split(separator: "/", omittingEmptySubsequences: false)
        let t = topic.split(separator: "/", omittingEmptySubsequences: false)
        // Topics starting with $ are not matched by wildcards in the first level.
        if topic.hasPrefix("$"), let first = f.first, first == "+" || first == "#" { return false }
        var index = 0
        while index < f.count {
            if f[index] == "#" { return true }
            guard index < t.count else { return false }
            if f[index] != "+" && f[index] != t[index] { return false }
            index += 1
        }
        return index == t.count
    }
}
