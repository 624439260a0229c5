public import BynarBus
public import BynarConfig
public import BynarStore
import BynarProcess
public import Logging
import ServiceLifecycle
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// Everything a service gets from the runtime.
public struct ServiceContext: Sendable {
    public let config: BynarConfig
    /// The name this host goes by on the bus.
    public let host: String
    public let bus: Bus
    public let store: LocalStore
    /// Events that must not be lost go through here (stored before they are sent).
    public let outbox: Outbox
    public let logger: Logger
    /// Settings read again without a restart (SIGHUP, file watch) register here.
    public let reloader: Reloader
    /// Read-only pages served beside `/metrics` when metrics are on (``HTTPRoutes``).
    public let routes: HTTPRoutes
    /// Set when this process leads a group (``CoordinatedService``).
    public let term: ServiceTerm?

    public init(config: BynarConfig, host: String, bus: Bus, store: LocalStore, outbox: Outbox, logger: Logger, reloader: Reloader = Reloader(),
                routes: HTTPRoutes = HTTPRoutes(), term: ServiceTerm? = nil) {
        self.term = term
        self.config = config
        self.host = host
        self.bus = bus
        self.store = store
        self.outbox = outbox
        self.logger = logger
        self.reloader = reloader
        self.routes = routes
    }
}

/// One Bynar service: its logic lives in `run`, the runtime does the rest.
public protocol BynarService: Sendable {
    /// The service's name on the bus ("detector", "disk-manager", ...).
    static var serviceName: String { get }
    /// Migrations for the service's own tables in its local store.
    static var migrations: [LocalStore.Migration] { get }
    /// Usage lines of the offline commands the executable answers before the service runs
    /// (`check [--json] [--config PATH]`), each with what it does, for `--help`.
    static var commandUsage: [(usage: String, summary: String)] { get }
    init(context: ServiceContext) throws
    /// Does the service's work until graceful shutdown (SIGTERM/SIGINT) is requested,
    /// then returns. Throwing stops the process with a non-zero exit.
    func run() async throws
}

extension BynarService {
    public static var migrations: [LocalStore.Migration] { [] }
    public static var commandUsage: [(usage: String, summary: String)] { [] }
}

/// The `main` of every service executable.
public enum ServiceMain {
    /// Parses `--config PATH`, loads and validates the config, opens the local store,
    /// connects the bus (announcing birth, leaving death as the will), runs the service and
    /// the outbox until SIGTERM/SIGINT, then shuts down cleanly. Exits on bad usage (64)
    /// or bad config (78) with a message that names the problem.
    public static func run<S: BynarService>(_ type: S.Type, arguments: [String] = CommandLine.arguments) async {
        ResidentCode.limitArenas()
        let executable = arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? S.serviceName
        var configPath: String?
        var rest = arguments.dropFirst()
        while let argument = rest.popFirst() {
            switch argument {
            case "--config", "-c":
                guard let path = rest.popFirst() else { fail("\(executable): --config needs a path", code: 64) }
                configPath = path
            case "--version":
                print("\(executable) \(bynarVersion)")
                exit(0)
            case "--help", "-h":
                print(help(S.self, executable: executable))
                exit(0)
            default:
                fail("\(executable): unknown argument \"\(argument)\" (try --help)", code: 64)
            }
        }

        let loaded: ConfigLoader.Loaded
        do {
            loaded = try ConfigLoader.load(path: configPath)
        } catch {
            fail("\(executable): \(error)", code: 78)
        }
        let config = loaded.config
        let output = LogOutput(format: LogOutput.Format(rawValue: config.logFormat) ?? .text, level: Logger.Level(rawValue: config.logLevel) ?? .info,
                               service: S.serviceName, underJournal: getenv("JOURNAL_STREAM") != nil)
        LoggingSystem.bootstrap(output.handler(label:))
        let host = config.host ?? localHostName()
        var logger = Logger(label: "bynar.\(S.serviceName)")
        logger[metadataKey: "host"] = "\(host)"
        logger.info("starting", metadata: ["version": "\(bynarVersion)", "config": "\(loaded.path ?? "defaults")", "overrides": "\(loaded.overrides.joined(separator: ","))"])
        for note in config.legacyNotes { logger.warning("\(note)") }
        let reloader = Reloader()
        if let path = loaded.path {
            // log_level follows the config file; a file that no longer loads keeps the level.
            let levelFile = WatchedFile(path: path, value: output.currentLevel) { path in
                guard let level = Logger.Level(rawValue: try ConfigLoader.load(path: path).config.logLevel) else { throw FieldError(field: "log_level", problem: "not a log level") }
                return level
            }
            let reloadLogger = logger
            reloader.register { why in
                switch levelFile.reloadIfChanged() {
                case .unchanged:
                    return
                case .refused(let problem):
                    reloadLogger.error("config file does not load; the log level stays", metadata: ["problem": "\(problem)", "trigger": "\(why)"])
                case .reloaded(let before):
                    let new = levelFile.value
                    guard before != new else { return }
                    // Said at the more verbose of the two levels, so the line is written either way.
                    let say = { reloadLogger.notice("log level changed", metadata: ["from": "\(before)", "to": "\(new)", "trigger": "\(why)"]) }
                    if new < before { output.setLevel(new); say() } else { say(); output.setLevel(new) }
                }
            }
        }
        // Files with secrets that others can read are said at every start.
        var secretFiles = config.secretFiles
        if let path = loaded.path { secretFiles.insert((path, "the config file"), at: 0) }
        for file in secretFiles {
            if let why = Redaction.looseFileReason(file.path, what: file.what) { logger.warning("secret file too open", metadata: ["problem": "\(why)"]) }
        }

        do {
            // Tools a killed run of this service left running die before anything resumes.
            let leftovers = ToolGroups.adopt(directory: "\(config.dbLocation)/\(S.serviceName).tools")
            if !leftovers.isEmpty { logger.warning("killed tools a previous run left running", metadata: ["tools": "\(leftovers)"]) }
            let storePath = "\(config.dbLocation)/\(S.serviceName).sqlite"
            var term: ServiceTerm?
            if let coordinated = S.self as? any CoordinatedService.Type {
                switch try await standBy(coordinated, config: config, host: host, storePath: storePath, logger: logger) {
                case .none: break
                case .some(.none):
                    logger.info("stopped while standing by")
                    exit(0)
                case .some(.some(let led)): term = led
                }
            }
            let store = try LocalStore(path: storePath, migrations: S.migrations + (term?.localMigrations ?? []), replicator: term?.replicator)
            term?.opened(store)
            let session = try store.nextSession()
            let bus = try Bus(config: config.broker, identity: .init(service: S.serviceName, host: host, session: session), logger: logger)
            let outbox = Outbox(bus: bus, store: store, gate: term?.mayPublish)
            let routes = HTTPRoutes()
            let metrics = try await MetricsEndpoint.start(config.metrics, service: S.serviceName, host: host, bus: bus, store: store, routes: routes, logger: logger)
            let context = ServiceContext(config: config, host: host, bus: bus, store: store, outbox: outbox, logger: logger, reloader: reloader, routes: routes, term: term)
            let service = try S(context: context)
            bus.start()

            let group = ServiceGroup(configuration: .init(
                services: [
                    .init(service: ResidentCodeTrimmer(logger: logger)),
                    .init(service: ReloaderService(reloader: context.reloader, logger: logger)),
                    .init(service: OutboxService(outbox: outbox, logger: logger), successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
                    .init(service: ServiceAdapter(service: service), successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
                ] + systemdNotify(bus: bus, logger: logger) + (term.map { [.init(service: TermWatch(term: $0))] } ?? []),
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
            var failure: (any Error)?
            do { try await group.run() } catch { failure = error }
            await bus.shutdown()
            await metrics?.stop()
            if let ended = failure as? ServiceTerm.Ended {
                logger.critical("stopped: no longer leading; restarted, this process stands by", metadata: ["why": "\(ended.why)"])
                exit(ServiceTerm.endedExitStatus)
            }
            if let failure {
                logger.critical("stopped on error", metadata: ["error": "\(failure)"])
                exit(1)
            }
            logger.info("stopped")
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            exit(1)
        }
    }

    /// Stands by until `S` leads (nil: it runs alone), ending on SIGTERM/SIGINT.
    private static func standBy(_ type: any CoordinatedService.Type, config: BynarConfig, host: String, storePath: String, logger: Logger) async throws -> ServiceTerm?? {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        return try await withThrowingTaskGroup(of: ServiceTerm??.self) { group in
            group.addTask { try await type.coordinate(config: config, host: host, storePath: storePath, logger: logger) }
            group.addTask {
                for await _ in signals { return .some(.none) }
                return .some(.none)
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
    }

    /// The `--help` text: the service, then every offline command the executable takes.
    static func help<S: BynarService>(_ type: S.Type, executable: String) -> String {
        var text = """
        usage: \(executable) [--config PATH]
        """
        for command in S.commandUsage { text += "\n       \(executable) \(command.usage)" }
        text += """


        Runs the Bynar \(S.serviceName) service until SIGTERM or SIGINT (under systemd it
        reports readiness and feeds the watchdog through $NOTIFY_SOCKET).
          --config PATH  config file (default: $BYNAR_CONFIG, else \(ConfigLoader.defaultPath));
                         BYNAR_<FIELD> environment variables override it
                         (sections joined by __, e.g. BYNAR_BROKER__PORT=8883).
          --version      print the version and exit
        """
        if !S.commandUsage.isEmpty {
            text += "\n\nCommands (offline: they run once and exit; they do not start the service):"
            let width = S.commandUsage.map(\.usage.count).max() ?? 0
            for command in S.commandUsage {
                text += "\n  \(command.usage)\(String(repeating: " ", count: width - command.usage.count))  \(command.summary)"
            }
        }
        return text
    }

    private static func fail(_ message: String, code: Int32) -> Never {
        writeToStandardError(message)
        exit(code)
    }
}

/// The systemd notification service when systemd asked for one ($NOTIFY_SOCKET), last in
/// the group so it is the first to hear of a shutdown; none otherwise.
private func systemdNotify(bus: Bus, logger: Logger) -> [ServiceGroupConfiguration.ServiceConfiguration] {
    guard let notifier = SystemdNotifier.fromEnvironment(ConfigLoader.currentEnvironment()) else { return [] }
    logger.info("notifying systemd", metadata: ["socket": "\(notifier.socketPath)", "watchdog": "\(notifier.watchdogInterval.map { "\($0)" } ?? "off")"])
    let notifications = SystemdNotifications(
        notifier: notifier, logger: logger,
        isReady: { bus.isConnected && bus.isMarkedReady },
        ticks: { bus.networkLoopTicks }
    )
    return [.init(service: SystemdNotifyService(notifications: notifications))]
}

/// The machine's host name, up to the first dot.
public func localHostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
    let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(name.split(separator: ".").first ?? "localhost")
}

/// Releases clean code pages (see ``ResidentCode``) once start-up is over and then every
/// 30 s, so an agent that worked for a moment goes back to its idle footprint. Pages still
/// in use come back as minor faults from the page cache.
private struct ResidentCodeTrimmer: Service, CustomStringConvertible {
    var description: String { "resident-code-trimmer" }
    let logger: Logger
    func run() async throws {
        await cancelWhenGracefulShutdown {
            try? await Task.sleep(for: .seconds(3))
            while !Task.isCancelled {
                let released = ResidentCode.release()
                logger.trace("released clean code pages", metadata: ["kB": "\(released)"])
                try? await Task.sleep(for: .seconds(30))
            }
        }
    }
}

/// Stops the service group when the leadership term ends.
private struct TermWatch: Service, CustomStringConvertible {
    let term: ServiceTerm
    var description: String { "leadership-term" }
    func run() async throws {
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            if let why = term.endedWhy() { throw ServiceTerm.Ended(why: why) }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}

private struct ServiceAdapter<S: BynarService>: Service, CustomStringConvertible {
    let service: S
    func run() async throws { try await service.run() }
    /// What ServiceLifecycle logs for it: the name, never the context (config, secrets).
    var description: String { S.serviceName }
}

/// Runs the outbox; on shutdown gives stored events a moment to leave before the bus
/// says goodbye (whatever is left goes out on the next start).
private struct OutboxService: Service, CustomStringConvertible {
    var description: String { "outbox" }
    let outbox: Outbox
    let logger: Logger
    func run() async throws {
        let sender = Task { await outbox.run() }
        try? await gracefulShutdown()
        if !(await outbox.drain(timeout: .seconds(2))) {
            logger.warning("outbox not empty at shutdown; it is sent on the next start")
        }
        sender.cancel()
        await sender.value
    }
}
