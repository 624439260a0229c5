import BynarConfig
import BynarDisks
import BynarProcess
import BynarBus
import BynarRuntime
import Logging
import Metrics

/// The detector's window on this host's ZFS pools: every poll, and at once after a kernel
/// disk error, it reads `zpool status` and `zpool list` (read-only), judges them with
/// ``ZFSRules`` and hands the verdict to the engine, which ties each vdev to its disk and
/// re-checks a disk whose evidence changed. Pool alarms (capacity, scrub age, resilver) are
/// logged when they change. A zpool that does not answer is logged and asked again.
struct ZFSWatcher {
    let config: DetectorZFSConfig
    let engine: DetectorEngine
    let host: String
    let logger: Logger

    func run() async {
        let zpool = ZpoolTool(path: config.zpoolPath, timeout: .seconds(60))
        var failing = false
        var lastAlarms: [String: [String]] = [:]
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
}
