/// Where each service serves its Prometheus metrics (`"metrics": {...}`): `GET /metrics` on
/// `address`, at the service's own port. One file configures every service of a host, so
/// each service has a port of its own; the address is loopback unless a person widens it,
/// so nothing is exposed by default. docs/metrics.md lists what is served.
public struct MetricsConfig: Codable, Sendable, Equatable {
    /// False: no listener and no metrics kept (every emission is a no-op).
    public var enabled = true
    /// The address the services listen on (`0.0.0.0` or the host's address for a
    /// Prometheus on another machine).
    public var address = "127.0.0.1"
    public var detectorPort = 9741
    public var diskManagerPort = 9742
    public var ticketingPort = 9743
    public var notifierPort = 9744
    public var orchestratorPort = 9745

    public init() {}

    /// The port of `service` (its name on the bus, "disk-manager"), or nil for a name that
    /// is not one of the five services.
    public func port(of service: String) -> Int? {
        ports.first { $0.service == service }?.port
    }

    private var ports: [(service: String, field: String, port: Int)] {
        [("detector", "detector_port", detectorPort), ("disk-manager", "disk_manager_port", diskManagerPort),
         ("ticketing", "ticketing_port", ticketingPort), ("notifier", "notifier_port", notifierPort),
         ("orchestrator", "orchestrator_port", orchestratorPort)]
    }

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "metrics." + field, problem: text)) }
        if address.isEmpty { problem("address", "must not be empty (set enabled to false to serve nothing)") }
        var seen: [Int: String] = [:]
        for (_, field, port) in ports {
            if !(1...65535).contains(port) { problem(field, "must be 1-65535, got \(port)") }
            // Services of one host share the address: two on one port, the second cannot start.
            if let other = seen[port] { problem(field, "is also \(other) (\(port)); each service needs its own port") }
            seen[port] = seen[port] ?? field
        }
        return problems
    }
}
