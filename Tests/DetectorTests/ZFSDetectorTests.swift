import BynarBus
import BynarConfig
import BynarDisks
import BynarProto
import BynarTestSupport
@testable import Detector
import Foundation
import Testing

/// The detector's ZFS rules: on captured zfs-fuse output, and on a real zfs-fuse pool whose
/// member fails with real I/O errors (faultfs), through ``DiskHealthMachine`` to FAILED with
/// the pool named.
@Suite(.serialized) struct ZFSDetectorTests {
    static let config = DetectorZFSConfig()

    static func status(_ fixture: String) throws -> ZpoolStatus {
        ZpoolStatus(parsing: try ZFSStatusTests.fixture(fixture))
    }

    /// The captured OpenZFS pool (ONLINE, a status paragraph about features not enabled):
    /// no disk is suspect and the pool raises no alarm while its last scrub is recent; once
    /// the scrub is older than `scrub_max_age_days` (35) the age rule speaks.
    @Test func aCapturedOpenZFSPoolWithFeaturesToEnableIsHealthy() throws {
        let status = try Self.status("openzfs-status-features.txt")
        let scrubbed = ZFSStatusTests.localTime(2023, 2, 12, 11, 40, 4)
        let fresh = ZFSRules.judge(status, list: [], config: Self.config, nowSeconds: scrubbed + 86_400)
        #expect(fresh.disks["pool1"] == [:])
        #expect(fresh.pools["pool1"] == [], "features not enabled are no alarm")
        let later = ZFSRules.judge(status, list: [], config: Self.config, nowSeconds: scrubbed + 100 * 86_400)
        #expect(later.disks["pool1"] == [:])
        #expect(later.pools["pool1"] == ["pool pool1 was last scrubbed 100 days ago (alarm after 35)"])
    }

    @Test func vdevRules() throws {
        let unavailable = ZFSRules.judge(try Self.status("zfs-fuse-status-x-io-errors.txt"), list: [], config: Self.config, nowSeconds: 0)
        let reasons = try #require(unavailable.disks["bzcap"]?["loop3"])
        #expect(reasons.map(\.rule) == ["zfs.vdev_failed"])
        #expect(reasons.first?.severity == .failed)
        #expect(reasons.first?.detail == "ZFS pool bzcap: vdev loop3 is UNAVAIL (0 read, 122 write, 0 checksum errors; experienced I/O failures)")
        #expect(unavailable.disks["bzcap"]?["loop5"] == nil)

        let checksum = ZFSRules.judge(try Self.status("zfs-fuse-status-checksum.txt"), list: [], config: Self.config, nowSeconds: 0)
        #expect(checksum.disks["bzcap"]?["loop3"]?.map(\.severity) == [.suspect])

        // Taken offline (the disk-manager's Remove) is no evidence.
        let offline = ZFSRules.judge(try Self.status("zfs-fuse-status-offline.txt"), list: [], config: Self.config, nowSeconds: 0)
        #expect(offline.disks["bzcap"]?.isEmpty == true)
        #expect(offline.pools["bzcap"]?.first == "pool bzcap is DEGRADED")

        let openZFS = ZFSRules.judge(try Self.status("openzfs-status-resilvering.txt"), list: [], config: Self.config, nowSeconds: 0)
        #expect(openZFS.disks["tank"]?["ata-BYNAR_DISK_A2"]?.map(\.rule) == ["zfs.vdev_failed"])
        #expect(openZFS.pools["tank"]?.contains("pool tank is resilvering (14.97% done)") == true)
    }

    @Test func poolAlarms() throws {
        let status = try Self.status("zfs-fuse-status-offline.txt")
        let scrubbed = ZFSStatusTests.localTime(2026, 12, 5, 3, 22, 35)
        let list = [ZpoolListEntry(name: "bzcap", size: "370M", allocated: "278M", free: "92M", capacityPercent: 75, health: "DEGRADED")]
        let fresh = ZFSRules.judge(status, list: list, config: Self.config, nowSeconds: scrubbed + 86_400)
        #expect(fresh.pools["bzcap"] == ["pool bzcap is DEGRADED", "pool bzcap is 75% full (alarm at 75%)"])
        var config = Self.config
        config.capacityAlarmPercent = 80
        let old = ZFSRules.judge(status, list: list, config: config, nowSeconds: scrubbed + 36 * 86_400)
        #expect(old.pools["bzcap"] == ["pool bzcap is DEGRADED", "pool bzcap was last scrubbed 36 days ago (alarm after 35)"])
        let healthy = ZFSRules.judge(try Self.status("zfs-fuse-status-mirror-offline.txt"), list: [], config: Self.config, nowSeconds: scrubbed)
        #expect(healthy.pools["bzmirror"]?.contains("pool bzmirror has no finished scrub on record") == true)
    }

    /// Pool alarms as gauges, for a fleet's alerting (docs/metrics.md, deploy/prometheus).
    @Test func poolFiguresForPrometheus() throws {
        let failing = try Self.status("zfs-fuse-status-x-io-errors.txt")
        let list = ZpoolListEntry.parse("bzcap\t1.2G\t900M\t300M\t76%\tDEGRADED\n")
        let verdict = ZFSRules.judge(failing, list: list, config: Self.config, nowSeconds: 0)
        let figures = Dictionary(uniqueKeysWithValues: ZFSRules.figures(failing, list: list, verdict: verdict).map { ("\($0.pool) \($0.name)", $0.value) })
        #expect(figures["bzcap bynar_zfs_pool_healthy"] == 0)
        #expect(figures["bzcap bynar_zfs_pool_capacity_percent"] == 76)
        #expect(figures["bzcap bynar_zfs_pool_vdev_errors"] == 122)
        #expect(figures["bzcap bynar_zfs_pool_alarms"] == Double(verdict.pools["bzcap"]?.count ?? -1) && (figures["bzcap bynar_zfs_pool_alarms"] ?? 0) >= 2)
        #expect(figures["bzcap bynar_zfs_pool_resilvering"] == 0)
        let resilvering = try Self.status("openzfs-status-resilvering.txt")
        let openZFS = Dictionary(uniqueKeysWithValues: ZFSRules.figures(resilvering, list: [], verdict: ZFSRules.judge(resilvering, list: [], config: Self.config, nowSeconds: 0))
            .map { ("\($0.pool) \($0.name)", $0.value) })
        #expect(openZFS["tank bynar_zfs_pool_resilvering"] == 1 && openZFS["tank bynar_zfs_pool_capacity_percent"] == nil)
        let scrubbed = try Self.status("zfs-fuse-status-offline.txt")
        let last = ZFSRules.figures(scrubbed, list: [], verdict: ZFSRules.judge(scrubbed, list: [], config: Self.config, nowSeconds: 0))
        #expect(last.contains { $0.name == "bynar_zfs_pool_last_scrub_timestamp_seconds" && $0.value == Double(ZFSStatusTests.localTime(2026, 12, 5, 3, 22, 35)) }, "\(last)")
    }

    @Test(.enabled(if: ZFSFusePool.available, "\(ZFSFusePool.unavailableReason ?? "")"))
    func aFailingVdevMakesItsDiskFailedNamingThePool() throws {
        let pool = try ZFSFusePool(name: "bynardet\(getpid())")
        defer { pool.teardown() }
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/data", "bs=1M", "count=30"])
        let zpool = ZpoolTool(path: "/usr/sbin/zpool")
        let member = pool.members[1]
        var identity = Bynar_V1_DiskIdentity()
        identity.devPath = member.device
        identity.key = "test-\(member.name)"
        let device = BlockDevice(identity: identity, sysPath: "/sys/block/\(member.name)")

        var machine = DiskHealthMachine()
        let healthy = ZFSRules.judge(try zpool.status(), list: try zpool.list(), config: Self.config, nowSeconds: 0)
        #expect(try #require(ZpoolStatus.find(device, in: try zpool.status())).leaf.name == member.name)
        _ = machine.handle(.appeared(key: identity.key, atMs: 1))
        _ = machine.handle(.checked(.init(durable: healthy.disks[pool.name]?[member.name] ?? [], atMs: 2)))
        #expect(machine.state == .healthy)

        try member.control("fail 0 262144")
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/more", "bs=1M", "count=20", "conv=fsync"])
        try pool.zpool(["scrub", pool.name])
        _ = pool.status { ZpoolStatus(parsing: $0).pool(pool.name)?.leaf(member.name)?.vdev.state != "ONLINE" }
        let status = try zpool.status()
        let verdict = ZFSRules.judge(status, list: try zpool.list(), config: Self.config, nowSeconds: 0)
        let found = try #require(ZpoolStatus.find(device, in: status))
        let reasons = verdict.disks[found.pool.name]?[found.leaf.name] ?? []
        let actions = machine.handle(.checked(.init(durable: reasons, atMs: 3)))
        #expect(machine.state == .failed, "\(status)")
        #expect(machine.reasons.contains { $0.rule == "zfs.vdev_failed" && $0.detail.contains("ZFS pool \(pool.name)") }, "\(machine.reasons)")
        #expect(actions.contains { if case .announce(_, .failed, _, _) = $0 { true } else { false } })
        #expect(verdict.pools[pool.name]?.contains("pool \(pool.name) is DEGRADED") == true)
    }

    /// The running bynar-detector with `detector.zfs`: the failing member's DiskHealthEvent
    /// to FAILED carries the ZFS reason naming the pool. The read probe is off, so that
    /// reason, not the detector's own unreadable-disk rule, is what makes it FAILED.
    @Test(.enabled(if: ZFSFusePool.available && TestBroker.available, "\(ZFSFusePool.unavailableReason ?? "mosquitto is not installed")"), .timeLimit(.minutes(3)))
    func theRunningDetectorFailsAVdevsDiskNamingThePool() async throws {
        let pool = try ZFSFusePool(name: "bynardsvc\(getpid())")
        defer { pool.teardown() }
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/data", "bs=1M", "count=30"])
        let broker = try TestBroker()
        let watcher = try await connectedBus(broker, service: "watcher")
        let events = Collector(try await watcher.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let poolStates = Collector(try await watcher.subscribe(Topics.poolState(host: "h1", pool: pool.name), as: Bynar_V1_PoolState.self))
        let directory = try makeTemporaryDirectory(prefix: "bynar-detector-zfs")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let member = pool.members[2]
        let metricsPort = try freeLoopbackPort()
        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: directory, extraConfig: """
            "detector": {"check_interval_seconds": 2, "probe": false, "read_probe": false, "fsck_interval_seconds": 0,
                         "watch_only": [\(pool.members.map { "\"\($0.device)\"" }.joined(separator: ", "))],
                         "zfs": {"zpool_path": "/usr/sbin/zpool", "poll_seconds": 2}},
            "metrics": {"detector_port": \(metricsPort)}
            """)
        /// The value of `name` for this pool on the detector's /metrics, if it is there.
        func gauge(_ name: String) -> Double? {
            guard let (status, body) = try? plainHTTP(port: metricsPort, method: "GET", path: "/metrics"), status == 200 else { return nil }
            let line = String(decoding: body, as: UTF8.self).split(separator: "\n").first { $0.hasPrefix(name + "{") && $0.contains("pool=\"\(pool.name)\"") }
            return line.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        defer { detector.signal(SIGTERM) }
        #expect(await events.wait(timeout: .seconds(20)) { $0.contains { $0.payload.disk.devPath == member.device && $0.payload.toState == .healthy } }, "\(detector.log)")
        #expect(await Collector<Int>.poll(timeout: .seconds(20)) { gauge("bynar_zfs_pool_healthy") == 1 }, "the pool's gauges on /metrics")
        #expect(gauge("bynar_zfs_pool_capacity_percent").map { $0 >= 0 && $0 <= 100 } == true && gauge("bynar_zfs_pool_vdev_errors") == 0)

        // The pool on the bus for the notifier's report (retained, bynar/v1/pool/h1/POOL).
        #expect(await poolStates.wait(timeout: .seconds(20)) { $0.contains { $0.payload.health == "ONLINE" } }, "\(detector.log.suffix(2000))")
        let online = try #require(poolStates.all.last?.payload)
        #expect(online.kind == "zfs" && online.members.count == 3 && online.capacityPercent >= 0 && online.alarms.isEmpty == false,
                "no scrub yet is an alarm (scrub_max_age_days): \(online)")

        try member.control("fail 0 262144")
        try FaultyDisk.run("/bin/dd", ["if=/dev/urandom", "of=\(pool.mountpoint)/more", "bs=1M", "count=20", "conv=fsync"])
        try pool.zpool(["scrub", pool.name])
        #expect(await events.wait(timeout: .seconds(60)) { $0.contains { $0.payload.disk.devPath == member.device && $0.payload.toState == .failed } },
                "\((try? pool.zpool(["status", pool.name])) ?? "")\n\(detector.log.suffix(3000))")
        let failed = try #require(events.all.first { $0.payload.disk.devPath == member.device && $0.payload.toState == .failed }?.payload)
        #expect(failed.reasons.contains { $0.rule == "zfs.vdev_failed" && $0.detail.hasPrefix("ZFS pool \(pool.name): vdev \(member.name) is ") }, "\(failed.reasons)")
        #expect(detector.log.contains("ZFS pool needs attention"), "\(detector.log.suffix(2000))")
        // ...and where a fleet's alerting sees it (deploy/prometheus: BynarZFSPoolDegraded).
        #expect(await Collector<Int>.poll(timeout: .seconds(20)) { gauge("bynar_zfs_pool_healthy") == 0 && (gauge("bynar_zfs_pool_alarms") ?? 0) >= 1 && (gauge("bynar_zfs_pool_vdev_errors") ?? 0) > 0 },
                "healthy \(String(describing: gauge("bynar_zfs_pool_healthy"))), alarms \(String(describing: gauge("bynar_zfs_pool_alarms"))), errors \(String(describing: gauge("bynar_zfs_pool_vdev_errors")))")
        #expect(await poolStates.wait(timeout: .seconds(20)) { $0.contains { $0.payload.health == "DEGRADED" } })
        let degraded = try #require(poolStates.all.last { $0.payload.health == "DEGRADED" }?.payload)
        #expect(degraded.members.first { $0.name == member.name }.map { $0.state != "ONLINE" && $0.readErrors + $0.writeErrors + $0.checksumErrors > 0 } == true, "\(degraded)")
        #expect(degraded.alarms.contains("pool \(pool.name) is DEGRADED"), "\(degraded.alarms)")
        await watcher.shutdown()
    }
}
