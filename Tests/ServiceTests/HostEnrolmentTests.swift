import BynarAuth
import BynarBus
import BynarConfig
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// `bynar hosts add|remove` against a real mosquitto running the shipped production
/// configuration (TLS, two listeners, password files and ACL from bynar-broker-auth): the
/// bundle a host gets is installed (`tar -xzpf ... -C /` into a scratch root) and the real
/// services start from it and log in; a removed host is locked out by the broker's reload.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct HostEnrolmentTests {
    /// A production broker for h1 (operators ops and alice), with the cluster's trusted and
    /// operator keys in its auth directory, and a scratch root to install bundles into.
    final class Fixture {
        let production: ProductionBroker
        let directory: String
        let root: String
        let operatorKey: String

        init() throws {
            production = try ProductionBroker(hosts: ["h1"], admins: ["ops", "alice"])
            directory = try makeTemporaryDirectory(prefix: "bynar-enrol")
            root = directory + "/root"
            operatorKey = directory + "/operator.key"
            let files = try KeyFiles.generate(keyID: "operator-1")
            try files.privateKeyFileText.write(toFile: operatorKey, atomically: true, encoding: .utf8)
            try (files.trustedKeysLine + "\n").write(toFile: production.authDirectory + "/trusted-keys", atomically: true, encoding: .utf8)
            try (files.trustedKeysLine + "\n").write(toFile: production.authDirectory + "/operator-keys", atomically: true, encoding: .utf8)
            // The template keeps the services' state in the scratch directory and their
            // metrics off (tests run in parallel); everything else comes from the bundle.
            try #"{"db_location": "\#(directory)/db", "log_level": "debug", "metrics": {"enabled": false}, "broker": {"reconnect_max_seconds": 1}}"#
                .write(toFile: directory + "/template.json", atomically: true, encoding: .utf8)
        }

        deinit { try? FileManager.default.removeItem(atPath: directory) }

        var installDir: String { root + "/etc/bynar" }

        /// The flags every enrolment in these tests uses.
        var place: [String] {
            ["--auth-dir", production.authDirectory, "--auth-tool", packageRoot + "/deploy/mosquitto/bynar-broker-auth",
             "--broker-pid-file", production.broker.directory + "/mosquitto.pid"]
        }

        func add(_ name: String, role: String = "storage", extra: [String] = []) async throws -> CommandRun {
            try await runCommand([builtExecutable("bynar"), "hosts", "add", name, "--role", role, "--broker-host", "localhost",
                                  "--storage-port", "\(production.broker.port)", "--central-port", "\(production.centralPort)",
                                  "--ca", production.caFile, "--config-template", directory + "/template.json",
                                  "--install-dir", installDir, "--out", directory + "/\(name).tar.gz"] + place + extra)
        }

        func remove(_ name: String, role: String = "storage") async throws -> CommandRun {
            try await runCommand([builtExecutable("bynar"), "hosts", "remove", name, "--role", role] + place)
        }

        /// Installs a bundle as the printed instructions say.
        func install(_ name: String) async throws {
            let run = try await runCommand(["/bin/tar", "-xzpf", directory + "/\(name).tar.gz", "-C", "/"])
            #expect(run.exitCode == 0, "\(run.stderr)")
        }

        /// identity -> password, as bynar-broker-auth has them now.
        func credentials() throws -> [String: String] {
            var result: [String: String] = [:]
            for line in try String(contentsOfFile: production.authDirectory + "/credentials", encoding: .utf8).split(separator: "\n") where !line.hasPrefix("#") {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2 { result[String(parts[0])] = String(parts[1]) }
            }
            return result
        }

        /// The environment a unit's EnvironmentFile gives the service.
        func environment(of service: String) throws -> [String: String] {
            var result: [String: String] = [:]
            for line in try String(contentsOfFile: installDir + "/bynar-\(service).env", encoding: .utf8).split(separator: "\n") where !line.hasPrefix("#") {
                let parts = line.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { result[String(parts[0])] = String(parts[1]) }
            }
            return result
        }

        /// Starts the real `bynar-<service>` from the installed bundle.
        func start(_ service: String) throws -> ChildProcess {
            try ChildProcess(builtExecutable("bynar-\(service)"), ["--config", installDir + "/bynar.json"],
                             outputPath: directory + "/\(service).log", environment: try environment(of: service))
        }

        func log(_ service: String) -> String {
            (try? String(contentsOfFile: directory + "/\(service).log", encoding: .utf8)) ?? ""
        }

        /// A bus logged in with the installed bundle's config for `service`.
        func bundleBus(_ service: String) async throws -> Bus {
            let config = try ConfigLoader.load(path: installDir + "/bynar.json", environment: try environment(of: service)).config
            let host = config.host ?? "?"
            return try await connectedBus(production.broker, service: service, host: host) {
                $0 = config.broker
                $0.clientId = "\(service)-\(host)-probe"
            }
        }
    }

    @Test("a storage host enrolled with `bynar hosts add` runs from its bundle; `bynar hosts remove` locks it out and keeps everyone else")
    func aStorageHostIsEnrolledAndRevoked() async throws {
        let fixture = try Fixture()
        let added = try await fixture.add("h2")
        #expect(added.exitCode == 0, "\(added.stdout)\n\(added.stderr)")
        #expect(added.stdout.contains("broker reloaded (SIGHUP to pid"))
        let credentials = try fixture.credentials()
        let h2 = try #require(credentials["detector.h2"])
        #expect(credentials["disk-manager.h2"] != nil)
        // Operators given to the tool by hand earlier are still there.
        #expect(credentials["admin.alice"] != nil && credentials["admin.ops"] != nil)
        // No password on the terminal.
        for password in credentials.values {
            #expect(!added.stdout.contains(password) && !added.stderr.contains(password))
        }
        #expect(try String(contentsOfFile: fixture.production.authDirectory + "/hosts", encoding: .utf8) == "h1\nh2\n")
        let bundleMode = try FileManager.default.attributesOfItem(atPath: fixture.directory + "/h2.tar.gz")[.posixPermissions] as? Int
        #expect(bundleMode == 0o600)

        try await fixture.install("h2")
        for (file, mode) in [("detector.password", 0o600), ("disk-manager.password", 0o600), ("bynar.json", 0o600), ("trusted-keys", 0o644), ("ca.crt", 0o644)] {
            let attributes = try FileManager.default.attributesOfItem(atPath: fixture.installDir + "/" + file)
            #expect(attributes[.posixPermissions] as? Int == mode, "\(file)")
        }
        #expect(try String(contentsOfFile: fixture.installDir + "/detector.password", encoding: .utf8) == h2 + "\n")

        // The real disk-manager starts from the bundle: its birth reaches an operator.
        let admin = try await fixture.production.bus(service: "cli", host: "ops", identity: "admin.ops", clientId: "bynar-cli-ops-enrol")
        let statuses = Collector(try await admin.subscribe(Topics.serviceStatus(host: "h2", service: "disk-manager"), as: Bynar_V1_ServiceStatus.self))
        let diskManager = try fixture.start("disk-manager")
        defer { _ = diskManager.stop(SIGKILL) }
        let born = await statuses.wait(timeout: .seconds(20)) { $0.contains { $0.payload.state == .birth } }
        #expect(born, "no birth from the enrolled disk-manager; its log:\n\(fixture.log("disk-manager"))")
        // The detector's identity works too, and h1 keeps its password.
        let detector = try await fixture.bundleBus("detector")
        await detector.shutdown()
        let h1 = try await fixture.production.bus(service: "detector", host: "h1")
        await h1.shutdown()

        // Adding it again changes nothing but writes the bundle again.
        let again = try await fixture.add("h2")
        #expect(again.exitCode == 0 && again.stdout.contains("enrolled already"), "\(again.stdout)\n\(again.stderr)")
        #expect(try fixture.credentials() == credentials)

        let removed = try await fixture.remove("h2")
        #expect(removed.exitCode == 0, "\(removed.stdout)\n\(removed.stderr)")
        #expect(removed.stdout.contains("identities dropped: detector.h2, disk-manager.h2"))
        // The reload disconnects the running disk-manager; its identity no longer logs in.
        // (mosquitto 2.0.11 re-checks connected clients at the reload.)
        let refused = await eventually(timeout: .seconds(15)) {
            fixture.log("disk-manager").contains("broker refused the connection: Not authorized (reason 135)")
        }
        #expect(refused, "the running disk-manager was not locked out; its log:\n\(fixture.log("disk-manager"))")
        await #expect(throws: BusError.self) { _ = try await fixture.bundleBus("disk-manager") }
        await #expect(throws: BusError.self) { _ = try await fixture.bundleBus("detector") }
        let h1Again = try await fixture.production.bus(service: "detector", host: "h1")
        await h1Again.shutdown()
        #expect(try fixture.credentials()["admin.alice"] == credentials["admin.alice"])
        await admin.shutdown()
    }

    @Test("a central host's bundle runs the real orchestrator with the shared central identity and its own ticketing replies")
    func aCentralHostIsEnrolled() async throws {
        let fixture = try Fixture()
        let added = try await fixture.add("c1", role: "central")
        #expect(added.exitCode == 0, "\(added.stdout)\n\(added.stderr)")
        #expect(try String(contentsOfFile: fixture.production.authDirectory + "/central-hosts", encoding: .utf8) == "c1\n")
        #expect(try String(contentsOfFile: fixture.production.authDirectory + "/acl", encoding: .utf8).contains("topic read bynar/v1/reply/ticketing-c1/#"))
        try await fixture.install("c1")
        // As printed: the signing key is made on the host.
        let key = try await runCommand([builtExecutable("bynar"), "keys", "generate", "--id", "orchestrator-c1", "--out", fixture.installDir + "/orchestrator.key"])
        #expect(key.exitCode == 0, "\(key.stderr)")
        #expect(added.stdout.contains("bynar keys generate --id orchestrator-c1 --out \(fixture.installDir)/orchestrator.key"))
        // Central services run as user bynar: their secrets are group-readable.
        for file in ["bynar.json", "orchestrator.password", "ticketing.password", "notifier.password"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: fixture.installDir + "/" + file)
            #expect(attributes[.posixPermissions] as? Int == 0o640, "\(file)")
        }
        let config = try ConfigLoader.load(path: fixture.installDir + "/bynar.json", environment: try fixture.environment(of: "orchestrator")).config
        #expect(config.broker.port == fixture.production.centralPort)
        #expect(config.broker.username == "orchestrator")
        #expect(config.orchestrator.operatorKeysFile == fixture.installDir + "/operator-keys")
        #expect(config.ticketing.operatorKeysFile == fixture.installDir + "/operator-keys")

        let admin = try await fixture.production.bus(service: "cli", host: "ops", identity: "admin.ops", clientId: "bynar-cli-ops-enrol")
        let statuses = Collector(try await admin.subscribe(Topics.serviceStatus(host: "c1", service: "orchestrator"), as: Bynar_V1_ServiceStatus.self))
        let orchestrator = try fixture.start("orchestrator")
        defer { _ = orchestrator.stop(SIGKILL) }
        let born = await statuses.wait(timeout: .seconds(20)) { $0.contains { $0.payload.state == .birth } }
        #expect(born, "no birth from the enrolled orchestrator; its log:\n\(fixture.log("orchestrator"))")
        await admin.shutdown()

        let removed = try await fixture.remove("c1", role: "central")
        #expect(removed.exitCode == 0, "\(removed.stdout)\n\(removed.stderr)")
        #expect(removed.stdout.contains("no identity of its own"))
        #expect(!(try String(contentsOfFile: fixture.production.authDirectory + "/acl", encoding: .utf8)).contains("ticketing-c1/"))
    }

    @Test("bad input is refused before anything changes, naming what was wrong")
    func badInputChangesNothing() async throws {
        let fixture = try Fixture()
        let hostsBefore = try String(contentsOfFile: fixture.production.authDirectory + "/hosts", encoding: .utf8)
        let aclBefore = try String(contentsOfFile: fixture.production.authDirectory + "/acl", encoding: .utf8)

        let slash = try await fixture.add("h2/x")
        #expect(slash.exitCode == 64 && slash.stderr.contains("invalid host name \"h2/x\": it contains '/'"), "\(slash.stderr)")

        try FileManager.default.removeItem(atPath: fixture.production.authDirectory + "/trusted-keys")
        let noKeys = try await fixture.add("h2")
        #expect(noKeys.exitCode == 78 && noKeys.stderr.contains("cannot read the trusted keys (--trusted-keys): \(fixture.production.authDirectory)/trusted-keys"), "\(noKeys.stderr)")

        try "h2-key ed25519 not-base64\n".write(toFile: fixture.production.authDirectory + "/trusted-keys", atomically: true, encoding: .utf8)
        let badKeys = try await fixture.add("h2")
        #expect(badKeys.exitCode == 78 && badKeys.stderr.contains("trusted-keys: line 1"), "\(badKeys.stderr)")

        try #"{"broker": {"password": "x"}}"#.write(toFile: fixture.directory + "/template.json", atomically: true, encoding: .utf8)
        try (try KeyFiles.generate(keyID: "k").trustedKeysLine + "\n").write(toFile: fixture.production.authDirectory + "/trusted-keys", atomically: true, encoding: .utf8)
        let secret = try await fixture.add("h2")
        #expect(secret.exitCode == 78 && secret.stderr.contains("broker.password: the bundle sets each service's identity"), "\(secret.stderr)")

        let unknown = try await fixture.remove("h9")
        #expect(unknown.exitCode == 1 && unknown.stderr.contains("h9 is not enrolled as a storage host"), "\(unknown.stderr)")
        let last = try await fixture.remove("h1")
        #expect(last.exitCode == 1 && last.stderr.contains("h1 is the last storage host"), "\(last.stderr)")

        #expect(try String(contentsOfFile: fixture.production.authDirectory + "/hosts", encoding: .utf8) == hostsBefore)
        #expect(try String(contentsOfFile: fixture.production.authDirectory + "/acl", encoding: .utf8) == aclBefore)
        #expect(!FileManager.default.fileExists(atPath: fixture.directory + "/h2.tar.gz"))
    }
}

/// What a finished command did.
struct CommandRun {
    var exitCode: Int32?
    var stdout: String
    var stderr: String
}

/// Runs `command` to its end (killed after a minute), stdout and stderr apart.
func runCommand(_ command: [String]) async throws -> CommandRun {
    let directory = try makeTemporaryDirectory(prefix: "bynar-run")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let process = try ChildProcess("/bin/sh", ["-c", "exec \"$0\" \"$@\" 2>\"$RUN_STDERR_FILE\""] + command,
                                   outputPath: directory + "/out", environment: ["RUN_STDERR_FILE": directory + "/err"])
    let deadline = ContinuousClock.now + .seconds(60)
    while process.isRunning && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(20))
    }
    if process.isRunning { _ = process.stop(SIGKILL) }
    return CommandRun(
        exitCode: process.exitCode,
        stdout: (try? String(contentsOfFile: directory + "/out", encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOfFile: directory + "/err", encoding: .utf8)) ?? ""
    )
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return condition()
}
