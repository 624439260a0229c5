import BynarBus
import BynarProto
import BynarTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Publishes `payloads` hostile messages, round-robin over `topics` (every topic a central
/// service subscribes to), in pipelined batches: random bytes of log-uniform size from 1 B
/// to `maxBytes`, envelopes carrying the wrong payload type, envelopes cut short, and
/// envelopes whose claims disagree with their topic. Deterministic for a `seed`.
func benchFuzz(port: Int, payloads: Int, maxBytes: Int, seed: UInt64, topics: [String]) async throws {
    var random = SeededRandom(seed: seed)
    let bus = try await makeBus("fuzz", port: port)
    let clock = ContinuousClock()
    let started = clock.now
    var sent = 0
    var bytes = 0
    var kinds = [0, 0, 0, 0]
    while sent < payloads {
        let count = min(256, payloads - sent)
        var batch: [(bytes: [UInt8], topic: String, retain: Bool)] = []
        for index in 0..<count {
            let topic = topics[(sent + index) % topics.count]
            let kind = Int(random.next() % 4)
            kinds[kind] += 1
            var payload: [UInt8]
            switch kind {
            case 0:
                // Log-uniform size: mostly small, now and then up to maxBytes.
                let exponent = Double(random.next() % 1000) / 1000 * log2(Double(maxBytes))
                payload = (0..<max(1, Int(pow(2, exponent)))).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            case 1:
                var wrong = Bynar_V1_Notification()
                wrong.text = String(repeating: "w", count: Int(random.next() % 4096))
                payload = try Bus.serialize(bus.envelope(wrong))
            case 2:
                var health = Bynar_V1_DiskHealth()
                health.disk.serial = String(repeating: "s", count: Int(random.next() % 8192))
                let whole = try Bus.serialize(bus.envelope(health))
                payload = Array(whole.prefix(max(1, Int(random.next() % UInt64(whole.count)))))
            default:
                var event = Bynar_V1_DiskHealthEvent()
                event.disk.host = "not-the-topics-host"
                event.disk.key = String(repeating: "k", count: Int(random.next() % 1024))
                payload = try Bus.serialize(bus.envelope(event))
            }
            bytes += payload.count
            batch.append((payload, topic, false))
        }
        let refused = try await bus.publish(batch: batch).compactMap { $0 }
        precondition(refused.isEmpty, "broker refused \(refused.count) messages: \(refused.first!)")
        sent += count
    }
    let elapsed = seconds(clock.now - started)
    print("fuzz payloads=\(payloads) topics=\(topics.count) bytes=\(bytes) garbage=\(kinds[0]) wrong_type=\(kinds[1]) cut_short=\(kinds[2]) false_claims=\(kinds[3]) seconds=\(elapsed)")
    await bus.shutdown()
}
