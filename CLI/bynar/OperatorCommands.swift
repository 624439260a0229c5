import ArgumentParser
import BynarAuth
import BynarBus
import BynarConfig
import BynarProto
import FoundationEssentials
import Orchestrator

/// The operator's key and how long to wait for the answer, for signed operator commands (to the orchestrator or ticketing).
struct OperatorOptions: ParsableArguments {
    @OptionGroup var brokerOptions: BrokerOptions
    @OptionGroup var key: KeyOptions

    @Option(help: "Seconds to wait for the answer (the orchestrator's cancel or resolve first asks the disk-manager).")
    var requestTimeout: Double = 90

    @Flag(help: "The answer as one JSON object instead of text.")
    var json = false

    /// Signs and sends `action` to the orchestrator, prints the answer; exit 1 when refused.
    func send(_ action: Bynar_V1_OperatorCommand.OneOf_Action, reason: String, purpose: String, print: (Bynar_V1_OperatorResponse) -> Void) async throws {
        var command = Bynar_V1_OperatorCommand()
        command.action = action
        try await send(command, reason: reason, purpose: purpose, print: print)
    }

    /// Signs and sends `command` (to the orchestrator or ticketing, by its kind), prints the
    /// answer; exit 1 when refused.
    func send<Command: OperatorCommandKind>(_ command: Command, reason: String, purpose: String, print: (Command.Answer) -> Void) async throws {
        try await reportingFailures {
            try await brokerOptions.withBus(purpose: purpose) { bus in
                let client: OperatorClient
                do {
                    client = try OperatorClient(bus: bus, privateKeyFile: key.keyPath)
                } catch {
                    throw CLIFailure("cannot use the operator key \(key.keyPath): \(error) (make one with `bynar keys generate`, add its line to \(Command.keysSetting), and pass --key FILE)",
                                     code: CLIFailure.config)
                }
                let response: Command.Answer
                do {
                    response = try await client.send(command, reason: reason, timeout: .milliseconds(Int(requestTimeout * 1000)))
                } catch {
                    throw CLIFailure(error, talkingTo: Command.answeredBy)
                }
                if json {
                    emit((try? response.jsonString()) ?? "{}")
                } else {
                    print(response)
                }
                if response.outcome != .success {
                    throw CLIFailure("\(purpose) \(protoName(response.outcome)): \(response.reason)")
                }
            }
        }
    }
}

/// One incident as text: its state, disk, ticket, detail, and (for show) its audit trail.
func describe(_ response: Bynar_V1_OperatorResponse) {
    let incident = response.incident
    guard !incident.id.isEmpty else { return }
    emit("incident  \(incident.id)")
    emit("state     \(protoName(incident.state))\(incident.countsAsOut ? " (the brake counts the disk out)" : "")")
    emit("disk      \(incident.disk.key) on \(incident.disk.host)\(incident.disk.devPath.isEmpty ? "" : " (\(incident.disk.devPath))")")
    if !incident.osdID.isEmpty { emit("osd       \(incident.osdID)") }
    if !incident.ticketKey.isEmpty { emit("ticket    \(incident.ticketKey)") }
    emit("cluster   \(incident.cluster) (\(incident.failureDomain))")
    emit("opened    \(age(incident.openedUnixMs)), updated \(age(incident.updatedUnixMs))")
    emit("reasons   \(incident.reasons.map { $0.detail.isEmpty ? $0.rule : "\($0.rule): \($0.detail)" }.joined(separator: "; "))")
    emit("detail    \(incident.detail)")
    if !response.audit.isEmpty {
        emit("operator commands:")
        let rows = response.audit.map { [age($0.atUnixMs), $0.by, $0.action, $0.reason, $0.outcome] }
        emit(TextTable.render(header: ["WHEN", "BY", "ACTION", "REASON", "OUTCOME"], rows: rows))
    }
}

extension Incidents {
    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One incident as the orchestrator has it, with its operator audit trail (signed).",
            discussion: "Asks the orchestrator on \(Topics.operatorCommands); works for closed incidents too."
        )
        @Argument(help: "Incident id (see `bynar incidents`).") var id: String
        @OptionGroup var options: OperatorOptions

        func run() async throws {
            try await options.send(.show(.with { $0.incidentID = id }), reason: "", purpose: "show \(id)") { describe($0) }
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a STUCK (or paused, or queued) incident again from the step it stopped at, with fresh request ids (signed, audited).")
        @OptionGroup var command: IncidentCommand

        func run() async throws {
            try await command.send("retry", .retry(.with { $0.incidentID = command.id }))
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "End an incident's repair (signed, audited).",
            discussion: """
            The orchestrator first asks the host's disk-manager where the disk is. The brake stops
            counting the disk out only when the disk-manager reports it (or its replacement) in
            service; otherwise it stays counted out until `bynar incidents resolve` finds it in
            service. Refused while a Remove or Add may be running.
            """)
        @OptionGroup var command: IncidentCommand

        func run() async throws {
            try await command.send("cancel", .cancel(.with { $0.incidentID = command.id }))
        }
    }

    struct Resolve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Close an incident as resolved, once its disk or the replacement is back in service (signed, audited).",
            discussion: "The orchestrator asks the host's disk-manager first; anything but IN_SERVICE is refused, naming what it said.")
        @OptionGroup var command: IncidentCommand

        func run() async throws {
            try await command.send("resolve", .resolve(.with { $0.incidentID = command.id }))
        }
    }

    struct Forget: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Let the brake stop counting a cancelled incident's disk whose host will never answer again (signed, audited).",
            discussion: """
            For a cancelled incident the brake still counts out ("kept out") because its host's
            disk-manager cannot say where the disk is: the host was retired, or is gone for good.
            The orchestrator asks the disk-manager once more; while it answers, forget is refused
            (the disk really is out, or in service: resolve). You vouch that the disk is out of
            its cluster for good; the reason is kept in the audit trail.
            """)
        @OptionGroup var command: IncidentCommand

        func run() async throws {
            try await command.send("forget", .forget(.with { $0.incidentID = command.id }))
        }
    }
}

/// What retry, cancel and resolve take: the incident, the reason, the operator's options.
struct IncidentCommand: ParsableArguments {
    @Argument(help: "Incident id (see `bynar incidents`).") var id: String
    @Option(help: "Why (kept in the audit trail and told to people).") var reason: String
    @OptionGroup var options: OperatorOptions

    /// Sends `action`, prints the orchestrator's answer and the incident after it.
    func send(_ verb: String, _ action: Bynar_V1_OperatorCommand.OneOf_Action) async throws {
        try await options.send(action, reason: reason, purpose: "\(verb) \(id)") { response in
            emit("\(verb) \(id): \(response.reason)")
            describe(response)
        }
    }
}

struct Maintenance: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Maintenance windows: hosts or disks where the orchestrator opens no repair.",
        discussion: """
        A failure under a window is recorded and people are told it was not repaired; when the
        window ends (off, or its --until passes) a disk still failed is repaired. The windows
        in force are retained on \(Topics.maintenance) and shown by `bynar cluster status`.
        """,
        subcommands: [On.self, Off.self, List.self],
        defaultSubcommand: List.self
    )

    struct On: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put a host, or one disk of it, in maintenance (signed, audited).")
        @Option(help: "Host name.") var host: String
        @Option(help: "One disk key (WWN or serial-…) instead of the whole host.") var disk: String?
        @Option(help: "When it ends by itself: RFC 3339 UTC (2026-12-05T08:00:00Z) or a duration from now (90m, 4h, 2d).")
        var until: String?
        @Option(help: "Why (kept in the audit trail and told to people).") var reason: String
        @OptionGroup var options: OperatorOptions

        func run() async throws {
            var on = Bynar_V1_OperatorCommand.MaintenanceOn()
            on.host = host
            on.disk = disk ?? ""
            if let until {
                guard let at = parseUntil(until, nowMs: Bus.nowUnixMs()) else {
                    throw ValidationError("--until must be RFC 3339 UTC (2026-12-05T08:00:00Z) or a duration like 90m, 4h, 2d; got \"\(until)\"")
                }
                on.untilUnixMs = at
            }
            try await options.send(.maintenanceOn(on), reason: reason, purpose: "maintenance on") { printWindows($0) }
        }
    }

    struct Off: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End maintenance of a host (and its disks' windows) or of one disk (signed, audited).")
        @Option(help: "Host name.") var host: String
        @Option(help: "Only this disk's window.") var disk: String?
        @Option(help: "Why (kept in the audit trail and told to people).") var reason: String
        @OptionGroup var options: OperatorOptions

        func run() async throws {
            var off = Bynar_V1_OperatorCommand.MaintenanceOff()
            off.host = host
            off.disk = disk ?? ""
            try await options.send(.maintenanceOff(off), reason: reason, purpose: "maintenance off") { printWindows($0) }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The windows in force (the orchestrator's retained \(Topics.maintenance)).")
        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var retained: RetainedOptions

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "maintenance") { bus in
                    let state = payloads(try await collectRetained(bus, filters: [Topics.maintenance], cap: retained.capDuration), as: Bynar_V1_MaintenanceState.self).first?.payload
                    let windows = state?.windows ?? []
                    if retained.json {
                        for window in windows { emit((try? window.jsonString()) ?? "{}") }
                        return
                    }
                    emit(TextTable.render(header: ["HOST", "DISK", "UNTIL", "BY", "SINCE", "REASON"], rows: windows.map(windowRow)))
                    if windows.isEmpty { emit("(no maintenance)") }
                }
            }
        }
    }
}

func windowRow(_ window: Bynar_V1_Maintenance) -> [String] {
    [window.host, window.disk.isEmpty ? "(all)" : window.disk, window.untilUnixMs > 0 ? utcTimestamp(window.untilUnixMs) : "until off",
     window.by, age(window.sinceUnixMs), window.reason]
}

private func printWindows(_ response: Bynar_V1_OperatorResponse) {
    emit(response.reason)
    if !response.maintenance.isEmpty {
        emit(TextTable.render(header: ["HOST", "DISK", "UNTIL", "BY", "SINCE", "REASON"], rows: response.maintenance.map(windowRow)))
    }
}

/// "2026-12-05T08:00:00Z" for a unix ms time.
func utcTimestamp(_ unixMs: Int64) -> String {
    String(UTCTime.iso8601(unixMs: unixMs).prefix(19)) + "Z"
}

/// `--until`: RFC 3339 UTC (`2026-12-05T08:00:00Z`, `2026-12-05T08:00Z`) or a duration from
/// `nowMs` (`90m`, `4h`, `2d`, `30s`, optionally with a leading `+`); nil when neither.
func parseUntil(_ text: String, nowMs: Int64) -> Int64? {
    var duration = Substring(text)
    if duration.hasPrefix("+") { duration = duration.dropFirst() }
    if let unit = duration.last, let count = Int64(duration.dropLast()), count > 0 {
        let perUnit: Int64? = switch unit {
        case "s": 1000
        case "m": 60_000
        case "h": 3_600_000
        case "d": 86_400_000
        default: nil
        }
        if let perUnit { return nowMs + count * perUnit }
    }
    // YYYY-MM-DDTHH:MM[:SS]Z
    let parts = text.split(whereSeparator: { "-T:Z".contains($0) }).map { Int64($0) }
    guard text.hasSuffix("Z"), text.count >= 17, (5...6).contains(parts.count), parts.allSatisfy({ $0 != nil }) else { return nil }
    let values = parts.map { $0! }
    let (year, month, day, hour, minute) = (values[0], values[1], values[2], values[3], values[4])
    let second = values.count == 6 ? values[5] : 0
    guard (1...12).contains(month), (1...31).contains(day), (0...23).contains(hour), (0...59).contains(minute), (0...60).contains(second) else { return nil }
    // Days since 1970-01-01 from the civil date (Howard Hinnant's days_from_civil).
    let y = month <= 2 ? year - 1 : year
    let era = (y >= 0 ? y : y - 399) / 400
    let yoe = y - era * 400
    let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    let days = era * 146_097 + doe - 719_468
    return ((days * 86_400) + hour * 3600 + minute * 60 + second) * 1000
}
