// Measures the bus against a real broker. Driven by scripts/bench, which runs mosquitto's
// own C clients on the same broker in the same run for comparison.
//
//   bynar-bench publish --port P --messages N [--payload-bytes B] [--inflight K]
//       publishes N QoS 1 envelopes and waits for every acknowledgement
//   bynar-bench stream --port P --messages N
//       the same, as ordered pipelined batches (how the outbox sends)
//   bynar-bench rtt --port P --samples N
//       request/response round trips through the broker, one at a time
import BynarBus
import BynarConfig
import BynarProto
import Logging
#if canImport(Glibc)
import Glibc
#endif

func option(_ name: String, _ fallback: Int) -> Int {
    let arguments = CommandLine.arguments
    guard let index = arguments.firstIndex(of: "--\(name)"), index + 1 < arguments.count, let value = Int(arguments[index + 1]) else { return fallback }
    return value
}

func makeBus(_ name: String, port: Int, inflight: Int = BrokerConfig().maxInflight) async throws -> Bus {
    var config = BrokerConfig()
    config.port = port
    config.maxInflight = inflight
    config.sessionExpirySeconds = 0
    config.clientId = "bench-\(name)-\(getpid())"
    var logger = Logger(label: "bench")
    logger.logLevel = .error
    let bus = try Bus(config: config, identity: .init(service: "bench", host: name, session: 1), logger: logger, announce: false)
    bus.start()
    try await bus.waitUntilConnected(timeout: .seconds(5))
    return bus
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func benchPublish(port: Int, messages: Int, payloadBytes: Int, publishers: Int, inflight: Int) async throws {
    let clock = ContinuousClock()
    let bus = try await makeBus("pub", port: port, inflight: inflight)
    var notification = Bynar_V1_Notification()
    notification.text = String(repeating: "x", count: payloadBytes)
    let payload = notification
    let size = try Bus.serialize(bus.envelope(payload)).count
    let started = clock.now
    try await withThrowingTaskGroup(of: Void.self) { group in
        for worker in 0..<publishers {
            group.addTask {
                var index = worker
                while index < messages {
                    try await bus.publish(payload, to: "bench/swift")
                    index += publishers
                }
            }
        }
        try await group.waitForAll()
    }
    let elapsed = seconds(clock.now - started)
    print("publish messages=\(messages) envelope_bytes=\(size) inflight=\(inflight) seconds=\(elapsed) per_second=\(Int(Double(messages) / elapsed))")
    await bus.shutdown()
}

/// Publishes in ordered, pipelined batches (the outbox's path).
func benchStream(port: Int, messages: Int, payloadBytes: Int) async throws {
    let clock = ContinuousClock()
    let bus = try await makeBus("stream", port: port)
    var notification = Bynar_V1_Notification()
    notification.text = String(repeating: "x", count: payloadBytes)
    let started = clock.now
    var sent = 0
    while sent < messages {
        let count = min(Bus.maxBatch, messages - sent)
        let batch = try (0..<count).map { _ in (bytes: try Bus.serialize(bus.envelope(notification)), topic: "bench/stream", retain: false) }
        let refused = try await bus.publish(batch: batch).compactMap { $0 }
        precondition(refused.isEmpty, "broker refused \(refused.count) messages")
        sent += count
    }
    let elapsed = seconds(clock.now - started)
    print("stream messages=\(messages) batch=\(Bus.maxBatch) seconds=\(elapsed) per_second=\(Int(Double(messages) / elapsed))")
    await bus.shutdown()
}

func benchRoundTrip(port: Int, samples: Int) async throws {
    let clock = ContinuousClock()
    let server = try await makeBus("server", port: port)
    let client = try await makeBus("client", port: port)
    let requests = try await server.subscribe("bench/rtt", as: Bynar_V1_TicketRequest.self)
    let responder = Task {
        for await request in requests {
            var response = Bynar_V1_TicketResponse()
            response.incidentID = request.payload.incidentID
            try? await server.reply(to: request, with: response)
        }
    }
    var latencies: [Double] = []
    latencies.reserveCapacity(samples)
    var request = Bynar_V1_TicketRequest()
    for index in 0..<(samples + 100) {
        request.incidentID = "i-\(index)"
        let started = clock.now
        let reply = try await client.request(request, to: "bench/rtt", expecting: Bynar_V1_TicketResponse.self, timeout: .seconds(5))
        let elapsed = clock.now - started
        precondition(reply.payload.incidentID == request.incidentID, "reply does not match its request")
        if index >= 100 {  // the first 100 warm up
            latencies.append(seconds(elapsed) * 1000)
        }
    }
    latencies.sort()
    print("rtt samples=\(samples) p50_ms=\(percentile(latencies, 0.5)) p99_ms=\(percentile(latencies, 0.99)) max_ms=\(latencies.last!)")
    responder.cancel()
    await client.shutdown()
    await server.shutdown()
}

let port = option("port", 1883)
switch CommandLine.arguments.dropFirst().first ?? "" {
case "publish":
    try await benchPublish(port: port, messages: option("messages", 20000), payloadBytes: option("payload-bytes", 64),
                           publishers: option("publishers", 32), inflight: option("inflight", BrokerConfig().maxInflight))
case "stream":
    try await benchStream(port: port, messages: option("messages", 20000), payloadBytes: option("payload-bytes", 64))
case "rtt":
    try await benchRoundTrip(port: port, samples: option("samples", 2000))
default:
    writeToStandardError("usage: bynar-bench publish|stream|rtt --port P [--messages N] [--samples N]")
    exit(64)
}
