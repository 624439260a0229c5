import Orchestrator
import Testing

/// The cluster brake's decisions: health gate, limits per cluster, rack and host, and the
/// removal rate limiter.
@Suite struct ClusterBrakeTests {
    static func limits(cluster: Int = 3, rack: Int = 2, host: Int = 1, perHour: Double = 3600, burst: Int = 10, allowErr: Bool = false) -> ClusterBrake.Limits {
        .init(maxOutPerCluster: cluster, maxOutPerRack: rack, maxOutPerHost: host, removalsPerHour: perHour, burst: burst, allowHealthErr: allowErr)
    }
    static func at(_ host: String, rack: String = "r1", cluster: String = "c1") -> ClusterBrake.Placement {
        .init(cluster: cluster, rack: rack, host: host)
    }

    func reason(_ admission: IncidentMachine.Admission) -> String? {
        if case .hold(let reason, _) = admission { return reason }
        return nil
    }

    @Test func healthGateHoldsUnlessAllowed() {
        var brake = ClusterBrake(limits: Self.limits(), bucket: nil, nowMs: 0)
        #expect(reason(brake.decide(Self.at("h1"), clusterHealth: "HEALTH_ERR", out: [], nowMs: 0))?.contains("HEALTH_ERR") == true)
        #expect(brake.decide(Self.at("h1"), clusterHealth: "HEALTH_WARN", out: [], nowMs: 0) == .admit)
        var allowed = ClusterBrake(limits: Self.limits(allowErr: true), bucket: nil, nowMs: 0)
        #expect(allowed.decide(Self.at("h1"), clusterHealth: "HEALTH_ERR", out: [], nowMs: 0) == .admit)
    }

    @Test func limitsPerClusterRackAndHost() {
        var brake = ClusterBrake(limits: Self.limits(cluster: 3, rack: 2, host: 1), bucket: nil, nowMs: 0)
        #expect(reason(brake.decide(Self.at("h1"), clusterHealth: "", out: [Self.at("h1")], nowMs: 0))?.contains("host h1") == true)
        #expect(reason(brake.decide(Self.at("h3"), clusterHealth: "", out: [Self.at("h1"), Self.at("h2")], nowMs: 0))?.contains("rack r1") == true)
        #expect(brake.decide(Self.at("h3", rack: "r2"), clusterHealth: "", out: [Self.at("h1"), Self.at("h2")], nowMs: 0) == .admit)
        let three = [Self.at("h1"), Self.at("h2", rack: "r2"), Self.at("h3", rack: "r3")]
        #expect(reason(brake.decide(Self.at("h4", rack: "r4"), clusterHealth: "", out: three, nowMs: 0))?.contains("cluster c1") == true)
        // Other clusters' disks do not count.
        #expect(brake.decide(Self.at("h4", rack: "r4", cluster: "c2"), clusterHealth: "", out: three, nowMs: 0) == .admit)
        // No rack: only the host and cluster limits apply.
        #expect(brake.decide(Self.at("h9", rack: ""), clusterHealth: "", out: [Self.at("h8", rack: "")], nowMs: 0) == .admit)
    }

    @Test func tokenBucketLimitsTheRateAndSaysWhenToAskAgain() {
        // 60 per hour = one a minute, burst 2.
        var brake = ClusterBrake(limits: Self.limits(cluster: 99, rack: 99, host: 99, perHour: 60, burst: 2), bucket: nil, nowMs: 0)
        #expect(brake.decide(Self.at("h1"), clusterHealth: "", out: [], nowMs: 0) == .admit)
        #expect(brake.decide(Self.at("h2"), clusterHealth: "", out: [], nowMs: 0) == .admit)
        let held = brake.decide(Self.at("h3"), clusterHealth: "", out: [], nowMs: 1000)
        guard case .hold(let why, let at) = held else { Issue.record("expected a hold"); return }
        #expect(why.contains("rate limit") && at == 60_000, "the next token comes one minute after the start")
        #expect(brake.decide(Self.at("h3"), clusterHealth: "", out: [], nowMs: 60_000) == .admit)
        // Held decisions take no token; the bucket survives a restart as persisted.
        let restarted = ClusterBrake(limits: brake.limits, bucket: brake.bucket, nowMs: 60_001)
        #expect(restarted.bucket.tokens < 1)
    }
}
