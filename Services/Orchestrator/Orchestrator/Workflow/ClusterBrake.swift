/// The cluster brake: whether one more disk may go out now. Pure: the caller passes the
/// disks already out (derived from the journal, so the limits hold across restarts), the
/// cluster's health as the disk-manager reported it, and the time.
///
/// Checked in order, the first that says no wins: the health gate (no removal while the
/// cluster is HEALTH_ERR unless allowed), at most N out per cluster, per rack, per host, and
/// a token bucket on removal starts. A token is taken only when the answer is yes.
public struct ClusterBrake: Sendable, Equatable {
    public struct Limits: Sendable, Equatable {
        public var maxOutPerCluster: Int
        public var maxOutPerRack: Int
        public var maxOutPerHost: Int
        public var removalsPerHour: Double
        public var burst: Int
        public var allowHealthErr: Bool
        public init(maxOutPerCluster: Int, maxOutPerRack: Int, maxOutPerHost: Int, removalsPerHour: Double, burst: Int, allowHealthErr: Bool) {
            self.maxOutPerCluster = maxOutPerCluster
            self.maxOutPerRack = maxOutPerRack
            self.maxOutPerHost = maxOutPerHost
            self.removalsPerHour = removalsPerHour
            self.burst = burst
            self.allowHealthErr = allowHealthErr
        }
    }

    /// Where a disk sits. An empty rack is no rack (the host is its own domain).
    public struct Placement: Sendable, Equatable, Hashable {
        public var cluster: String
        public var rack: String
        public var host: String
        public init(cluster: String, rack: String, host: String) {
            self.cluster = cluster
            self.rack = rack
            self.host = host
        }
    }

    /// The removal rate limiter's state; persisted so a restart does not refill it.
    public struct Bucket: Codable, Sendable, Equatable {
        public var tokens: Double
        public var updatedMs: Int64
        public init(tokens: Double, updatedMs: Int64) {
            self.tokens = tokens
            self.updatedMs = updatedMs
        }
    }

    public let limits: Limits
    public private(set) var bucket: Bucket

    /// A brake with `bucket` (a full one when nil).
    public init(limits: Limits, bucket: Bucket?, nowMs: Int64) {
        self.limits = limits
        self.bucket = bucket ?? Bucket(tokens: Double(limits.burst), updatedMs: nowMs)
    }

    /// Decides for `candidate`; on yes takes a token.
    public mutating func decide(_ candidate: Placement, clusterHealth: String, out: [Placement], nowMs: Int64) -> IncidentMachine.Admission {
        if clusterHealth == "HEALTH_ERR" && !limits.allowHealthErr {
            return .hold(reason: "cluster \(candidate.cluster) is HEALTH_ERR (health gate; brake.allow_removal_when_health_err is off)", retryAtMs: nil)
        }
        if let hold = holds(candidate, out: out, nowMs: nowMs) { return hold }
        refill(nowMs: nowMs)
        bucket.tokens = max(0, bucket.tokens - 1)
        return .admit
    }

    /// The hold that limits or the rate put on `candidate` whatever the cluster's health; nil
    /// when they would let it go (the health gate and the token are ``decide(_:clusterHealth:out:nowMs:)``'s).
    /// Asked before the disk-manager is: an incident the brake would hold anyway waits
    /// without a SafeToRemove, whose answer would be stale by the time it may go.
    public func holds(_ candidate: Placement, out: [Placement], nowMs: Int64) -> IncidentMachine.Admission? {
        let inCluster = out.filter { $0.cluster == candidate.cluster }
        if inCluster.count >= limits.maxOutPerCluster {
            return .hold(reason: "\(inCluster.count) disk(s) already out in cluster \(candidate.cluster) (limit \(limits.maxOutPerCluster))", retryAtMs: nil)
        }
        if !candidate.rack.isEmpty {
            let inRack = inCluster.filter { $0.rack == candidate.rack }.count
            if inRack >= limits.maxOutPerRack {
                return .hold(reason: "\(inRack) disk(s) already out in rack \(candidate.rack) (limit \(limits.maxOutPerRack))", retryAtMs: nil)
            }
        }
        let onHost = out.filter { $0.host == candidate.host }.count
        if onHost >= limits.maxOutPerHost {
            return .hold(reason: "\(onHost) disk(s) already out on host \(candidate.host) (limit \(limits.maxOutPerHost))", retryAtMs: nil)
        }
        var refilled = self
        refilled.refill(nowMs: nowMs)
        // (A hair of tolerance: refills in steps must add up to the whole token they make.)
        guard refilled.bucket.tokens >= 1 - 1e-9 else {
            let waitMs = Int64(((1 - refilled.bucket.tokens) / perMs).rounded(.up))
            return .hold(reason: "removal rate limit (\(limits.removalsPerHour) per hour, burst \(limits.burst)) reached", retryAtMs: nowMs + max(1, waitMs))
        }
        return nil
    }

    private var perMs: Double { limits.removalsPerHour / 3_600_000 }

    private mutating func refill(nowMs: Int64) {
        let elapsed = Double(max(0, nowMs - bucket.updatedMs))
        bucket.tokens = min(Double(limits.burst), bucket.tokens + elapsed * perMs)
        bucket.updatedMs = max(bucket.updatedMs, nowMs)
    }
}
