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
/// a clean shutdown ("nice quit": the app reads STOPPED) runs none; an operator's `bynar apps
/// set web ng` runs the down handler once and `auto` the up handler; a host cut off from the
/// broker and its peers (PicoRed's reachability rule) is down for the cluster, declares its
/// app UNKNOWN ("isolated"), not UP, and runs its up handler once when it is back.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed"))
struct AppHandlerTests {
    /// A broker, an orchestrator whose hook records `$1 $2 $3` and the event's service and
    /// state in `hook.log`, the web server host h1's detector checks, and a bus to watch.
    final class Rig: @unchecked Sendable {
        let directory: String
        let log: String
        let web: WebApp
        let broker: TestBroker
        let orchestrator: ServiceProcess
        let tap: Bus

        /// Started, with the orchestrator up (its hook subscription is live by then).
        static func started(prefix: String) async throws -> Rig {
            let rig = try await Rig(prefix: prefix)
            let births = Collector(try await rig.tap.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
            let up = await births.wait(timeout: .seconds(20)) { $0.contains { $0.payload.service == "orchestrator" && $0.payload.state == .birth } }
            #expect(up, "\(rig.orchestrator.log.suffix(2000))")
            try await Task.sleep(for: .milliseconds(300))
            return rig
        }

        private init(prefix: String) async throws {
            directory = try makeTemporaryDirectory(prefix: prefix)
            log = directory + "/hook.log"
            let recorder = directory + "/record-hook"
            try "#!/bin/sh\necho \"$1 $2 $3 service=$BYNAR_SERVICE state=$BYNAR_STATE\" >> \(log)\n".write(toFile: recorder, atomically: true, encoding: .utf8)
            chmod(recorder, 0o755)
            web = try WebApp(directory: directory)
            broker = try TestBroker()
            for name in ["orc", "det"] { try FileManager.default.createDirectory(atPath: "\(directory)/\(name)", withIntermediateDirectories: true) }
            orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orc", directory: "\(directory)/orc", extraConfig: """
                "orchestrator": {"hosts": [{"host": "h1", "address": "10.9.9.9"}], "hooks": [{"command": "\(recorder)"}], "hook_limit": {"per_host_per_minute": 100}}
                """)
            tap = try await connectedBus(broker, service: "tap", host: "t")
        }

        /// h1's detector checking the web server every second (`app` adds fields to the app,
        /// `detector` to the detector's section).
        func startDetector(brokerPort: Int? = nil, app: String = "", detector: String = "") throws -> ServiceProcess {
            try ServiceProcess("bynar-detector", brokerPort: brokerPort ?? broker.port, host: "h1", directory: "\(directory)/det", extraConfig: """
                "detector": {"check_interval_seconds": 60, "probe": false, "read_probe": false, "fsck_interval_seconds": 0, "watch_only": ["/dev/nonexistent"],
                             "apps": [{"name": "web", "http": "http://127.0.0.1:\(web.port)/health", "interval_seconds": 1, "timeout_seconds": 1, "tolerance": 1\(app)}]\(detector)}
                """)
        }

        /// The hook's runs for the web app, in order.
        func webLines() -> [String] {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init).filter { $0.hasPrefix("web ") }
        }

        /// Waits for the `count`th run of the web app's hook and expects it to be `last`, and
        /// no other run `settle` later (the app is checked every second meanwhile).
        func expectWeb(_ count: Int, _ last: String, _ what: String, settle: Duration = .zero) async {
            let seen = await Collector<Int>.poll(timeout: .seconds(20)) { webLines().count >= count }
            try? await Task.sleep(for: settle)
            #expect(seen && webLines().count == count && webLines().last == last, "\(what): \(webLines())\n\(orchestrator.log.suffix(2000))")
        }

        func stop() {
            orchestrator.signal(SIGTERM)
            web.crash()
            broker.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    static let up = "web 10.9.9.9 up service=web state=up"
    static let down = "web 10.9.9.9 down service=web state=down"

    @Test(.timeLimit(.minutes(3)))
    func anAppsChangesRunTheHandlerOnceAndANiceQuitRunsNone() async throws {
        let rig = try await Rig.started(prefix: "bynar-app-hooks")
        defer { rig.stop() }
        var detector = try rig.startDetector()
        defer { detector.signal(SIGKILL) }

        await rig.expectWeb(1, Self.up, "the app came up")
        rig.web.crash()
        await rig.expectWeb(2, Self.down, "its server died")
        try rig.web.restart()
        await rig.expectWeb(3, Self.up, "its server is back")

        // The host agent crashes: nobody checks the app; it is down.
        detector.signal(SIGKILL)
        await rig.expectWeb(4, Self.down, "the detector crashed")
        detector = try rig.startDetector()
        await rig.expectWeb(5, Self.up, "the detector is back and checks it")

        // A nice quit: the app reads STOPPED, the detector's death is clean; no down handler.
        detector.signal(SIGTERM)
        #expect(await Collector<Int>.poll(timeout: .seconds(20)) {
            ((try? String(contentsOfFile: rig.log, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("detector ") && $0.contains(" down") }.count >= 2
        }, "the detector's second going is seen")
        try await Task.sleep(for: .seconds(2))
        #expect(rig.webLines().count == 5, "no handler for a nice quit: \(rig.webLines())")
        await rig.tap.shutdown()
    }

    /// The operator's console end to end: `bynar apps set web ng --host h1` (the CLI, the
    /// retained override, the detector's machine, its AppState, the orchestrator's
    /// membership) runs the hook's `down` once, though the app's checks still pass; `auto`
    /// runs `up` once.
    @Test(.timeLimit(.minutes(3)))
    func anOperatorsNgRunsTheDownHandlerOnceAndAutoBringsUpBack() async throws {
        let rig = try await Rig.started(prefix: "bynar-app-override")
        defer { rig.stop() }
        let detector = try rig.startDetector()
        defer { detector.signal(SIGKILL) }
        await rig.expectWeb(1, Self.up, "the app came up")

        func apps(_ mode: String) throws -> String {
            let output = "\(rig.directory)/cli-\(mode).out"
            let cli = try ChildProcess(builtExecutable("bynar"), ["apps", "set", "web", mode, "--host", "h1", "--reason", "test", "--broker", "127.0.0.1:\(rig.broker.port)"],
                                       outputPath: output)
            let status = cli.stop(0, timeout: .seconds(20))
            let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            #expect(status == 0, "\(text)")
            return text
        }
        #expect(try apps("ng").contains("web on h1: ng"))
        // The checks go on passing every second: the override holds, no second run.
        await rig.expectWeb(2, Self.down, "set ng by an operator", settle: .seconds(3))
        _ = try apps("auto")
        await rig.expectWeb(3, Self.up, "back to its checks", settle: .seconds(2))
        await rig.tap.shutdown()
    }

    /// PicoRed's reachability rule through the orchestrator: h1's detector reaches the
    /// broker through a relay, and its only peer is a closed port. The relay is killed: the
    /// broker sees h1's detector die (not cleanly), so the cluster runs the down handler;
    /// h1 itself, reaching neither the broker nor a peer, reads its app UNKNOWN
    /// ("isolated"), not UP, and its local handler runs nothing. The relay is back: the
    /// isolated reading arrives (the outbox kept it), then UP, and the up handler runs once.
    @Test(.timeLimit(.minutes(3)))
    func anIsolatedHostDeclaresNoAppUpAndIsUpOnceBack() async throws {
        let rig = try await Rig.started(prefix: "bynar-app-isolated")
        defer { rig.stop() }
        let states = Collector(try await rig.tap.subscribe(Topics.appState(host: "h1", app: "web"), as: Bynar_V1_AppState.self))
        let relayPort = try freeLoopbackPort()
        var relay = try startTCPRelay(port: relayPort, to: rig.broker.port, log: "\(rig.directory)/relay.log")
        defer { _ = relay.stop(SIGKILL) }
        let localLog = "\(rig.directory)/local.log"
        let local = "\(rig.directory)/local-handler"
        try "#!/bin/sh\necho \"$*\" >> \(localLog)\n".write(toFile: local, atomically: true, encoding: .utf8)
        chmod(local, 0o755)
        let closedPort = try freeLoopbackPort()
        let detector = try rig.startDetector(brokerPort: relayPort, app: #", "handler": "\#(local)""#,
                                             detector: #", "app_peers": ["127.0.0.1:\#(closedPort)"], "app_address": "10.9.9.9""#)
        defer { detector.signal(SIGKILL) }
        func localRuns() -> [String] { ((try? String(contentsOfFile: localLog, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init) }
        await rig.expectWeb(1, Self.up, "the app came up")
        #expect(await Collector<Int>.poll(timeout: .seconds(10)) { localRuns() == ["web 10.9.9.9 up"] }, "\(localRuns())")

        _ = relay.stop(SIGKILL)
        await rig.expectWeb(2, Self.down, "h1's detector is gone for the cluster")
        let isolated = await Collector<Int>.poll(timeout: .seconds(20)) {
            detector.log.split(separator: "\n").contains { $0.contains("application changed") && $0.contains("health=unknown") && $0.contains("isolated") }
        }
        #expect(isolated, "\(detector.log.suffix(2000))")

        relay = try startTCPRelay(port: relayPort, to: rig.broker.port, log: "\(rig.directory)/relay.log")
        await rig.expectWeb(3, Self.up, "h1 reaches the broker again", settle: .seconds(2))
        #expect(states.all.contains { $0.payload.health == .unknown && $0.payload.reason.hasPrefix("isolated") },
                "the isolated reading went out once h1 was back: \(states.all.map { "\($0.payload.health) \($0.payload.reason)" })")
        #expect(localRuns() == ["web 10.9.9.9 up"], "h1 told its handler nothing: UP, UNKNOWN, UP is no change; \(localRuns())")
        await rig.tap.shutdown()
    }
}
