import ArgumentParser
import BynarAuth
import BynarBus
import BynarConfig
import BynarProto
import Logging
#if canImport(Glibc)
import Glibc
#endif

@main
struct Bynar: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bynar",
        abstract: "Operate Bynar: disks, incidents, maintenance, tickets, the cluster's state, parallel OSD deploys, the bus.",
        discussion: """
        Exit status: 0 done; 1 refused, failed or partly failed (the message says what and why);
        3 safe-to-remove answered "not safe"; 64 bad usage; 69 the broker or a disk-manager
        could not be reached; 78 bad config or key file.
        """,
        version: bynarVersion,
        subcommands: [Disks.self, Incidents.self, Maintenance.self, Tickets.self, Cluster.self, Apps.self, Deploy.self, Tap.self, Services.self, Keys.self, Hosts.self, Demo.self]
    )
}

/// How the CLI reaches the broker: the host's config, with flags on top.
struct BrokerOptions: ParsableArguments {
    @Option(name: .customLong("config"), help: "Config file (default: $BYNAR_CONFIG, else /etc/bynar/bynar.json if present).")
    var configPath: String?

    @Option(help: "Broker as HOST:PORT, overriding the config.")
    var broker: String?

    @Option(help: "Seconds to wait for the broker.")
    var timeout: Double = 5

    func connect(purpose: String) async throws -> Bus {
        var config: BynarConfig
        do {
            config = try ConfigLoader.load(path: configPath).config
        } catch {
            throw CLIFailure("\(error)", code: CLIFailure.config)
        }
        if let broker {
            let parts = broker.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]), (1...65535).contains(port) else {
                throw ValidationError("--broker must be HOST:PORT, got \"\(broker)\"")
            }
            config.broker.host = String(parts[0])
            config.broker.port = port
        }
        let host = config.host ?? "cli"
        // A CLI run is short-lived: no persistent session, no birth/death.
        config.broker.sessionExpirySeconds = 0
        config.broker.clientId = "bynar-cli-\(host)-\(getpid())"
        var logger = Logger(label: "bynar.cli")
        logger.logLevel = .critical
        let bus = try Bus(config: config.broker, identity: .init(service: "bynar-cli", host: host, session: 0), logger: logger, announce: false)
        bus.start()
        do {
            try await bus.waitUntilConnected(timeout: .milliseconds(Int(timeout * 1000)))
        } catch {
            await bus.shutdown()
            throw CLIFailure("\(purpose): \(error)", code: CLIFailure.unavailable)
        }
        return bus
    }

    /// Connects, runs `body`, and shuts the bus down before returning, also when `body`
    /// throws. (A shutdown left to a detached task raced the process's exit: the network
    /// thread could still be running when the process tore down, and crashed it.)
    func withBus<T>(purpose: String, _ body: (Bus) async throws -> T) async throws -> T {
        let bus = try await connect(purpose: purpose)
        do {
            let result = try await body(bus)
            await bus.shutdown()
            return result
        } catch {
            await bus.shutdown()
            throw error
        }
    }
}

/// The operator's signing key for disk-manager commands.
struct KeyOptions: ParsableArguments {
    static let defaultPath = "/etc/bynar/operator.key"

    // Not an environment variable: every BYNAR_* variable is a config override.
    @Option(name: .customLong("key"), help: "Private key file from `bynar keys generate`.")
    var keyPath: String = KeyOptions.defaultPath

    func client(bus: Bus) throws -> DiskManagerClient {
        let path = keyPath
        do {
            return try DiskManagerClient(bus: bus, privateKeyFile: path)
        } catch {
            throw CLIFailure(
                "cannot use the signing key \(path): \(error) (make one with `bynar keys generate --id ID --out FILE`, add its line to the disk-managers' trusted keys, and pass --key FILE)",
                code: CLIFailure.config
            )
        }
    }
}

/// A failure the CLI reports in one line on stderr, with its exit status.
struct CLIFailure: Error, CustomStringConvertible {
    static let failed: Int32 = 1
    static let notSafe: Int32 = 3
    static let unavailable: Int32 = 69
    static let config: Int32 = 78

    var description: String
    var code: Int32

    init(_ description: String, code: Int32 = CLIFailure.failed) {
        self.description = description
        self.code = code
    }

    /// A bus error while talking to `what`: an unreachable broker or a silent disk-manager
    /// is "unavailable"; everything else failed.
    init(_ error: any Error, talkingTo what: String) {
        if let failure = error as? CLIFailure {
            self = failure
            return
        }
        switch error as? BusError {
        case .unreachable?:
            self.init("\(error)", code: CLIFailure.unavailable)
        case .timedOut?:
            self.init("\(what): no answer (\(error)); is its service running and subscribed?", code: CLIFailure.unavailable)
        default:
            self.init("\(what): \(error)")
        }
    }
}

/// Runs `body`, turning a ``CLIFailure`` (or any other error) into a line on stderr and
/// the exit status.
func reportingFailures(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ExitCode {
        throw error
    } catch let error as ValidationError {
        throw error
    } catch let failure as CLIFailure {
        printError("bynar: \(failure.description)")
        throw ExitCode(failure.code)
    } catch {
        printError("bynar: \(CLIFailure(error, talkingTo: "bus").description)")
        throw ExitCode(CLIFailure(error, talkingTo: "bus").code)
    }
}

/// Writes `line` and a newline to stderr (unbuffered).
func printError(_ line: String) {
    writeAll(2, line + "\n")
}

func writeAll(_ fd: Int32, _ text: String) {
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if written <= 0 {
            if written < 0 && errno == EINTR { continue }
            return
        }
        offset += written
    }
}

/// Prints stdout lines and flushes (a pipe reader sees them at once).
func emit(_ line: String) {
    print(line)
    fflush(nil)
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
