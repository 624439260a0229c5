import BynarConfig

/// Builders for every topic in `docs/topics.md`, so no service spells a topic by hand.
public enum Topics {
    public static let root = "bynar/v1"

    /// Retained birth/death of one service.
    public static func serviceStatus(host: String, service: String) -> String { "\(root)/svc/\(level(host))/\(level(service))" }
    /// Every service's birth/death.
    public static let allServiceStatus = "\(root)/svc/+/+"
    /// Retained current health of one disk.
    public static func diskHealth(host: String, disk: String) -> String { "\(root)/disk/\(level(host))/\(level(disk))/health" }
    /// Disk state transitions on one host.
    public static func diskEvents(host: String) -> String { "\(root)/disk/\(level(host))/events" }
    /// Retained hardware health of one host as its BMC reports it (Redfish, docs/hardware.md).
    public static func hardwareState(host: String) -> String { "\(root)/hw/\(level(host))/state" }
    /// Hardware part severity changes on one host.
    public static func hardwareEvents(host: String) -> String { "\(root)/hw/\(level(host))/events" }
    /// Every host's hardware events.
    public static let allHardwareEvents = "\(root)/hw/+/events"
    /// Every host's retained hardware state.
    public static let allHardwareStates = "\(root)/hw/+/state"
    /// Disk-manager commands for one host.
    public static func diskManagerCommands(host: String) -> String { "\(root)/dm/\(level(host))/cmd" }
    /// Disk-manager job progress on one host.
    public static func diskManagerProgress(host: String) -> String { "\(root)/dm/\(level(host))/progress" }
    /// The response topic `clientId`'s requests carry. Nobody publishes on it as such: a
    /// responder answers on ``reply(to:host:service:)``, one level per part of its identity.
    public static func replies(clientId: String) -> String { "\(root)/reply/\(clientId)" }
    /// Where `service` on `host` answers a request whose response topic is `responseTopic`
    /// (`bynar/v1/reply/{client}/{host}/{service}`): the broker's ACL lets only that
    /// identity publish there, so the topic names who answered (docs/security.md).
    public static func reply(to responseTopic: String, host: String, service: String) -> String { "\(responseTopic)/\(host)/\(service)" }

    /// Who may answer a request sent to `topic`: a host's disk-manager commands only that
    /// host's disk-manager, ticket commands a ticketing service on any host, operator
    /// commands an orchestrator on any host, ticket operator commands a ticketing service on
    /// any host. Nil for topics
    /// outside the schema (tests), whose replies are checked only against their own topic.
    public static func responder(forRequestTopic topic: String) -> Responder? {
        let levels = levels(of: topic)
        guard levels.count >= 3, levels[0] == "bynar", levels[1] == "v1" else { return nil }
        if levels.count == 5, levels[2] == "dm", levels[4] == "cmd" { return Responder(host: String(levels[3]), service: "disk-manager") }
        if topic == ticketCommands { return Responder(host: nil, service: "ticketing") }
        if topic == operatorCommands { return Responder(host: nil, service: "orchestrator") }
        if topic == ticketOperatorCommands { return Responder(host: nil, service: "ticketing") }
        return nil
    }

    /// The responder a reply topic names (its last two levels below `responseTopic`), or nil
    /// when `topic` is not `responseTopic/{host}/{service}`.
    public static func responder(ofReply topic: String, responseTopic: String) -> Responder? {
        guard topic.hasPrefix(responseTopic + "/") else { return nil }
        let rest = topic.dropFirst(responseTopic.count + 1).split(separator: "/", omittingEmptySubsequences: false)
        guard rest.count == 2, !rest[0].isEmpty, !rest[1].isEmpty else { return nil }
        return Responder(host: String(rest[0]), service: String(rest[1]))
    }

    /// A response topic a request may name: `bynar/v1/reply/{client}` with a client id that
    /// is one valid topic level. Nil when acceptable; otherwise why not. A responder answers
    /// nowhere else, so a forged request cannot make it publish on another service's topic.
    public static func invalidResponseTopicReason(_ topic: String) -> String? {
        let prefix = "\(root)/reply/"
        guard topic.hasPrefix(prefix) else { return "response topic \"\(topic.prefix(200))\" is not under \(prefix)" }
        let client = String(topic.dropFirst(prefix.count))
        if let reason = Topic.invalidSegmentReason(client) { return "response topic \"\(topic.prefix(200))\": client id \(reason)" }
        return nil
    }
    public static let incidentEvents = "\(root)/incident/events"
    /// Retained latest state of one incident (an IncidentEvent); emptied (a zero-length
    /// retained message) when the incident is resolved or cancelled and reported.
    public static func incidentState(id: String) -> String { "\(root)/incident/state/\(level(id))" }
    public static let allIncidentStates = "\(root)/incident/state/+"
    /// Retained latest TicketEvent of one incident's ticket.
    public static func ticketState(incident: String) -> String { "\(root)/ticket/state/\(level(incident))" }
    public static let allTicketStates = "\(root)/ticket/state/+"
    public static let ticketCommands = "\(root)/ticket/cmd"
    public static let ticketEvents = "\(root)/ticket/events"
    /// Operator commands to ticketing (`bynar tickets resolve`): only operator identities may
    /// publish here (the broker's ACL), and each command is signed by an operator key
    /// ticketing trusts (`ticketing.operator_keys_file`).
    public static let ticketOperatorCommands = "\(root)/ticket/operator/cmd"
    public static let notifications = "\(root)/notify"
    public static func hostState(host: String) -> String { "\(root)/host/\(level(host))/state" }
    /// A host's storage pool (``Bynar_V1_PoolState``), retained; the host is the topic's.
    public static func poolState(host: String, pool: String) -> String { "\(root)/pool/\(level(host))/\(level(pool))" }
    public static let allPoolStates = "\(root)/pool/+/+"
    /// An application's state on a host (``Bynar_V1_AppState``), retained; the host is the topic's.
    public static func appState(host: String, app: String) -> String { "\(root)/app/\(level(host))/\(level(app))" }
    public static let allAppStates = "\(root)/app/+/+"
    /// An operator's override of an application (``Bynar_V1_AppOverride``), retained; only
    /// operators may publish it (ACL).
    public static func appOverride(host: String, app: String) -> String { "\(root)/app/\(level(host))/\(level(app))/override" }
    /// The host level of a per-host topic (`bynar/v1/KIND/{host}/...`), as the topic has it.
    public static func hostLevel(ofTopic topic: String) -> String {
        let levels = levels(of: topic)
        return levels.count >= 4 ? String(levels[3]) : ""
    }

    /// `topic`'s levels, empty ones kept (`a//b` has three). Split on the UTF-8 bytes: every
    /// message received is checked against its topic (``TopicClaims``), and the generic
    /// `split` walks characters: about 2.9 µs for a disk-health topic against 0.6 µs
    /// (`swiftc -O`, 200,000 splits each; in a `perf` profile of the orchestrator's flood the
    /// generic split was about 5% of its samples).
    public static func levels(of topic: String) -> [Substring] {
        var levels: [Substring] = []
        var start = topic.startIndex
        let utf8 = topic.utf8
        var index = utf8.startIndex
        while index < utf8.endIndex {
            if utf8[index] == UInt8(ascii: "/") {
                levels.append(topic[start..<index])
                start = utf8.index(after: index)
            }
            index = utf8.index(after: index)
        }
        levels.append(topic[start...])
        return levels
    }
    public static let hookEvents = "\(root)/hook/events"
    /// Operator commands to the orchestrator (`bynar incidents retry|cancel|resolve|show`,
    /// `bynar maintenance`): only operator identities may publish here (the broker's ACL),
    /// and each command is signed by an operator key the orchestrator trusts.
    public static let operatorCommands = "\(root)/operator/cmd"
    /// Retained: every maintenance window in force (a MaintenanceState), by the orchestrator.
    public static let maintenance = "\(root)/maintenance"
    /// Payloads `service` on `host` received and could not use.
    public static func deadLetter(host: String, service: String) -> String { "\(root)/deadletter/\(level(host))/\(level(service))" }

    /// Most UTF-8 bytes of one topic level built from data.
    public static let maxLevelBytes = 200

    /// `value` as one topic level, the one place every level built from data (host, disk key,
    /// incident id) goes through when a message is made, so no message is ever made that
    /// libmosquitto or the broker refuses for its topic. Unchanged when it is fit already
    /// (non-empty, at most ``maxLevelBytes``, none of `/ + # %`, no control characters);
    /// otherwise those characters are percent-encoded (`%2F`, `%23`, ...) and an overlong
    /// result is cut, with a hash of the whole value keeping it unique. `+` and `#` alone
    /// pass through: they are wildcards of a subscription filter.
    public static func level(_ value: String) -> String {
        if value == "+" || value == "#" { return value }
        func unfit(_ unit: UInt8) -> Bool { unit < 0x20 || unit == 0x7F || unit == UInt8(ascii: "/") || unit == UInt8(ascii: "+") || unit == UInt8(ascii: "#") || unit == UInt8(ascii: "%") }
        let utf8 = Array(value.utf8)
        if !utf8.isEmpty && utf8.count <= maxLevelBytes && !utf8.contains(where: unfit) { return value }
        if utf8.isEmpty { return "%00" }
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for unit in utf8 {
            if unfit(unit) { out += [UInt8(ascii: "%"), hex[Int(unit >> 4)], hex[Int(unit & 15)]] } else { out.append(unit) }
        }
        if out.count > maxLevelBytes {
            // FNV-1a over the whole value: two long values that share a prefix stay apart.
            let hash = StableHash.fnv1a(utf8)
            var cut = Array(out.prefix(maxLevelBytes - 17))
            // Never end inside a UTF-8 sequence or a %XX escape.
            while let last = cut.last, last & 0xC0 == 0x80 || last & 0xC0 == 0xC0 { cut.removeLast() }
            if cut.count >= 1, cut[cut.count - 1] == UInt8(ascii: "%") { cut.removeLast() }
            if cut.count >= 2, cut[cut.count - 2] == UInt8(ascii: "%") { cut.removeLast(2) }
            out = cut + Array("~".utf8) + Array(String(hash, radix: 16).utf8)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A shared subscription: one of the group's members gets each message.
    public static func shared(group: String, _ filter: String) -> String { "$share/\(group)/\(filter)" }

    /// The filter part of a `$share/<group>/<filter>` subscription (the topic filter that
    /// messages are matched against); other filters are returned as they are.
    static func matchingFilter(_ subscription: String) -> String {
        guard subscription.hasPrefix("$share/") else { return subscription }
        let parts = subscription.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
        return parts.count == 3 ? String(parts[2]) : subscription
    }

    /// MQTT topic filter matching (`+` one level, `#` the rest). Every message is matched
    /// against every route, so this walks the bytes level by level and allocates nothing
    /// (splitting both strings per route was a tenth of the orchestrator's CPU in a flood).
    static func matches(filter: String, topic: String) -> Bool {
        var filter = filter
        var topic = topic
        return filter.withUTF8 { f in topic.withUTF8 { t in matches(filter: f, topic: t) } }
    }

    private static func matches(filter f: UnsafeBufferPointer<UInt8>, topic t: UnsafeBufferPointer<UInt8>) -> Bool {
        let slash = UInt8(ascii: "/"), plus = UInt8(ascii: "+"), hash = UInt8(ascii: "#")
        func end(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int {
            var index = start
            while index < bytes.count && bytes[index] != slash { index += 1 }
            return index
        }
        func isLevel(_ start: Int, _ end: Int, _ byte: UInt8) -> Bool { end - start == 1 && f[start] == byte }
        var (fStart, tStart) = (0, 0)
        var topicLeft = true
        var first = true
        while true {
            let fEnd = end(f, fStart)
            // Topics starting with $ are not matched by wildcards in the first level.
            if first, t.first == UInt8(ascii: "$"), isLevel(fStart, fEnd, plus) || isLevel(fStart, fEnd, hash) { return false }
            first = false
            if isLevel(fStart, fEnd, hash) { return true }
            guard topicLeft else { return false }
            let tEnd = end(t, tStart)
            if !isLevel(fStart, fEnd, plus) {
                guard fEnd - fStart == tEnd - tStart else { return false }
                for offset in 0..<(fEnd - fStart) where f[fStart + offset] != t[tStart + offset] { return false }
            }
            // The filter's last level: a match when it was the topic's last too.
            guard fEnd < f.count else { return tEnd == t.count }
            fStart = fEnd + 1
            if tEnd < t.count { tStart = tEnd + 1 } else { topicLeft = false }
        }
    }
}

/// Who answers a request: a service on a host (any host when `host` is nil).
public struct Responder: Sendable, Equatable, CustomStringConvertible {
    public var host: String?
    public var service: String

    public init(host: String?, service: String) {
        self.host = host
        self.service = service
    }

    /// Whether `other` (a concrete responder from a reply topic) is this one.
    public func admits(_ other: Responder) -> Bool {
        other.service == service && (host == nil || other.host == host)
    }

    public var description: String { "\(service) on \(host ?? "any host")" }
}
