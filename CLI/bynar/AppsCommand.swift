import ArgumentParser
import BynarBus
import BynarProto
import FoundationEssentials
import Orchestrator
import SwiftProtobuf

/// PicoRed's console for applications: their state per host (`bynar apps`), and the manual
/// override (`bynar apps set APP ok|ng|auto --host H`, PicoRed's `appstate`).
struct Apps: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Applications the hosts serve, as their own checks see them: list them, or override one.",
        subcommands: [List.self, Set.self],
        defaultSubcommand: List.self
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One line per host and application: health, what the checks say, the override, since when, why.",
            discussion: "From the retained application states (\(Topics.allAppStates)) the hosts' detectors publish."
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var retained: RetainedOptions

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "apps") { bus in
                    let messages = try await collectRetained(bus, filters: [Topics.allAppStates], cap: retained.capDuration)
                    let states = payloads(messages, as: Bynar_V1_AppState.self).map { (host: Topics.hostLevel(ofTopic: $0.topic), state: $0.payload) }
                        .sorted { ($0.host, $0.state.app) < ($1.host, $1.state.app) }
                    if retained.json {
                        for (host, state) in states {
                            var options = JSONEncodingOptions()
                            options.preserveProtoFieldNames = true
                            emit("{\"host\": \"\(host)\", \"state\": \(try state.jsonString(options: options))}")
                        }
                        return
                    }
                    let rows = states.map { host, state in
                        [host, state.app, protoName(state.health), protoName(state.checked), Self.overrideName(state.override),
                         age(state.sinceUnixMs), state.reason]
                    }
                    emit(TextTable.render(header: ["HOST", "APP", "HEALTH", "CHECKS SAY", "OVERRIDE", "SINCE", "WHY"], rows: rows))
                    if rows.isEmpty { emit("(no host reports an application: detector.apps is empty everywhere)") }
                }
            }
        }

        static func overrideName(_ mode: Bynar_V1_AppOverrideMode) -> String {
            switch mode {
            case .appOverrideOk: "ok"
            case .appOverrideNg: "ng"
            default: "auto"
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Force an application up (ok) or down (ng) whatever its checks say, or back to its checks (auto).",
            discussion: """
            Published retained on \(Topics.appOverride(host: "HOST", app: "APP")), which only operator
            identities may publish (the broker's ACL); the host's detector takes it at once and on
            every start. Handlers run as for any change.
            """
        )

        @OptionGroup var brokerOptions: BrokerOptions

        @Argument(help: "The application's name, as in the host's detector.apps.")
        var app: String

        @Argument(help: "ok, ng or auto.")
        var mode: String

        @Option(help: "The host whose application it is.")
        var host: String

        @Option(help: "Why, for the record.")
        var reason: String = ""

        func validate() throws {
            guard ["ok", "ng", "auto"].contains(mode) else { throw ValidationError("the mode must be ok, ng or auto, got \"\(mode)\"") }
            guard !app.isEmpty, !host.isEmpty else { throw ValidationError("the application and --host must not be empty") }
        }

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "apps set") { bus in
                    var override = Bynar_V1_AppOverride()
                    override.app = app
                    override.mode = mode == "ok" ? .appOverrideOk : mode == "ng" ? .appOverrideNg : .appOverrideAuto
                    override.reason = reason
                    do {
                        _ = try await bus.publish(override, to: Topics.appOverride(host: host, app: app), retain: true)
                    } catch {
                        throw CLIFailure("cannot set \(app) on \(host) to \(mode): \(error) (only operator identities may)", code: CLIFailure.failed)
                    }
                    emit("\(app) on \(host): \(mode)")
                }
            }
        }
    }
}
