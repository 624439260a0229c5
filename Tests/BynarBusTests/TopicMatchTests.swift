@testable import BynarBus
import Testing

/// `Topics.matches` walks bytes instead of splitting strings; it must say what MQTT (and the
/// split-based matcher it replaced) says for every filter and topic.
@Suite struct TopicMatchTests {
    /// The matcher as it was: both strings split into levels.
    static func reference(filter: String, topic: String) -> Bool {
        let f = filter.split(separator: "/", omittingEmptySubsequences: false)
        let t = topic.split(separator: "/", omittingEmptySubsequences: false)
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

    static let filters = ["#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/+/c", "a/b/#", "+/#", "a//b", "a/", "/a", "", "/", "$share/g/a/+",
                          "$SYS/#", "bynar/v1/disk/+/events", "bynar/v1/disk/+/+/health", "bynar/v1/reply/orchestrator-orch/#", "a/bc", "ab/c", "+a", "a/+b"]
    static let topics = ["a", "a/b", "a/b/c", "a/c", "b", "a/", "/a", "", "/", "a//b", "$SYS/x", "$SYS", "$share/g/a/x", "ab", "a/bc", "ab/c",
                         "bynar/v1/disk/h1/events", "bynar/v1/disk/h1/serial-A/health", "bynar/v1/disk/h1/serial-A/events",
                         "bynar/v1/reply/orchestrator-orch/disk-manager/h1", "bynar/v1/disk//events", "é/ü", "a/b/c/d/e"]

    @Test("every filter against every topic: the same answer as splitting")
    func sameAsSplitting() {
        for filter in Self.filters {
            for topic in Self.topics {
                #expect(Topics.matches(filter: filter, topic: topic) == Self.reference(filter: filter, topic: topic), "\(filter) ~ \(topic)")
            }
        }
    }

    @Test("MQTT's rules: + is one level, # the rest (the parent too), $ topics are not wildcarded at the first level")
    func mqttRules() {
        #expect(Topics.matches(filter: "bynar/v1/disk/+/events", topic: "bynar/v1/disk/h1/events"))
        #expect(!Topics.matches(filter: "bynar/v1/disk/+/events", topic: "bynar/v1/disk/h1/x/events"))
        #expect(Topics.matches(filter: "a/#", topic: "a"))
        #expect(Topics.matches(filter: "a/#", topic: "a/b/c"))
        #expect(!Topics.matches(filter: "#", topic: "$SYS/x"))
        #expect(Topics.matches(filter: "$SYS/#", topic: "$SYS/x"))
        #expect(!Topics.matches(filter: "a/b", topic: "a/bc"))
    }
}
