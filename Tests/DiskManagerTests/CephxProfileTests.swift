import BynarCeph
import BynarConfig
import BynarDisks
import BynarTestSupport
import DiskManager
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The disk-manager's least-privilege cephx identity (`deploy/ceph/disk-manager-cephx`):
/// the backend does all its work with it on a real cluster, and what lies outside the
/// profile is refused with EACCES.
@Suite(.serialized)
struct CephxProfileTests {
    static let script = "\(packageRoot)/deploy/ceph/disk-manager-cephx"

    /// Runs the profile script; its exit status and what it wrote (stdout and stderr).
    static func profile(_ arguments: [String], log: String) throws -> (status: Int32, output: String) {
        unlink(log)
        let child = try ChildProcess("/bin/bash", [script] + arguments, outputPath: log)
        guard let status = child.waitForExit(timeout: .seconds(120)) else {
            child.stop(SIGKILL)
            throw TestFailure("\(script) \(arguments.joined(separator: " ")) timed out")
        }
        return ((status >> 8) & 0xff, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }

    @Test func theProfileIsPrintedOnceAndHostNamesAreChecked() throws {
        let temp = try makeTemporaryDirectory(prefix: "bynar-cephx")
        defer { try? FileManager.default.removeItem(atPath: temp) }
        let printed = try Self.profile(["stor1"], log: "\(temp)/out")
        #expect(printed.status == 0)
        #expect(printed.output.hasPrefix("ceph auth get-or-create client.bynar-disk-manager.stor1 mon 'allow service mon r, allow command \"osd dump\""), "\(printed.output)")
        #expect(printed.output.contains("mgr 'allow command \"osd destroy\"'"), "\(printed.output)")
        #expect(!printed.output.contains("allow *") && !printed.output.contains(" osd '"), "no wildcard, no osd cap: \(printed.output)")
        let caps = try Self.profile(["--caps"], log: "\(temp)/out")
        #expect(caps.output.split(separator: "\n").map { String($0.prefix(4)) } == ["mon ", "mgr "], "\(caps.output)")
        #expect(printed.output.contains(String(caps.output.split(separator: "\n")[0].dropFirst(4))), "one set of caps")
        for bad in ["-oProxyCommand=id", "h1;id", "h1 h2", "", "../h1"] {
            let refused = try Self.profile([bad], log: "\(temp)/out")
            #expect(refused.status != 0 && refused.output.contains("is not a host name"), "\"\(bad)\": \(refused)")
        }
    }

    /// The real backend as `client.bynar-disk-manager.h1`: List, SafeToRemove, Remove with
    /// destroy and wipe, Add of a new disk with the same id; then the commands it must not
    /// have: each answered EACCES.
    @Test(.enabled(if: cephAvailable, "needs root and Ceph: a real cluster"), .timeLimit(.minutes(15)))
    func theDiskManagerWorksWithItsLeastPrivilegeIdentity() throws {
        let t0 = ContinuousClock.now
        func say(_ text: String) { print("cephx: \(seconds(since: t0)) \(text)") }
        let temp = try makeTemporaryDirectory(prefix: "bynar-cephx")
        let log = "\(temp)/commands.log"
        let cluster = try DevCluster(parent: temp, osds: 4, store: "bluestore")
        var newDisk: LoopDisk?
        var passed = false
        defer {
            // The cluster first: `stop` gives the new disk its owner back (volume-create chowned it).
            cluster.stop()
            newDisk?.teardown()
            if passed { try? FileManager.default.removeItem(atPath: temp) } else { print("cephx: logs kept in \(temp)") }
        }
        say("cluster of 4 bluestore OSDs healthy")
        let admin = try RadosCluster(configPath: cluster.conf)
        let objects = try TestObjects(cluster: cluster, rados: admin, directory: "\(temp)/objects", log: log, healthySeconds: 180)

        // The identity, made by the profile script as an operator would (it runs `ceph` as
        // client.admin), and its keyring.
        let name = "client.bynar-disk-manager.h1"
        let keyring = "\(temp)/\(name).keyring"
        let created = try Self.profile(["h1", "--create", "-c", cluster.conf, "--keyring", keyring], log: "\(temp)/profile.log")
        #expect(created.status == 0, "\(created.output)")
        var info = stat()
        #expect(stat(keyring, &info) == 0 && info.st_mode & 0o777 == 0o600, "the keyring is 0600")
        let check = try Self.profile(["h1", "--check", "-c", cluster.conf], log: "\(temp)/profile.log")
        #expect(check.status == 0, "\(check.output)")
        let caps = try admin.checkedMonCommand(#"{"prefix":"auth get","entity":"\#(name)"}"#).outputText
        say("ceph auth get \(name):\n" + caps.split(separator: "\n").filter { $0.contains("caps") }.map { "cephx:     \($0.trimmingCharacters(in: .whitespaces))" }.joined(separator: "\n"))
        // Drift is found, and --update mends it.
        try admin.checkedMonCommand(#"{"prefix":"auth caps","entity":"\#(name)","caps":["mon","allow *","mgr","allow command \"osd destroy\""]}"#)
        let drifted = try Self.profile(["h1", "--check", "-c", cluster.conf], log: "\(temp)/profile.log")
        #expect(drifted.status == 1 && drifted.output.contains("differs from the profile"), "\(drifted)")
        #expect(try Self.profile(["h1", "--update", "-c", cluster.conf], log: "\(temp)/profile.log").status == 0)
        #expect(try Self.profile(["h1", "--check", "-c", cluster.conf], log: "\(temp)/profile.log").status == 0)
        // A second --create of the same identity with the same caps is no error.
        #expect(try Self.profile(["h1", "--create", "-c", cluster.conf, "--keyring", keyring], log: "\(temp)/profile.log").status == 0)

        // The disk-manager's configuration: the cluster's conf plus where this identity's
        // keyring is (production: /etc/ceph/ceph.<name>.keyring, found without a setting).
        let conf = "\(temp)/disk-manager.conf"
        try (String(contentsOfFile: cluster.conf, encoding: .utf8) + "\n[\(name)]\n    keyring = \(keyring)\n").write(toFile: conf, atomically: true, encoding: .utf8)
        var config = CephBackendConfig()
        config.configFile = conf
        config.clientName = name
        config.pollIntervalMs = 500
        config.safeToDestroyTimeoutSeconds = 180
        config.upTimeoutSeconds = 180
        config.stopCommand = ["/bin/bash", DevCluster.script, "osd-stop", cluster.directory, "{id}"]
        config.startCommand = ["/bin/bash", DevCluster.script, "osd-start", cluster.directory, "{id}", "--wait", "60"]
        config.createCommand = ["/bin/bash", DevCluster.script, "volume-create", cluster.directory, "--device", "{device}"]
        config.createWithIdCommand = ["/bin/bash", DevCluster.script, "volume-create", cluster.directory, "--osd-id", "{id}", "--device", "{device}"]
        let backend = try CephDiskBackend(config: config, machineHostname: CephSharedDeviceTests.hostname())
        let limited = backend.ceph.cluster

        // List.
        var started = ContinuousClock.now
        let devices = try Inventory.scan(host: "h1", excluded: [])
        let claims = try backend.claims(devices)
        let osdDisks = Dictionary(devices.compactMap { device in claims[device.identity.key].flatMap { Int($0.id) }.map { ($0, device) } }, uniquingKeysWith: { first, _ in first })
        say("List as \(name): " + osdDisks.sorted { $0.key < $1.key }.map { "\($0.value.identity.devPath)=osd.\($0.key)" }.joined(separator: " ") + " (\(seconds(since: started)))")
        #expect(Set(osdDisks.keys) == [0, 1, 2, 3])
        let disk = try #require(osdDisks[0])
        let claim = try #require(claims[disk.identity.key])

        // SafeToRemove, Remove (ok-to-stop, out, safe-to-destroy, stop, destroy, wipe).
        let answer = try backend.safeToRemove(disk, claim: claim)
        say("SafeToRemove \(disk.identity.devPath): safe=\(answer.safe), \(answer.detail) [\(answer.clusterHealth)]")
        #expect(answer.safe && answer.clusterHealth == "HEALTH_OK", "\(answer)")
        started = ContinuousClock.now
        let removed = try backend.remove(disk, claim: claim, simulate: false, job: .direct)
        say("Remove \(disk.identity.devPath) as \(name) (\(seconds(since: started))): \(removed.steps.joined(separator: "; "))")
        #expect(removed.backendID == "0")
        #expect(removed.steps.contains("destroy osd.0 (id and CRUSH position kept)"))
        #expect(removed.steps.contains("wipe the labels of \(disk.identity.devPath)"))
        let destroyed = try backend.ceph.osdState(0)
        #expect(destroyed.exists && destroyed.destroyed, "\(destroyed)")

        // Add: a new blank disk takes id 0 back (ceph-volume runs as client.bootstrap-osd).
        newDisk = try LoopDisk(directory: temp, name: "new-osd0", sizeMB: 4096)
        let blank = try #require(try Inventory.scan(host: "h1", excluded: []).first { $0.identity.devPath == newDisk?.device }, "the new disk in the inventory")
        started = ContinuousClock.now
        let added = try backend.add(blank, reuseID: "0", simulate: false, job: .direct)
        say("Add \(blank.identity.devPath) as osd.0 (\(seconds(since: started))): \(added.steps.joined(separator: "; "))")
        let back = try backend.ceph.osdState(0)
        #expect(back.up && back.in && !back.destroyed, "\(back)")
        try cluster.waitHealthy(seconds: 240)
        #expect(try backend.ceph.health() == "HEALTH_OK")
        #expect(try objects.identical() == 20)
        say("HEALTH_OK, 20 of 20 objects read back identical")

        // Ceph saw these commands from this identity, not from client.admin.
        let audit = try FileManager.default.contentsOfDirectory(atPath: "\(cluster.directory)/log").filter { $0.hasSuffix(".log") }
            .map { (try? String(contentsOfFile: "\(cluster.directory)/log/\($0)", encoding: .utf8)) ?? "" }.joined(separator: "\n")
            .split(separator: "\n").filter { $0.contains("entity='\(name)'") }
        for prefix in ["osd ok-to-stop", "osd out", "osd safe-to-destroy", "osd destroy"] {
            #expect(audit.contains { $0.replacing("\": \"", with: "\":\"").contains("\"prefix\":\"\(prefix)\"") }, "the audit log has \(prefix) from \(name)")
        }
        say("audit log: \(audit.count) lines from \(name), e.g. \(audit.first { $0.contains("osd destroy") }.map { String($0.suffix(160)) } ?? "-")")

        // Outside the profile: refused with EACCES, for the mon and for the mgr.
        let outside: [(String, String, Bool)] = [
            ("osd pool delete", #"{"prefix":"osd pool delete","pool":"bynar","pool2":"bynar","yes_i_really_really_mean_it":true}"#, false),
            ("auth get client.admin", #"{"prefix":"auth get","entity":"client.admin"}"#, false),
            ("config-key ls", #"{"prefix":"config-key ls"}"#, false),
            ("osd crush rm osd.1", #"{"prefix":"osd crush rm","name":"osd.1"}"#, false),
            ("osd pool create", #"{"prefix":"osd pool create","pool":"evil","pg_num":8}"#, false),
            ("osd purge 1 (mgr)", #"{"prefix":"osd purge","id":1,"yes_i_really_mean_it":true}"#, true),
            ("osd destroy via the mon", #"{"prefix":"osd destroy-actual","id":1,"yes_i_really_mean_it":true}"#, false),
        ]
        for (what, json, mgr) in outside {
            let reply = mgr ? limited.mgrCommand(json) : limited.monCommand(json)
            say("as \(name): \(what): \(reply.status) \(reply.statusText.prefix(90))")
            #expect(reply.status == -EACCES, "\(what): \(reply.status) \(reply.statusText)")
        }
        #expect(try admin.checkedMonCommand(#"{"prefix":"osd pool ls","format":"json"}"#).outputText.contains("\"bynar\""), "the pool is still there")
        #expect(try backend.ceph.osdState(1) == OSDState(exists: true, up: true, in: true, destroyed: false))
        // No osd cap: it cannot read objects either.
        let read = try ChildProcess("/usr/bin/rados", ["-c", conf, "-n", name, "--client-mount-timeout", "15", "--rados-osd-op-timeout", "15", "-p", "bynar", "get", "obj-1", "\(temp)/stolen"], outputPath: "\(temp)/rados-get.log")
        let readStatus = read.waitForExit(timeout: .seconds(60))
        let readOutput = (try? String(contentsOfFile: "\(temp)/rados-get.log", encoding: .utf8)) ?? ""
        say("as \(name): rados get obj-1: exit \(String(describing: readStatus.map { ($0 >> 8) & 0xff })): \(readOutput.split(separator: "\n").last ?? "")")
        #expect(readStatus != nil && readStatus != 0, "rados get as \(name) must fail: \(readOutput)")
        #expect(access("\(temp)/stolen", F_OK) != 0 || ((try? Data(contentsOf: URL(fileURLWithPath: "\(temp)/stolen")))?.isEmpty ?? true))
        passed = true
    }
}
