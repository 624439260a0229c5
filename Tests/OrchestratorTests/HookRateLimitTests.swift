import Orchestrator
import Testing

/// ``HookRateLimit``: each rule, with time passed in.
struct HookRateLimitTests {
    @Test func aHostIsCappedPerMinuteAndOthersStillRun() {
        var limit = HookRateLimit(perMinute: 100, perHostPerMinute: 3)
        for second in 0..<3 { #expect(limit.admit(host: "h2", nowMs: Int64(second) * 1000) == .run) }
        guard case .refuse(let why) = limit.admit(host: "h2", nowMs: 3_000) else { Issue.record("a fourth h2 event ran"); return }
        #expect(why.contains("3 hook events of h2") && why.contains("per_host_per_minute"))
        #expect(limit.admit(host: "h1", nowMs: 3_000) == .run, "another host is not held back by h2")
        // The first h2 event is a minute old at 60 s: room again.
        #expect(limit.admit(host: "h2", nowMs: 59_999) != .run)
        #expect(limit.admit(host: "h2", nowMs: 60_000) == .run)
        #expect(limit.takeSuppressed() == ["h2": 2])
        #expect(limit.takeSuppressed().isEmpty, "reported once")
    }

    @Test func theWholeOrchestratorIsCapped() {
        var limit = HookRateLimit(perMinute: 5, perHostPerMinute: 5)
        for index in 0..<5 { #expect(limit.admit(host: "h\(index)", nowMs: 1_000) == .run) }
        guard case .refuse(let why) = limit.admit(host: "h9", nowMs: 2_000) else { Issue.record("a sixth event ran"); return }
        #expect(why.contains("5 hook events ran in the last minute"))
        #expect(limit.admit(host: "h9", nowMs: 61_000) == .run)
    }

    @Test func twoThousandForgedStatusesRunAtMostTheCap() {
        // The issue's figure: 2,000 forged statuses ran 388 hooks.
        var limit = HookRateLimit(perMinute: 120, perHostPerMinute: 12)
        var ran = 0
        for index in 0..<2_000 where limit.admit(host: "h\(index % 3)", nowMs: Int64(index) * 10) == .run { ran += 1 }
        #expect(ran == 36, "3 hosts x 12 in the 20 s the statuses took")
        #expect(limit.takeSuppressed().values.reduce(0, +) == 2_000 - 36)
        var many = HookRateLimit(perMinute: 120, perHostPerMinute: 12)
        ran = 0
        for index in 0..<2_000 where many.admit(host: "h\(index)", nowMs: Int64(index) * 10) == .run { ran += 1 }
        #expect(ran == 120, "distinct hosts: the orchestrator-wide cap holds")
    }
}
