public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real Prometheus (Debian's `prometheus` package) on a free loopback port with its own
/// scratch directory, scraping `targets` every second, for tests. It runs in its own process
/// group (``ChildProcess``) and is stopped by pid on ``stop()`` or deinit, so a failing test
/// leaves none behind.
public final class PrometheusServer: @unchecked Sendable {
    public static let path = "/usr/bin/prometheus"
    public static var available: Bool { FileManager.default.isExecutableFile(atPath: path) }

    public let port: Int
    public let directory: String
    private let process: ChildProcess

    /// Starts it with one scrape job per entry of `targets` (job name → `127.0.0.1:PORT`
    /// addresses) and waits until it answers ready.
    public init(targets: [String: [String]]) throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-prometheus")
        port = try freeLoopbackPort()
        var config = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
        for (job, addresses) in targets.sorted(by: { $0.key < $1.key }) {
            config += "  - job_name: \(job)\n    static_configs:\n      - targets: [\(addresses.map { "\"\($0)\"" }.joined(separator: ", "))]\n"
        }
        try config.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
        process = try ChildProcess(Self.path, [
            "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
            "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
        ], outputPath: directory + "/prometheus.log")
        let deadline = ContinuousClock.now + .seconds(30)
        while (try? plainHTTP(port: port, method: "GET", path: "/-/ready").0) != 200 {
            guard process.isRunning, ContinuousClock.now < deadline else {
                stop()
                throw TestSupportError("prometheus did not start: \(log.suffix(2000))")
            }
            usleep(100_000)
        }
    }

    deinit { stop() }

    /// Stops the server (by pid) and removes its directory.
    public func stop() {
        process.stop(SIGTERM)
        try? FileManager.default.removeItem(atPath: directory)
    }

    public var log: String { (try? String(contentsOfFile: directory + "/prometheus.log", encoding: .utf8)) ?? "" }

    /// One sample of an instant query's result: its labels and value.
    public struct Sample: Sendable, CustomStringConvertible {
        public var labels: [String: String]
        public var value: Double
        public var description: String { "\(labels) \(value)" }
    }

    /// Evaluates `query` now through the HTTP API (`/api/v1/query`).
    public func query(_ query: String) throws -> [Sample] {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        let encoded = query.addingPercentEncoding(withAllowedCharacters: allowed) ?? query
        let (status, body) = try plainHTTP(port: port, method: "GET", path: "/api/v1/query?query=\(encoded)")
        guard status == 200,
              let answer = try JSONSerialization.jsonObject(with: body) as? [String: Any],
              let data = answer["data"] as? [String: Any], let result = data["result"] as? [[String: Any]] else {
            throw TestSupportError("query \(query) answered \(status): \(String(decoding: body, as: UTF8.self))")
        }
        return result.compactMap { entry in
            guard let pair = entry["value"] as? [Any], pair.count == 2, let text = pair[1] as? String, let value = Double(text) else { return nil }
            return Sample(labels: entry["metric"] as? [String: String] ?? [:], value: value)
        }
    }

    /// Polls `query` until `predicate` holds for its samples or `timeout` passes; returns
    /// the last samples (check them with the predicate again).
    public func wait(for query: String, timeout: Duration, until predicate: ([Sample]) -> Bool) async -> [Sample] {
        let deadline = ContinuousClock.now + timeout
        var samples: [Sample] = []
        while ContinuousClock.now < deadline {
            samples = (try? self.query(query)) ?? []
            if predicate(samples) { return samples }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return samples
    }
}
