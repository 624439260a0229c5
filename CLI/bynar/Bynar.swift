import ArgumentParser
import BynarBus
import BynarConfig
import BynarProto
import BynarAuth
import Logging
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

@main
struct Bynar: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bynar",
        abstract: "Operate Bynar: watch the bus and see which services are alive.",
        version: bynarVersion,
        subcommands: [Tap.self, Services.self, Keys.self]
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
        var config = try ConfigLoader.load(path: configPath).config
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
            throw error
        }
        return bus
    }
}

struct Tap: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print bus messages as JSON lines, decoded.")

    @OptionGroup var brokerOptions: BrokerOptions

    @Argument(help: "Topic filters.")
    var topics: [String] = ["bynar/v1/#"]

    @Option(help: "Stop after this many messages.")
    var count: Int?

    func run() async throws {
        let bus = try await brokerOptions.connect(purpose: "tap")
        var seen = 0
        await withTaskGroup(of: Void.self) { group in
            let (lines, output) = AsyncStream.makeStream(of: String.self)
            for filter in topics {
                group.addTask {
                    do {
                        for await message in try await bus.subscribeEnvelopes(filter) {
                            output.yield(Tap.jsonLine(message))
                        }
                    } catch {
                        output.yield("{\"error\": \(Tap.quote("\(error)"))}")
                    }
                }
            }
            for await line in lines {
                print(line)
                fflush(nil)
                seen += 1
                if let count, seen >= count { break }
            }
            group.cancelAll()
        }
        await bus.shutdown()
    }

    static func jsonLine(_ message: EnvelopeSubscription.Element) -> String {
        let body = (try? message.envelope.jsonString()) ?? "null"
        return "{\"topic\": \(quote(message.topic)), \"retained\": \(message.retained), \"envelope\": \(body)}"
    }

    static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

struct Services: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every service's last birth or death, from the retained messages.")

    @OptionGroup var brokerOptions: BrokerOptions

    @Flag(help: "JSON lines instead of a table.")
    var json = false

    @Option(help: "Seconds to collect retained messages.")
    var wait: Double = 1

    func run() async throws {
        let bus = try await brokerOptions.connect(purpose: "services")
        let statuses = try await bus.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self)
        var latest: [String: Bynar_V1_ServiceStatus] = [:]
        let collector = Task {
            var collected: [String: Bynar_V1_ServiceStatus] = [:]
            for await status in statuses {
                collected["\(status.payload.host)/\(status.payload.service)"] = status.payload
                if Task.isCancelled { break }
            }
            return collected
        }
        try await Task.sleep(for: .milliseconds(Int(wait * 1000)))
        await bus.shutdown()
        latest = await collector.value
        let rows = latest.values.sorted { ($0.host, $0.service) < ($1.host, $1.service) }
        if json {
            for status in rows { print((try? status.jsonString()) ?? "{}") }
            return
        }
        print("HOST".padding(20) + "SERVICE".padding(16) + "STATE".padding(8) + "SESSION".padding(9) + "PID")
        for status in rows {
            let state = status.state == .birth ? "up" : (status.deathCause == .cleanShutdown ? "stopped" : "down")
            print(status.host.padding(20) + status.service.padding(16) + state.padding(8) + "\(status.session)".padding(9) + "\(status.pid)")
        }
        if rows.isEmpty { print("(no service has announced itself)") }
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Keys that sign disk-manager commands.",
        subcommands: [Generate.self]
    )

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an Ed25519 key pair: the private key file (mode 0600) and the line for the disk-managers' trusted-keys file."
        )

        @Option(name: .customLong("id"), help: "Key id (no spaces), e.g. orchestrator-1.")
        var keyID: String

        @Option(help: "Where to write the private key file.")
        var out: String

        func run() throws {
            let files = try KeyFiles.generate(keyID: keyID)
            // O_EXCL: never overwrite an existing key; 0600 from the start, not chmod after.
            let fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(KeyFiles.privateKeyFileMode))
            guard fd >= 0 else { throw ValidationError("cannot create \(out): \(String(cString: strerror(errno)))") }
            let bytes = Array(files.privateKeyFileText.utf8)
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            guard written == bytes.count else { throw ValidationError("cannot write \(out)") }
            print(files.trustedKeysLine)
        }
    }
}
