import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The services' log lines: JSON lines carry the fields to search a fleet's logs by, and the
/// level follows the config file while the service runs.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct LoggingTests {
    static func config(port: Int, directory: String, level: String, format: String) -> String {
        """
        {"host": "h1", "db_location": "\(directory)/db", "log_level": "\(level)", "log_format": "\(format)",
         "broker": {"port": \(port), "reconnect_max_seconds": 1}, "metrics": {"enabled": false}}
        """
    }

    @Test func jsonLinesCarryServiceHostAndEachEntrysFields() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-log-json")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.config(port: broker.port, directory: directory, level: "debug", format: "json").write(toFile: directory + "/bynar.json", atomically: true, encoding: .utf8)
        let watcher = try await connectedBus(broker, service: "watcher")
        let statuses = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: "orchestrator"), as: Bynar_V1_ServiceStatus.self))
        let process = try ChildProcess(builtExecutable("bynar-orchestrator"), ["--config", directory + "/bynar.json"], outputPath: directory + "/log")
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } })
        process.stop(SIGTERM)
        let text = try String(contentsOfFile: directory + "/log", encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.count > 5, "\(text)")
        var objects: [[String: Any]] = []
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object != nil, "not a JSON object: \(line)")
            if let object { objects.append(object) }
        }
        #expect(objects.allSatisfy { $0["service"] as? String == "orchestrator" && $0["level"] is String && $0["message"] is String && $0["ts"] is String })
        let starting = try #require(objects.first { $0["message"] as? String == "starting" }, "\(text)")
        #expect(starting["host"] as? String == "h1" && starting["version"] is String, "\(starting)")
        await watcher.shutdown()
    }

    @Test func theLevelFollowsTheConfigFileWithoutARestart() async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-log-level")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/bynar.json"
        try Self.config(port: broker.port, directory: directory, level: "info", format: "text").write(toFile: path, atomically: true, encoding: .utf8)
        let watcher = try await connectedBus(broker, service: "watcher")
        let statuses = Collector(try await watcher.subscribe(Topics.serviceStatus(host: "h1", service: "notifier"), as: Bynar_V1_ServiceStatus.self))
        let process = try ChildProcess(builtExecutable("bynar-notifier"), ["--config", path], outputPath: directory + "/log")
        defer { process.stop(SIGTERM) }
        #expect(await statuses.wait(timeout: .seconds(15)) { $0.contains { $0.payload.state == .birth } })
        func log() -> String { (try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? "" }
        // SIGHUP at info: the reload is said.
        process.signal(SIGHUP)
        #expect(await Collector<Int>.poll(timeout: .seconds(5)) { log().contains("SIGHUP: reading reloadable settings again") }, "\(log())")
        // The file says error: taken by the file watch, and a SIGHUP's notice is no longer written.
        try Self.config(port: broker.port, directory: directory, level: "error", format: "text").write(toFile: path, atomically: true, encoding: .utf8)
        #expect(await Collector<Int>.poll(timeout: .seconds(15)) { log().contains("log level changed") }, "\(log())")
        let before = log().components(separatedBy: "SIGHUP: reading").count
        process.signal(SIGHUP)
        try await Task.sleep(for: .seconds(2))
        #expect(log().components(separatedBy: "SIGHUP: reading").count == before, "notice lines are below error")
        #expect(process.isRunning)
        // A file that no longer loads keeps the level (and the service).
        try "{not json".write(toFile: path, atomically: true, encoding: .utf8)
        process.signal(SIGHUP)
        try await Task.sleep(for: .seconds(1))
        #expect(process.isRunning)
        await watcher.shutdown()
    }
}
