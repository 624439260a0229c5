import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// A real broker, a watcher bus and real bynar-notifier processes for one test.
final class NotifierHarness: @unchecked Sendable {
    let broker: TestBroker
    let bus: Bus
    let statuses: Collector<Received<Bynar_V1_ServiceStatus>>
    private(set) var directories: [String] = []
    /// Every bynar-notifier this harness started, checked for crashes at ``finish()``.
    private var processes: [(host: String, process: ServiceProcess)] = []

    init() async throws {
        broker = try TestBroker()
        bus = try await connectedBus(broker, service: "orchestrator")
        statuses = Collector(try await bus.subscribe(Topics.serviceStatus(host: "+", service: "notifier"), as: Bynar_V1_ServiceStatus.self))
    }

    /// Starts bynar-notifier as `host` with `notifier` as its config section (and `extra`
    /// top-level fields), waits for its birth. `directory` reuses a previous one (restart).
    func start(host: String = "n1", directory: String? = nil, notifier: String, extra: String = "",
               environment: [String: String] = [:]) async throws -> ServiceProcess {
        let directory = try directory ?? {
            let made = try makeTemporaryDirectory(prefix: "bynar-notifier")
            directories.append(made)
            return made
        }()
        let births = statuses.all.filter { $0.payload.host == host && $0.payload.state == .birth }.count
        let process = try ServiceProcess("bynar-notifier", brokerPort: broker.port, host: host, directory: directory,
                                         extraConfig: "\"notifier\": \(notifier)" + (extra.isEmpty ? "" : ", " + extra), environment: environment)
        let born = await statuses.wait(timeout: .seconds(20)) { all in
            all.filter { $0.payload.host == host && $0.payload.state == .birth }.count > births
        }
        processes.append((host, process))
        #expect(born, "bynar-notifier \(host) did not announce itself; log:\n\(process.log)")
        return process
    }

    /// Publishes one notification.
    func notify(_ title: String, severity: Bynar_V1_Notification.Severity = .error, host: String = "h1", serial: String = "Z1",
                next: String = "removing it from the cluster", incident: String = "") async throws {
        var n = Bynar_V1_Notification()
        n.severity = severity
        n.title = title
        n.host = host
        n.disk.host = host
        n.disk.model = "ST4000NM0035"
        n.disk.serial = serial
        n.disk.byPath = "pci-0000:00:1f.2-ata-3"
        n.nextAction = next
        n.incidentID = incident
        try await bus.publish(n, to: Topics.notifications)
    }

    /// Runs `bynar-notifier ARGS` to the end and returns (exit code, output).
    func command(_ arguments: [String]) throws -> (Int32?, String) {
        let output = try makeTemporaryDirectory(prefix: "bynar-notifier-cmd") + "/out"
        let process = try ChildProcess(builtExecutable("bynar-notifier"), arguments, outputPath: output)
        _ = process.waitForExit(timeout: .seconds(20))
        return (process.exitCode, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    /// Checks every notifier it started for a crash (before their logs go with their
    /// directories), then stops the broker and the watcher.
    func finish() async {
        for (host, process) in processes { process.expectNoCrash("bynar-notifier \(host) in \(process.directory)") }
        statuses.cancel()
        await bus.shutdown()
        broker.stop()
        for directory in directories { try? FileManager.default.removeItem(atPath: directory) }
    }
}

/// Waits until `condition` holds (polling every 50 ms) or `timeout` passes.
func eventually(_ timeout: Duration, _ condition: () throws -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? condition()) == true { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return (try? condition()) == true
}

/// The notifier section for a Slack stand-in.
func slackSection(_ slack: SlackStandIn, quiet: Double = 0.5, window: Double = 30, more: String = "") -> String {
    ##"{"slack": {"webhook_url": "\##(slack.webhookURL)", "channel": "#storage", "bot_name": "bynar-test", "quiet_seconds": \##(quiet), "window_seconds": \##(window)}, "retry_max_seconds": 2\##(more)}"##
}
