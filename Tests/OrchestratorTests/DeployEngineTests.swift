import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Orchestrator
import Testing

/// The deploy engine against a real broker and 50 simulated disk-managers
/// (``DiskManagerSimulator``: the real protocol, signatures verified, nothing on this
/// machine changed).
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct DeployEngineTests {
    static let hosts = DiskManagerSimulator.hostNames(prefix: "node", count: 50)

    /// A broker, a simulator of `hosts` and an engine client with a trusted key.
    final class Rig: @unchecked Sendable {
        let broker: TestBroker
        let fixture: CLIFixture
        let simulator: DiskManagerSimulator
        let simulatorBus: Bus
        let bus: Bus
        let client: DiskManagerClient

        init(disksPerHost: Int = 4, jobDuration: Duration = .milliseconds(200)) async throws {
            broker = try TestBroker()
            fixture = try CLIFixture(broker: broker)
            (simulator, simulatorBus) = try await fixture.simulator(hosts: DeployEngineTests.hosts, disksPerHost: disksPerHost, jobDuration: jobDuration)
            bus = try await connectedBus(broker, service: "deployer", host: "operator")
            client = try DiskManagerClient(bus: bus, privateKeyFile: fixture.keyPath)
        }

        func engine(journal: DeployJournal, pattern: String = "/dev/sd*", configure: (inout DeployOptions) -> Void = { _ in }) throws -> DeployEngine {
            var options = DeployOptions()
            options.hostConcurrency = 16
            options.requestTimeout = .milliseconds(500)
            options.backoffBase = .milliseconds(100)
            options.pollInterval = .seconds(2)
            configure(&options)
            let plan = try DeployPlan(hostsFileText: DeployEngineTests.hosts.joined(separator: "\n"), devices: pattern)
            return DeployEngine(client: client, plan: plan, options: options, journal: journal)
        }

        func close() async {
            simulator.stop()
            await bus.shutdown()
            await simulatorBus.shutdown()
            broker.stop()
            fixture.cleanUp()
        }
    }

    @Test func deploysEveryBlankDiskOnFiftyHostsOnce() async throws {
        let rig = try await Rig()
        defer { Task { await rig.close() } }
        let journal = try DeployJournal(path: rig.fixture.directory + "/run.jsonl")
        let report = try await rig.engine(journal: journal).run()
        #expect(report.count(.succeeded) == 50 * 4, "\(report.table())")
        #expect(report.count(.failed) == 0)
        #expect(report.rows.count == 200)
        // Never the system disk (sda), every blank disk exactly once, OSD ids all distinct.
        #expect(!report.rows.contains { $0.devPath == "/dev/sda" })
        #expect(rig.simulator.jobsStartedByDisk.count == 200)
        #expect(rig.simulator.jobsStartedByDisk.values.allSatisfy { $0 == 1 })
        #expect(Set(report.rows.map(\.osdID)).count == 200)
        #expect(report.rows.allSatisfy { $0.requestID == "\(journal.runID)/\($0.host)/\($0.disk)" })
        // The disks are in service now.
        #expect(rig.simulator.disks(of: "node001").filter { $0.status == .inService }.count == 5)
        #expect(report.roundTrips.samples >= 250)

        // The same journal again: nothing is sent, everything is reported done earlier.
        let before = rig.simulator.requestsReceived
        let again = try await rig.engine(journal: try DeployJournal(path: rig.fixture.directory + "/run.jsonl")).run()
        #expect(again.count(.doneEarlier) == 200, "\(again.table())")
        #expect(again.resumed && again.runID == report.runID)
        #expect(rig.simulator.requestsReceived - before == 50, "only the 50 List requests")
        #expect(rig.simulator.jobsStartedByDisk.values.allSatisfy { $0 == 1 })
    }

    @Test func hostsThatDoNotAnswerAtFirstAreRetriedAndFailedJobsReported() async throws {
        let rig = try await Rig(disksPerHost: 2)
        defer { Task { await rig.close() } }
        // Three hosts' disk-managers miss the first requests (restarting): timeouts, retried.
        for host in ["node003", "node017", "node042"] { rig.simulator.dropRequests(host: host, count: 2) }
        // On one host every job fails; on another one disk does.
        rig.simulator.failJobs(host: "node010")
        let failingDisk = rig.simulator.disks(of: "node020")[1].disk.key
        rig.simulator.failJobs(host: "node020", disk: failingDisk)
        let path = rig.fixture.directory + "/run.jsonl"
        let engine = try rig.engine(journal: try DeployJournal(path: path))
        let report = try await engine.run()
        #expect(report.count(.succeeded) == 100 - 3, "\(report.table())")
        #expect(report.count(.failed) == 3)
        let failed = report.rows.filter { $0.result == .failed }
        #expect(Set(failed.map(\.host)) == ["node010", "node020"])
        #expect(failed.allSatisfy { $0.failedStep == "ceph-volume lvm create" && $0.reason.contains("simulated failure") })
        #expect(report.rows.filter { ["node003", "node017", "node042"].contains($0.host) }.allSatisfy { $0.result == .succeeded })
        #expect(engine.progress.retries >= 6, "two timed-out List requests on each of three hosts")
        let table = report.table()
        #expect(table.contains("97 succeeded, 3 failed"), "\(table)")
        // Failures are listed last in the table.
        let lines = table.split(separator: "\n")
        #expect(lines[lines.count - 2].contains("failed"))

        // Fixed: the same journal retries only the failed disks, under new request ids.
        rig.simulator.clearFailures()
        let again = try await rig.engine(journal: try DeployJournal(path: path)).run()
        #expect(again.count(.succeeded) == 3, "\(again.table())")
        #expect(again.count(.doneEarlier) == 97)
        #expect(again.rows.filter { $0.result == .succeeded }.allSatisfy { $0.requestID.hasSuffix("/again-1") })
        #expect(rig.simulator.jobsStartedByDisk.values.filter { $0 == 2 }.count == 3, "only the failed ones ran again")
        #expect(rig.simulator.jobsStartedByDisk.values.allSatisfy { $0 <= 2 })
    }

    @Test func aHostThatNeverAnswersFailsAfterItsRetries() async throws {
        let rig = try await Rig(disksPerHost: 1)
        defer { Task { await rig.close() } }
        rig.simulator.dropRequests(host: "node005", count: 1000)
        let report = try await rig.engine(journal: try DeployJournal(path: nil)) { $0.retries = 2 }.run()
        let row = try #require(report.rows.first { $0.host == "node005" })
        #expect(row.result == .failed && row.failedStep == "list" && row.retries == 2)
        #expect(row.reason.contains("timed out") && row.reason.contains("after 3 tries"), "\(row.reason)")
        #expect(report.count(.succeeded) == 49)
    }

    @Test func anInterruptedRunResumedFromItsJournalDeploysNothingTwice() async throws {
        let rig = try await Rig(disksPerHost: 4, jobDuration: .milliseconds(1500))
        defer { Task { await rig.close() } }
        let path = rig.fixture.directory + "/run.jsonl"
        let first = try DeployJournal(path: path)
        let engine = try rig.engine(journal: first) { $0.hostConcurrency = 10 }
        let run = Task { try await engine.run() }
        // Interrupt while jobs are running (some hosts not even listed yet).
        #expect(await Collector<Int>.poll(timeout: .seconds(20)) { engine.progress.running >= 20 })
        run.cancel()
        _ = try? await run.value
        let startedBefore = rig.simulator.jobsStartedByDisk.count
        #expect(startedBefore > 0 && startedBefore < 200)

        let resumed = try DeployJournal(path: path)
        #expect(resumed.resumed && resumed.runID == first.runID)
        let report = try await rig.engine(journal: resumed).run()
        #expect(report.count(.failed) == 0, "\(report.table())")
        #expect(report.count(.succeeded) + report.count(.doneEarlier) == 200)
        #expect(rig.simulator.jobsStartedByDisk.count == 200)
        #expect(rig.simulator.jobsStartedByDisk.values.allSatisfy { $0 == 1 }, "a disk was deployed twice")
    }

    @Test func simulateChangesNothing() async throws {
        let rig = try await Rig(disksPerHost: 2)
        defer { Task { await rig.close() } }
        let report = try await rig.engine(journal: try DeployJournal(path: nil)) { $0.simulate = true }.run()
        #expect(report.count(.simulated) == 100, "\(report.table())")
        #expect(report.rows.allSatisfy { $0.reason.contains("ceph-volume lvm create") })
        #expect(rig.simulator.jobsStartedByDisk.isEmpty)
    }
}
