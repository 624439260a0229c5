import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// Every service starts every time: 100 starts and clean stops of each against one real
/// broker with the production configuration (TLS, ACL, bound client ids), each start seen as a birth of the next session and each stop as a clean death.
/// (About 1 start in 9 of the disk-manager used to exit with "timed out waiting for
/// acknowledgement of subscribe": libmosquitto wrote the SUBSCRIBE before CONNECT.)
/// `TEST_START_STOP_RUNS` changes the count (not BYNAR_*: the services read those as config).
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct StartStopTests {
    static let runs = Int(ProcessInfo.processInfo.environment["TEST_START_STOP_RUNS"] ?? "") ?? 100

    @Test(arguments: ["bynar-disk-manager", "bynar-detector", "bynar-orchestrator", "bynar-ticketing", "bynar-notifier"])
    func everyStartSucceeds(executable: String) async throws {
        let service = executable.replacingOccurrences(of: "bynar-", with: "")
        // The production broker configuration: TLS makes a connect take long enough for the
        // old race to show.
        let production = try ProductionBroker(hosts: ["h1"])
        let storage = service == "detector" || service == "disk-manager"
        let identity = storage ? "\(service).h1" : service
        let port = storage ? production.broker.port : production.centralPort
        let directory = try makeTemporaryDirectory(prefix: "bynar-startstop")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let watcher = try await production.bus(service: "cli", host: "h1", identity: "admin.ops", clientId: "bynar-cli-h1-startstop")
        let statuses = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: service), as: Bynar_V1_ServiceStatus.self))
        var failures: [String] = []
        let clock = ContinuousClock()
        let started = clock.now
        for run in 1...Self.runs {
            let session = UInt64(run)
            let process = try ServiceProcess(executable, brokerPort: port, directory: directory, brokerExtra: production.brokerConfigJSON(identity: identity))
            let born = await statuses.wait(timeout: .seconds(20)) { $0.contains { $0.payload.state == .birth && $0.payload.session == session } }
            process.signal(SIGTERM)
            let exit = process.process.exitCode
            let died = await statuses.wait(timeout: .seconds(10)) {
                $0.contains { $0.payload.state == .death && $0.payload.session == session && $0.payload.deathCause == .cleanShutdown }
            }
            if !born || exit != 0 || !died {
                failures.append("start \(run): born \(born), exit \(exit.map(String.init) ?? "none"), clean death \(died); log tail: \(process.log.suffix(600))")
                if failures.count >= 3 { break }
            }
        }
        print("start-stop: \(executable) \(Self.runs) starts in \(clock.now - started), \(failures.count) failed")
        #expect(failures.isEmpty, "\(failures)")
        await watcher.shutdown()
    }
}
