import ArgumentParser
import BynarBus
import BynarProto
import FoundationEssentials
import Orchestrator
import SwiftProtobuf

/// How long to read retained state.
struct RetainedOptions: ParsableArguments {
    @Option(name: .customLong("wait"), help: "At most this many seconds to read the retained state.")
    var cap: Double = 5

    @Flag(help: "JSON lines instead of a table.")
    var json = false

    var capDuration: Duration { .milliseconds(Int(cap * 1000)) }
}

struct Incidents: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Repair incidents: list them, and show, retry, cancel, resolve or forget one (signed operator commands).",
        subcommands: [List.self, Show.self, Retry.self, Cancel.self, Resolve.self, Forget.self],
        defaultSubcommand: List.self
    )
}

extension Incidents {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open repair incidents (the orchestrator's retained incident states).",
            discussion: """
            Reads \(Topics.allIncidentStates). Resolved and cancelled incidents are left out unless --all
            (a cancelled incident whose disk the brake still counts out is always shown).
            """
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var retained: RetainedOptions

        @Flag(help: "Also incidents that are resolved or cancelled.")
        var all = false

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "incidents") { bus in
                    let events = payloads(try await collectRetained(bus, filters: [Topics.allIncidentStates], cap: retained.capDuration), as: Bynar_V1_IncidentEvent.self)
                        .map(\.payload)
                        .filter { all || $0.incident.countsAsOut || ($0.incident.state != .resolved && $0.incident.state != .cancelled) }
                        .sorted { $0.incident.openedUnixMs < $1.incident.openedUnixMs }
                    if retained.json {
                        for event in events { emit((try? event.jsonString()) ?? "{}") }
                        return
                    }
                    let rows = events.map { event -> [String] in
                        let incident = event.incident
                        return [incident.id, protoName(incident.state) + (incident.countsAsOut ? " (out)" : ""), incident.disk.host, incident.disk.key, dash(incident.disk.devPath),
                                dash(incident.osdID), dash(incident.ticketKey), age(incident.updatedUnixMs), incident.detail.isEmpty ? event.message : incident.detail]
                    }
                    emit(TextTable.render(header: ["INCIDENT", "STATE", "HOST", "DISK", "DEVICE", "OSD", "TICKET", "UPDATED", "DETAIL"], rows: rows))
                    if rows.isEmpty { emit(all ? "(no incident)" : "(no open incident)") }
                }
            }
        }
    }
}

struct Cluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The cluster as the bus knows it.", subcommands: [Status.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One line per host: up or down, its services, its disks by state.",
            discussion: """
            From the retained births and deaths (\(Topics.allServiceStatus)), the orchestrator's host
            membership (\(Topics.hostState(host: "+"))) when it publishes it, the detectors' disk
            health (\(Topics.diskHealth(host: "+", disk: "+"))), the orchestrator's maintenance
            windows (\(Topics.maintenance)), and the applications the hosts' detectors check
            (\(Topics.allAppStates)).
            """
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var retained: RetainedOptions

        struct HostLine: Codable {
            var host: String
            var up: Bool
            /// "orchestrator" when the orchestrator's membership said so, else "services".
            var source: String
            var servicesUp: [String]
            var servicesDown: [String]
            var disks: [String: Int]
            /// The maintenance windows on this host: "host until 2026-12-05T08:00:00Z (alice: reason)",
            /// "disk serial-X until off (...)".
            var maintenance: [String] = []
            /// Each application the host's detector checks: "web up", "db DOWN".
            var apps: [String] = []

            enum CodingKeys: String, CodingKey {
                case host, up, source, servicesUp = "services_up", servicesDown = "services_down", disks, maintenance, apps
            }
        }

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "cluster status") { bus in
                    let messages = try await collectRetained(
                        bus, filters: [Topics.allServiceStatus, Topics.hostState(host: "+"), Topics.diskHealth(host: "+", disk: "+"), Topics.maintenance, Topics.allAppStates],
                        cap: retained.capDuration
                    )
                    let lines = Self.summarize(
                        statuses: payloads(messages, as: Bynar_V1_ServiceStatus.self).map(\.payload),
                        hosts: payloads(messages, as: Bynar_V1_HostState.self).map(\.payload),
                        health: payloads(messages, as: Bynar_V1_DiskHealth.self).map(\.payload),
                        maintenance: payloads(messages, as: Bynar_V1_MaintenanceState.self).first?.payload.windows ?? [],
                        apps: payloads(messages, as: Bynar_V1_AppState.self).map { (Topics.hostLevel(ofTopic: $0.topic), $0.payload) }
                    )
                    if retained.json {
                        let encoder = JSONEncoder()
                        encoder.outputFormatting = [.sortedKeys]
                        for line in lines { emit(String(decoding: try encoder.encode(line), as: UTF8.self)) }
                        return
                    }
                    let rows = lines.map { line -> [String] in
                        let disks = line.disks.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key.lowercased())" }.joined(separator: ", ")
                        return [line.host, line.up ? "up" : "DOWN", line.servicesUp.isEmpty ? "-" : line.servicesUp.joined(separator: ","),
                                line.servicesDown.isEmpty ? "-" : line.servicesDown.joined(separator: ","), disks.isEmpty ? "-" : disks,
                                line.maintenance.isEmpty ? "-" : line.maintenance.joined(separator: "; "), line.apps.isEmpty ? "-" : line.apps.joined(separator: ", ")]
                    }
                    emit(TextTable.render(header: ["HOST", "STATE", "SERVICES UP", "SERVICES DOWN", "DISKS", "MAINTENANCE", "APPS"], rows: rows))
                    if rows.isEmpty { emit("(no host has announced itself)") }
                }
            }
        }

        static func summarize(statuses: [Bynar_V1_ServiceStatus], hosts: [Bynar_V1_HostState], health: [Bynar_V1_DiskHealth],
                              maintenance: [Bynar_V1_Maintenance] = [], apps: [(host: String, state: Bynar_V1_AppState)] = [],
                              nowMs: Int64 = Bus.nowUnixMs()) -> [HostLine] {
            var lines: [String: HostLine] = [:]
            func line(_ host: String) -> HostLine {
                lines[host] ?? HostLine(host: host, up: false, source: "services", servicesUp: [], servicesDown: [], disks: [:])
            }
            for status in statuses {
                var entry = line(status.host)
                if status.state == .birth { entry.servicesUp.append(status.service) } else { entry.servicesDown.append(status.service) }
                entry.up = !entry.servicesUp.isEmpty
                lines[status.host] = entry
            }
            for state in hosts {
                var entry = line(state.host)
                // The orchestrator's view wins: it also knows services whose death was not retained.
                entry.up = state.up
                entry.source = "orchestrator"
                entry.servicesUp = state.services.filter(\.up).map(\.service)
                entry.servicesDown = state.services.filter { !$0.up }.map(\.service)
                lines[state.host] = entry
            }
            for disk in health {
                var entry = line(disk.disk.host)
                entry.disks[protoName(disk.state), default: 0] += 1
                lines[disk.disk.host] = entry
            }
            // A window past its end is over even if the orchestrator has not said so yet.
            for window in maintenance where window.untilUnixMs == 0 || window.untilUnixMs > nowMs {
                var entry = line(window.host)
                let until = window.untilUnixMs > 0 ? "until \(utcTimestamp(window.untilUnixMs))" : "until off"
                entry.maintenance.append("\(window.disk.isEmpty ? "host" : "disk \(window.disk)") \(until) (\(window.by): \(window.reason))")
                lines[window.host] = entry
            }
            for (host, state) in apps.sorted(by: { $0.state.app < $1.state.app }) where !host.isEmpty {
                var entry = line(host)
                let health = state.health == .up ? "up" : state.health == .stopped ? "stopped" : protoName(state.health)
                entry.apps.append("\(state.app) \(health)")
                lines[host] = entry
            }
            return lines.values.map { entry in
                var sorted = entry
                sorted.servicesUp.sort()
                sorted.servicesDown.sort()
                return sorted
            }.sorted { $0.host < $1.host }
        }
    }
}

/// An enum value's proto name without its type prefix: `.waitingForReplacement` ->
/// "WAITING_FOR_REPLACEMENT" (the generated case name, upper snake case).
func protoName<E: SwiftProtobuf.Enum>(_ value: E) -> String {
    var name = ""
    var previousLower = false
    for character in "\(value)" {
        if character.isUppercase && previousLower { name += "_" }
        previousLower = character.isLowercase || character.isNumber
        name += character.uppercased()
    }
    return name
}

func dash(_ text: String) -> String { text.isEmpty ? "-" : text }
