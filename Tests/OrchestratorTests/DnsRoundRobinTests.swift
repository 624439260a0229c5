import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// `deploy/handlers/dns-roundrobin`, PicoRed's own use case, against a REAL BIND 9 (Debian's
/// `named`, on loopback, a dynamic zone taking TSIG-signed updates), checked with `dig`: by
/// itself, and as the real orchestrator's hook while hosts come and go on a real broker.
@Suite(.serialized, .enabled(if: BindServer.available, "needs bind9 and bind9-dnsutils (scripts/install-deps)"))
struct DnsRoundRobinTests {
    static let handler = "\(packageRoot)/deploy/handlers/dns-roundrobin"
    static let name = "www.rr.test"

    struct Run {
        var code: Int32?
        var output: String
    }

    /// Runs the handler as a hook would: `HANDLER <app> <ip> <up|down>`.
    static func run(_ arguments: [String], config: String) throws -> Run {
        let log = config + ".out-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let process = try ChildProcess(handler, arguments, outputPath: log, environment: ["DNS_ROUNDROBIN_CONFIG": config])
        _ = process.waitForExit(timeout: .seconds(60))
        return Run(code: process.exitCode, output: (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }

    static func writeConfig(_ bind: BindServer, keyFile: String? = nil, extra: String = "") throws -> String {
        let path = bind.directory + "/dns-roundrobin.conf"
        try """
            # test configuration
            server=127.0.0.1
            port=\(bind.port)
            zone=\(bind.zone)
            name=\(name)
            key_file=\(keyFile ?? bind.keyFile)
            ttl=30
            \(extra)
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("up adds the host's address, twice is harmless; down removes it but never the name's last address; bad input and a wrong key are errors that say why")
    func handlerAgainstRealBind() throws {
        let bind = try BindServer()
        defer { bind.stop() }
        let config = try Self.writeConfig(bind)

        var run = try Self.run(["host", "192.0.2.1", "up"], config: config)
        #expect(run.code == 0, "\(run.output)")
        #expect(try bind.addresses(Self.name) == ["192.0.2.1"])
        run = try Self.run(["host", "192.0.2.1", "up"], config: config)
        #expect(run.code == 0 && run.output.contains("already present"), "\(run.output)")
        run = try Self.run(["host", "192.0.2.2", "up"], config: config)
        #expect(run.code == 0)
        #expect(try bind.addresses(Self.name) == ["192.0.2.1", "192.0.2.2"])
        run = try Self.run(["host", "2001:db8::7", "up"], config: config)
        #expect(run.code == 0, "\(run.output)")
        #expect(try bind.addresses(Self.name, type: "AAAA") == ["2001:db8::7"])

        run = try Self.run(["host", "192.0.2.1", "down"], config: config)
        #expect(run.code == 0 && run.output.contains("removed"), "\(run.output)")
        #expect(try bind.addresses(Self.name) == ["192.0.2.2"])
        run = try Self.run(["host", "192.0.2.1", "down"], config: config)
        #expect(run.code == 0 && run.output.contains("already absent"), "\(run.output)")
        // The last address stays, and the handler says so with status 3 (people are told).
        run = try Self.run(["host", "192.0.2.2", "down"], config: config)
        #expect(run.code == 3 && run.output.contains("last address"), "\(run.output)")
        #expect(try bind.addresses(Self.name) == ["192.0.2.2"])

        // Only the configured apps ("host" by default).
        run = try Self.run(["detector", "192.0.2.9", "up"], config: config)
        #expect(run.code == 0 && run.output.contains("nothing to do"))
        #expect(try bind.addresses(Self.name) == ["192.0.2.2"])

        // Bad arguments and configuration: status 2, naming what was wrong.
        for (arguments, says) in [(["host", "192.0.2.3"], "usage"), (["host", "not-an-ip", "up"], "not an IPv4 or IPv6 address"),
                                  (["host", "192.0.2.3", "sideways"], "state must be up or down"), (["host", "192.0.2.3;reboot", "up"], "not an IPv4")] {
            run = try Self.run(arguments, config: config)
            #expect(run.code == 2 && run.output.contains(says), "\(arguments): \(run.output)")
        }
        let broken = bind.directory + "/broken.conf"
        try "server=127.0.0.1\nport=53x\nzone=rr.test\nname=www.rr.test\nkey_file=\(bind.keyFile)\n".write(toFile: broken, atomically: true, encoding: .utf8)
        run = try Self.run(["host", "192.0.2.3", "up"], config: broken)
        #expect(run.code == 2 && run.output.contains("port must be a number"), "\(run.output)")
        try "server=127.0.0.1\n$(touch /tmp/owned)\n".write(toFile: broken, atomically: true, encoding: .utf8)
        run = try Self.run(["host", "192.0.2.3", "up"], config: broken)
        #expect(run.code == 2 && run.output.contains("not key=value"), "\(run.output)")

        // A key BIND does not know: the update is refused, status 1, nothing changed.
        let stranger = bind.directory + "/stranger.key"
        _ = try FaultyDisk.run("/bin/sh", ["-c", "/usr/sbin/tsig-keygen -a hmac-sha256 bynar-update > \(stranger)"])
        run = try Self.run(["host", "192.0.2.4", "up"], config: try Self.writeConfig(bind, keyFile: stranger))
        #expect(run.code == 1 && run.output.contains("refused or failed"), "\(run.output)")
        #expect(try bind.addresses(Self.name) == ["192.0.2.2"])
        // A server that does not answer: status 1, saying so.
        let nowhere = bind.directory + "/nowhere.conf"
        try "server=127.0.0.1\nport=\(try freeLoopbackPort())\nzone=rr.test\nname=www.rr.test\nkey_file=\(bind.keyFile)\ntimeout=1\n".write(toFile: nowhere, atomically: true, encoding: .utf8)
        run = try Self.run(["host", "192.0.2.4", "up"], config: nowhere)
        #expect(run.code == 1 && run.output.contains("cannot ask"), "\(run.output)")
    }

    @Test("two hosts going down at the same moment cannot take the name's last address away")
    func simultaneousDownsKeepOneAddress() async throws {
        let bind = try BindServer()
        defer { bind.stop() }
        let config = try Self.writeConfig(bind)
        for address in ["192.0.2.1", "192.0.2.2"] { #expect(try Self.run(["host", address, "up"], config: config).code == 0) }
        for _ in 0..<5 {
            let runs = try await withThrowingTaskGroup(of: Run.self) { group in
                for address in ["192.0.2.1", "192.0.2.2"] { group.addTask { try Self.run(["host", address, "down"], config: config) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let left = try bind.addresses(Self.name)
            #expect(left.count == 1, "one address is left: \(left); \(runs.map(\.output))")
            #expect(runs.filter { $0.code == 0 }.count == 1 && runs.filter { $0.code == 1 || $0.code == 3 }.count == 1, "\(runs.map { "\(String(describing: $0.code)) \($0.output)" })")
            // Put the removed one back for the next round.
            for address in ["192.0.2.1", "192.0.2.2"] { #expect(try Self.run(["host", address, "up"], config: config).code == 0) }
        }
    }

    @Test("as the real orchestrator's hook: hosts born are added to the name, a host that goes away is removed, the other stays (real BIND, real broker)")
    func throughTheOrchestratorsHooks() async throws {
        guard TestBroker.available else { return }
        let bind = try BindServer()
        defer { bind.stop() }
        let config = try Self.writeConfig(bind)
        // The orchestrator gives hooks a minimal environment: a wrapper names the config.
        let wrapper = bind.directory + "/dns-hook"
        try "#!/bin/sh\nDNS_ROUNDROBIN_CONFIG=\(config) exec \(Self.handler) \"$@\"\n".write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-dns-hook")
        let tap = try await connectedBus(broker, service: "tap", host: "t")
        let results = Collector(try await tap.subscribe(Topics.hookEvents, as: Bynar_V1_HookResult.self))
        let births = Collector(try await tap.subscribe(Topics.serviceStatus(host: "orch", service: "orchestrator"), as: Bynar_V1_ServiceStatus.self))
        let orchestrator = try ServiceProcess("bynar-orchestrator", brokerPort: broker.port, host: "orch", directory: directory, extraConfig: """
            "orchestrator": {"hosts": [{"host": "web1", "address": "192.0.2.11"}, {"host": "web2", "address": "192.0.2.12"}],
                             "hooks": [{"command": "\(wrapper)", "timeout_seconds": 30}]}
            """)
        defer {
            orchestrator.signal(SIGTERM)
            broker.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
        #expect(await births.wait(timeout: .seconds(20)) { $0.contains { $0.payload.state == .birth } })
        var agents: [Bus] = []
        for host in ["web1", "web2"] {
            let agent = try await connectedBus(broker, service: "detector", host: host, clientId: "detector-\(host)", announce: true, session: 1)
            await agent.markReady()
            agents.append(agent)
        }
        #expect(await Collector<Int>.poll(timeout: .seconds(20)) { (try? bind.addresses(Self.name)) == ["192.0.2.11", "192.0.2.12"] },
                "hosts up are in the name: \(String(describing: try? bind.addresses(Self.name))); hook results \(results.all.map { "\($0.payload.arguments) \($0.payload.exitStatus) \($0.payload.stderrTail)" })")
        // web1 goes away: its address leaves the name, the others stay.
        await agents[0].shutdown()
        #expect(await Collector<Int>.poll(timeout: .seconds(20)) { (try? bind.addresses(Self.name)) == ["192.0.2.12"] },
                "web1 removed: \(String(describing: try? bind.addresses(Self.name))); hook results \(results.all.map { "\($0.payload.arguments) \($0.payload.exitStatus) \($0.payload.stderrTail)" })")
        // Its HookResult follows the run through the outbox.
        #expect(await results.wait(timeout: .seconds(10)) { $0.contains { $0.payload.arguments == ["host", "192.0.2.11", "down"] } })
        try await Task.sleep(for: .milliseconds(500))  // time for a second run to show, if any
        let web1 = results.all.map(\.payload).filter { $0.arguments == ["host", "192.0.2.11", "down"] }
        #expect(web1.count == 1 && web1.first?.exitStatus == 0, "one down run for web1's host, exit 0")
        await agents[1].shutdown()
        results.cancel()
        births.cancel()
        await tap.shutdown()
    }
}
