import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A built Bynar service executable running against a test broker, with its own config,
/// store and log in `directory`. Killed on deinit.
public final class ServiceProcess: @unchecked Sendable {
    public let process: ChildProcess
    public let directory: String
    public let logPath: String

    /// Starts `executable` (e.g. "bynar-detector") on `brokerPort` as `host`; `extraConfig`
    /// is spliced into the top level of the JSON config (e.g. `"detector": {...}`; metrics
    /// are off unless it has a `"metrics"` section: tests run many services side by side);
    /// `brokerExtra` into the `broker` object (credentials, TLS); `environment` is added to
    /// the service's environment (test knobs such as pause points).
    public init(_ executable: String, brokerPort: Int, host: String = "h1", directory: String, extraConfig: String = "", brokerExtra: String = "",
                environment: [String: String] = [:]) throws {
        self.directory = directory
        logPath = directory + "/\(executable).log"
        let config = """
        {"host": "\(host)", "db_location": "\(directory)/db", "log_level": "debug",
         "broker": {"port": \(brokerPort), "reconnect_max_seconds": 1\(brokerExtra.isEmpty ? "" : ", " + brokerExtra)}\(extraConfig.isEmpty ? "" : ",\n " + extraConfig)\(extraConfig.contains("\"metrics\"") ? "" : ",\n \"metrics\": {\"enabled\": false}")}
        """
        try config.write(toFile: directory + "/bynar.json", atomically: true, encoding: .utf8)
        process = try ChildProcess(builtExecutable(executable), ["--config", directory + "/bynar.json"], outputPath: logPath, environment: environment)
    }

    /// Sends `signal` and waits for the exit.
    public func signal(_ signal: Int32) {
        process.stop(signal)
    }

    /// What the service logged so far.
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The lines around a crash the service logged (a Swift runtime trap, which the
    /// runtime's backtracer reports in the log), or nil: a test that kills a service on
    /// purpose checks this first, so a crash cannot pass for the kill.
    public var crashReport: String? { Self.crashReport(in: log) }

    /// The lines of `log` from the first Swift runtime trap on (at most 60), or nil.
    public static func crashReport(in log: String) -> String? {
        let lines = log.split(separator: "\n", omittingEmptySubsequences: false)
        guard let at = lines.firstIndex(where: { $0.contains("Fatal error:") || $0.contains("*** Program crashed") }) else { return nil }
        return lines[at..<min(lines.count, at + 60)].joined(separator: "\n")
    }

    /// Records a test issue naming `who` when the service logged a crash (``crashReport``).
    public func expectNoCrash(_ who: String) {
        if let report = crashReport { Issue.record("\(who) crashed:\n\(report)") }
    }
}
