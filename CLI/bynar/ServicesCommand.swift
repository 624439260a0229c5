import ArgumentParser
import BynarBus
import BynarProto
import SwiftProtobuf

struct Services: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every service's last birth or death, from the retained messages.")

    @OptionGroup var brokerOptions: BrokerOptions

    @Flag(help: "JSON lines instead of a table.")
    var json = false

    @Option(help: "Seconds to collect retained messages.")
    var wait: Double = 1

    func run() async throws {
        try await reportingFailures { try await body() }
    }

    func body() async throws {
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

