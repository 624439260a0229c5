import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The built-in ticket backend ("local": tickets in ticketing's own store) with the real
/// bynar-ticketing process, a real mosquitto broker and the real `bynar` CLI: the
/// orchestrator's OPEN files a local ticket, `bynar tickets resolve` (a signed operator
/// command ticketing verifies) resolves it, and the RESOLVED event the orchestrator listens
/// for goes out, as for a JIRA ticket a technician resolved. Unsigned, untrusted-key and
/// unknown-ticket commands are refused, each saying why.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed"))
struct LocalTicketsTests {
    /// An operator key pair in `directory`: the private key file and its trusted-keys line.
    static func key(_ id: String, in directory: String) throws -> (path: String, line: String) {
        let files = try KeyFiles.generate(keyID: id)
        let path = "\(directory)/\(id).key"
        try files.privateKeyFileText.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        return (path, files.trustedKeysLine)
    }

    /// Runs the built `bynar` with `arguments` to its end; (exit code, stdout, stderr).
    static func bynar(_ arguments: [String], in directory: String) async throws -> (code: Int32?, out: String, err: String) {
        let tag = UUID().uuidString.prefix(8)
        let out = "\(directory)/cli-\(tag).out"
        let err = "\(directory)/cli-\(tag).err"
        let process = try ChildProcess("/bin/sh", ["-c", "exec \"$0\" \"$@\" 2>\"$STDERR_FILE\"", builtExecutable("bynar")] + arguments,
                                       outputPath: out, environment: ["STDERR_FILE": err])
        let deadline = ContinuousClock.now + .seconds(60)
        while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning { process.stop(SIGKILL) }
        return (process.exitCode, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "", (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }

    /// The local backend, trusting `operatorKeys`; the first follow check an hour away, so
    /// only the resolve itself can make the RESOLVED event come soon.
    static func localConfig(operatorKeys: String?) -> String {
        """
        "ticketing": {"backend": "local"\(operatorKeys.map { ", \"operator_keys_file\": \"\($0)\"" } ?? ""),
          "follow": {"first_check_seconds": 3600, "backoff_factor": 1.0, "max_interval_seconds": 3600}}
        """
    }

    @Test func aLocalTicketIsResolvedWithBynarTicketsResolveAndReportedResolved() async throws {
        try await withHarness { h in
            let operatorKey = try Self.key("operator-1", in: h.directory)
            let mallory = try Self.key("mallory", in: h.directory)
            let trusted = h.directory + "/operator-keys"
            try (operatorKey.line + "\n").write(toFile: trusted, atomically: true, encoding: .utf8)
            let cliConfig = h.directory + "/cli.json"
            try #"{"host": "operator"}"#.write(toFile: cliConfig, atomically: true, encoding: .utf8)
            let connection = ["--config", cliConfig, "--broker", "127.0.0.1:\(h.broker.port)"]
            try await h.start(config: Self.localConfig(operatorKeys: trusted))

            // The orchestrator asks for a ticket: filed in the local backend, announced.
            let opened = try await h.ask(.open, incident: "inc-local")
            #expect(opened.error == "" && opened.created && opened.ticketKey == "BYNAR-1", "\(opened)\n\(h.logs)")
            let event = await h.event(.opened, incident: "inc-local")
            #expect(event?.ticketKey == "BYNAR-1" && event?.backend == "local", "\(String(describing: event))")
            let again = try await h.ask(.open, incident: "inc-local")
            #expect(again.ticketKey == "BYNAR-1" && !again.created, "one ticket per incident")
            let list = try await Self.bynar(["tickets", "list"] + connection, in: h.directory)
            #expect(list.code == 0 && list.out.contains("inc-local") && list.out.contains("BYNAR-1") && list.out.contains("OPENED") && list.out.contains("local"),
                    "\(list)")

            // Refused: an unknown ticket, an untrusted key, an unsigned command.
            let unknown = try await Self.bynar(["tickets", "resolve", "NOPE-9", "--key", operatorKey.path] + connection, in: h.directory)
            #expect(unknown.code == 1 && unknown.err.contains("resolve NOPE-9 REFUSED: resolve refused: no ticket NOPE-9"), "\(unknown)")
            let forged = try await Self.bynar(["tickets", "resolve", "BYNAR-1", "--key", mallory.path] + connection, in: h.directory)
            #expect(forged.code == 1 && forged.err.contains("not authorised: command signed with unknown key \"mallory\""), "\(forged)")
            var unsigned = Bynar_V1_TicketOperatorCommand()
            unsigned.requestID = "unsigned-1"
            unsigned.action = .resolve(.with { $0.ticket = "BYNAR-1" })
            let refused = try await OperatorClient.send(unsigned, on: h.watcher, timeout: .seconds(10))
            #expect(refused.outcome == .refused && refused.reason == "not authorised: command is not signed", "\(refused)")
            #expect(!h.events.all.contains { $0.payload.state == .resolved }, "nothing refused resolved the ticket")

            // The technician's resolve: RESOLVED goes out at once (the follow check was an hour away).
            let resolve = try await Self.bynar(["tickets", "resolve", "BYNAR-1", "--reason", "disk swapped in slot 4", "--key", operatorKey.path] + connection,
                                               in: h.directory)
            #expect(resolve.code == 0 && resolve.out.contains("BYNAR-1 resolved by operator-1: disk swapped in slot 4"), "\(resolve)\n\(h.logs)")
            let resolved = await h.event(.resolved, incident: "inc-local", timeout: .seconds(10))
            #expect(resolved?.ticketKey == "BYNAR-1" && resolved?.backend == "local" && resolved?.detail.contains("by operator-1: disk swapped in slot 4") == true,
                    "\(String(describing: resolved))\n\(h.logs)")
            #expect(try await h.retainedState(incident: "inc-local")?.state == .resolved)
            // Again, by incident id: already resolved.
            let twice = try await Self.bynar(["tickets", "resolve", "inc-local", "--key", operatorKey.path] + connection, in: h.directory)
            #expect(twice.code == 1 && twice.err.contains("BYNAR-1 is already resolved (by operator-1)"), "\(twice)")

            // The disk is back: the orchestrator comments and closes it.
            let close = try await h.ask(.close, incident: "inc-local", comment: "disk back in service")
            #expect(close.error == "" && close.ticketKey == "BYNAR-1", "\(close)\n\(h.logs)")
            #expect(await h.event(.closed, incident: "inc-local")?.ticketKey == "BYNAR-1")
            #expect(h.events.all.filter { $0.payload.state == .resolved }.count == 1)
        }
    }

    /// Without operator keys every resolve is refused, naming the setting; with JIRA the
    /// ticket is resolved in JIRA, not here.
    @Test func resolveIsRefusedWithoutOperatorKeysAndForJiraTickets() async throws {
        try await withHarness { h in
            let operatorKey = try Self.key("operator-1", in: h.directory)
            let cliConfig = h.directory + "/cli.json"
            try #"{"host": "operator"}"#.write(toFile: cliConfig, atomically: true, encoding: .utf8)
            let connection = ["--config", cliConfig, "--broker", "127.0.0.1:\(h.broker.port)", "--key", operatorKey.path]
            try await h.start(host: "t1", config: Self.localConfig(operatorKeys: nil))
            _ = try await h.ask(.open, incident: "inc-nokeys")
            let refused = try await Self.bynar(["tickets", "resolve", "BYNAR-1"] + connection, in: h.directory)
            #expect(refused.code == 1 && refused.err.contains("ticketing.operator_keys_file is not configured"), "\(refused)\n\(h.logs)")
        }
        // A fresh broker: a stopped instance's persistent session would still hold its share.
        try await withHarness { h in
            let operatorKey = try Self.key("operator-1", in: h.directory)
            let cliConfig = h.directory + "/cli.json"
            try #"{"host": "operator"}"#.write(toFile: cliConfig, atomically: true, encoding: .utf8)
            let connection = ["--config", cliConfig, "--broker", "127.0.0.1:\(h.broker.port)", "--key", operatorKey.path]
            let trusted = h.directory + "/operator-keys"
            try (operatorKey.line + "\n").write(toFile: trusted, atomically: true, encoding: .utf8)
            try await h.start(host: "t1", config: h.ticketingConfig(extra: "\"operator_keys_file\": \"\(trusted)\""))
            let jira = try await Self.bynar(["tickets", "resolve", "BYN-1"] + connection, in: h.directory)
            #expect(jira.code == 1 && jira.err.contains("tickets are filed in jira here; resolve BYN-1 there"), "\(jira)\n\(h.logs)")
        }
    }
}
