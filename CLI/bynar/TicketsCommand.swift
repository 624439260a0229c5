import ArgumentParser
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
        @OptionGroup var options: OperatorOptions

        func run() async throws {
            let command = Bynar_V1_TicketOperatorCommand.with { $0.resolve = .with { $0.ticket = id } }
            try await options.send(command, reason: reason, purpose: "resolve \(id)") { emit("resolve \(id): \($0.reason)") }
        }
    }
}
