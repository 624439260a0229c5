import BynarConfig
import Testing

/// The orchestrator section: defaults, the documented shape, and errors that name the field.
@Suite struct OrchestratorConfigTests {
    @Test func defaultsLoadAndUnknownKeysAreRejected() throws {
        let config = try ConfigLoader.parse(#"{"orchestrator": {}}"#).orchestrator
        #expect(config == OrchestratorConfig())
        #expect(!config.dryRun && config.brake.maxOutPerHost == 1 && config.steps.remove.retries == 2)
        #expect(config.operatorKeysFile == nil && config.reannounceStuckSeconds == 14_400 && config.reannounceWaitingSeconds == 86_400)
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"orchestrator": {"no_such_key": 1}}"#) }
    }

    @Test func fullSectionLoads() throws {
        let config = try ConfigLoader.parse("""
            {"orchestrator": {"dry_run": true, "brake": {"max_out_per_host": 2, "removals_per_hour": 12.5},
              "hosts": [{"host": "stor1", "rack": "r1", "cluster": "ceph-a", "address": "10.0.0.1"}, {"host": "stor2"}],
              "steps": {"remove": {"timeout_seconds": 60, "retries": 0}},
              "hooks": [{"command": "/bin/true"}, {"command": "/bin/false", "timeout_seconds": 5}]}}
            """).orchestrator
        #expect(config.dryRun && config.brake.maxOutPerHost == 2 && config.brake.removalsPerHour == 12.5)
        #expect(config.brake.maxOutPerCluster == 2, "unnamed keys keep their defaults")
        #expect(config.hosts == [.init(host: "stor1", rack: "r1", cluster: "ceph-a", address: "10.0.0.1"), .init(host: "stor2")])
        #expect(config.steps.remove == .init(timeoutSeconds: 60, retries: 0) && config.steps.add.retries == 2)
        #expect(config.hooks == [.init(command: "/bin/true", timeoutSeconds: 30), .init(command: "/bin/false", timeoutSeconds: 5)])
        #expect(try ConfigLoader.parse("{}", environment: ["BYNAR_ORCHESTRATOR__DRY_RUN": "true"]).orchestrator.dryRun)
    }

    @Test func badValuesNameTheirField() {
        let cases: [(String, String)] = [
            (#"{"brake": {"max_out_per_host": 0}}"#, "orchestrator.brake.max_out_per_host"),
            (#"{"brake": {"removals_per_hour": 0}}"#, "orchestrator.brake.removals_per_hour"),
            (#"{"hosts": [{"host": "a/b"}]}"#, "orchestrator.hosts.0.host"),
            (#"{"hosts": [{"host": "a"}, {"host": "a"}]}"#, "orchestrator.hosts.1.host"),
            (#"{"steps": {"add": {"timeout_seconds": 0, "retries": 1}}}"#, "orchestrator.steps.add.timeout_seconds"),
            (#"{"hooks": [{"command": "relative/hook"}]}"#, "orchestrator.hooks.0.command"),
            (#"{"hooks": [{"command": "/nonexistent/hook"}]}"#, "orchestrator.hooks.0.command"),
            (#"{"signing_key_file": "/nonexistent/key"}"#, "orchestrator.signing_key_file"),
            (#"{"request_timeout_seconds": 0}"#, "orchestrator.request_timeout_seconds"),
            (#"{"operator_keys_file": "/nonexistent/operator-keys"}"#, "orchestrator.operator_keys_file"),
            (#"{"reannounce_stuck_seconds": -1}"#, "orchestrator.reannounce_stuck_seconds"),
            (#"{"reannounce_waiting_seconds": -5}"#, "orchestrator.reannounce_waiting_seconds"),
        ]
        for (section, field) in cases {
            do {
                _ = try ConfigLoader.parse(#"{"orchestrator": \#(section)}"#)
                Issue.record("\(section) was accepted")
            } catch {
                #expect("\(error)".contains(field), "\(section): \(error)")
            }
        }
    }
}
