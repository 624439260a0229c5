import BynarBus
import BynarProto
import BynarRuntime
import BynarTestSupport
import Orchestrator
import Foundation
import Testing

/// Operator hooks with two real orchestrators on one broker: each host or service going
/// up or down runs the hook once, with PicoRed's arguments and the event's environment;
/// a hook that overruns its timeout is killed with everything it started.
@Suite(.serialized) struct HookTests {
    /// Running (a zombie waiting for a reaper is not).
    static func alive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        return !(stat.split(separator: ")").last?.hasPrefix(" Z") ?? true)
    }

    @Test func hooksRunOncePerEventAcrossTwoOrchestrators() async throws {
        guard TestBroker.available else { return }
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-hooks")
        let log = directory + "/hook.log"
        let pids = directory + "/sleepers"
        let recorder = directory + "/record-hook"
        try """
        #!/bin/sh
        echo "$1 $2 $3 id=$BYNAR_EVENT_ID time=$BYNAR_EVENT_TIME host=$BYNAR_HOST service=$BYNAR_SERVICE state=$BYNAR_STATE" >> \(log)
        """.write(toFile: recorder, atomically: true, encoding: .utf8)
        let sleeper = directory + "/slow-hook"
        // Starts a grandchild and waits for it: the timeout must kill both.
        try "#!/bin/sh\nsleep 60 &\necho \"$2 $!\" >> \(pids)\nwait\n".write(toFile: sleeper, atomically: true, encoding: .utf8)
        chmod(recorder, 0o755)
        chmod(sleeper, 0o755)
        var orchestrators: [ServiceProcess] = []
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let results = Collector(try await tap.subscribe(Topics.hookEvents, as: Bynar_V1_HookResult.self))
        let notes = Collector(try await tap.subscribeNotifications(Topics.notifications))
        let hostStates = Collector(try await tap.subscribe(Topics.hostState(host: "stor9"), as: Bynar_V1_HostState.self))
        let births = Collector(try await tap.subscribe(Topics.serviceStatus(host: "+", service: "orchestrator"), as: Bynar_V1_ServiceStatus.self))
        defer {
            for orchestrator in orchestrators { orchestrator.signal(SIGTERM) }
            broker.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
        for name in ["o1", "o2"] {
            let home = directory + "/" + name
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
            orchestrators.append(try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: name, directory: home, extraConfig: """
                "orchestrator": {"hosts": [{"host": "stor9", "address": "10.9.9.9"}],
                                 "hooks": [{"command": "\(recorder)"}, {"command": "\(sleeper)", "timeout_seconds": 1}]}
                """))
        }
        #expect(await births.wait(timeout: .seconds(20)) { Set($0.filter { $0.payload.state == .birth }.map(\.payload.host)) == ["o1", "o2"] })
        try await Task.sleep(for: .milliseconds(300))

        func lines() -> [String] {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init).filter { $0.contains("host=stor9") }
        }
        // A service on stor9 is born: "detector up" and "host up", once each.
        let service = try await connectedBus(broker, service: "detector", host: "stor9", clientId: "detector-stor9", announce: true, session: 4)
        await service.markReady()
        #expect(await Collector<Int>.poll(timeout: .seconds(10)) { lines().count >= 2 })
        // It shuts down: "detector down" and "host down" (its only service).
        await service.shutdown()
        #expect(await Collector<Int>.poll(timeout: .seconds(10)) { lines().count >= 4 })
        try await Task.sleep(for: .seconds(2))  // time for a duplicate to show up, if any

        let seen = lines()
        #expect(seen.count == 4, "each event once across both orchestrators: \(seen)")
        let heads = seen.map { $0.split(separator: " ").prefix(3).joined(separator: " ") }
        #expect(Set(heads) == ["detector 10.9.9.9 up", "host 10.9.9.9 up", "detector 10.9.9.9 down", "host 10.9.9.9 down"])
        #expect(seen.allSatisfy { $0.contains(" time=20") && $0.contains("Z host=stor9") })
        #expect(seen.filter { $0.hasPrefix("detector") }.allSatisfy { $0.contains("service=detector") })
        #expect(seen.filter { $0.hasPrefix("host") }.allSatisfy { $0.contains("service= ") })
        let ids = seen.compactMap { $0.split(separator: " ").first { $0.hasPrefix("id=") } }
        #expect(Set(ids).count == 4, "distinct event ids")

        // Every run is published: the recorder exits 0, the slow hook is killed at 1 s.
        #expect(await results.wait(timeout: .seconds(10)) { $0.filter { $0.payload.arguments.first != "orchestrator" && $0.payload.arguments.contains("10.9.9.9") }.count >= 8 })
        let ours = results.all.map(\.payload).filter { $0.arguments.contains("10.9.9.9") }
        #expect(ours.count == 8)
        #expect(ours.filter { $0.hook == recorder }.allSatisfy { $0.exitStatus == 0 && !$0.timedOut })
        #expect(ours.filter { $0.hook == sleeper }.allSatisfy { $0.timedOut && $0.exitStatus == -1 && $0.durationMs < 5000 })
        // Each failed run is told to people by the orchestrator itself (sent until a
        // notifier answers; none runs here), once; the successful ones are not.
        // (The orchestrators' own births ran the hooks for o1 and o2 too.)
        #expect(await notes.wait(timeout: .seconds(10)) { $0.filter { $0.payload.title.contains("Operator hook") && $0.payload.host == "stor9" }.count >= 4 })
        try await Task.sleep(for: .milliseconds(500))
        let told = notes.all.map(\.payload).filter { $0.title.contains("Operator hook") && $0.host == "stor9" }
        #expect(told.count == 4, "\(told.map { "\($0.host): \($0.title)" })")
        #expect(told.allSatisfy { $0.title.hasPrefix("Operator hook \(sleeper) timed out after 1.") && $0.host == "stor9" && $0.severity == .warning })
        #expect(told.allSatisfy { $0.text.contains("Arguments: ") && $0.text.contains(" 10.9.9.9 ") && $0.nextAction.contains("not retried") })
        notes.cancel()
        // The grandchildren died with their process group.
        let sleepers = ((try? String(contentsOfFile: pids, encoding: .utf8)) ?? "").split(separator: "\n")
            .filter { $0.hasPrefix("10.9.9.9 ") }.compactMap { Int32($0.split(separator: " ").last ?? "") }
        #expect(sleepers.count == 4)
        #expect(sleepers.allSatisfy { !Self.alive($0) }, "no hook child outlived its timeout")

        // Membership: the retained host state says stor9 is down, its detector too.
        #expect(await hostStates.wait(timeout: .seconds(5)) { $0.last?.payload.up == false })
        #expect(hostStates.all.last?.payload.services.first { $0.service == "detector" }?.up == false)
        results.cancel()
        hostStates.cancel()
        births.cancel()
        await tap.shutdown()
    }

    @Test("a host born the moment the orchestrator announces itself runs its hooks: the birth means the hook subscription is live",
          .timeLimit(.minutes(1)))  // an orchestrator that never announces itself fails here, not hangs
    func aBirthRightAfterTheOrchestratorsRunsItsHooks() async throws {
        guard TestBroker.available else { return }
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-hooks-early")
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let results = Collector(try await tap.subscribe(Topics.hookEvents, as: Bynar_V1_HookResult.self))
        let births = try await tap.subscribe(Topics.serviceStatus(host: "orch", service: "orchestrator"), as: Bynar_V1_ServiceStatus.self)
        // Connected before the orchestrator starts; announces itself the instant the
        // orchestrator's birth arrives (no polling in between).
        let agent = try await connectedBus(broker, service: "detector", host: "early", clientId: "detector-early", announce: true, session: 1)
        let orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orch", directory: directory, extraConfig: """
            "orchestrator": {"hosts": [{"host": "early", "address": "10.7.7.7"}], "hooks": [{"command": "/bin/true"}]}
            """)
        defer {
            orchestrator.signal(SIGTERM)
            broker.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
        for await status in births where status.payload.state == .birth {
            await agent.markReady()
            break
        }
        #expect(await results.wait(timeout: .seconds(10)) { Set($0.map(\.payload.arguments).filter { $0.dropFirst().first == "10.7.7.7" }) == [["detector", "10.7.7.7", "up"], ["host", "10.7.7.7", "up"]] },
                "hook runs: \(results.all.map(\.payload.arguments))")
        await agent.shutdown()
        results.cancel()
        await tap.shutdown()
    }

    @Test("a flapping host runs at most the per-host cap of hook events a minute")
    func hookFloodIsCapped() async throws {
        guard TestBroker.available else { return }
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-hook-flood")
        let log = directory + "/hook.log"
        let recorder = directory + "/record-hook"
        try "#!/bin/sh\necho \"$1 $2 $3\" >> \(log)\n".write(toFile: recorder, atomically: true, encoding: .utf8)
        chmod(recorder, 0o755)
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let births = Collector(try await tap.subscribe(Topics.serviceStatus(host: "o1", service: "orchestrator"), as: Bynar_V1_ServiceStatus.self))
        let orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "o1", directory: directory, extraConfig: """
            "orchestrator": {"hooks": [{"command": "\(recorder)"}], "hook_limit": {"per_minute": 50, "per_host_per_minute": 4}}
            """)
        defer {
            orchestrator.signal(SIGTERM)
            broker.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
        #expect(await births.wait(timeout: .seconds(20)) { $0.contains { $0.payload.state == .birth } })
        try await Task.sleep(for: .milliseconds(300))
        // What detector.stor9's password allows: 200 statuses on its own topic, each a new
        // session flipping between birth and death (2 transitions each: service and host).
        for index in 0..<200 {
            var status = Bynar_V1_ServiceStatus()
            status.host = "stor9"
            status.service = "detector"
            status.state = index % 2 == 0 ? .birth : .death
            status.session = UInt64(index + 1)
            try await tap.publish(status, to: Topics.serviceStatus(host: "stor9", service: "detector"))
        }
        try await Task.sleep(for: .seconds(3))
        // stor9's only: the orchestrator's own birth may reach its hook subscription live too.
        let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains(" stor9 ") }
        print("hook flood: 200 statuses (400 transitions) ran \(lines.count) hook events with per_host_per_minute 4")
        #expect(lines.count == 4, "\(lines)")
        births.cancel()
        await tap.shutdown()
    }
}

/// What may become a hook's argv: host names, addresses and service names only.
struct HookArgumentTests {
    @Test func optionsAndShellTextNeverReachAHook() {
        for good in ["stor-07", "stor07.dc1.example.com", "10.0.3.7", "fe80::1", "disk-manager", "host"] {
            #expect(HookRunner.unsafeArgument(good, "host") == nil, "\(good)")
        }
        for bad in ["-oProxyCommand=id", "a b", "h1;id", "$(id)", "h1\nh2", "", String(repeating: "a", count: 300), "hôst"] {
            #expect(HookRunner.unsafeArgument(bad, "host") != nil, "\(bad)")
        }
    }
}
