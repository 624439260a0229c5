import BynarConfig
import BynarDisks
import BynarProcess
import BynarBus
import BynarProto
import BynarRuntime
import Logging
import Metrics

/// The detector's window on this host's ZFS pools: every poll, and at once after a kernel
/// disk error, it reads `zpool status` and `zpool list` (read-only), judges them with
/// ``ZFSRules`` and hands the verdict to the engine, which ties each vdev to its disk and
/// re-checks a disk whose evidence changed. Pool alarms (capacity, scrub age, resilver) are
/// logged when they change. Each pool's state goes on the bus retained
/// (`bynar/v1/pool/{host}/{pool}`, through the outbox) when it changed, and at least every
/// ``refreshMs`` so a reader can tell a pool still reported from one no longer is; a pool
/// no longer listed has its retained state cleared. A zpool that does not answer is logged
/// and asked again.
struct ZFSWatcher {
    let config: DetectorZFSConfig
    let engine: DetectorEngine
    let outbox: Outbox
    let host: String
    let logger: Logger

    /// An unchanged pool's state is published again after this long.
    static let refreshMs: Int64 = 3_600_000

    func run() async {
        let zpool = ZpoolTool(path: config.zpoolPath, timeout: .seconds(60))
        var failing = false
        var lastAlarms: [String: [String]] = [:]
        var published: [String: (state: Bynar_V1_PoolState, atMs: Int64)] = [:]
        while !Task.isCancelled {
            do {
                let reading = try await offThread { (status: try zpool.status(), list: try zpool.list()) }
                let verdict = ZFSRules.judge(reading.status, list: reading.list, config: config, nowSeconds: Bus.nowUnixMs() / 1000)
                await engine.zfsView(reading.status, verdict: verdict)
                for figure in ZFSRules.figures(reading.status, list: reading.list, verdict: verdict) {
                    Gauge(label: figure.name, dimensions: [("host", host), ("pool", figure.pool)]).record(figure.value)
                }
                for (pool, alarms) in verdict.pools.sorted(by: { $0.key < $1.key }) where alarms != lastAlarms[pool] {
                    if alarms.isEmpty {
                        logger.notice("ZFS pool is healthy again", metadata: ["pool": "\(pool)"])
                    } else {
                        logger.warning("ZFS pool needs attention", metadata: ["pool": "\(pool)", "alarms": "\(alarms.joined(separator: "; "))"])
                    }
                }
                lastAlarms = verdict.pools
                published = publish(ZFSRules.poolStates(reading.status, list: reading.list, verdict: verdict, nowMs: Bus.nowUnixMs()), after: published)
                if failing { logger.notice("zpool answers again") }
                failing = false
            } catch {
                if !failing {
                    logger.warning("cannot read the ZFS pools; disks are judged without their view until zpool answers",
                                   metadata: ["zpool": "\(config.zpoolPath)", "error": "\(error)"])
                }
                failing = true
            }
            try? await Task.sleep(for: .seconds(1))
            await engine.zfsPoke.wait(upTo: .seconds(max(0, config.pollSeconds - 1)))
        }
    }

    /// Commits the pool states that changed (or are due again) and clears those of pools no
    /// longer listed; what was published, for the next call.
    func publish(_ states: [Bynar_V1_PoolState], after published: [String: (state: Bynar_V1_PoolState, atMs: Int64)]) -> [String: (state: Bynar_V1_PoolState, atMs: Int64)] {
        var next: [String: (state: Bynar_V1_PoolState, atMs: Int64)] = [:]
        var events: [Outbox.Event] = []
        for state in states {
            var unstamped = state
            unstamped.observedUnixMs = 0
            if let last = published[state.pool], last.state == unstamped, state.observedUnixMs - last.atMs < Self.refreshMs {
                next[state.pool] = last
                continue
            }
            next[state.pool] = (unstamped, state.observedUnixMs)
            events.append(Outbox.Event(state, to: Topics.poolState(host: host, pool: state.pool), retain: true))
        }
        for pool in published.keys where next[pool] == nil {
            events.append(.clearRetained(Topics.poolState(host: host, pool: pool)))
        }
        guard !events.isEmpty else { return next }
        do {
            try outbox.commit(events)
            return next
        } catch {
            logger.error("cannot store the ZFS pools' state", metadata: ["error": "\(error)"])
            return published
        }
    }
}
