import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The real service executables against a real broker.
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct ServiceProcessTests {
    @Test(arguments: ["bynar-detector", "bynar-disk-manager", "bynar-ticketing", "bynar-notifier", "bynar-orchestrator"])
    func killedServiceLeavesRetainedDeathAndCleanStopSaysSo(executable: String) async throws {
        let service = executable.replacingOccurrences(of: "bynar-", with: "")
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-svc")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let watcher = try await connectedBus(broker, service: "watcher")
        let statuses = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: service), as: Bynar_V1_ServiceStatus.self))

        // Start, then kill -9: the broker publishes the will, a retained death of the same session.
        let first = try ServiceProcess(executable, brokerPort: broker.port, directory: directory)
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } })
        let birth = try #require(statuses.all.first { $0.payload.state == .birth }).payload
        #expect(birth.session == 1)
        #expect(birth.pid == UInt32(first.process.pid))
        first.signal(SIGKILL)
        #expect(await statuses.wait(timeout: .seconds(10)) { $0.contains { $0.payload.state == .death } })
        let death = try #require(statuses.all.first { $0.payload.state == .death }).payload
        #expect(death.session == birth.session)
        #expect(death.deathCause == .connectionLost)

        // A late subscriber sees the retained death.
        let late = Collector(try await watcher.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
        #expect(await late.wait(timeout: .seconds(5)) { $0.contains { $0.retained && $0.payload.state == .death && $0.payload.session == 1 } })

        // Restart: session 2; SIGTERM: a clean, retained death of session 2.
        let second = try ServiceProcess(executable, brokerPort: broker.port, directory: directory)
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth && $0.payload.session == 2 } })
        second.signal(SIGTERM)
        #expect(second.process.exitCode == 0)
        #expect(await statuses.wait(timeout: .seconds(10)) { $0.contains { $0.payload.state == .death && $0.payload.session == 2 } })
        let clean = try #require(statuses.all.last).payload
        #expect(clean.state == .death && clean.session == 2 && clean.deathCause == .cleanShutdown)
        // The clean disconnect discarded the will: nothing after the clean death.
        try await Task.sleep(for: .milliseconds(500))
        #expect(statuses.all.last?.payload.deathCause == .cleanShutdown)
        await watcher.shutdown()
    }

    @Test func badConfigExitsWithTheField() async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-svc")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try #"{"broker": {"port": 70000}}"#.write(toFile: directory + "/bynar.json", atomically: true, encoding: .utf8)
        let process = try ChildProcess(builtExecutable("bynar-detector"), ["--config", directory + "/bynar.json"], outputPath: directory + "/out.log")
        _ = process.waitForExit(timeout: .seconds(10))
        let message = (try? String(contentsOfFile: directory + "/out.log", encoding: .utf8)) ?? ""
        #expect(process.exitCode == 78)
        #expect(message.contains("broker.port: must be 1-65535, got 70000"), "\(message)")
    }

    @Test func diskManagerRefusesUnsignedCommandsAndSurvivesGarbage() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-svc")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let watcher = try await connectedBus(broker, service: "watcher")
        let statuses = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        let manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: directory)
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } })
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = "r-1"
        request.host = "h1"
        request.list = .init()
        let refused = try await watcher.request(request, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(5))
        #expect(refused.payload.outcome == .refused)
        #expect(refused.payload.reason.hasPrefix("not authorised"), "\(refused.payload.reason)")
        // Garbage on its command topic: the requester gets a MALFORMED error, the service lives on.
        try await watcher.publish(serialized: [1, 2, 3], to: Topics.diskManagerCommands(host: "h1"), retain: false)
        // After start-up the runtime drops its clean code pages (ResidentCode, at 3 s); the
        // service must answer just the same afterwards.
        try await Task.sleep(for: .seconds(4))
        #expect(manager.process.isRunning)
        request.requestID = "r-2"
        let again = try await watcher.request(request, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(5))
        #expect(again.payload.outcome == .refused)
        manager.signal(SIGTERM)
        #expect(manager.process.exitCode == 0)
        await watcher.shutdown()
    }
}

/// A command sent while the disk-manager is down reaches it when it is back: its persistent
/// session holds the command, which arrives before the subscription is registered again and
/// is held for it. Before, a stopping service unsubscribed as its consumers ended, so the
/// broker answered the command "no matching subscribers" (PUBACK 16) and dropped it (2 of 2
/// tries in the issue; this test failed the same way).
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct QueuedCommandTests {
    @Test func aCommandQueuedWhileTheDiskManagerIsDownIsAnswered() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-svc-queued")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let watcher = try await connectedBus(broker, service: "watcher")
        let statuses = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        let first = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: directory)
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth && $0.payload.session == 1 } })
        first.signal(SIGTERM)
        #expect(first.process.exitCode == 0)
        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = "queued-1"
        request.host = "h1"
        request.list = .init()
        let pending = Task {
            try await watcher.request(request, to: Topics.diskManagerCommands(host: "h1"), expecting: Bynar_V1_DiskManagerResponse.self, timeout: .seconds(30))
        }
        try await Task.sleep(for: .seconds(1))
        let second = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: directory)
        defer { second.signal(SIGTERM) }
        let answer: Received<Bynar_V1_DiskManagerResponse>
        do { answer = try await pending.value } catch { Issue.record("no answer: \(error); log:\n\(second.log.split(separator: "\n").filter { !$0.contains("Starting service") }.joined(separator: "\n").suffix(4000))\nbroker:\n\(broker.log.suffix(3000))"); return }
        // Unsigned, so refused; what matters is that it was received and answered.
        #expect(answer.payload.requestID == "queued-1" && answer.payload.outcome == .refused, "\(answer.payload)")
        await watcher.shutdown()
    }
}

/// SIGTERM stops every service also when the broker has gone away first (found by running
/// the system: services then waited forever for acknowledgements that could not come).
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct ServiceStopWithoutBrokerTests {
    @Test(arguments: ["bynar-detector", "bynar-disk-manager", "bynar-ticketing", "bynar-notifier", "bynar-orchestrator"])
    func sigtermStopsTheServiceWhileTheBrokerIsDown(executable: String) async throws {
        let service = executable.replacingOccurrences(of: "bynar-", with: "")
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-svc-nobroker")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let watcher = try await connectedBus(broker, service: "watcher")
        let statuses = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: service), as: Bynar_V1_ServiceStatus.self))
        let process = try ServiceProcess(executable, brokerPort: broker.port, directory: directory)
        defer { process.signal(SIGKILL) }
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } }, "\(process.log)")
        await watcher.shutdown()
        broker.stop()
        try await Task.sleep(for: .seconds(2))
        process.process.stop(SIGTERM, timeout: .seconds(20))
        #expect(!process.process.isRunning, "\(executable) still running 20 s after SIGTERM with the broker down\n\(process.log.suffix(2000))")
    }
}
