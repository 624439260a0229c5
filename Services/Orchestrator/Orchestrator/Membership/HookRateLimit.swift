/// How many hook events one orchestrator runs per minute: a flapping (or forged) host must
/// not fork hundreds of operator scripts. Pure: time is passed in, tested exhaustively.
///
/// Rules:
/// 1. An event is admitted when fewer than `perMinute` events were admitted in the 60 s
///    before it, and fewer than `perHostPerMinute` of its host's.
/// 2. A refused event is not remembered (it used no budget), only counted in `suppressed`
///    until ``takeSuppressed()`` reports it.
/// 3. Memory is bounded by `perMinute`: only admitted events of the last minute are kept.
public struct HookRateLimit: Sendable, Equatable {
    public let perMinute: Int
    public let perHostPerMinute: Int
    private struct Admission: Sendable, Equatable {
        var atMs: Int64
        var host: String
    }
    /// Admissions of the last minute, oldest first.
    private var admitted: [Admission] = []
    /// Refused since the last ``takeSuppressed()``, per host.
    public private(set) var suppressed: [String: Int] = [:]

    public enum Decision: Sendable, Equatable {
        case run
        case refuse(String)
    }

    public init(perMinute: Int, perHostPerMinute: Int) {
        self.perMinute = perMinute
        self.perHostPerMinute = perHostPerMinute
    }

    /// Whether a hook event for `host` may run now.
    public mutating func admit(host: String, nowMs: Int64) -> Decision {
        admitted.removeAll { nowMs - $0.atMs >= 60_000 }
        let reason: String?
        if admitted.count >= perMinute {
            reason = "\(perMinute) hook events ran in the last minute (orchestrator.hook_limit.per_minute)"
        } else if admitted.lazy.filter({ $0.host == host }).count >= perHostPerMinute {
            reason = "\(perHostPerMinute) hook events of \(host) ran in the last minute (orchestrator.hook_limit.per_host_per_minute)"
        } else {
            reason = nil
        }
        if let reason {
            // Bounded too: one counter per host, cleared when reported.
            if suppressed[host] != nil || suppressed.count < 10_000 { suppressed[host, default: 0] += 1 }
            return .refuse(reason)
        }
        admitted.append(Admission(atMs: nowMs, host: host))
        return .run
    }

    /// The refused counts since the last call, and forgets them.
    public mutating func takeSuppressed() -> [String: Int] {
        defer { suppressed = [:] }
        return suppressed
    }
}
