import BynarProcess
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Debian's Chromium, headless, for tests that look at a page the way a browser shows it.
/// Each run is its own process group with a profile directory of its own, and the whole
/// group is killed when the run ends (the browser leaves helpers behind otherwise).
public enum HeadlessChromium {
    /// The browser, when installed (`apt-get install chromium`; scripts/install-deps has it).
    public static var path: String? {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { access($0, X_OK) == 0 }
    }

    /// The DOM of `url` once the page's scripts ran for `budget` of virtual time (or, with
    /// `javaScript` false, as the server sent it), serialized by the browser.
    public static func dumpDOM(_ url: String, javaScript: Bool = true, budget: Duration = .seconds(5)) throws -> String {
        try run(["--dump-dom"], url: url, javaScript: javaScript, budget: budget)
    }

    /// Saves a PNG of `url` at `width`×`height` to `file`.
    public static func screenshot(_ url: String, to file: String, width: Int = 1200, height: Int = 1600, budget: Duration = .seconds(5)) throws {
        _ = try run(["--screenshot=\(file)", "--window-size=\(width),\(height)", "--hide-scrollbars"], url: url, javaScript: true, budget: budget)
    }

    static func run(_ what: [String], url: String, javaScript: Bool, budget: Duration, timeout: Duration = .seconds(60)) throws -> String {
        guard let browser = path else { throw TestSupportError("chromium is not installed (apt-get install chromium)") }
        let profile = try makeTemporaryDirectory(prefix: "bynar-chromium")
        defer { try? FileManager.default.removeItem(atPath: profile) }
        let outputPath = profile + "/stdout"
        let milliseconds = budget.components.seconds * 1000 + budget.components.attoseconds / 1_000_000_000_000_000
        var arguments = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                         "--user-data-dir=\(profile)", "--virtual-time-budget=\(milliseconds)"]
        if !javaScript { arguments.append("--blink-settings=scriptEnabled=false") }
        arguments += what + [url]
        let pid: pid_t
        do {
            pid = try Tool.spawn(arguments, output: .file(outputPath), mergeStderr: false).pid
        } catch {
            throw TestSupportError("cannot start chromium: \(error)")
        }
        var status: Int32 = 0
        var exited = false
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid { exited = true; break }
            usleep(20_000)
        }
        // The browser's helpers share its group: end them all, whether it exited or not.
        kill(-pid, SIGKILL)
        if !exited {
            kill(pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        guard exited else { throw TestSupportError("chromium did not finish within \(timeout): \(output.suffix(2000))") }
        guard status & 0x7f == 0 && (status >> 8) & 0xff == 0 else {
            throw TestSupportError("chromium failed (wait status \(status)): \(output.suffix(2000))")
        }
        return output
    }
}
