import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The real bynar-detector process, a real broker, a real loop device over faultfs: kernel
/// errors, a forced read-only ext4, a disk that leaves and a new one in its slot.
@Suite(.serialized, .enabled(if: FaultyDisk.available && TestBroker.available, "\(FaultyDisk.unavailableReason ?? "mosquitto is not installed")"))
struct DetectorServiceTests {
    typealias Event = Received<Bynar_V1_DiskHealthEvent>

    @Test func aDiskGoesFromHealthyToFailingToFailedToMissingAndIsReplaced() async throws {
        let broker = try TestBroker()
        let watcher = try await connectedBus(broker, service: "watcher")
        let events = Collector(try await watcher.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let directory = try makeTemporaryDirectory(prefix: "bynar-detector")
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let diskA = try FaultyDisk(sizeMB: 64, filesystem: "ext4")
        defer { diskA.teardown() }
        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: directory, extraConfig: """
            "detector": {"check_interval_seconds": 2, "probe_timeout_seconds": 5}
            """)
        defer { detector.signal(SIGTERM) }

        func transition(of device: String? = nil, key: String? = nil, to state: Bynar_V1_DiskState, within timeout: Duration) async -> Event? {
            _ = await events.wait(timeout: timeout) { all in
                all.contains { ($0.payload.disk.devPath == device || $0.payload.disk.key == key) && $0.payload.toState == state }
            }
            return events.all.first { ($0.payload.disk.devPath == device || $0.payload.disk.key == key) && $0.payload.toState == state }
        }

        // 1. First sight: healthy, identified by its backing file.
        let healthy = try #require(await transition(of: diskA.device, to: .healthy, within: .seconds(20)), "log:\n\(detector.log)")
        let keyA = healthy.payload.disk.key
        #expect(healthy.payload.disk.transport == .loop)
        #expect(healthy.payload.disk.backingFile.hasSuffix("/fuse/disk"))
        #expect(keyA.hasPrefix("serial-"))

        // 2. Real read errors in the kernel log: suspect on the first, failing on repeated ones.
        // The kernel rate-limits these lines (10 per 5 s, machine-wide), so keep reading bad
        // blocks until the detector has seen enough of them.
        try diskA.control("fail 20000 64")
        var block = 0
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline, !events.all.contains(where: { $0.payload.disk.key == keyA && $0.payload.toState == .failing }) {
            _ = try? FaultyDisk.run("/bin/dd", ["if=\(diskA.device)", "of=/dev/null", "bs=4096", "count=1", "skip=\(2500 + block % 8)", "iflag=direct"])
            block += 1
            try await Task.sleep(for: .milliseconds(300))
        }
        let suspect = try #require(await transition(key: keyA, to: .suspect, within: .seconds(1)), "log:\n\(detector.log)")
        #expect(suspect.payload.reasons.map(\.rule).contains("kernel.io_error"))
        let failing = try #require(await transition(key: keyA, to: .failing, within: .seconds(1)), "log:\n\(detector.log)")
        #expect(failing.payload.reasons.first?.rule == "kernel.io_errors_repeated")

        // 3. ext4 forced read-only after write errors: failed.
        try diskA.control("clear\nfail-writes 0 131072")
        let mountpoint = try #require(diskA.mountpoint)
        try? "x".write(toFile: "\(mountpoint)/file", atomically: false, encoding: .utf8)
        _ = try? FaultyDisk.run("/bin/sync", ["-f", mountpoint])
        let failed = try #require(await transition(key: keyA, to: .failed, within: .seconds(30)), "log:\n\(detector.log)")
        let rules = failed.payload.reasons.map(\.rule)
        #expect(rules.contains("fs.emergency_ro") || rules.contains("fs.read_only_remount") || rules.contains("fs.probe_failed"), "\(rules)")

        // 4. The device goes away: missing.
        try diskA.control("vanish ENODEV")
        try diskA.detach()
        _ = try #require(await transition(key: keyA, to: .missing, within: .seconds(15)), "log:\n\(detector.log)")

        // 5. A new disk (new image, new serial) in the same slot: replaced, then healthy.
        let diskB = try FaultyDisk(sizeMB: 64, filesystem: "ext4", loopDevice: diskA.device)
        defer { diskB.teardown() }
        let replaced = try #require(await transition(of: diskB.device, to: .replaced, within: .seconds(15)), "log:\n\(detector.log)")
        #expect(replaced.payload.previousDisk.key == keyA)
        #expect(replaced.payload.disk.key != keyA)
        _ = try #require(await transition(key: replaced.payload.disk.key, to: .healthy, within: .seconds(15)), "log:\n\(detector.log)")

        // Every transition of this slot was announced exactly once, in order.
        let slot = events.all.filter { $0.payload.disk.key == keyA || $0.payload.disk.key == replaced.payload.disk.key }.map(\.payload.toState)
        #expect(slot == [.healthy, .suspect, .failing, .failed, .missing, .replaced, .healthy], "\(slot)")

        // The retained health of the new disk says healthy.
        let retained = Collector(try await watcher.subscribe(Topics.diskHealth(host: "h1", disk: replaced.payload.disk.key), as: Bynar_V1_DiskHealth.self))
        // Retained, or live right after the subscription (the outbox sends the health just
        // after the event this test waited for): either way the value the broker now keeps.
        #expect(await retained.wait(timeout: .seconds(5)) { $0.contains { $0.payload.state == .healthy } },
                "\(retained.all.map { "\($0.retained) \($0.payload.state) \($0.payload.reasons.map(\.detail))" })\n\(detector.log.suffix(3000))")
        await watcher.shutdown()
    }

    /// Found by the chaos run (scripts/chaos): a disk that left the host lost its excluded
    /// flag in its health (so another host's disk, or an excluded one, MISSING opened an
    /// incident), and a replaced disk's last health (MISSING) stayed retained for ever (so an
    /// orchestrator restarting later opened a second incident for a disk already repaired).
    @Test func aDiskThatLeavesKeepsItsFlagsAndAReplacedDiskLeavesNoRetainedHealth() async throws {
        let broker = try TestBroker()
        let watcher = try await connectedBus(broker, service: "watcher")
        let events = Collector(try await watcher.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let directory = try makeTemporaryDirectory(prefix: "bynar-detector")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mine = try FaultyDisk(sizeMB: 64, filesystem: nil)
        defer { mine.teardown() }
        let theirs = try FaultyDisk(sizeMB: 64, filesystem: nil)
        defer { theirs.teardown() }
        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: directory, extraConfig: """
            "detector": {"check_interval_seconds": 1, "probe_timeout_seconds": 5, "exclude": ["\(theirs.directory)/*"]}
            """)
        defer { detector.signal(SIGTERM) }
        func key(of disk: FaultyDisk) async -> String? {
            _ = await events.wait(timeout: .seconds(20)) { $0.contains { $0.payload.disk.devPath == disk.device && $0.payload.toState == .healthy } }
            return events.all.first { $0.payload.disk.devPath == disk.device }?.payload.disk.key
        }
        let mineKey = try #require(await key(of: mine), "\(detector.log)")
        let theirKey = try #require(await key(of: theirs), "\(detector.log)")

        // An excluded disk leaves: MISSING, and still excluded.
        try theirs.control("vanish ENODEV")
        try theirs.detach()
        #expect(await events.wait(timeout: .seconds(15)) { $0.contains { $0.payload.disk.key == theirKey && $0.payload.toState == .missing } }, "\(detector.log)")
        let theirHealth = Collector(try await watcher.subscribe(Topics.diskHealth(host: "h1", disk: theirKey), as: Bynar_V1_DiskHealth.self))
        #expect(await theirHealth.wait(timeout: .seconds(5)) { $0.contains { $0.payload.state == .missing } })
        #expect(theirHealth.all.last?.payload.excluded == true, "\(theirHealth.all.map(\.payload))")

        // Our disk is swapped for a new one in the same slot: the old disk's retained health goes.
        try mine.control("vanish ENODEV")
        try mine.detach()
        #expect(await events.wait(timeout: .seconds(15)) { $0.contains { $0.payload.disk.key == mineKey && $0.payload.toState == .missing } }, "\(detector.log)")
        let replacement = try FaultyDisk(sizeMB: 64, filesystem: nil, loopDevice: mine.device)
        defer { replacement.teardown() }
        #expect(await events.wait(timeout: .seconds(15)) { $0.contains { $0.payload.previousDisk.key == mineKey && $0.payload.toState == .replaced } }, "\(detector.log)")
        try await Task.sleep(for: .seconds(1))
        let oldHealth = Collector(try await watcher.subscribe(Topics.diskHealth(host: "h1", disk: mineKey), as: Bynar_V1_DiskHealth.self))
        try await Task.sleep(for: .seconds(2))
        #expect(oldHealth.all.isEmpty, "the old disk's health is still retained: \(oldHealth.all.map(\.payload.state))")
        await watcher.shutdown()
    }

    /// Found by the chaos run (bug 7): a broker killed with -9 comes back with the retained
    /// messages of its last save, so a replaced disk's MISSING health, cleared after that
    /// save, came back to life (an orchestrator starting later would repair a disk that was
    /// already replaced). The detector clears it again when it reconnects.
    @Test func aBrokerBackFromAnOlderSaveDoesNotReviveAReplacedDisksHealth() async throws {
        let persistence = try makeTemporaryDirectory(prefix: "bynar-detector-persist")
        defer { try? FileManager.default.removeItem(atPath: persistence) }
        // Saves only when stopped cleanly (production's autosave_interval is 60 s: the same
        // window, made certain).
        let broker = try TestBroker(extraConfig: "allow_anonymous true\npersistence true\npersistence_location \(persistence)/\nautosave_interval 3600")
        let watcher = try await connectedBus(broker, service: "watcher")
        let events = Collector(try await watcher.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let directory = try makeTemporaryDirectory(prefix: "bynar-detector")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mine = try FaultyDisk(sizeMB: 64, filesystem: nil)
        defer { mine.teardown() }
        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: directory, extraConfig: """
            "detector": {"check_interval_seconds": 1, "probe_timeout_seconds": 5}
            """)
        defer { detector.signal(SIGTERM) }
        _ = await events.wait(timeout: .seconds(20)) { $0.contains { $0.payload.disk.devPath == mine.device && $0.payload.toState == .healthy } }
        let mineKey = try #require(events.all.first { $0.payload.disk.devPath == mine.device }?.payload.disk.key, "\(detector.log)")
        try mine.control("vanish ENODEV")
        try mine.detach()
        #expect(await events.wait(timeout: .seconds(15)) { $0.contains { $0.payload.disk.key == mineKey && $0.payload.toState == .missing } }, "\(detector.log)")
        try await Task.sleep(for: .seconds(1))
        // Saved with the MISSING health retained.
        broker.stop()
        try broker.start()
        let replacement = try FaultyDisk(sizeMB: 64, filesystem: nil, loopDevice: mine.device)
        defer { replacement.teardown() }
        #expect(await events.wait(timeout: .seconds(20)) { $0.contains { $0.payload.previousDisk.key == mineKey && $0.payload.toState == .replaced } }, "\(detector.log)")
        try await Task.sleep(for: .seconds(2))
        // Killed: back from the save that still has the old disk's MISSING.
        broker.signal(SIGKILL)
        try await Task.sleep(for: .milliseconds(300))
        try broker.start()
        let reasserted = await Collector<Int>.poll(timeout: .seconds(15)) {
            detector.log.components(separatedBy: "retained messages said again").count - 1 >= 2
        }
        #expect(reasserted, "\(detector.log.suffix(3000))")
        try await Task.sleep(for: .seconds(1))
        let reader = try await connectedBus(broker, service: "reader")
        let oldHealth = Collector(try await reader.subscribe(Topics.diskHealth(host: "h1", disk: mineKey), as: Bynar_V1_DiskHealth.self))
        try await Task.sleep(for: .seconds(2))
        #expect(oldHealth.all.isEmpty, "the replaced disk's health came back: \(oldHealth.all.map(\.payload.state))")
        await reader.shutdown()
        await watcher.shutdown()
    }

    @Test func aRestartResumesWithoutAnnouncingAgain() async throws {
        let broker = try TestBroker()
        let watcher = try await connectedBus(broker, service: "watcher")
        let events = Collector(try await watcher.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let directory = try makeTemporaryDirectory(prefix: "bynar-detector")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let disk = try FaultyDisk(sizeMB: 64, filesystem: "ext4")
        defer { disk.teardown() }
        let config = """
            "detector": {"check_interval_seconds": 1, "probe_timeout_seconds": 5}
            """
        let first = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: directory, extraConfig: config)
        #expect(await events.wait(timeout: .seconds(20)) { $0.contains { $0.payload.disk.devPath == disk.device && $0.payload.toState == .healthy } }, "\(first.log)")
        let key = try #require(events.all.first { $0.payload.disk.devPath == disk.device }?.payload.disk.key)
        first.signal(SIGTERM)
        #expect(first.process.exitCode == 0)

        let second = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: directory, extraConfig: config)
        defer { second.signal(SIGTERM) }
        // Several checks later: the restored state is the same, so nothing is announced again.
        try await Task.sleep(for: .seconds(4))
        #expect(events.all.filter { $0.payload.disk.key == key }.map(\.payload.toState) == [.healthy], "\(second.log)")
        #expect(second.log.contains("restored disk states"), "\(second.log)")
        let retained = Collector(try await watcher.subscribe(Topics.diskHealth(host: "h1", disk: key), as: Bynar_V1_DiskHealth.self))
        #expect(await retained.wait(timeout: .seconds(5)) { $0.contains { $0.retained && $0.payload.state == .healthy } })
        await watcher.shutdown()
    }

    /// A dead disk with no filesystem (an OSD's) is FAILED from the read probe alone; when
    /// the same disk shows up under another kernel name (renumbered during a hot-swap), it
    /// keeps its history and is never judged from scratch as a healthy new disk.
    @Test func aDeadDiskWithoutFilesystemIsFailedAndKeepsItsVerdictUnderAnotherName() async throws {
        let broker = try TestBroker()
        let watcher = try await connectedBus(broker, service: "watcher")
        let events = Collector(try await watcher.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let directory = try makeTemporaryDirectory(prefix: "bynar-detector-dead")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let disk = try FaultyDisk(sizeMB: 64, filesystem: nil)
        defer { disk.teardown() }
        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: directory, extraConfig: """
            "detector": {"check_interval_seconds": 2, "probe_timeout_seconds": 5}
            """)
        defer { detector.signal(SIGTERM) }
        #expect(await events.wait(timeout: .seconds(20)) { $0.contains { $0.payload.disk.devPath == disk.device && $0.payload.toState == .healthy } }, "\(detector.log)")
        let first = try #require(events.all.first { $0.payload.disk.devPath == disk.device }?.payload.disk)

        try disk.control("fail 0 131072")
        let dead = ContinuousClock.now
        #expect(await events.wait(timeout: .seconds(30)) { $0.contains { $0.payload.disk.key == first.key && $0.payload.toState == .failed } }, "\(detector.log)")
        let failed = try #require(events.all.first { $0.payload.disk.key == first.key && $0.payload.toState == .failed }?.payload)
        #expect(failed.reasons.first?.rule == "disk.unreadable", "\(failed.reasons)")
        print("detector: every I/O failing -> FAILED in \(ContinuousClock.now - dead)")
        #expect(ContinuousClock.now - dead < .seconds(30))

        // The same disk under another kernel name.
        let before = events.all.count
        // Reserve another free loop name first (losetup --find would hand back the old one).
        let placeholder = directory + "/placeholder.img"
        _ = try FaultyDisk.run("/usr/bin/truncate", ["-s", "1M", placeholder])
        let other = try FaultyDisk.run("/sbin/losetup", ["--find", "--show", placeholder]).trimmingCharacters(in: .whitespacesAndNewlines)
        _ = try FaultyDisk.run("/sbin/losetup", ["-d", other])
        try disk.detach()
        _ = try FaultyDisk.run("/sbin/losetup", ["--show", "--direct-io=on", other, first.backingFile])
        defer { _ = try? FaultyDisk.run("/sbin/losetup", ["-d", other]) }
        #expect(other != disk.device)
        try await Task.sleep(for: .seconds(8))
        let after = events.all.dropFirst(before).filter { $0.payload.disk.key == first.key }.map(\.payload)
        #expect(!after.contains { $0.toState == .healthy || $0.toState == .unspecified }, "never judged from scratch: \(after.map { "\($0.disk.devPath) \($0.fromState)->\($0.toState)" })")
        let healths = Collector(try await watcher.subscribe(Topics.diskHealth(host: "h1", disk: first.key), as: Bynar_V1_DiskHealth.self))
        #expect(await healths.wait(timeout: .seconds(20)) { $0.contains { $0.payload.disk.devPath == other && $0.payload.state == .failed } },
                "\(healths.all.map { "\($0.payload.disk.devPath) \($0.payload.state)" })\n\(detector.log.suffix(3000))")
        await watcher.shutdown()
    }
}
