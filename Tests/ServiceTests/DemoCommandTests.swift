import BynarTestSupport
import Foundation
import Testing

/// `bynar demo` runs the checkout's `scripts/demo` (the demo's hardware), and an installed
/// binary with no checkout around it says why it cannot.
@Suite struct DemoCommandTests {
    @Test("bynar demo runs the checkout's scripts/demo")
    func runsTheCheckoutsScript() async throws {
        // Without a running demo, the script itself answers (not the CLI).
        guard !FileManager.default.fileExists(atPath: packageRoot + "/run/demo/disks") else { return }
        let run = try await runCommand([builtExecutable("bynar"), "demo", "disks"])
        #expect(run.exitCode == 1 && run.stderr.contains("demo: no demo disks (start scripts/run-local --demo)"), "\(run.stderr)")
    }

    @Test("a bynar with no checkout around it names what is missing")
    func anInstalledBinarySaysWhy() async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-demo-cli")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.copyItem(atPath: builtExecutable("bynar"), toPath: directory + "/bynar")
        let run = try await runCommand([directory + "/bynar", "demo", "fail", "d2"])
        #expect(run.exitCode == 64 && run.stderr.contains("bynar demo runs from a source checkout"), "\(run.stderr)")
    }
}
