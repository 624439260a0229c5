public import BynarProto

/// What the orchestrator remembers about disks, bounded: a host (whose detector's password
/// may be stolen) can make it remember at most `maxDisksPerHost` disks, each at most
/// ``entryLimit`` bytes, and only `maxHosts` hosts are remembered at all. Before this, 3,000
/// forged healths with distinct keys took the orchestrator from 24 MB to 220 MB for good.
/// Pure: no I/O, no clock.
///
/// Rules:
/// 1. A disk already remembered is always admitted (its incidents and health go on).
/// 2. A new disk of a known host is admitted while the host has fewer than
///    `maxDisksPerHost`; a new host while fewer than `maxHosts` are known.
/// 3. Anything else is refused and counted per host; nothing about it is stored.
/// 4. A replaced disk is forgotten (``forget(host:key:)``), so replacements over the years
///    never fill a host's quota.
/// 5. A remembered health is at most ``entryLimit`` bytes (``bounded(_:)``): one that fits is
///    kept whole, one copy for the decisions and the status page; a larger one is cut
///    (``compact(_:)``), keeping first the parts the orchestrator uses (identity, flags,
///    SMART, where it is used).
public struct DiskMemory: Sendable, Equatable {
    public let maxDisksPerHost: Int
    public let maxHosts: Int
    /// Largest remembered health, serialized.
    public static let entryLimit = 16 << 10
    public private(set) var disksByHost: [String: Set<String>] = [:]
    /// Refused disks per host since start (at most `maxHosts` + 1 counters: the rest are
    /// summed under "(other hosts)").
    public private(set) var refused: [String: UInt64] = [:]

    public init(maxDisksPerHost: Int, maxHosts: Int) {
        self.maxDisksPerHost = maxDisksPerHost
        self.maxHosts = maxHosts
    }

    /// Whether `key` of `host` may be remembered (and, when new, now is); refusals are
    /// counted, and the count returned so the caller can log the first and every 1000th.
    public mutating func admit(host: String, key: String) -> (admitted: Bool, refusedSoFar: UInt64) {
        if disksByHost[host]?.contains(key) == true { return (true, 0) }
        if let known = disksByHost[host] {
            if known.count < maxDisksPerHost {
                disksByHost[host]!.insert(key)
                return (true, 0)
            }
        } else if disksByHost.count < maxHosts {
            disksByHost[host] = [key]
            return (true, 0)
        }
        let counter = refused[host] != nil || refused.count < maxHosts ? host : "(other hosts)"
        refused[counter, default: 0] += 1
        return (false, refused[counter]!)
    }

    /// Forgets a disk (its slot has a new disk now): room for the replacement.
    public mutating func forget(host: String, key: String) {
        disksByHost[host]?.remove(key)
        if disksByHost[host]?.isEmpty == true { disksByHost[host] = nil }
    }

    /// Number of disks remembered.
    public var count: Int { disksByHost.values.reduce(0) { $0 + $1.count } }

    /// `health` as remembered: whole when it fits in ``entryLimit`` bytes (the status page
    /// shares this copy, reasons included), else ``compact(_:)``.
    public static func bounded(_ health: Bynar_V1_DiskHealth) -> Bynar_V1_DiskHealth {
        ((try? health.serializedBytes() as [UInt8])?.count ?? Int.max) <= entryLimit ? health : compact(health)
    }

    /// `health` cut to ``entryLimit`` bytes: reasons dropped (an incident keeps its own),
    /// then filesystem findings, then SMART, then every text but the key and host.
    public static func compact(_ health: Bynar_V1_DiskHealth) -> Bynar_V1_DiskHealth {
        var kept = health
        kept.reasons = []
        if kept.filesystems.count > 8 { kept.filesystems = Array(kept.filesystems.prefix(8)) }
        func fits() -> Bool { ((try? kept.serializedBytes() as [UInt8])?.count ?? Int.max) <= entryLimit }
        if fits() { return kept }
        kept.filesystems = []
        if fits() { return kept }
        kept.clearSmart()
        if fits() { return kept }
        var bare = Bynar_V1_DiskHealth()
        bare.disk.host = String(health.disk.host.prefix(256))
        bare.disk.key = String(health.disk.key.prefix(256))
        bare.state = health.state
        bare.stateSinceUnixMs = health.stateSinceUnixMs
        bare.systemDisk = health.systemDisk
        bare.excluded = health.excluded
        return bare
    }
}
