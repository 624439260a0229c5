import BynarProto
import BynarConfig
import BynarDisks

/// What one reading of `zpool status` and `zpool list` says, as evidence about disks (per
/// vdev) and as alarms about pools. Pure: the time is passed in.
///
/// Disks (durable evidence for ``DiskHealthMachine``, the pool named in every detail):
/// 1. A vdev FAULTED, UNAVAIL or REMOVED is FAILED (`zfs.vdev_failed`).
/// 2. A vdev DEGRADED (ZFS saw too many errors but still uses it) is FAILING (`zfs.vdev_degraded`).
/// 3. An ONLINE vdev with read, write or checksum errors is SUSPECT (`zfs.vdev_errors`).
/// 4. An OFFLINE vdev is no evidence: someone (the disk-manager's Remove) took it out.
///
/// Pools (logged, not disk states):
/// 5. Health other than ONLINE.
/// 6. Capacity at or above `capacity_alarm_percent` (bzman: 75).
/// 7. The last scrub older than `scrub_max_age_days`, or none; a scrub that found errors.
/// 8. A resilver running, with its percentage.
enum ZFSRules {
    struct Verdict: Equatable {
        /// Per pool and vdev name (as zpool prints it), the reasons about that disk.
        var disks: [String: [String: [DiskHealthMachine.Reason]]] = [:]
        /// Per pool, what is wrong with it (empty when nothing is).
        var pools: [String: [String]] = [:]
    }

    static func judge(_ status: ZpoolStatus, list: [ZpoolListEntry], config: DetectorZFSConfig, nowSeconds: Int64) -> Verdict {
        var verdict = Verdict()
        for pool in status.pools {
            var disks: [String: [DiskHealthMachine.Reason]] = [:]
            for (leaf, top) in pool.leaves where top.section != "spares" {
                if let reason = reason(leaf, pool: pool.name) { disks[leaf.name] = [reason] }
            }
            verdict.disks[pool.name] = disks
            var alarms: [String] = []
            if pool.state != "ONLINE" { alarms.append("pool \(pool.name) is \(pool.state)") }
            if let entry = list.first(where: { $0.name == pool.name }), entry.capacityPercent >= config.capacityAlarmPercent {
                alarms.append("pool \(pool.name) is \(entry.capacityPercent)% full (alarm at \(config.capacityAlarmPercent)%)")
            }
            switch pool.scan {
            case .resilverRunning(let percent):
                alarms.append("pool \(pool.name) is resilvering\(percent.map { " (\($0)% done)" } ?? "")")
            case .scrubFinished(let errors, _) where errors > 0:
                alarms.append("pool \(pool.name)'s last scrub found \(errors) error\(errors == 1 ? "" : "s")")
            default:
                break
            }
            if config.scrubMaxAgeDays > 0 && !pool.scan.running {
                let maxAge = Int64(config.scrubMaxAgeDays) * 86_400
                switch pool.scan {
                case .scrubFinished(_, let finished?) where nowSeconds - finished > maxAge:
                    alarms.append("pool \(pool.name) was last scrubbed \((nowSeconds - finished) / 86_400) days ago (alarm after \(config.scrubMaxAgeDays))")
                case .scrubFinished(_, nil), .none, .resilverFinished, .other:
                    alarms.append("pool \(pool.name) has no finished scrub on record")
                default:
                    break
                }
            }
            verdict.pools[pool.name] = alarms
        }
        return verdict
    }

    /// What a reading says about each pool as Prometheus gauges (docs/metrics.md), so that
    /// pool alarms reach a fleet's alerting and not only this host's log:
    /// `bynar_zfs_pool_healthy` (1 when ONLINE), `bynar_zfs_pool_capacity_percent` (when
    /// `zpool list` named it), `bynar_zfs_pool_alarms` (rules 5-8), `bynar_zfs_pool_vdev_errors`
    /// (read + write + checksum over its disks), `bynar_zfs_pool_resilvering` (1 while one
    /// runs) and `bynar_zfs_pool_last_scrub_timestamp_seconds` (when a finished scrub is on
    /// record).
    static func figures(_ status: ZpoolStatus, list: [ZpoolListEntry], verdict: Verdict) -> [(name: String, pool: String, value: Double)] {
        var figures: [(name: String, pool: String, value: Double)] = []
        for pool in status.pools {
            func add(_ name: String, _ value: Double) { figures.append((name, pool.name, value)) }
            add("bynar_zfs_pool_healthy", pool.state == "ONLINE" ? 1 : 0)
            if let entry = list.first(where: { $0.name == pool.name }) { add("bynar_zfs_pool_capacity_percent", Double(entry.capacityPercent)) }
            add("bynar_zfs_pool_alarms", Double(verdict.pools[pool.name]?.count ?? 0))
            add("bynar_zfs_pool_vdev_errors", Double(pool.leaves.reduce(UInt64(0)) { $0 + $1.vdev.errorCount }))
            if case .resilverRunning = pool.scan { add("bynar_zfs_pool_resilvering", 1) } else { add("bynar_zfs_pool_resilvering", 0) }
            if case .scrubFinished(_, let finished?) = pool.scan { add("bynar_zfs_pool_last_scrub_timestamp_seconds", Double(finished)) }
        }
        return figures
    }

    /// Each pool as the bus carries it (``Bynar_V1_PoolState``, retained per pool): health,
    /// capacity, errors, scrub, resilver, the verdict's alarms, every leaf member.
    static func poolStates(_ status: ZpoolStatus, list: [ZpoolListEntry], verdict: Verdict, nowMs: Int64) -> [Bynar_V1_PoolState] {
        status.pools.map { pool in
            var state = Bynar_V1_PoolState()
            state.pool = pool.name
            state.kind = "zfs"
            state.health = pool.state
            state.capacityPercent = -1
            if let entry = list.first(where: { $0.name == pool.name }) {
                state.capacityPercent = Int32(entry.capacityPercent)
                state.size = entry.size
                state.allocated = entry.allocated
                state.free = entry.free
            }
            let leaves = pool.leaves.map(\.vdev)
            state.readErrors = leaves.reduce(0) { $0 + $1.readErrors }
            state.writeErrors = leaves.reduce(0) { $0 + $1.writeErrors }
            state.checksumErrors = leaves.reduce(0) { $0 + $1.checksumErrors }
            state.scan = pool.scan.summary
            state.lastScrubErrors = -1
            if case .scrubFinished(let errors, let finished) = pool.scan {
                state.lastScrubErrors = Int32(clamping: errors)
                state.lastScrubUnix = finished ?? 0
            }
            state.resilvering = pool.resilvering
            state.alarms = verdict.pools[pool.name] ?? []
            state.members = leaves.map { leaf in
                var member = Bynar_V1_PoolMember()
                member.name = leaf.name
                member.state = leaf.state
                member.readErrors = leaf.readErrors
                member.writeErrors = leaf.writeErrors
                member.checksumErrors = leaf.checksumErrors
                return member
            }
            state.observedUnixMs = nowMs
            return state
        }
    }

    /// Rules 1-4 for one disk of `pool`.
    static func reason(_ vdev: ZFSVdev, pool: String) -> DiskHealthMachine.Reason? {
        let counts = "\(vdev.readErrors) read, \(vdev.writeErrors) write, \(vdev.checksumErrors) checksum errors" + (vdev.note.isEmpty ? "" : "; \(vdev.note)")
        switch vdev.state {
        case "FAULTED", "UNAVAIL", "REMOVED":
            return .init(rule: "zfs.vdev_failed", severity: .failed, detail: "ZFS pool \(pool): vdev \(vdev.name) is \(vdev.state) (\(counts))")
        case "DEGRADED":
            return .init(rule: "zfs.vdev_degraded", severity: .failing, detail: "ZFS pool \(pool): vdev \(vdev.name) is DEGRADED (\(counts))")
        case "ONLINE" where vdev.errorCount > 0:
            return .init(rule: "zfs.vdev_errors", severity: .suspect, detail: "ZFS pool \(pool): vdev \(vdev.name) has \(counts)")
        default:
            return nil
        }
    }
}
