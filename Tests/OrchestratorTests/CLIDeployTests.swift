import BynarBus
import BynarTestSupport
import Foundation
import Orchestrator
import Testing

/// `bynar deploy osds` as an operator runs it, against a real broker and simulated
/// disk-managers (``DiskManagerSimulator``, in this test process).
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct CLIDeployTests {
    @Test func deploysPrintsTheTableAndJSONAndExitsOneWhenSomethingFailed() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        let names = DiskManagerSimulator.hostNames(prefix: "rack1-", count: 10)
        let (simulator, simulatorBus) = try await fixture.simulator(hosts: names, disksPerHost: 3, jobDuration: .milliseconds(200))
        defer { simulator.stop(); Task { await simulatorBus.shutdown(); broker.stop(); fixture.cleanUp() } }
        let hosts = try fixture.file("hosts", ["# rack 1"] + names + ["", "   # done"])

        // Only sdb and sdc (not sdd), by glob.
        let run = try await fixture.run(["deploy", "osds", "--hosts", hosts, "--devices", "/dev/sd[bc]", "--key", fixture.keyPath] + fixture.connection)
        #expect(run.exitCode == 0, "\(run.stderr)")
        let lines = run.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("HOST") == true)
        #expect(lines.filter { $0.hasPrefix("rack1-") && $0.contains(" succeeded ") }.count == 20, "\(run.stdout)")
        #expect(lines.last?.hasPrefix("10 hosts: 20 succeeded in ") == true, "\(run.stdout)")
        #expect(!run.stdout.contains("/dev/sdd"))
        #expect(run.stderr.contains("20/20 disks"), "final progress line: \(run.stderr)")

        // The rest, by inventory, with one host failing and one disk named that is not there.
        simulator.failJobs(host: "rack1-004")
        let inventory = try fixture.file("inventory", names.map { "\($0) /dev/sdd" } + ["rack1-001 /dev/sdq"])
        let json = try await fixture.run(["deploy", "osds", "--inventory", inventory, "--json", "--key", fixture.keyPath] + fixture.connection)
        #expect(json.exitCode == 1, "\(json.stderr)")
        let report = try #require(jsonObject(json.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        let rows = try #require(report["rows"] as? [[String: Any]])
        #expect(rows.filter { $0["result"] as? String == "succeeded" }.count == 9)
        #expect(rows.contains { $0["host"] as? String == "rack1-004" && $0["result"] as? String == "failed" && $0["failed_step"] as? String == "ceph-volume lvm create" })
        #expect(rows.contains { $0["host"] as? String == "rack1-001" && $0["disk"] as? String == "/dev/sdq" && ($0["reason"] as? String)?.contains("no disk on the host matches") == true })
        #expect((report["round_trips"] as? [String: Any])?["samples"] as? Int ?? 0 >= 20)
    }

    @Test func aKilledRunResumedFromItsJournalDeploysNothingTwice() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        let names = DiskManagerSimulator.hostNames(prefix: "n", count: 20)
        let (simulator, simulatorBus) = try await fixture.simulator(hosts: names, disksPerHost: 5, jobDuration: .seconds(2))
        defer { simulator.stop(); Task { await simulatorBus.shutdown(); broker.stop(); fixture.cleanUp() } }
        let hosts = try fixture.file("hosts", names)
        let journal = fixture.directory + "/deploy.jsonl"
        let arguments = ["deploy", "osds", "--hosts", hosts, "--devices", "*", "--journal", journal, "--concurrency", "8",
                         "--key", fixture.keyPath] + fixture.connection
        let (first, _, _) = try fixture.start(arguments)
        // kill -9 once some jobs were accepted.
        let accepted = await Collector<Int>.poll(timeout: .seconds(30)) {
            ((try? String(contentsOfFile: journal, encoding: .utf8)) ?? "").components(separatedBy: "\"kind\":\"accepted\"").count > 15
        }
        #expect(accepted)
        first.stop(SIGKILL)
        let startedBeforeResume = simulator.jobsStartedByDisk.count
        #expect(startedBeforeResume > 0 && startedBeforeResume < 100)

        let resumed = try await fixture.run(arguments + ["--json"])
        #expect(resumed.exitCode == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("resuming run deploy-"))
        let report = try #require(jsonObject(resumed.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        let rows = try #require(report["rows"] as? [[String: Any]])
        #expect(report["resumed"] as? Bool == true)
        #expect(rows.count == 100)
        #expect(rows.allSatisfy { ["succeeded", "done-earlier"].contains($0["result"] as? String) })
        #expect(simulator.jobsStartedByDisk.count == 100)
        #expect(simulator.jobsStartedByDisk.values.allSatisfy { $0 == 1 }, "a disk was deployed twice: \(simulator.jobsStartedByDisk.filter { $0.value > 1 })")
    }

    @Test func badInputIsNamed() async throws {
        let broker = try TestBroker()
        let fixture = try CLIFixture(broker: broker)
        defer { broker.stop(); fixture.cleanUp() }
        let bad = try fixture.file("hosts", ["h1", "h2 extra", "h3"])
        let run = try await fixture.run(["deploy", "osds", "--hosts", bad, "--devices", "*", "--key", fixture.keyPath] + fixture.connection)
        #expect(run.exitCode == 64)
        #expect(run.stderr.contains("\(bad) line 2: expected one host name, found 2 fields"), "\(run.stderr)")
        let duplicate = try fixture.file("dup", ["h1", "h1"])
        let again = try await fixture.run(["deploy", "osds", "--hosts", duplicate, "--devices", "*", "--key", fixture.keyPath] + fixture.connection)
        #expect(again.stderr.contains("line 2: host \"h1\" already on line 1"), "\(again.stderr)")
        let missing = try await fixture.run(["deploy", "osds", "--hosts", bad] + fixture.connection)
        #expect(missing.exitCode == 64)
        #expect(missing.stderr.contains("--hosts needs --devices PATTERN"), "\(missing.stderr)")
        let noFile = try await fixture.run(["deploy", "osds", "--inventory", fixture.directory + "/nope"] + fixture.connection)
        #expect(noFile.exitCode == 66)
        #expect(noFile.stderr.contains("cannot read \(fixture.directory)/nope"), "\(noFile.stderr)")
    }
}
