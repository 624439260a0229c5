// Measures the bus against a real broker. Driven by scripts/bench, which runs mosquitto's
// own C clients on the same broker in the same run for comparison.
//
//   bynar-bench publish --port P --messages N [--payload-bytes B] [--inflight K]
//       publishes N QoS 1 envelopes and waits for every acknowledgement
//   bynar-bench stream --port P --messages N
//       the same, as ordered pipelined batches (how the outbox sends)
//   bynar-bench kernel-latency --port P --host H --disks /dev/loopA:CONTROL,...
//       kernel I/O error (a failed O_DIRECT read on a faultfs disk) -> detector event
//   bynar-bench rtt --port P --samples N
//       request/response round trips through the broker, one at a time
//   bynar-bench fuzz --port P --topics T1,T2,... [--payloads N] [--max-bytes B] [--seed S]
//       hostile payloads round-robin over the topics (scripts/bench fuzz)
//   bynar-bench disk-manager --port P --host H --key FILE --disk /dev/X --samples N
//       signed List and SafeToRemove round trips to a running bynar-disk-manager
import BynarBus
import BynarConfig
import BynarProto
import Logging
import Synchronization
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

/// For each `device:control` pair: makes a block fail (faultfs control file), reads it with
/// O_DIRECT, and times until the detector's event for that disk arrives on the bus.
func benchKernelLatency(port: Int, host: String, disks: [(device: String, control: String)]) async throws {
    let bus = try await makeBus("latency", port: port)
    let events = try await bus.subscribe(Topics.diskEvents(host: host), as: Bynar_V1_DiskHealthEvent.self)
    let arrivals = ArrivalLog()
    let listener = Task {
        for await event in events where event.payload.toState == .suspect {
            arrivals.record(device: event.payload.disk.devPath)
        }
    }
    var latencies: [Double] = []
    for disk in disks {
        let control = open(disk.control, O_WRONLY)
        precondition(control >= 0, "cannot open \(disk.control)")
        _ = "fail 800 8\n".withCString { write(control, $0, strlen($0)) }
        close(control)
        let fd = open(disk.device, O_RDONLY | 0o40000)  // O_DIRECT
        precondition(fd >= 0, "cannot open \(disk.device)")
        var buffer: UnsafeMutableRawPointer?
        posix_memalign(&buffer, 4096, 4096)
        let started = ContinuousClock.now
        let result = pread(fd, buffer, 4096, 800 * 512)
        precondition(result < 0, "the read should have failed")
        close(fd)
        free(buffer)
        let deadline = started + .seconds(10)
        while arrivals.time(of: disk.device) == nil && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(1))
        }
        guard let arrived = arrivals.time(of: disk.device) else {
            print("latency device=\(disk.device) no event within 10 s")
            continue
        }
        latencies.append(seconds(arrived - started) * 1000)
        try await Task.sleep(for: .milliseconds(600))  // the kernel prints at most 10 I/O errors per 5 s
    }
    listener.cancel()
    latencies.sort()
    if latencies.isEmpty {
        print("kernel_latency samples=0")
    } else {
        print("kernel_latency samples=\(latencies.count) p50_ms=\(percentile(latencies, 0.5)) max_ms=\(latencies.last!)")
    }
    await bus.shutdown()
}

/// When each device's event arrived.
final class ArrivalLog: Sendable {
    private let times = Mutex<[String: ContinuousClock.Instant]>([:])
    func record(device: String) { times.withLock { $0[device] = $0[device] ?? .now } }
    func time(of device: String) -> ContinuousClock.Instant? { times.withLock { $0[device] } }
}

let port = option("port", 1883)
switch CommandLine.arguments.dropFirst().first ?? "" {
case "publish":
    try await benchPublish(port: port, messages: option("messages", 20000), payloadBytes: option("payload-bytes", 64),
                           publishers: option("publishers", 32), inflight: option("inflight", BrokerConfig().maxInflight))
case "stream":
    try await benchStream(port: port, messages: option("messages", 20000), payloadBytes: option("payload-bytes", 64))
case "kernel-latency":
    let arguments = CommandLine.arguments
    let disks = arguments.firstIndex(of: "--disks").map { arguments[$0 + 1] } ?? ""
    let host = arguments.firstIndex(of: "--host").map { arguments[$0 + 1] } ?? "bench"
    try await benchKernelLatency(port: port, host: host, disks: disks.split(separator: ",").map {
        let parts = $0.split(separator: ":")
        return (String(parts[0]), String(parts[1]))
    })
case "rtt":
    try await benchRoundTrip(port: port, samples: option("samples", 2000))
case "disk-manager":
    let arguments = CommandLine.arguments
    func text(_ name: String) -> String { arguments.firstIndex(of: "--\(name)").map { arguments[$0 + 1] } ?? "" }
    try await benchDiskManager(port: port, host: text("host"), keyFile: text("key"), disk: text("disk"), samples: option("samples", 500))
case "fuzz":
    let arguments = CommandLine.arguments
    let topics = arguments.firstIndex(of: "--topics").map { arguments[$0 + 1].split(separator: ",").map(String.init) } ?? []
    try await benchFuzz(port: port, payloads: option("payloads", 28_000), maxBytes: option("max-bytes", 256 * 1024),
                        seed: UInt64(option("seed", 1)), topics: topics)
case "orchestrator":
    let stopDuringFlood = option("stop-during-flood", 0)
    try await benchOrchestrator(port: port, hosts: option("hosts", 10_000), rate: option("rate", 1000), seconds: option("seconds", 10), flood: option("flood", 20_000),
                                safe: CommandLine.arguments.contains("--safe"), stopDuringFlood: stopDuringFlood > 0 ? pid_t(stopDuringFlood) : nil)
default:
    writeToStandardError("usage: bynar-bench publish|stream|rtt|kernel-latency --port P [--messages N] [--samples N]")
    exit(64)
}
