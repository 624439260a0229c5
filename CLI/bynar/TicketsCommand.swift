import ArgumentParser
import BynarAuth
import BynarBus
import BynarProto
import Orchestrator

struct Tickets: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tickets of incidents: list them; resolve one of the local backend's (signed operator command).",
        subcommands: [List.self, Resolve.self],
        defaultSubcommand: List.self
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Tickets of incidents (ticketing's retained ticket states).",
            discussion: "Reads \(Topics.allTicketStates)."
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var retained: RetainedOptions

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "tickets") { bus in
                    let events = payloads(try await collectRetained(bus, filters: [Topics.allTicketStates], cap: retained.capDuration), as: Bynar_V1_TicketEvent.self)
                        .map(\.payload)
                        .sorted { $0.changedUnixMs < $1.changedUnixMs }
                    if retained.json {
                        for event in events { emit((try? event.jsonString()) ?? "{}") }
                        return
                    }
                    let rows = events.map { event -> [String] in
                        [event.incidentID, dash(event.ticketKey), protoName(event.state), dash(event.backend),
                         age(event.changedUnixMs), dash(event.url), event.detail]
                    }
                    emit(TextTable.render(header: ["INCIDENT", "TICKET", "STATE", "BACKEND", "CHANGED", "URL", "DETAIL"], rows: rows))
                    if rows.isEmpty { emit("(no ticket)") }
                }
            }
        }
    }

    struct Resolve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Resolve a ticket of the local backend, as a technician resolves a JIRA ticket (signed).",
            discussion: """
            Sends a signed command on \(Topics.ticketOperatorCommands); bynar-ticketing checks the key
            against ticketing.operator_keys_file, marks the ticket resolved and reports it RESOLVED to
            the orchestrator, which then adds the new disk once it is in the slot. Tickets of JIRA or a
            webhook are resolved there, not here.
            """
        )
        @Argument(help: "Ticket key (BYNAR-3) or incident id (see `bynar tickets`).") var id: String
        @Option(help: "Why (kept with the ticket).") var reason: String = ""
        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var key: KeyOptions

        @Option(help: "Seconds to wait for ticketing's answer.")
        var requestTimeout: Double = 30

        @Flag(help: "Ticketing's answer as one JSON object instead of text.")
        var json = false

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "tickets resolve") { bus in
                    let client: OperatorClient
                    do {
                        client = try OperatorClient(bus: bus, privateKeyFile: key.keyPath)
                    } catch {
                        throw CLIFailure("cannot use the operator key \(key.keyPath): \(error) (make one with `bynar keys generate`, add its line to ticketing.operator_keys_file, and pass --key FILE)",
                                         code: CLIFailure.config)
                    }
                    let response: Bynar_V1_TicketOperatorResponse
                    do {
                        response = try await client.send(.resolve(.with { $0.ticket = id }), reason: reason, timeout: .milliseconds(Int(requestTimeout * 1000)))
                    } catch {
                        throw CLIFailure(error, talkingTo: "ticketing")
                    }
                    if json {
                        emit((try? response.jsonString()) ?? "{}")
                    } else if response.outcome == .success {
                        emit("resolve \(id): \(response.reason)")
                    }
                    if response.outcome != .success {
                        throw CLIFailure("resolve \(id) \(protoName(response.outcome)): \(response.reason)")
                    }
                }
            }
        }
    }
}
