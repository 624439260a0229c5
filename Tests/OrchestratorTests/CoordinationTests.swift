import BynarBus
import BynarConfig
import BynarStore
import GRDB
import Logging
@testable import Orchestrator
import BynarProto
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Several real bynar-orchestrator processes coordinated through a REAL etcd cluster
/// (Debian's etcd-server, three members on loopback), on a real broker. The disk-manager
/// and ticketing are the STAND-INS of StandIns.swift; the disk-manager stand-in verifies
/// signatures with the real `CommandVerifier`, the same code (fencing included) the real
/// bynar-disk-manager runs.
@Suite(.serialized, .enabled(if: TestBroker.available && EtcdCluster.available, "needs mosquitto and etcd (etcd-server)"))
struct CoordinationTests {
    static let failed = DetectorVoice.identity(host: "stor1", key: "serial-OLD1")
    static let replacement = DetectorVoice.identity(host: "stor1", key: "serial-NEW1")
    static let second = DetectorVoice.identity(host: "stor2", key: "serial-OLD2")

    /// One orchestrator of the group, in its own directory (its own replica), as host
    /// "orch-NAME"; restarted like systemd would (Restart=on-failure).
    final class Member: @unchecked Sendable {
        let name: String
        let start: @Sendable () throws -> ServiceProcess
        private let lock = NSLock()
        private var current: ServiceProcess
        private var logs = ""

        init(_ name: String, start: @escaping @Sendable () throws -> ServiceProcess) throws {
            self.name = name
            self.start = start
            current = try start()
        }

        var process: ServiceProcess { lock.withLock { current } }
        /// Every run's log, this one last.
        var log: String { lock.withLock { logs } + process.log }
        var leads: Bool { process.process.isRunning && process.log.contains("leading the orchestrator group") }
        var standsBy: Bool { process.process.isRunning && process.log.contains("standing by") && !leads }

        /// Killed on purpose (as if its host died); a crash before it is a failure of its own.
        func kill() {
            process.expectNoCrash("orchestrator \(name)")
            _ = process.process.stop(SIGKILL)
        }

        func restart() throws {
            let old = process
            old.expectNoCrash("orchestrator \(name)")
            _ = old.process.stop(SIGKILL)
            let previous = old.log
            unlink(old.logPath)  // the next run logs to the same file
            let next = try start()
            lock.withLock {
                logs += previous + "\n---- restarted ----\n"
                current = next
            }
        }
    }

    func member(_ h: OrchestratorHarness, _ name: String, etcd: EtcdCluster, environment: [String: String] = [:], clientCertificate: Bool = true,
                extra: String = "") throws -> Member {
        let directory = h.directory + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let endpoints = etcd.endpoints.map { "\"\($0)\"" }.joined(separator: ", ")
        var tls = ""
        if let certificates = etcd.certificates {
            tls = ", \"ca_file\": \"\(certificates.caFile)\""
            if clientCertificate { tls += ", \"cert_file\": \"\(certificates.clientCertFile)\", \"key_file\": \"\(certificates.clientKeyFile)\"" }
        }
        let coordination = """
        "coordination": {"etcd": {"endpoints": [\(endpoints)], "prefix": "/bynar/test", "lease_ttl_seconds": 4, "request_timeout_seconds": 2, "snapshot_every": 10\(tls)}}
        """
        let config = h.config(coordination + (extra.isEmpty ? "" : ", " + extra), steps: "", requestTimeout: 5)
        let port = h.broker.port
        return try Member(name) {
            try ServiceProcess("bynar-orchestrator", brokerPort: port, host: "orch-\(name)", directory: directory, extraConfig: config, environment: environment)
        }
    }

    /// Waits until exactly one of `members` leads and the others stand by; returns the leader.
    func leader(of members: [Member], timeout: Duration = .seconds(30)) async throws -> Member {
        var found: Member?
        _ = await Collector<Int>.poll(timeout: timeout) {
            let leading = members.filter(\.leads)
            guard leading.count == 1, members.allSatisfy({ $0.leads || $0.standsBy }) else { return false }
            found = leading[0]
            return true
        }
        guard let found else {
            throw TestSupportError("no single leader; logs:\n" + members.map { "== \($0.name)\n\($0.log.suffix(3000))" }.joined(separator: "\n"))
        }
        return found
    }

    /// Kills the leader (SIGKILL), waits for another member to lead, and restarts the killed
    /// one (it stands by). Returns how long the takeover took.
    func killLeader(_ members: [Member], at step: String) async throws -> Duration {
        let old = try await leader(of: members)
        let killed = ContinuousClock.now
        old.kill()
        let others = members.filter { $0 !== old }
        guard await Collector<Int>.poll(timeout: .seconds(30), { others.contains(where: \.leads) }) else {
            throw TestSupportError("nobody took over after \(old.name) was killed at \(step); logs:\n" + others.map { $0.log.suffix(3000) }.joined(separator: "\n"))
        }
        let took = ContinuousClock.now - killed
        print("takeover after the leader (\(old.name)) was killed at \(step): \(took)")
        try old.restart()
        return took
    }

    @Test("kill -9 the leader at each step: a standby takes over within the lease and finishes; one incident, one ticket, one Remove, one Add (real etcd, stand-ins)")
    func killedLeaderAtEachStep() async throws {
        let etcd = try EtcdCluster(members: 3)
        defer { etcd.stopAll() }
        try await withHarness { h in
            h.dm.configure { $0.jobDuration = .seconds(2) }
            let a = try member(h, "a", etcd: etcd)
            _ = try await leader(of: [a])
            let b = try member(h, "b", etcd: etcd)
            let members = [a, b]
            _ = try await leader(of: members)
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            var takeovers: [Duration] = []
            // 1: while the Remove job runs.
            #expect(await Collector<Int>.poll(timeout: .seconds(15)) { !h.dm.seen("Remove").isEmpty })
            takeovers.append(try await killLeader(members, at: "Remove sent"))
            // 2: right after the ticket was asked for.
            #expect(await Collector<Int>.poll(timeout: .seconds(30)) { !h.tickets.requests.isEmpty })
            takeovers.append(try await killLeader(members, at: "ticket asked for"))
            let id = try await h.waitFor(.ticketed, timeout: .seconds(40))
            // 3: while ticketed.
            takeovers.append(try await killLeader(members, at: "ticketed"))
            await h.tickets.resolve(incident: id)
            try await h.detector.say(Self.replacement, from: .unspecified, to: .replaced, previous: Self.failed)
            // 4: while the Add job runs.
            #expect(await Collector<Int>.poll(timeout: .seconds(30)) { !h.dm.seen("Add").isEmpty })
            takeovers.append(try await killLeader(members, at: "Add sent"))
            try await h.waitFor(.resolved, timeout: .seconds(60))

            #expect(Set(h.latest.keys) == [id], "one incident across four leaders")
            let executed = h.dm.executions
            #expect(executed == ["\(id)/remove/1": 1, "\(id)/add/1": 1], "Remove and Add each acted once: \(executed)")
            #expect(h.tickets.ticketsOpened == 1)
            #expect(h.dm.rejected.isEmpty, "nothing refused: \(h.dm.rejected)")
            // Bounded: the lease (4 s) plus a standby's poll and catch-up.
            #expect(takeovers.allSatisfy { $0 < .seconds(10) }, "takeovers: \(takeovers)")
            print("takeovers (lease 4 s): \(takeovers.map { "\($0)" }.joined(separator: ", "))")
            for member in members { member.kill() }
        }
    }

    @Test("a standby that joins after the log was folded into a snapshot starts from the snapshot, takes over and finishes the repair (real etcd, stand-ins)")
    func lateStandbyStartsFromTheSnapshot() async throws {
        let etcd = try EtcdCluster(members: 3)
        defer { etcd.stopAll() }
        try await withHarness { h in
            let a = try member(h, "a", etcd: etcd)
            _ = try await leader(of: [a])
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            let id = try await h.waitFor(.ticketed, timeout: .seconds(30))
            // snapshot_every is 10 in these tests; a repair up to its ticket writes more.
            #expect(await Collector<Int>.poll(timeout: .seconds(20)) { a.log.contains("journal snapshot written") }, "a's log:\n\(a.log.suffix(3000))")
            let b = try member(h, "b", etcd: etcd)
            #expect(await Collector<Int>.poll(timeout: .seconds(20)) { b.standsBy && b.log.contains("replica restored from the journal snapshot") },
                    "b's log:\n\(b.log.suffix(3000))")
            a.kill()
            #expect(await Collector<Int>.poll(timeout: .seconds(20)) { b.leads })
            await h.tickets.resolve(incident: id)
            try await h.detector.say(Self.replacement, from: .unspecified, to: .replaced, previous: Self.failed)
            try await h.waitFor(.resolved, timeout: .seconds(40))
            #expect(Set(h.latest.keys) == [id])
            #expect(h.dm.executions == ["\(id)/remove/1": 1, "\(id)/add/1": 1], "\(h.dm.executions)")
            #expect(h.tickets.ticketsOpened == 1)
            b.kill()
        }
    }

    @Test("over TLS with client certificates: a member with the CA and its certificate leads and repairs; one without a certificate is refused by etcd and says so (real etcd, stand-ins)")
    func etcdOverTLS() async throws {
        let etcd = try EtcdCluster(members: 3, tls: true)
        defer { etcd.stopAll() }
        try await withHarness { h in
            let a = try member(h, "a", etcd: etcd)
            _ = try await leader(of: [a])
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            try await h.waitFor(.ticketed, timeout: .seconds(30))
            let b = try member(h, "b", etcd: etcd, clientCertificate: false)
            #expect(await Collector<Int>.poll(timeout: .seconds(15)) { b.log.contains("etcd does not answer") }, "b's log:\n\(b.log.suffix(3000))")
            #expect(!b.leads)
            print("without a client certificate: " + (b.log.split(separator: "\n").first { $0.contains("etcd does not answer") }.map(String.init) ?? ""))
            a.kill()
            b.kill()
        }
    }

    @Test("hooks and the brake are exactly-once across a takeover: each host event runs its hook once, and a new leader keeps the second disk queued behind the first (real etcd, stand-ins)")
    func hooksAndBrakeAcrossATakeover() async throws {
        let etcd = try EtcdCluster(members: 3)
        defer { etcd.stopAll() }
        try await withHarness { h in
            let log = h.directory + "/hook.log"
            let recorder = h.directory + "/record-hook"
            try "#!/bin/sh\necho \"$1 $2 $3 id=$BYNAR_EVENT_ID\" >> \(log)\n".write(toFile: recorder, atomically: true, encoding: .utf8)
            chmod(recorder, 0o755)
            func lines() -> [String] {
                ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init).filter { $0.contains("10.9.9.9") }
            }
            let extra = """
                "hosts": [{"host": "stor9", "address": "10.9.9.9"}], "hooks": [{"command": "\(recorder)"}],
                "brake": {"max_out_per_cluster": 1, "max_out_per_rack": 10, "max_out_per_host": 10, "removals_per_hour": 1000, "removal_burst": 10}
                """
            let a = try member(h, "a", etcd: etcd, extra: extra)
            _ = try await leader(of: [a])
            let b = try member(h, "b", etcd: etcd, extra: extra)
            let members = [a, b]
            _ = try await leader(of: members)
            // A service on stor9 is born: "detector up" and "host up", once each.
            let service = try await connectedBus(h.broker, service: "detector", host: "stor9", clientId: "detector-stor9", announce: true, session: 4)
            await service.markReady()
            #expect(await Collector<Int>.poll(timeout: .seconds(10)) { lines().count >= 2 })
            // Two failures in one cluster with room for one out: the second queues.
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            try await h.detector.say(Self.second, from: .failing, to: .failed)
            let first = try await h.waitFor(.ticketed, timeout: .seconds(30))
            _ = try await h.waitFor(.queued, timeout: .seconds(10))
            _ = try await killLeader(members, at: "one disk out, one queued")
            try await Task.sleep(for: .seconds(3))
            #expect(h.dm.seen("Remove").count == 1, "the new leader keeps the brake: still one Remove (\(h.dm.seen("Remove").map(\.diskKey)))")
            #expect(lines().count == 2, "no hook ran again after the takeover: \(lines())")
            // stor9 goes away: the new leader runs the downs, once each.
            await service.shutdown()
            #expect(await Collector<Int>.poll(timeout: .seconds(10)) { lines().count >= 4 })
            try await Task.sleep(for: .seconds(2))
            let seen = lines()
            #expect(seen.count == 4, "each event once across both leaders: \(seen)")
            #expect(Set(seen.map { $0.split(separator: " ").prefix(3).joined(separator: " ") })
                    == ["detector 10.9.9.9 up", "host 10.9.9.9 up", "detector 10.9.9.9 down", "host 10.9.9.9 down"])
            // The first repaired frees the brake for the second (either disk may have gone first).
            await h.tickets.resolve(incident: first)
            let (old, new) = first.hasPrefix("stor1.") ? (Self.failed, Self.replacement) : (Self.second, DetectorVoice.identity(host: "stor2", key: "serial-NEW2"))
            try await h.detector.say(new, from: .unspecified, to: .replaced, previous: old)
            // This once failed in about 1 run in 4 under load: the new leader's reply route was
            // never subscribed (its first subscriptions went out side by side and one was
            // taken for "not connected"), so no request of its term was answered
            // (BusTests.subscriptionsMadeSideBySideAreAllConfirmed).
            #expect(await Collector<Int>.poll(timeout: .seconds(40)) { h.dm.seen("Remove").count == 2 && h.dm.maxOut == 1 },
                   "second removed only after the first came back; max out \(h.dm.maxOut); \(h.latest.mapValues { "\($0.incident.state) \($0.message)" }); seen \(h.dm.seen.map { "\($0.operation) \($0.diskKey)" }); refused by the stand-in \(h.dm.rejected); answers the stand-in could not send \(h.dm.replyFailures); stand-in's bus \(h.dm.bus.stats); logs:\n\(members.map { "== \($0.name)\n\($0.log.suffix(6000))" }.joined(separator: "\n"))")
            for member in members { member.kill() }
        }
    }

    @Test("a transaction larger than one etcd request goes to etcd in parts, and a replica rebuilds it byte for byte (real etcd)")
    func largeTransactionGoesInParts() async throws {
        let etcd = try EtcdCluster(members: 1)
        defer { etcd.stopAll() }
        let directory = try makeTemporaryDirectory(prefix: "bynar-parts")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var config = OrchestratorConfig.EtcdConfig(endpoints: etcd.endpoints)
        config.prefix = "/bynar/parts-test"
        let logger = Logger(label: "test")
        let leader = try EtcdCoordination(config: config, host: "a", logger: logger)
        let term = try #require(try await leader.lead(storePath: directory + "/a.sqlite", migrations: OrchestratorService.migrations))
        let store = try LocalStore(path: directory + "/a.sqlite", migrations: OrchestratorService.migrations + term.localMigrations, replicator: term.replicator)
        // 2.6 MB in one transaction (etcd takes 1.5 MiB per request).
        let big = (0..<3).map { index in String(repeating: Character(UnicodeScalar(UInt8(65 + index))), count: 900_000) }
        try store.write { db in
            for (index, value) in big.enumerated() {
                try db.execute(sql: "INSERT INTO setting(key, value) VALUES(?, ?)", arguments: ["big\(index)", value])
            }
        }
        try store.write { db in try db.execute(sql: "INSERT INTO setting(key, value) VALUES('small', 'after')") }
        let follower = try EtcdCoordination(config: config, host: "b", logger: logger)
        let replica = try LocalStore(path: directory + "/b.sqlite", migrations: OrchestratorService.migrations + term.localMigrations)
        let position = try await follower.catchUp(replica)
        let leaderPosition = try await store.database.read { try EtcdCoordination.position($0)?.seq }
        #expect(position == leaderPosition)
        let rows = try await replica.database.read { try Row.fetchAll($0, sql: "SELECT key, value FROM setting WHERE key LIKE 'big%' OR key = 'small' ORDER BY key") }
        #expect(rows.map { $0["key"] as String } == ["big0", "big1", "big2", "small"])
        #expect(rows.prefix(3).map { $0["value"] as String } == big)
        // The entry names its parts; the parts sit beside the log.
        let entries = try EtcdClient(config: config).range(config.prefix + "/log/", end: EtcdClient.prefixEnd(config.prefix + "/log/"))
        #expect(entries.kvs.contains { String(decoding: $0.valueBytes, as: UTF8.self) == "parts 3" })
    }

    @Test("SIGSTOP the leader with a signed Remove in hand; a standby takes over and removes; the old leader, woken, is fenced and steps down (real etcd, stand-ins)")
    func pausedLeaderIsFenced() async throws {
        let etcd = try EtcdCluster(members: 3)
        defer { etcd.stopAll() }
        try await withHarness { h in
            let a = try member(h, "a", etcd: etcd, environment: ["TEST_ORCHESTRATOR_STOP_BEFORE_SENDING": "Remove"])
            _ = try await leader(of: [a])
            let b = try member(h, "b", etcd: etcd)
            _ = try await leader(of: [a, b])
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            // a stops itself holding the signed Remove, before it goes out.
            #expect(await Collector<Int>.poll(timeout: .seconds(15)) { a.log.contains("bynar-stop-point Remove") })
            let stopped = ContinuousClock.now
            #expect(await Collector<Int>.poll(timeout: .seconds(20)) { b.leads }, "b takes over from the stopped a")
            print("takeover from a stopped leader: \(ContinuousClock.now - stopped)")
            let id = try #require(h.latest.keys.first)
            #expect(await Collector<Int>.poll(timeout: .seconds(20)) { h.dm.executions["\(id)/remove/1"] == 1 }, "b's Remove acted")
            // Wake a: its Remove goes out with the old epoch and is refused.
            a.process.process.signal(SIGCONT)
            #expect(await Collector<Int>.poll(timeout: .seconds(15)) { h.dm.rejected.contains { $0.contains("fenced") } },
                    "the old leader's Remove is fenced: \(h.dm.rejected); a's log:\n\(a.log.suffix(3000))")
            _ = a.process.process.waitForExit(timeout: .seconds(15))
            #expect(a.process.process.exitCode == 75, "the old leader stops (75: restart me, as a standby) once it finds its term over")
            #expect(a.log.contains("leadership term over"))
            #expect(h.dm.executions["\(id)/remove/1"] == 1, "nothing acted twice: \(h.dm.executions)")
            do { try await h.waitFor(.ticketed, timeout: .seconds(30)) } catch { throw TestSupportError("\(error)\nb's log:\n\(b.log.suffix(6000))") }
            #expect(h.tickets.ticketsOpened == 1)
            b.kill()
            a.kill()
        }
    }

    @Test("lose one etcd member: repairs go on; lose quorum: the leader stops and says why; quorum back: the work resumes, nothing lost (real etcd, stand-ins)")
    func quorumLostAndBack() async throws {
        let etcd = try EtcdCluster(members: 3)
        defer { etcd.stopAll() }
        try await withHarness { h in
            let a = try member(h, "a", etcd: etcd)
            _ = try await leader(of: [a])
            let b = try member(h, "b", etcd: etcd)
            let members = [a, b]
            _ = try await leader(of: members)
            // One member gone: a repair starts and reaches its ticket.
            etcd.stop(member: "m3")
            try await h.detector.say(Self.failed, from: .failing, to: .failed)
            let first = try await h.waitFor(.ticketed, timeout: .seconds(30))
            // Quorum gone: the leader cannot renew its lease or write; it stops, saying why.
            etcd.stop(member: "m2")
            let lost = ContinuousClock.now
            let old = try #require(members.first { $0.leads })
            _ = old.process.process.waitForExit(timeout: .seconds(20))
            #expect(old.process.process.exitCode == 75, "the leader exits (75: restart me) once it cannot reach a quorum")
            print("leader stopped \(ContinuousClock.now - lost) after quorum was lost")
            #expect(old.log.contains("leadership term over"))
            // Said while nobody leads: queued at the broker for the group's session.
            try await h.detector.say(Self.second, from: .failing, to: .failed)
            try await Task.sleep(for: .seconds(2))
            #expect(!members.contains { $0.leads })
            let standby = try #require(members.first { $0 !== old })
            #expect(await Collector<Int>.poll(timeout: .seconds(15)) { standby.log.contains("etcd does not answer") }, "the standby says why it waits")
            // Quorum back; systemd would restart the one that stopped.
            try etcd.start(member: "m2")
            try etcd.start(member: "m3")
            try old.restart()
            _ = try await leader(of: members, timeout: .seconds(40))
            #expect(await Collector<Int>.poll(timeout: .seconds(30)) { h.latest.count == 2 }, "the failure said during the outage opened its incident: \(h.latest.keys)")
            await h.tickets.resolve(incident: first)
            try await h.detector.say(Self.replacement, from: .unspecified, to: .replaced, previous: Self.failed)
            #expect(await Collector<Int>.poll(timeout: .seconds(40)) { h.latest[first]?.incident.state == .resolved })
            let executed = h.dm.executions
            #expect(executed["\(first)/remove/1"] == 1 && executed["\(first)/add/1"] == 1, "each acted once: \(executed)")
            #expect(await Collector<Int>.poll(timeout: .seconds(30)) { h.tickets.ticketsOpened == 2 }, "one ticket per incident: \(h.tickets.ticketsOpened)")
            try await Task.sleep(for: .seconds(1))
            #expect(h.tickets.ticketsOpened == 2)
            for member in members { member.kill() }
        }
    }
}
