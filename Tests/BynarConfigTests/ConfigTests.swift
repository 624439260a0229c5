import BynarConfig
import Foundation
import Testing

struct ConfigTests {
    @Test func emptyConfigGivesDefaults() throws {
        let config = try ConfigLoader.parse("{}")
        #expect(config == BynarConfig())
        #expect(config.broker.host == "127.0.0.1")
        #expect(config.broker.port == 1883)
        #expect(config.dbLocation == "/var/lib/bynar")
    }

    @Test func bynarJsonFromTheOriginalLoads() throws {
        // The original Bynar's bynar.json fields, as its README showed them.
        let config = try ConfigLoader.parse("""
        {
          "backend": "ceph",
          "vault_endpoint": "https://vault:8200", "vault_token": "token",
          "jira_user": "bynar", "jira_password": "pw", "jira_host": "https://jira.example.com",
          "jira_issue_type": "3", "jira_priority": "4", "jira_project_id": "OPS", "jira_ticket_assignee": "dc-tech",
          "proxy": "http://proxy.example.com:3128",
          "database": {"username": "u", "password": "p", "port": 5432, "dbname": "bynar", "endpoint": "db"},
          "slack_webhook": "https://hooks.slack.com/services/T/B/X", "slack_channel": "#storage", "slack_botname": "bynar",
          "manager_host": "localhost", "manager_port": 5555,
          "daemon_output": "/var/log/bynar.log", "daemon_pid": "/var/run/bynar.pid",
          "db_location": "/srv/bynar",
          "broker": {"host": "mqtt.example.com", "port": 8883, "username": "detector.h1", "password": "s"}
        }
        """)
        #expect(config.jiraProjectId == "OPS")
        #expect(config.slackChannel == "#storage")
        #expect(config.database?.port == 5432)
        #expect(config.dbLocation == "/srv/bynar")
        #expect(config.broker.port == 8883)
        #expect(config.broker.keepaliveSeconds == 30, "unset nested fields keep their defaults")
        // None of Bynar's fields is ignored silently: mapped, or named with what replaces it.
        #expect(config.diskManager.ceph == CephBackendConfig(), "backend \"ceph\" turns on the Ceph backend")
        let notes = config.legacyNotes.joined(separator: "\n")
        for field in ["backend", "manager_host", "vault_endpoint", "daemon_output", "database"] {
            #expect(notes.contains(field), "\(field) is not named at start: \(notes)")
        }
    }

    @Test("Bynar's ceph.json next to bynar.json sets the Ceph backend's config file and cephx user; another backend is refused")
    func bynarsCephJsonAndBackendAreMapped() throws {
        let directory = try FileManager.default.url(for: .itemReplacementDirectory, in: .userDomainMask, appropriateFor: URL(fileURLWithPath: "/tmp"), create: true).path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try #"{"backend": "ceph", "db_location": "/tmp/x"}"#.write(toFile: directory + "/bynar.json", atomically: true, encoding: .utf8)
        try #"{"config_file": "/etc/ceph/prod.conf", "user_id": "bynar", "pool_name": "rbd"}"#.write(toFile: directory + "/ceph.json", atomically: true, encoding: .utf8)
        let loaded = try ConfigLoader.load(path: directory + "/bynar.json", environment: [:])
        #expect(loaded.config.diskManager.ceph?.configFile == "/etc/ceph/prod.conf")
        #expect(loaded.config.diskManager.ceph?.clientName == "client.bynar")
        // An explicit disk_manager.ceph wins over the legacy mapping.
        try "[global]\n".write(toFile: directory + "/ceph.conf", atomically: true, encoding: .utf8)
        let explicit = try ConfigLoader.parse(#"{"backend": "ceph", "disk_manager": {"ceph": {"client_name": "client.ops", "config_file": "\#(directory)/ceph.conf"}}}"#)
        #expect(explicit.diskManager.ceph?.clientName == "client.ops")
        let error = try #require(throws: ConfigError.self) { try ConfigLoader.parse(#"{"backend": "gluster"}"#) }
        #expect(error.problems.first?.field == "backend" && error.problems.first?.problem.contains("disk_manager.filesystem") == true, "\(error)")
        #expect(try ConfigLoader.parse("{}").legacyNotes.isEmpty)
    }

    @Test func problemsNameTheFieldAndWhy() throws {
        let error = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse("""
            {"broker": {"port": 0, "prot": 1, "reconnect_min_seconds": 10, "reconnect_max_seconds": 5,
                        "tls": {"cert_file": "/nonexistent/cert.pem"}},
             "log_level": "loud", "jira_hots": "x"}
            """)
        }
        let fields = Dictionary(error.problems.map { ($0.field, $0.problem) }, uniquingKeysWith: { $0 + "; " + $1 })
        #expect(fields["broker.port"] == "must be 1-65535, got 0")
        #expect(fields["broker.prot"] == "unknown field")
        #expect(fields["jira_hots"] == "unknown field")
        #expect(fields["log_level"]?.contains("must be one of") == true)
        #expect(fields["broker.reconnect_max_seconds"] == "must be at least reconnect_min_seconds (10), got 5")
        #expect(fields["broker.tls"]?.contains("needs ca_file or ca_path") == true)
        #expect(fields["broker.tls.cert_file"]?.contains("No such file or directory") == true)
        #expect(error.description.contains("problems:"))
    }

    @Test func wrongTypesAreNamed() throws {
        let error = try #require(throws: ConfigError.self) { try ConfigLoader.parse(#"{"broker": {"port": "eighty"}}"#) }
        #expect(error.problems.map(\.description) == [#"broker.port: expected a whole number in -9223372036854775808...9223372036854775807, found "eighty""#])
        let quoted = try #require(throws: ConfigError.self) { try ConfigLoader.parse(#"{"jira_password": 1234}"#) }
        #expect(quoted.problems.map(\.description) == ["jira_password: expected a string, found 1234; quote it"])
        let notObject = try #require(throws: ConfigError.self) { try ConfigLoader.parse(#"[1, 2]"#) }
        #expect(notObject.problems.map(\.description) == ["(top level): expected a JSON object, found array"])
        let notJSON = try #require(throws: ConfigError.self) { try ConfigLoader.parse(#"{"broker": "#) }
        #expect(notJSON.description.contains("not valid JSON"))
    }

    @Test func environmentOverridesTheFile() throws {
        let config = try ConfigLoader.parse(#"{"broker": {"port": 1883}, "jira_password": "file"}"#, environment: [
            "BYNAR_BROKER__PORT": "8883",
            "BYNAR_BROKER__HOST": "mqtt.internal",
            "BYNAR_JIRA_PASSWORD": "1234",
            "BYNAR_LOG_LEVEL": "debug",
            "PATH": "/usr/bin",
        ])
        #expect(config.broker.port == 8883)
        #expect(config.broker.host == "mqtt.internal")
        #expect(config.jiraPassword == "1234", "a string field stays a string even when it looks like a number")
        #expect(config.logLevel == "debug")

        let error = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse("{}", environment: ["BYNAR_BROKER__PROT": "1", "BYNAR_BROKER__PORT": "x"])
        }
        #expect(error.description.contains("broker.port: expected a whole number"))
        let typo = try #require(throws: ConfigError.self) { try ConfigLoader.parse("{}", environment: ["BYNAR_BROKER__PROT": "1"]) }
        #expect(typo.problems.map(\.description) == ["broker.prot: unknown field (set by BYNAR_BROKER__PROT)"])
    }

    @Test func filesOnDisk() throws {
        let directory = NSTemporaryDirectory() + "bynar-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/bynar.json"
        try #"{"host": "store-17", "broker": {"port": 1884}}"#.write(toFile: path, atomically: true, encoding: .utf8)

        let loaded = try ConfigLoader.load(path: path, environment: ["BYNAR_BROKER__PORT": "1885"])
        #expect(loaded.path == path)
        #expect(loaded.config.host == "store-17")
        #expect(loaded.config.broker.port == 1885)
        #expect(loaded.overrides == ["BYNAR_BROKER__PORT"])

        let viaEnvironment = try ConfigLoader.load(environment: ["BYNAR_CONFIG": path])
        #expect(viaEnvironment.config.broker.port == 1884)

        // An explicit path that does not exist is an error; the default path may be absent.
        let missing = try #require(throws: ConfigError.self) { try ConfigLoader.load(path: directory + "/nope.json", environment: [:]) }
        #expect(missing.description == "config \(directory)/nope.json: (top level): cannot read: No such file or directory")

        try #"{"host": "bad/host"}"#.write(toFile: path, atomically: true, encoding: .utf8)
        let bad = try #require(throws: ConfigError.self) { try ConfigLoader.load(path: path, environment: [:]) }
        #expect(bad.description.hasPrefix("config \(path): host: must not contain \"/\""))
    }

    @Test func passwordRules() throws {
        let both = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse(#"{"broker": {"username": "u", "password": "p", "password_file": "/etc/hostname"}}"#)
        }
        #expect(both.problems.map(\.field) == ["broker.password_file"])
        let noUser = try #require(throws: ConfigError.self) { try ConfigLoader.parse(#"{"broker": {"password": "p"}}"#) }
        #expect(noUser.problems.map(\.description) == ["broker.username: is required when a password is set"])
    }
}

/// Optional backend sections: off unless present; a present one takes defaults for what it leaves out.
@Suite struct OptionalSectionTests {
    @Test func presentSectionGetsDefaults() throws {
        let off = try ConfigLoader.parse("{}")
        #expect(off.diskManager.ceph == nil && off.diskManager.filesystem == nil)
        let on = try ConfigLoader.parse(#"{"disk_manager": {"filesystem": {"mount_root": "/data"}}}"#)
        var expected = FilesystemBackendConfig()
        expected.mountRoot = "/data"
        #expect(on.diskManager.filesystem == expected)
        #expect(on.diskManager.effectiveDeployBackend == "filesystem")
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"disk_manager": {"filesystem": {"mount_rot": "/data"}}}"#) }
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"disk_manager": {"filesystem": {"filesystem": "btrfs"}}}"#) }
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"disk_manager": {"deploy_backend": "ceph", "filesystem": {}}}"#) }
        let gluster = try ConfigLoader.parse(#"{"disk_manager": {"gluster": {"heal_poll_seconds": 2}, "filesystem": {}}}"#).diskManager.gluster
        #expect(gluster?.mountRoot == "/srv/gluster" && gluster?.brickDirectory == "brick" && gluster?.healPollSeconds == 2)
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"disk_manager": {"gluster": {"mount_root": "/srv/bynar/g"}, "filesystem": {}}}"#) }
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"disk_manager": {"gluster": {"brick_directory": "a/b"}}}"#) }
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"disk_manager": {"ceph": {"config_file": "/nonexistent/ceph.conf"}}}"#) }
    }

    @Test func metricsAreOnByDefaultOnLoopbackWithAPortPerService() throws {
        let defaults = try ConfigLoader.parse("{}").metrics
        #expect(defaults.enabled && defaults.address == "127.0.0.1")
        #expect(["detector", "disk-manager", "ticketing", "notifier", "orchestrator"].compactMap(defaults.port(of:)) == [9741, 9742, 9743, 9744, 9745])
        #expect(defaults.port(of: "cli") == nil)
        let off = try ConfigLoader.parse("{}", environment: ["BYNAR_METRICS__ENABLED": "false", "BYNAR_METRICS__DISK_MANAGER_PORT": "19742"]).metrics
        #expect(!off.enabled && off.port(of: "disk-manager") == 19742)
        let error = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse(#"{"metrics": {"address": "", "notifier_port": 9741, "orchestrator_port": 70000}}"#)
        }
        #expect(error.problems.map(\.field).sorted() == ["metrics.address", "metrics.notifier_port", "metrics.orchestrator_port"], "\(error)")
    }
}
