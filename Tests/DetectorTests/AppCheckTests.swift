import BynarBus
import BynarConfig
import BynarProto
import BynarTestSupport
@testable import Detector
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// PicoRed's application checks: the pure ``AppHealthMachine`` rule by rule, the HTTP
/// answer's judgement, the config's refusals; then the running bynar-detector checking a
/// real HTTP server (Python's http.server), a TCP port and a command, on a real broker: an
/// app goes DOWN after `tolerance` failures and UP again, an operator's override wins until
/// `auto`, `bynar apps` and `bynar cluster status` show them, and a clean shutdown reads
/// STOPPED. The app's local handler (PicoRed's, run by the host itself): due once per change
/// to UP or DOWN (rule 7), and run by the real detector with PicoRed's contract.
@Suite(.serialized) struct AppCheckTests {
    @Test func theMachineFollowsPicoRedsRules() {
        var machine = AppHealthMachine(tolerance: 3, recover: 2, nowMs: 0)
        func step(_ fact: AppHealthMachine.Fact, _ now: Int64) -> Bool { machine.handle(fact, nowMs: now) }
        #expect(machine.health == .unknown && machine.reason == "not checked yet")                  // 1
        #expect(!step(.checkPassed(detail: "ok"), 1))
        #expect(step(.checkPassed(detail: "ok"), 2) && machine.health == .up)    // 3: recover 2
        #expect(machine.sinceMs == 2)
        #expect(!step(.checkFailed(detail: "refused"), 3))                         // 2: a blip
        #expect(!step(.checkFailed(detail: "refused"), 4))
        #expect(machine.reason == "refused (2 of 3 failures in a row)")
        #expect(step(.checkFailed(detail: "refused"), 5) && machine.health == .down)
        #expect(!step(.checkPassed(detail: "ok"), 6), "one success is not recover 2")
        #expect(step(.checkPassed(detail: "ok"), 7) && machine.health == .up)
        // 4: isolated, an UP app is not declared up; a DOWN one stays DOWN.
        #expect(step(.reachability(isolated: true), 8) && machine.health == .unknown)
        #expect(machine.reason.hasPrefix("isolated"))
        #expect(step(.reachability(isolated: false), 9) && machine.health == .up)
        // 5: the override wins over checks and isolation, until auto.
        #expect(step(.overridden(.appOverrideNg), 10) && machine.health == .down)
        #expect(!step(.reachability(isolated: true), 11))
        #expect(machine.reason.hasPrefix("set ng by an operator (checks say up"))
        #expect(step(.overridden(.appOverrideOk), 12) && machine.health == .up)
        #expect(step(.overridden(.appOverrideAuto), 13) && machine.health == .unknown, "isolated again")
        for now in Int64(14)...16 { _ = step(.checkFailed(detail: "refused"), now) }
        #expect(machine.health == .down, "down while isolated is down")
        // 6: a clean shutdown is STOPPED, whatever else.
        #expect(step(.shutDown, 17) && machine.health == .stopped)
        #expect(!step(.checkPassed(detail: "ok"), 18))
        var once = AppHealthMachine(tolerance: 1, recover: 1, nowMs: 0)
        let changed = once.handle(.checkFailed(detail: "x"), nowMs: 1)
        #expect(changed && once.health == .down)
    }

    @Test func aLocalHandlerIsDueOncePerChangeToUpOrDown() {
        var machine = AppHealthMachine(tolerance: 2, recover: 1, nowMs: 0)
        var runs: [String] = []
        func step(_ facts: AppHealthMachine.Fact...) -> [String] {
            runs = []
            for fact in facts {
                _ = machine.handle(fact, nowMs: 0)
                if let up = machine.takeDueHandler() { runs.append(up ? "up" : "down") }
            }
            return runs
        }
        let pass = AppHealthMachine.Fact.checkPassed(detail: "ok"), fail = AppHealthMachine.Fact.checkFailed(detail: "refused")
        #expect(step(fail) == [], "UNKNOWN, a blip: none")
        #expect(step(pass, pass, pass) == ["up"], "up once, not again while it stays up")
        #expect(machine.handled == .up)
        #expect(step(fail) == [], "one failure of two is no change")
        #expect(step(fail, fail, fail) == ["down"])
        #expect(step(pass) == ["up"])
        // Isolated: UNKNOWN runs none, and back UP is no change for the handler.
        #expect(step(.reachability(isolated: true), pass, .reachability(isolated: false)) == [])
        #expect(step(.reachability(isolated: true), fail, fail) == ["down"], "DOWN while isolated is DOWN")
        #expect(step(.reachability(isolated: false), pass) == ["up"])
        // An operator's override is a change like any other; back to auto where the checks agree is none.
        #expect(step(.overridden(.appOverrideNg), pass) == ["down"])
        #expect(step(.overridden(.appOverrideAuto)) == ["up"])
        #expect(step(.overridden(.appOverrideOk), .overridden(.appOverrideAuto)) == [])
        #expect(step(.overridden(.appOverrideNg), .overridden(.appOverrideOk)) == ["down", "up"])
        // A nice quit: STOPPED runs no down handler.
        #expect(step(.overridden(.appOverrideAuto), .shutDown, fail, fail) == [])
        #expect(machine.health == .stopped && machine.handled == .up)
        // What is due is taken once: asking again without a change gives none.
        var fresh = AppHealthMachine(tolerance: 1, recover: 1, nowMs: 0)
        _ = fresh.handle(fail, nowMs: 1)
        #expect(fresh.takeDueHandler() == false && fresh.takeDueHandler() == nil)
    }

    @Test func anHTTPAnswerIsJudgedByStatusAndBody() {
        func judge(_ text: String, _ status: Int = 200, _ body: String? = nil) -> AppProbe.Outcome {
            AppProbe.judge(Array(text.utf8), url: "http://h/x", expectStatus: status, expectBody: body)
        }
        #expect(judge("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").passed)
        #expect(judge("HTTP/1.0 200 OK\r\n\r\nall good", 200, "good").passed)
        #expect(judge("HTTP/1.1 200 OK\r\n\r\nbad", 200, "good") == .init(passed: false, detail: "http://h/x answered 200 without \"good\""))
        #expect(judge("HTTP/1.1 503 Service Unavailable\r\n\r\n") == .init(passed: false, detail: "http://h/x answered 503, expected 200"))
        #expect(judge("SSH-2.0-OpenSSH_9.2\r\n").detail.contains("not an HTTP answer"))
        #expect(judge("").passed == false)
    }

    @Test func aBadAppConfigNamesTheField() throws {
        func problem(_ apps: String) -> String? {
            do {
                _ = try ConfigLoader.parse(#"{"detector": {"apps": \#(apps)}}"#)
                return nil
            } catch let error as ConfigError {
                return error.problems.map { "\($0.field): \($0.problem)" }.joined(separator: "; ")
            } catch {
                return "\(error)"
            }
        }
        #expect(problem(#"[{"name": "web", "http": "http://127.0.0.1:8080/health"}]"#) == nil)
        #expect(problem(#"[{"name": "web", "http": "http://x/", "tcp": "x:1"}]"#)?.contains("detector.apps.0.http: give exactly one of http, tcp and command (2 given)") == true)
        #expect(problem(#"[{"name": "web"}]"#)?.contains("(0 given)") == true)
        #expect(problem(#"[{"name": "web", "http": "https://x/"}]"#)?.contains("use a command check") == true)
        #expect(problem(#"[{"name": "a/b", "tcp": "x:1"}]"#)?.contains("detector.apps.0.name") == true)
        #expect(problem(#"[{"name": "db", "tcp": "x"}]"#)?.contains("detector.apps.0.tcp: must be host:port") == true)
        #expect(problem(#"[{"name": "db", "tcp": "x:1", "timeout_seconds": 20}]"#)?.contains("detector.apps.0.timeout_seconds") == true)
        #expect(problem(#"[{"name": "db", "tcp": "x:1", "tolerance": 0}]"#)?.contains("detector.apps.0.tolerance") == true)
        #expect(problem(#"[{"name": "job", "command": ["relative"]}]"#)?.contains("absolute path") == true)
        #expect(problem(#"[{"name": "db", "tcp": "x:1"}, {"name": "db", "tcp": "y:2"}]"#)?.contains("detector.apps.1.name: \"db\" is checked twice") == true)
        #expect((try? ConfigLoader.parse(#"{"detector": {"app_peers": ["nope"]}}"#)) == nil)
        #expect(problem(#"[{"name": "web", "tcp": "x:1", "handler": "/bin/true", "handler_timeout_seconds": 5}]"#) == nil)
        #expect(problem(#"[{"name": "web", "tcp": "x:1", "handler": "restart-web"}]"#)?.contains("detector.apps.0.handler: must be an absolute path") == true)
        #expect(problem(#"[{"name": "db", "tcp": "x:1"}, {"name": "web", "tcp": "x:1", "handler": "/nonexistent/restart"}]"#)?.contains("detector.apps.1.handler: /nonexistent/restart is not an executable file") == true)
        #expect(problem(#"[{"name": "web", "tcp": "x:1", "handler": "/tmp"}]"#)?.contains("detector.apps.0.handler: /tmp is not an executable file") == true, "a directory")
        let plain = try makeTemporaryDirectory(prefix: "bynar-handler") + "/restart-web"
        defer { try? FileManager.default.removeItem(atPath: (plain as NSString).deletingLastPathComponent) }
        try "#!/bin/sh\n".write(toFile: plain, atomically: true, encoding: .utf8)
        chmod(plain, 0o644)
        #expect(problem(#"[{"name": "web", "tcp": "x:1", "handler": "\#(plain)"}]"#)?.contains("detector.apps.0.handler: \(plain) is not an executable file") == true, "mode 644")
        #expect(problem(#"[{"name": "web", "tcp": "x:1", "handler": "/bin/true", "handler_timeout_seconds": 0}]"#)?.contains("detector.apps.0.handler_timeout_seconds") == true)
    }

    @Test(.enabled(if: TestBroker.available, "mosquitto is not installed"), .timeLimit(.minutes(3)))
    func theRunningDetectorChecksAppsAndPublishesTheirStates() async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-apps")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let web = try WebApp(directory: directory, body: "all good\n")
        defer { web.crash() }
        let webPort = web.port
        let closedPort = try freeLoopbackPort()
        let broker = try TestBroker()
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let states = Collector(try await tap.subscribe(Topics.allAppStates, as: Bynar_V1_AppState.self))
        func latest(_ app: String) -> Bynar_V1_AppState? { states.all.last { $0.payload.app == app }?.payload }
        func reads(_ app: String, _ health: Bynar_V1_AppHealth, within seconds: Int = 20) async -> Bool {
            await states.wait(timeout: .seconds(seconds)) { _ in latest(app)?.health == health }
        }
        try FileManager.default.createDirectory(atPath: "\(directory)/det", withIntermediateDirectories: true)
        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: "\(directory)/det", extraConfig: """
            "detector": {"check_interval_seconds": 60, "probe": false, "read_probe": false, "fsck_interval_seconds": 0, "watch_only": ["/dev/nonexistent"],
                         "apps": [{"name": "web", "http": "http://127.0.0.1:\(webPort)/health", "expect_body": "good", "interval_seconds": 1, "timeout_seconds": 1, "tolerance": 2},
                                  {"name": "db", "tcp": "127.0.0.1:\(closedPort)", "interval_seconds": 1, "timeout_seconds": 1, "tolerance": 1},
                                  {"name": "job", "command": ["/bin/sh", "-c", "test -e \(directory)/job-ok"], "interval_seconds": 1, "timeout_seconds": 1, "tolerance": 1}]}
            """)
        defer { detector.signal(SIGKILL) }
        #expect(await reads("web", .up), "\(states.all.map(\.payload))\n\(detector.log.suffix(3000))")
        #expect(latest("web")?.reason == "http://127.0.0.1:\(webPort)/health answered 200")
        #expect(await reads("db", .down), "nothing listens on \(closedPort)")
        #expect(latest("db")?.reason.contains("tcp 127.0.0.1:\(closedPort): Connection refused") == true, "\(String(describing: latest("db")))")
        #expect(await reads("job", .down))
        try "".write(toFile: "\(directory)/job-ok", atomically: true, encoding: .utf8)
        #expect(await reads("job", .up), "the command exits 0 now")

        // The web server dies: DOWN after 2 failures (tolerance), naming why; back UP when it returns.
        web.crash()
        let killedAt = ContinuousClock.now
        #expect(await reads("web", .down), "\(String(describing: latest("web")))")
        let toDown = ContinuousClock.now - killedAt
        #expect(latest("web")?.consecutiveFailures == 2 && latest("web")?.tolerance == 2)
        #expect(latest("web")?.reason.contains("Connection refused") == true, "\(String(describing: latest("web")))")
        print("apps: web DOWN \(toDown) after its server was killed (interval 1 s, tolerance 2)")
        try web.restart()
        #expect(await reads("web", .up))

        // An operator's override (retained; the broker's ACL lets only operators publish it).
        var override = Bynar_V1_AppOverride()
        override.app = "web"
        override.mode = .appOverrideNg
        _ = try await tap.publish(override, to: Topics.appOverride(host: "h1", app: "web"), retain: true)
        #expect(await reads("web", .down) && latest("web")?.override == .appOverrideNg && latest("web")?.checked == .up)

        // The console: `bynar apps` and `bynar cluster status`.
        func bynar(_ arguments: [String]) throws -> String {
            let output = "\(directory)/cli-\(UUID().uuidString).out"
            let cli = try ChildProcess(builtExecutable("bynar"), arguments + ["--broker", "127.0.0.1:\(broker.port)", "--wait", "2"], outputPath: output)
            _ = cli.stop(0, timeout: .seconds(20))
            return (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        }
        let listed = try bynar(["apps"])
        #expect(listed.split(separator: "\n").contains { $0.hasPrefix("h1") && $0.contains("web") && $0.contains("DOWN") && $0.contains("UP") && $0.contains("ng") }, "\(listed)")
        #expect(listed.split(separator: "\n").contains { $0.hasPrefix("h1") && $0.contains("db") && $0.contains("DOWN") }, "\(listed)")
        let status = try bynar(["cluster", "status"])
        #expect(status.contains("db DOWN, job up, web DOWN"), "\(status)")

        override.mode = .appOverrideAuto
        _ = try await tap.publish(override, to: Topics.appOverride(host: "h1", app: "web"), retain: true)
        #expect(await reads("web", .up))

        // A clean shutdown: every app reads STOPPED, retained.
        detector.signal(SIGTERM)
        #expect(await states.wait(timeout: .seconds(15)) { _ in ["web", "db", "job"].allSatisfy { latest($0)?.health == .stopped } }, "\(detector.log.suffix(2000))")
        await tap.shutdown()
    }

    /// PicoRed's local handler, run by the host for its own app: `HANDLER web <ip> up|down`
    /// once per change with the BYNAR_* event environment (the server dies, comes back, an
    /// operator sets ng, then auto); a failing handler (here every `down` exits 3) changes
    /// nothing the app reads; a clean shutdown runs no down handler.
    @Test(.enabled(if: TestBroker.available, "mosquitto is not installed"), .timeLimit(.minutes(3)))
    func theLocalHandlerRunsOncePerChangeAndNotOnANiceQuit() async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-app-handler")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/handler.log"
        let handler = directory + "/restart-web"
        try """
            #!/bin/sh
            echo "$* id=$BYNAR_EVENT_ID time=$BYNAR_EVENT_TIME ms=$BYNAR_EVENT_TIME_UNIX_MS host=$BYNAR_HOST service=$BYNAR_SERVICE state=$BYNAR_STATE" >> \(log)
            [ "$3" = down ] && exit 3
            exit 0

            """.write(toFile: handler, atomically: true, encoding: .utf8)
        chmod(handler, 0o755)
        let web = try WebApp(directory: directory)
        defer { web.crash() }
        let webPort = web.port
        let broker = try TestBroker()
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let states = Collector(try await tap.subscribe(Topics.allAppStates, as: Bynar_V1_AppState.self))
        try FileManager.default.createDirectory(atPath: "\(directory)/det", withIntermediateDirectories: true)
        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: "\(directory)/det", extraConfig: """
            "detector": {"check_interval_seconds": 60, "probe": false, "read_probe": false, "fsck_interval_seconds": 0, "watch_only": ["/dev/nonexistent"],
                         "app_address": "10.9.9.8",
                         "apps": [{"name": "web", "http": "http://127.0.0.1:\(webPort)/health", "interval_seconds": 1, "timeout_seconds": 1, "tolerance": 1,
                                   "handler": "\(handler)", "handler_timeout_seconds": 5}]}
            """)
        defer { detector.signal(SIGKILL) }
        func runs() -> [String] { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init) }
        func expectRuns(_ count: Int, _ prefix: String, _ what: String) async {
            let seen = await Collector<Int>.poll(timeout: .seconds(20)) { runs().count >= count }
            // Checks go on every second: a handler run twice would show by now.
            try? await Task.sleep(for: .seconds(2))
            #expect(seen && runs().count == count && runs().last?.hasPrefix(prefix) == true, "\(what): \(runs())\n\(detector.log.suffix(2000))")
        }
        await expectRuns(1, "web 10.9.9.8 up id=h1/app/web/local/up/", "the app came up")
        let first = runs().first ?? ""
        #expect(first.contains(" host=h1 service=web state=up"), "\(first)")
        let ms = first.split(separator: " ").first { $0.hasPrefix("ms=") }.flatMap { Int64($0.dropFirst(3)) } ?? 0
        #expect(abs(ms - Bus.nowUnixMs()) < 60_000 && first.contains("time=\(UTCTime.iso8601(unixMs: ms))"), "\(first)")

        web.crash()
        await expectRuns(2, "web 10.9.9.8 down id=h1/app/web/local/down/", "its server died")
        #expect(detector.log.contains("local handler failed") && detector.log.contains("exit_status=3"), "\(detector.log.suffix(2000))")
        #expect(states.all.last { $0.payload.app == "web" }?.payload.health == .down, "a failing handler changes nothing")
        try web.restart()
        await expectRuns(3, "web 10.9.9.8 up ", "its server is back")

        var override = Bynar_V1_AppOverride()
        override.app = "web"
        override.mode = .appOverrideNg
        _ = try await tap.publish(override, to: Topics.appOverride(host: "h1", app: "web"), retain: true)
        await expectRuns(4, "web 10.9.9.8 down ", "an operator set it ng")
        override.mode = .appOverrideAuto
        _ = try await tap.publish(override, to: Topics.appOverride(host: "h1", app: "web"), retain: true)
        await expectRuns(5, "web 10.9.9.8 up ", "back to its checks")

        // A nice quit: the app reads STOPPED; no down handler runs.
        detector.signal(SIGTERM)
        #expect(await states.wait(timeout: .seconds(15)) { _ in states.all.last { $0.payload.app == "web" }?.payload.health == .stopped }, "\(detector.log.suffix(2000))")
        try await Task.sleep(for: .seconds(1))
        #expect(runs().count == 5, "no handler for a nice quit: \(runs())")
        await tap.shutdown()
    }
}
