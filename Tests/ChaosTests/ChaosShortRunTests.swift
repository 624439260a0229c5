import BynarTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The short chaos run (`scripts/chaos --short`): 2 hosts, 4 failing disks, every real service
/// and a real broker killed with SIGKILL every few seconds. Asserts the chaos targets: 0
/// duplicate tickets, 0 events lost, 0 STUCK, every disk back in service, exactly one Remove
/// and one Add per disk (the run exits non-zero when one is missed and prints why).
/// `TEST_CHAOS_ARGS` adds options (e.g. `--seed 42`; not BYNAR_*: the services read those).
@Suite(.serialized, .enabled(if: FaultyDisk.available && TestBroker.available, "needs root, faultfs (FUSE), loop devices and mosquitto"))
struct ChaosShortRunTests {
    @Test(.timeLimit(.minutes(6)))
    func shortChaosRunMeetsTheTargets() async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-chaos-test")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let output = directory + "/chaos.out"
        let extra = (ProcessInfo.processInfo.environment["TEST_CHAOS_ARGS"] ?? "").split(separator: " ").map(String.init)
        let chaos = try ChildProcess(builtExecutable("bynar-chaos"), ["--short"] + extra, outputPath: output)
        // The run stops itself at 240 s (--short's --max-seconds); SIGTERM makes it clean up.
        let deadline = ContinuousClock.now + .seconds(330)
        await withTaskCancellationHandler {
            while chaos.isRunning, ContinuousClock.now < deadline {
                try? await Task.sleep(for: .seconds(1))
            }
        } onCancel: {
            kill(chaos.pid, SIGTERM)
        }
        if chaos.isRunning { chaos.stop(SIGTERM, timeout: .seconds(60)) }
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        let figures = text.split(separator: "\n").filter { !$0.hasPrefix("[chaos") }.joined(separator: "\n")
        print("chaos --short:\n\(figures)")
        #expect(chaos.exitCode == 0, "\(text.suffix(6000))")
        #expect(text.contains("targets met"), "\(figures)")
    }
}
