import BynarBus
import BynarConfig
import BynarProto
import BynarRuntime
import BynarStore
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// The notifier's offline commands, for operators, reading this host's notifier store:
///
///     bynar-notifier digest [--hours 24] [--html] [--config PATH]   the digest report
///     bynar-notifier status [--config PATH]                         queues and parked messages
///     bynar-notifier send-test [--count N] [--severity S] [--config PATH]
///                                   publish N test notifications (checks Slack/e-mail end to end)
///
/// `digest` and `status` read the store the running service writes (SQLite in WAL mode;
/// reading does not disturb it) and send nothing.
public enum NotifierCommands {
    /// Every command with its usage and what it does, for `--help`.
    public static let usage: [(usage: String, summary: String)] = [
        ("digest [--hours H] [--html] [--config PATH]", "the digest report"),
        ("status [--config PATH]", "queues and parked messages"),
        ("send-test [--count N] [--severity info|warning|error] [--config PATH]", "publish N test notifications (checks Slack/e-mail end to end)"),
    ]

    /// Runs the command in `arguments` (without the program name) and returns its exit
    /// status, or nil when `arguments` names no offline command (run the service).
    public static func run(_ arguments: [String]) async -> Int32? {
        guard let command = arguments.first, !command.hasPrefix("-") else { return nil }
        let rest = Array(arguments.dropFirst())
        switch command {
        case "digest": return digest(rest)
        case "status": return status(rest)
        case "send-test": return await sendTest(rest)
        default:
            writeToStandardError("bynar-notifier: unknown command \"\(command)\" (commands: digest, status, send-test; no command runs the service)")
            return 64
        }
    }

    static func digest(_ arguments: [String]) -> Int32 {
        let usage = "usage: bynar-notifier digest [--hours H] [--html] [--config PATH]"
        var hours = 24.0
        var html = false
        var configPath: String?
        var rest = arguments[...]
        while let argument = rest.popFirst() {
            switch argument {
            case "--html": html = true
            case "--hours":
                guard let value = rest.popFirst().flatMap(Double.init), value > 0 else {
                    writeToStandardError("bynar-notifier digest: --hours needs a number of hours above 0\n\(usage)")
                    return 64
                }
                hours = value
            case "--config":
                guard let path = rest.popFirst() else { writeToStandardError(usage); return 64 }
                configPath = path
            default:
                writeToStandardError("bynar-notifier digest: unknown argument \"\(argument)\"\n\(usage)")
                return 64
            }
        }
        guard let store = openStore(configPath) else { return 78 }
        do {
            let now = NotifierClock.nowUnixMs()
            let since = now - Int64(hours * 3_600_000)
            let report = DigestReport(fromUnixMs: since, toUnixMs: now, incidents: try store.incidents(sinceUnixMs: since), pools: try store.pools(sinceUnixMs: now - DigestReport.poolsKeptMs))
            print(html ? report.html : report.text, terminator: "")
            return 0
        } catch {
            writeToStandardError("bynar-notifier digest: cannot read the notifier store: \(error)")
            return 1
        }
    }

    static func status(_ arguments: [String]) -> Int32 {
        var configPath: String?
        if arguments.count == 2, arguments[0] == "--config" {
            configPath = arguments[1]
        } else if !arguments.isEmpty {
            writeToStandardError("usage: bynar-notifier status [--config PATH]")
            return 64
        }
        guard let store = openStore(configPath) else { return 78 }
        do {
            let counts = try store.queueCounts()
            print("channel  waiting  unsent  parked")
            for channel in ["slack", "email"] {
                let count = counts[channel] ?? .init()
                print("\(channel.padding(to: 7))  \(String(count.pending).padding(to: 7))  \(String(count.outgoing).padding(to: 6))  \(count.parked)")
            }
            let parked = try store.parked()
            if !parked.isEmpty {
                print("\nparked (refused; kept, not retried):")
                for entry in parked {
                    print("  \(MessageText.timestamp(entry.parkedUnixMs))  \(entry.channel)  \(entry.subject)\n    \(entry.error)")
                }
            }
            return 0
        } catch {
            writeToStandardError("bynar-notifier status: cannot read the notifier store: \(error)")
            return 1
        }
    }

    /// Publishes `--count` test notifications on the notification topic, as fast as the
    /// broker takes them, so an operator sees them arrive (one message, or one summary).
    static func sendTest(_ arguments: [String]) async -> Int32 {
        let usage = "usage: bynar-notifier send-test [--count N] [--severity info|warning|error] [--config PATH]"
        var count = 1
        var severity = Bynar_V1_Notification.Severity.info
        var configPath: String?
        var rest = arguments[...]
        while let argument = rest.popFirst() {
            switch (argument, rest.popFirst()) {
            case ("--count", let value?) where Int(value).map({ $0 >= 1 }) == true: count = Int(value)!
            case ("--severity", "info"): severity = .info
            case ("--severity", "warning"): severity = .warning
            case ("--severity", "error"): severity = .error
            case ("--config", let path?): configPath = path
            default:
                writeToStandardError("bynar-notifier send-test: bad argument \"\(argument)\"\n\(usage)")
                return 64
            }
        }
        let config: BynarConfig
        do { config = try ConfigLoader.load(path: configPath).config } catch {
            writeToStandardError("bynar-notifier: \(error)")
            return 78
        }
        let host = config.host ?? localHostName()
        var broker = config.broker
        broker.clientId = "notifier-send-test-\(host)-\(getpid())"
        var logger = Logger(label: "bynar.notifier.send-test")
        logger.logLevel = .warning
        let bus: Bus
        do {
            bus = try Bus(config: broker, identity: .init(service: "bynar-cli", host: host, session: 1), logger: logger, announce: false)
        } catch {
            writeToStandardError("bynar-notifier send-test: \(error)")
            return 1
        }
        bus.start()
        do {
            try await bus.waitUntilConnected(timeout: .seconds(10))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 1...count {
                    var notification = Bynar_V1_Notification()
                    notification.severity = severity
                    notification.title = "Test notification \(index) of \(count) from bynar-notifier send-test"
                    notification.host = host
                    notification.nextAction = "nothing: this is a test"
                    group.addTask { _ = try await bus.publish(notification, to: Topics.notifications) }
                }
                try await group.waitForAll()
            }
        } catch {
            await bus.shutdown()
            writeToStandardError("bynar-notifier send-test: \(error)")
            return 1
        }
        await bus.shutdown()
        print("published \(count) test notification\(count == 1 ? "" : "s") on \(Topics.notifications)")
        return 0
    }

    private static func openStore(_ configPath: String?) -> NotifierStore? {
        let config: BynarConfig
        do { config = try ConfigLoader.load(path: configPath).config } catch {
            writeToStandardError("bynar-notifier: \(error)")
            return nil
        }
        let path = "\(config.dbLocation)/\(NotifierService.serviceName).sqlite"
        guard access(path, R_OK) == 0 else {
            writeToStandardError("bynar-notifier: no notifier store at \(path) (has the notifier run on this host with db_location \(config.dbLocation)?)")
            return nil
        }
        do {
            return NotifierStore(store: try LocalStore(path: path, migrations: NotifierService.migrations))
        } catch {
            writeToStandardError("bynar-notifier: cannot open \(path): \(error)")
            return nil
        }
    }
}
