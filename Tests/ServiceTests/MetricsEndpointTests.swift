import BynarTestSupport
import Foundation
import Testing

/// Every service serves `GET /metrics` in the Prometheus text format once it is up, with
/// names that follow Prometheus' conventions (docs/metrics.md); another path is 404, another
/// method 405. Real processes on a real broker, scraped over HTTP like Prometheus does.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct MetricsEndpointTests {
    /// Names each service serves from its start, before anything happened.
    static let expected: [String: [String]] = [
        "detector": ["bynar_detector_disks"],
        "disk-manager": [],
        "ticketing": [],
        "notifier": [],
        "orchestrator": ["bynar_orchestrator_incidents", "bynar_orchestrator_incident_oldest_state_entered_timestamp_seconds",
                         "bynar_orchestrator_disks_out", "bynar_orchestrator_brake_max_out", "bynar_orchestrator_brake_removal_tokens"],
    ]
    static let everyService = [
        "bynar_service_info", "bynar_bus_connected", "bynar_bus_connects_total", "bynar_bus_messages_published_total",
        "bynar_bus_messages_received_total", "bynar_bus_messages_rejected_total", "bynar_bus_messages_refused_total",
        "bynar_bus_dead_letters_total", "bynar_outbox_messages", "bynar_outbox_oldest_pending_age_seconds",
    ]

    @Test(arguments: ["detector", "disk-manager", "ticketing", "notifier", "orchestrator"])
    func servesPrometheusText(service: String) async throws {
        let broker = try TestBroker()
        let directory = try makeTemporaryDirectory(prefix: "bynar-metrics")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort()
        let field = service.replacingOccurrences(of: "-", with: "_") + "_port"
        let process = try ServiceProcess("bynar-\(service)", brokerPort: broker.port, directory: directory,
                                         extraConfig: "\"metrics\": {\"\(field)\": \(port)}")
        defer { process.signal(SIGTERM) }

        // Up once it answers, and connected once the bus says so.
        var page = ""
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if let answer = try? plainHTTP(port: port, method: "GET", path: "/metrics"), answer.0 == 200 {
                page = String(decoding: answer.1, as: UTF8.self)
                if page.contains("bynar_bus_connected 1") { break }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(page.contains("bynar_bus_connected 1"), "\(page)\n\(process.log.suffix(2000))")

        let exposition = Exposition(page)
        #expect(exposition.problems.isEmpty, "\(exposition.problems)")
        for name in Self.everyService + Self.expected[service]! {
            #expect(exposition.samples.keys.contains(name), "\(name) missing from \(service): \(exposition.samples.keys.sorted())")
        }
        #expect(exposition.samples["bynar_service_info"]?.first?.contains("service=\"\(service)\"") == true)

        // (The orchestrator serves its status page at "/": docs/status-page.md.)
        #expect(try plainHTTP(port: port, method: "GET", path: "/nothing-here").0 == 404)
        #expect(try plainHTTP(port: port, method: "POST", path: "/metrics", body: "{}").0 == 405)
        #expect(try plainHTTP(port: port, method: "GET", path: "/metrics?x=1").0 == 200)
    }

    /// The Prometheus text format as far as the names go: `# TYPE NAME KIND` lines and samples.
    struct Exposition {
        /// Metric family name → its sample lines.
        var samples: [String: [String]] = [:]
        var problems: [String] = []

        init(_ text: String) {
            var types: [String: String] = [:]
            for line in text.split(separator: "\n").map(String.init) {
                if line.hasPrefix("# TYPE ") {
                    let parts = line.split(separator: " ")
                    guard parts.count == 4 else { problems.append("bad TYPE line: \(line)"); continue }
                    types[String(parts[2])] = String(parts[3])
                    continue
                }
                if line.hasPrefix("#") { continue }
                let name = String(line.prefix { $0 != "{" && $0 != " " })
                guard let value = line.split(separator: " ").last, Double(value) != nil || ["+Inf", "-Inf", "NaN"].contains(String(value)) else {
                    problems.append("bad sample: \(line)")
                    continue
                }
                var family = name
                for suffix in ["_bucket", "_sum", "_count"] where types[name] == nil && name.hasSuffix(suffix) {
                    family = String(name.dropLast(suffix.count))
                }
                samples[family, default: []].append(line)
            }
            for name in samples.keys {
                if !name.hasPrefix("bynar_") { problems.append("\(name): no bynar_ prefix") }
                if name.contains(where: { !($0.isLowercase || $0.isNumber || $0 == "_") }) { problems.append("\(name): not snake_case") }
                switch types[name] {
                case "counter": if !name.hasSuffix("_total") { problems.append("\(name): a counter not ending in _total") }
                case "gauge", "histogram": if name.hasSuffix("_total") { problems.append("\(name): _total on a \(types[name]!)") }
                case nil: problems.append("\(name): no TYPE line")
                default: break
                }
                // Base units: seconds and bytes, never milliseconds or kilobytes.
                for unit in ["_ms", "_milliseconds", "_kb", "_mb", "_minutes"] where name.contains(unit) {
                    problems.append("\(name): not in base units")
                }
            }
        }
    }
}
