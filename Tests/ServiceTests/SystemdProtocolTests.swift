import BynarTestSupport
import Foundation
import Testing

/// What systemd sees of each real service executable: readiness, the watchdog and the stop
/// arrive on a notification socket the test binds, as `Type=notify` with `WatchdogSec=`
/// sets it up (deploy/systemd).
@Suite(.enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct SystemdProtocolTests {
    @Test(arguments: ["bynar-detector", "bynar-disk-manager", "bynar-ticketing", "bynar-notifier", "bynar-orchestrator"])
    func readyWatchdogAndStoppingReachTheNotifySocket(executable: String) async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-sdnotify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = try NotifySocket(directory + "/notify")
        // A 1 s watchdog: fed every 0.5 s.
        let process = try ServiceProcess(executable, brokerPort: broker.port, directory: directory,
                                         environment: ["NOTIFY_SOCKET": socket.name, "WATCHDOG_USEC": "1000000"])
        defer { process.signal(SIGKILL) }

        let start = await socket.receive(until: { $0.hasPrefix("READY=1") }, timeout: .seconds(20))
        #expect(start.last == "READY=1\nSTATUS=running", "\(start)\n\(process.log.suffix(2000))")
        #expect(start.first == "STATUS=connecting to the broker")
        let running = await socket.receive(until: { _ in false }, timeout: .seconds(2))
        #expect(running.filter { $0 == "WATCHDOG=1" }.count >= 3, "\(running)")

        process.process.stop(SIGTERM, timeout: .seconds(20))
        #expect(process.process.exitCode == 0, "\(process.log.suffix(2000))")
        let end = await socket.receive(until: { $0 == "STOPPING=1" }, timeout: .seconds(2))
        #expect(end.last == "STOPPING=1", "\(end)")
    }

    @Test func withoutNotifySocketNothingIsSentAndTheServiceRuns() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-sdnotify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let process = try ServiceProcess("bynar-ticketing", brokerPort: broker.port, directory: directory)
        defer { process.signal(SIGKILL) }
        try await Task.sleep(for: .seconds(2))
        #expect(process.process.isRunning)
        #expect(!process.log.contains("notifying systemd"), "\(process.log)")
    }

    /// `--help` names every offline command the executable takes, not only the service.
    @Test(arguments: [
        ("bynar-detector", ["check [--json] [--config PATH]", "smart --blob FILE", "smart --smartctl-json FILE"]),
        ("bynar-notifier", ["digest [--hours H] [--html] [--config PATH]", "status [--config PATH]", "send-test [--count N]"]),
        ("bynar-disk-manager", []), ("bynar-ticketing", []), ("bynar-orchestrator", []),
    ])
    func helpNamesEveryCommand(executable: String, commands: [String]) async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-help")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let process = try ChildProcess(builtExecutable(executable), ["--help"], outputPath: directory + "/out")
        _ = process.waitForExit(timeout: .seconds(10))
        let help = (try? String(contentsOfFile: directory + "/out", encoding: .utf8)) ?? ""
        #expect(process.exitCode == 0)
        #expect(help.contains("usage: \(executable) [--config PATH]"), "\(help)")
        #expect(help.contains("--version"), "\(help)")
        for command in commands {
            #expect(help.contains("\(executable) \(command)"), "usage line for \(command) missing:\n\(help)")
        }
        #expect(help.contains("Commands (offline") == !commands.isEmpty, "\(help)")
    }
}
