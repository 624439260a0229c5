import BynarProcess
import BynarTestSupport
import Foundation
import Testing

/// The test support's crash check (``ServiceProcess/crashReport``), which the harnesses run
/// on every service they stop or kill: a real trap's report is found in a real log, and a
/// log without one (a service killed on purpose) passes.
@Suite struct CrashReportTests {
    /// A real Swift program that traps, built and run here: the runtime's own report, as a
    /// service's log would hold it.
    @Test func aRealTrapIsFoundInTheLog() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-crash")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let source = directory + "/trap.swift"
        try """
            import Glibc
            fputs("starting: the fatal part is below\\n", stderr)
            let values: [Int?] = [nil]
            print(values[0]!)
            """.write(toFile: source, atomically: true, encoding: .utf8)
        let binary = directory + "/trap"
        let compile = try Tool.run(["/usr/bin/env", "swiftc", "-Onone", source, "-o", binary], timeout: .seconds(120), mergeStderr: true)
        try #require(compile.exitCode == 0, "swiftc failed: \(compile.text)")
        let log = try Tool.run([binary], timeout: .seconds(60), mergeStderr: true).text
        let report = try #require(ServiceProcess.crashReport(in: log), "no crash found in:\n\(log)")
        #expect(report.contains("Unexpectedly found nil while unwrapping an Optional value"))
        #expect(log.contains("starting:") && !report.contains("starting:"), "the report begins at the trap, not before it")
    }

    @Test func aLogWithoutATrapPasses() {
        let log = """
            2026-12-06T21:00:00Z info bynar-notifier: started
            2026-12-06T21:00:01Z error bynar-notifier: slack: 500 from the webhook (fatal for this attempt, retrying)
            """
        #expect(ServiceProcess.crashReport(in: log) == nil)
    }
}
