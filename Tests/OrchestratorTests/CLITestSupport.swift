import BynarAuth
import BynarBus
import BynarTestSupport
import Foundation
import Orchestrator

/// What one run of the built `bynar` executable did.
struct CLIRun {
    var exitCode: Int32?
    var stdout: String
    var stderr: String
}

/// A directory with a config, an operator key pair, and helpers to run `bynar` against
/// `broker`. Removed by ``cleanUp()``.
final class CLIFixture: @unchecked Sendable {
    let broker: TestBroker
    let directory: String
    let keyPath: String
    let trustedKeysPath: String
    let configPath: String

    init(broker: TestBroker) throws {
        self.broker = broker
        directory = try makeTemporaryDirectory(prefix: "bynar-cli")
        keyPath = directory + "/operator.key"
        trustedKeysPath = directory + "/trusted-keys"
        configPath = directory + "/bynar.json"
        // An empty config: nothing from /etc/bynar leaks into the test.
        try #"{"host": "operator"}"#.write(toFile: configPath, atomically: true, encoding: .utf8)
        let files = try KeyFiles.generate(keyID: "operator-1")
        try files.privateKeyFileText.write(toFile: keyPath, atomically: true, encoding: .utf8)
        chmod(keyPath, 0o600)
        try (files.trustedKeysLine + "\n").write(toFile: trustedKeysPath, atomically: true, encoding: .utf8)
    }

    func cleanUp() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    var trustedKeys: TrustedKeys {
        get throws { try TrustedKeys(path: trustedKeysPath) }
    }

    /// The common flags: this fixture's config, the broker, the key.
    var connection: [String] {
        ["--config", configPath, "--broker", "127.0.0.1:\(broker.port)"]
    }

    /// Starts `bynar` with `arguments`; stdout and stderr go to separate files.
    func start(_ arguments: [String], tag: String = UUID().uuidString.prefix(8).lowercased()) throws -> (ChildProcess, String, String) {
        let out = directory + "/\(tag).out"
        let err = directory + "/\(tag).err"
        // sh splits stderr from stdout (ChildProcess writes both to one file).
        let process = try ChildProcess("/bin/sh", ["-c", "exec \"$0\" \"$@\" 2>\"$CLI_TEST_STDERR_FILE\"", builtExecutable("bynar")] + arguments,
                                       outputPath: out, environment: ["CLI_TEST_STDERR_FILE": err])
        return (process, out, err)
    }

    /// Runs `bynar` to its end (at most `timeout`; killed after that).
    func run(_ arguments: [String], timeout: Duration = .seconds(60)) async throws -> CLIRun {
        let (process, out, err) = try start(arguments)
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        if process.isRunning { process.stop(SIGKILL) }
        return CLIRun(
            exitCode: process.exitCode,
            stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
        )
    }

    /// A simulator for `hosts` on its own bus connection, serving.
    func simulator(hosts: [String], disksPerHost: Int, jobDuration: Duration) async throws -> (DiskManagerSimulator, Bus) {
        let bus = try await connectedBus(broker, service: "dm-simulator", host: "sim")
        let simulator = try DiskManagerSimulator(bus: bus, hosts: hosts, disksPerHost: disksPerHost, jobDuration: jobDuration, trustedKeys: trustedKeys)
        try await simulator.start()
        return (simulator, bus)
    }

    /// Writes `lines` to a file in the fixture's directory and returns its path.
    func file(_ name: String, _ lines: [String]) throws -> String {
        let path = directory + "/" + name
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

/// The JSON object on one line of text.
func jsonObject(_ line: some StringProtocol) -> [String: Any]? {
    (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
}
