import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// PicoRed's handlers for applications, with the real bynar-detector checking a real HTTP
/// server (Python's http.server) and the real bynar-orchestrator running the hook on a real
/// broker: `HANDLER web <ip> up|down` once per change (the app comes up, its server dies,
/// comes back); a detector killed with SIGKILL takes its app DOWN (the down handler runs);
/// a clean shutdown ("nice quit": the app reads STOPPED) runs none.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed"))
struct AppHandlerTests {
    @Test(.timeLimit(.minutes(3)))
    func anAppsChangesRunTheHandlerOnceAndANiceQuitRunsNone() async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-app-hooks")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/hook.log"
        let recorder = directory + "/record-hook"
        try "#!/bin/sh\necho \"$1 $2 $3 service=$BYNAR_SERVICE state=$BYNAR_STATE\" >> \(log)\n".write(toFile: recorder, atomically: true, encoding: .utf8)
        chmod(recorder, 0o755)
        let web = try WebApp(directory: directory)
        defer { web.crash() }
        let webPort = web.port
        let broker = try TestBroker()
        for name in ["orc", "det"] { try FileManager.default.createDirectory(atPath: "\(directory)/\(name)", withIntermediateDirectories: true) }
        let orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orc", directory: "\(directory)/orc", extraConfig: """
            "orchestrator": {"hosts": [{"host": "h1", "address": "10.9.9.9"}], "hooks": [{"command": "\(recorder)"}], "hook_limit": {"per_host_per_minute": 100}}
            """)
        defer { orchestrator.signal(SIGTERM) }
        func startDetector() throws -> ServiceProcess {
            try ServiceProcess("bynar-detector", brokerPort: broker.port, host: "h1", directory: "\(directory)/det", extraConfig: """
                "detector": {"check_interval_seconds": 60, "probe": false, "read_probe": false, "fsck_interval_seconds": 0, "watch_only": ["/dev/nonexistent"],
                             "apps": [{"name": "web", "http": "http://127.0.0.1:\(webPort)/health", "interval_seconds": 1, "timeout_seconds": 1, "tolerance": 1}]}
                """)
        }
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let births = Collector(try await tap.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
        #expect(await births.wait(timeout: .seconds(20)) { $0.contains { $0.payload.service == "orchestrator" && $0.payload.state == .birth } })
        try await Task.sleep(for: .milliseconds(300))
        var detector = try startDetector()
        defer { detector.signal(SIGKILL) }

        func webLines() -> [String] {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init).filter { $0.hasPrefix("web ") }
        }
        func expectWeb(_ count: Int, _ last: String, _ what: String) async {
            let seen = await Collector<Int>.poll(timeout: .seconds(20)) { webLines().count >= count }
            #expect(seen && webLines().count == count && webLines().last == last, "\(what): \(webLines())\n\(orchestrator.log.suffix(2000))")
        }
        await expectWeb(1, "web 10.9.9.9 up service=web state=up", "the app came up")
        web.crash()
        await expectWeb(2, "web 10.9.9.9 down service=web state=down", "its server died")
        try web.restart()
        await expectWeb(3, "web 10.9.9.9 up service=web state=up", "its server is back")

        // The host agent crashes: nobody checks the app; it is down.
        detector.signal(SIGKILL)
        await expectWeb(4, "web 10.9.9.9 down service=web state=down", "the detector crashed")
        detector = try startDetector()
        await expectWeb(5, "web 10.9.9.9 up service=web state=up", "the detector is back and checks it")

        // A nice quit: the app reads STOPPED, the detector's death is clean; no down handler.
        detector.signal(SIGTERM)
        #expect(await Collector<Int>.poll(timeout: .seconds(20)) {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("detector ") && $0.contains(" down") }.count >= 2
        }, "the detector's second going is seen")
        try await Task.sleep(for: .seconds(2))
        #expect(webLines().count == 5, "no handler for a nice quit: \(webLines())")
        await tap.shutdown()
    }
}
