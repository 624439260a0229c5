import BynarCeph
import BynarTestSupport
import DiskManager
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

let cephAvailable = getuid() == 0 && access("/usr/bin/ceph-mon", X_OK) == 0 && access("/usr/bin/ceph-osd", X_OK) == 0

/// A real memstore cluster from `scripts/ceph-dev-cluster`, stopped by pid on `stop()`.
struct DevCluster {
    static let script = "\(packageRoot)/scripts/ceph-dev-cluster"
    let directory: String
    var conf: String { "\(directory)/ceph.conf" }
    let log: String

    /// Starts the cluster; when that fails, stops whatever it started before throwing, so
    /// a caller has nothing to clean up.
    init(parent: String, osds: Int, store: String = "memstore") throws {
        directory = "\(parent)/cluster"
        log = "\(parent)/cluster-script.log"
        do {
            try Self.script(["start", directory, "--osds", String(osds), "--store", store], log: log, timeout: 240)
        } catch {
            try? Self.script(["stop", directory], log: log)
            throw error
        }
    }

    /// Runs the cluster script; throws with the log's tail unless it exits 0.
    static func script(_ arguments: [String], log: String, timeout: Int = 120) throws {
        try run("/bin/bash", [script] + arguments, log: log, timeout: timeout)
    }

    static func run(_ executable: String, _ arguments: [String], log: String, timeout: Int = 60) throws {
        let child = try ChildProcess(executable, arguments, outputPath: log)
        guard let status = child.waitForExit(timeout: .seconds(timeout)) else {
            child.stop(SIGKILL)
            throw TestFailure("\(arguments.joined(separator: " ")) timed out after \(timeout) s\n\(tail(log))")
        }
        guard status & 0x7f == 0, (status >> 8) & 0xff == 0 else {
            throw TestFailure("\(([executable] + arguments).joined(separator: " ")) failed (wait status \(status))\n\(tail(log))")
        }
    }

    static func tail(_ path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return String(text.suffix(3000))
    }

    func stop() {
        try? Self.script(["stop", directory], log: log, timeout: 120)
    }

    /// The disk-manager's `"disk_manager"` config section for this cluster: the dev-cluster
    /// script as its daemon commands (`create`: "osd-new" for raw bluestore, "volume-create"
    /// for ceph-volume), trusting the keys in `trustedKeys`.
    func diskManagerConfig(trustedKeys: String, create: String = "osd-new", safeToDestroySeconds: Int = 180, upSeconds: Int = 120,
                           commandSeconds: Int = 180, pollMs: Int = 500) -> String {
        let script = Self.script
        let idFlag = create == "osd-new" ? "" : "\"--osd-id\", "
        return """
            "disk_manager": {"trusted_keys_file": "\(trustedKeys)", "max_disks_out": 1,
              "ceph": {"config_file": "\(conf)", "poll_interval_ms": \(pollMs), "safe_to_destroy_stall_seconds": \(safeToDestroySeconds),
                       "up_timeout_seconds": \(upSeconds), "command_timeout_seconds": \(commandSeconds), "wipe_after_destroy": true,
                       "stop_command": ["/bin/bash", "\(script)", "osd-stop", "\(directory)", "{id}"],
                       "start_command": ["/bin/bash", "\(script)", "osd-start", "\(directory)", "{id}", "--wait", "60"],
                       "create_with_id_command": ["/bin/bash", "\(script)", "\(create)", "\(directory)", \(idFlag)"{id}", "--device", "{device}"],
                       "create_command": ["/bin/bash", "\(script)", "\(create)", "\(directory)", "--device", "{device}"]}}
            """
    }

    func waitHealthy(seconds: Int) throws {
        try Self.script(["wait-healthy", directory, String(seconds)], log: log, timeout: seconds + 30)
    }

    /// Runs the `rados` tool against this cluster.
    func rados(_ arguments: [String], log commandLog: String) throws {
        try Self.run("/usr/bin/rados", ["-c", conf, "--client-mount-timeout", "15", "--rados-osd-op-timeout", "30"] + arguments, log: commandLog)
    }
}

/// A size-3 pool with 20 objects of random bytes, written with the `rados` tool, to read
/// back after every change to the cluster.
struct TestObjects {
    let cluster: DevCluster
    let pool = "bynar"
    let directory: String
    let log: String
    private(set) var originals: [String: Data] = [:]

    /// Creates the pool, waits until the cluster is healthy, writes the objects.
    init(cluster: DevCluster, rados: RadosCluster, directory: String, log: String, healthySeconds: Int) throws {
        self.cluster = cluster
        self.directory = directory
        self.log = log
        try rados.checkedMonCommand(#"{"prefix":"osd pool create","pool":"\#(pool)","pg_num":32,"pgp_num":32,"pool_type":"replicated"}"#)
        try rados.checkedMonCommand(#"{"prefix":"osd pool set","pool":"\#(pool)","var":"size","val":"3"}"#)
        try rados.checkedMonCommand(#"{"prefix":"osd pool application enable","pool":"\#(pool)","app":"rados"}"#)
        try cluster.waitHealthy(seconds: healthySeconds)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for i in 1...20 {
            let bytes = Data((0..<(4096 * i + i)).map { _ in UInt8.random(in: 0...255) })
            let path = "\(directory)/obj-\(i)"
            try bytes.write(to: URL(fileURLWithPath: path))
            try cluster.rados(["-p", pool, "put", "obj-\(i)", path], log: log)
            originals["obj-\(i)"] = bytes
        }
    }

    /// How many objects read back identical to what was written.
    func identical() throws -> Int {
        var same = 0
        for (name, bytes) in originals {
            let path = "\(directory)/\(name).read"
            unlink(path)
            try cluster.rados(["-p", pool, "get", name, path], log: log)
            if (try? Data(contentsOf: URL(fileURLWithPath: path))) == bytes { same += 1 }
        }
        return same
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func seconds(since start: ContinuousClock.Instant) -> String {
    let elapsed = ContinuousClock.now - start
    return String(format: "%.1f s", Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
}

@Suite(.serialized)
struct CephBackendTests {
    /// One cluster for the whole story: refusal, checks before out, simulate, remove, re-add.
    @Test(.enabled(if: cephAvailable, "needs root and Ceph (ceph-mon, ceph-osd) installed: scripts/ceph-dev-cluster starts a real cluster"), .timeLimit(.minutes(10)))
    func removeAndReaddOSDOnARealCluster() throws {
        let temp = try makeTemporaryDirectory(prefix: "bynar-ceph")
        // Logs stay in `temp` when the test fails.
        var finished = false
        defer { if finished { try? FileManager.default.removeItem(atPath: temp) } }
        var started = ContinuousClock.now
        let cluster = try DevCluster(parent: temp, osds: 4)
        defer { cluster.stop() }
        print("ceph: cluster start (4 OSDs, memstore) until healthy: \(seconds(since: started))")

        let rados = try RadosCluster(configPath: cluster.conf, timeout: .seconds(15))
        let ceph = CephBackend(cluster: rados, pollInterval: .milliseconds(500))
        func waitHealthy() throws { try cluster.waitHealthy(seconds: 120) }
        func state(_ id: Int) throws -> OSDState { try ceph.osdState(id) }
        let upIn = OSDState(exists: true, up: true, in: true, destroyed: false)
        let control = CommandDaemonControl(
            stop: ["/bin/bash", DevCluster.script, "osd-stop", cluster.directory, "{id}"],
            start: ["/bin/bash", DevCluster.script, "osd-start", cluster.directory, "{id}", "--wait", "60"],
            create: ["/bin/bash", DevCluster.script, "osd-new", cluster.directory],
            createWithID: ["/bin/bash", DevCluster.script, "osd-new", cluster.directory, "{id}"],
            timeout: .seconds(120)
        )

        // A size-3 pool with 20 objects.
        let objects = try TestObjects(cluster: cluster, rados: rados, directory: "\(temp)/objects", log: "\(temp)/commands.log", healthySeconds: 120)
        func readBack(_ tag: String) throws {
            let same = try objects.identical()
            #expect(same == objects.originals.count, "read back \(tag): \(same) of \(objects.originals.count) identical")
        }
        try readBack("after write")

        // Refusal: with osd.3 already down, stopping osd.2 would leave some PGs below
        // min_size. remove must refuse and change nothing.
        try control.stop(3)
        #expect(try ceph.waitUntil(timeout: .seconds(30)) { try !state(3).up }, "osd.3 never went down")
        let before = try state(2)
        #expect(before == upIn)
        let refusedCheck = try ceph.okToStop(2)
        #expect(!refusedCheck.ok, "ok-to-stop osd.2 with osd.3 down: \(refusedCheck.detail)")
        do {
            let steps = try ceph.remove(osd: 2, stopDaemon: { try control.stop(2) }, simulate: false, safeToDestroyTimeout: .seconds(30))
            Issue.record("remove of osd.2 with osd.3 down was not refused: \(steps)")
        } catch let refusal as CephRefusal {
            print("ceph: refused as expected: \(refusal)")
            #expect(refusal.osd == 2)
        }
        #expect(try state(2) == before, "a refused remove changed osd.2")
        try control.start(3)
        #expect(try state(3) == upIn)
        try waitHealthy()

        // Before out: ok to stop, but not safe to destroy. safe-to-destroy answers 0 with
        // JSON even then; the backend must read the list.
        let id = 0
        let stop = try ceph.okToStop(id)
        #expect(stop.ok, "ok-to-stop osd.0 on a healthy cluster: \(stop.detail)")
        let raw = rados.monCommand(#"{"prefix":"osd safe-to-destroy","ids":["0"],"format":"json"}"#)
        #expect(raw.status == 0, "the trap: status \(raw.status) \(raw.statusText)")
        #expect(raw.outputText.contains("\"safe_to_destroy\":[]"), "raw reply: \(raw.outputText)")
        let destroyable = try ceph.safeToDestroy(id)
        #expect(!destroyable.safe, "osd.0 in and holding data must not be safe to destroy: \(destroyable.detail)")
        #expect(destroyable.detail.contains("active=[0]") || destroyable.detail.contains("stored_pgs=[0]"), "\(destroyable.detail)")

        // Simulate: lists the steps, changes nothing.
        let simulated = try ceph.remove(osd: id, stopDaemon: { Issue.record("simulate stopped the daemon") }, simulate: true, safeToDestroyTimeout: .seconds(60))
        print("ceph: simulated remove: \(simulated)")
        #expect(simulated.count == 5)
        #expect(simulated.contains("mark osd.0 out"))
        #expect(try state(id) == upIn, "simulate changed osd.0")
        #expect(try !ceph.safeToDestroy(id).safe)

        // Remove for real.
        started = ContinuousClock.now
        // What Remove's drain wait follows: the PGs on the OSD, read from the real cluster.
        let drain = try ceph.drainState(id)
        #expect(drain.pgs > 0 && drain.objectsToMove == 0, "a healthy OSD holds PGs, nothing to move yet: \(drain)")
        var news: [String] = []
        let steps = try ceph.remove(osd: id, stopDaemon: { try control.stop(id) }, simulate: false, safeToDestroyTimeout: .seconds(120),
                                    waiting: { news.append($0) })
        #expect(!news.isEmpty && news[0].contains("PGs still on it"), "the drain was followed: \(news)")
        print("ceph: remove osd.0: \(seconds(since: started)): \(steps)")
        #expect(steps.last == "destroy osd.0 (id and CRUSH position kept)")
        let destroyed = try state(id)
        #expect(destroyed == OSDState(exists: true, up: false, in: false, destroyed: true), "\(destroyed)")
        let tree = try rados.checkedMonCommand(#"{"prefix":"osd tree","format":"json"}"#).outputText
        #expect(tree.contains(#""id":0,"device_class""#) || tree.contains(#""id":0,"#), "osd tree lost id 0: \(tree)")
        #expect(tree.contains(#""status":"destroyed""#), "osd tree: \(tree)")
        try readBack("after remove")

        // A second remove of a destroyed OSD is refused.
        #expect(throws: CephRefusal.self) { try ceph.remove(osd: id, stopDaemon: {}, simulate: true, safeToDestroyTimeout: .seconds(1)) }

        // Re-add with the same id.
        started = ContinuousClock.now
        let readded = try ceph.readd(osd: id, startDaemon: { try control.create(id, device: nil) }, timeout: .seconds(120))
        print("ceph: re-add osd.0 until up+in: \(seconds(since: started)): \(readded)")
        #expect(try state(id) == upIn)
        try waitHealthy()
        print("ceph: re-add osd.0 until healthy: \(seconds(since: started))")
        #expect(try ceph.health() == "HEALTH_OK")
        try readBack("after re-add")

        // Failures after `out` name the step and leave the OSD out (never out-in-out churn):
        // safe-to-destroy cannot hold with no time to drain; then, retried, a daemon that will
        // not stop (already out: not marked out again, nothing said about putting it back).
        let outUp = OSDState(exists: true, up: true, in: false, destroyed: false)
        for (round, (timeout, failingStep)) in [(Duration.zero, "wait until osd.1 is safe to destroy"), (.seconds(120), "stop the daemon of osd.1")].enumerated() {
            do {
                let steps = try ceph.remove(osd: 1, stopDaemon: { throw TestFailure("systemctl says no") }, simulate: false, safeToDestroyTimeout: timeout)
                Issue.record("remove of osd.1 did not fail: \(steps)")
            } catch let failure as CephStepFailure {
                print("ceph: failed as expected: \(failure)")
                #expect(failure.step == failingStep)
                #expect(failure.done.contains("mark osd.1 out") == (round == 0), "\(failure.done)")
                #expect(round == 0 ? failure.rollback?.contains("osd.1 left out") == true : failure.rollback == nil, "\(String(describing: failure.rollback))")
            }
            #expect(try state(1) == outUp, "osd.1 after a failed remove: still out")
        }
        // The operator judges the disk sound and puts it back.
        try ceph.markIn(1)
        try waitHealthy()
        #expect(try ceph.health() == "HEALTH_OK")

        // Re-adding an OSD that is not destroyed is refused.
        #expect(throws: CephRefusal.self) { try ceph.readd(osd: 1, startDaemon: { Issue.record("readd started a daemon") }, timeout: .seconds(1)) }
        finished = true
    }

    /// Without a monitor, connecting gives up after the timeout instead of librados' 300 s.
    @Test(.timeLimit(.minutes(1)))
    func connectWithoutAMonitorFailsWithinTheTimeout() throws {
        let temp = try makeTemporaryDirectory(prefix: "bynar-rados")
        defer { try? FileManager.default.removeItem(atPath: temp) }
        let conf = "\(temp)/ceph.conf"
        try "[global]\nmon_host = 127.0.0.1:9\nauth_client_required = none\nauth_cluster_required = none\nauth_service_required = none\n"
            .write(toFile: conf, atomically: true, encoding: .utf8)
        let started = ContinuousClock.now
        #expect(throws: RadosError.self) { _ = try RadosCluster(configPath: conf, timeout: .seconds(2)) }
        #expect(ContinuousClock.now - started < .seconds(15), "connect took \(seconds(since: started))")
        #expect(throws: RadosError.self) { _ = try RadosCluster(configPath: "\(temp)/missing.conf", timeout: .seconds(2)) }
    }

    @Test func commandDaemonControlReportsFailures() throws {
        try CommandDaemonControl.run(["true"], timeout: .seconds(5))
        #expect(throws: DaemonCommandError.self) { try CommandDaemonControl.run(["false"], timeout: .seconds(5)) }
        #expect(throws: DaemonCommandError.self) { try CommandDaemonControl.run(["sleep", "5"], timeout: .milliseconds(200)) }
        #expect(throws: DaemonCommandError.self) { try CommandDaemonControl.run(["/nonexistent/bynar"], timeout: .seconds(1)) }
    }
}
