import BynarAuth
import BynarBus
import BynarProto
import BynarConfig
#if canImport(Glibc)
import Glibc
#endif

/// Signed List and SafeToRemove round trips to a running bynar-disk-manager, one at a time:
/// p50/p99 per operation, and how many disks List returned.
func benchDiskManager(port: Int, host: String, keyFile: String, disk: String, samples: Int) async throws {
    let clock = ContinuousClock()
    let bus = try await makeBus("dm-client", port: port)
    let client = try DiskManagerClient(bus: bus, privateKeyFile: keyFile)
    var selector = Bynar_V1_DiskSelector()
    selector.devPath = disk
    var listed = 0
    for (name, operation) in [("list", Bynar_V1_DiskManagerRequest.OneOf_Operation.list(.init())), ("safe_to_remove", .safeToRemove(.with { $0.disk = selector }))] {
        var latencies: [Double] = []
        for index in 0..<(samples + 20) {
            let started = clock.now
            let response = try await client.send(operation, to: host, timeout: .seconds(10))
            let elapsed = clock.now - started
            guard response.outcome == .success else {
                writeToStandardError("\(name): \(response.outcome) \(response.reason)")
                exit(1)
            }
            if case .list = operation { listed = response.diskList.disks.count }
            if index >= 20 { latencies.append(seconds(elapsed) * 1000) }  // the first 20 warm up
        }
        latencies.sort()
        print("\(name) samples=\(samples) p50_ms=\(percentile(latencies, 0.5)) p99_ms=\(percentile(latencies, 0.99)) max_ms=\(latencies.last!)" + (name == "list" ? " disks=\(listed)" : ""))
    }
    await bus.shutdown()
}
