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
    /// `javaScript` false, once the page loaded with scripts disabled), serialized by the browser.
    public static func dumpDOM(_ url: String, javaScript: Bool = true, budget: Duration = .seconds(5)) throws -> String {
        if javaScript { return try run(["--dump-dom"], url: url, budget: budget) }
        // Chromium's --dump-dom prints nothing with scripts disabled (it reads the DOM with
        // a script): scripts/browser-dom reads it over the DevTools protocol instead.
        guard path != nil else { throw TestSupportError("chromium is not installed (apt-get install chromium)") }
        let result: Tool.Run
        do {
            result = try Tool.run(["python3", "\(packageRoot)/scripts/browser-dom", "--no-javascript", "--timeout", "60", url], timeout: .seconds(90), mergeStderr: true)
        } catch {
            throw TestSupportError("scripts/browser-dom: \(error)")
        }
        guard result.exitCode == 0 else { throw TestSupportError("scripts/browser-dom failed (wait status \(result.status)): \(result.text.suffix(2000))") }
        return result.text
    }

    /// Starts loading `url` with scripts on and keeps it open for `seconds` after its load
    /// event, then writes its DOM to `outputPath` (`scripts/browser-dom --wait`); the file
    /// says "browser-dom: loaded" once the page has loaded. Stop it with `stop(SIGTERM)`
    /// (the browser's group is killed) or wait for its exit.
    public static func watch(_ url: String, seconds: Int, outputPath: String) throws -> ChildProcess {
        guard path != nil else { throw TestSupportError("chromium is not installed (apt-get install chromium)") }
        return try ChildProcess("/usr/bin/python3", ["\(packageRoot)/scripts/browser-dom", "--wait", "\(seconds)", "--timeout", "\(seconds + 60)", url],
                                outputPath: outputPath)
    }

    /// Runs `scripts/status-screenshot URL FILE` to its end (its own process group, killed
    /// after 90 s): its exit code and what it said.
    public static func statusScreenshot(_ url: String, to file: String) throws -> (exitCode: Int32?, output: String) {
        let result: Tool.Run
        do {
            result = try Tool.run(["bash", "\(packageRoot)/scripts/status-screenshot", url, file], timeout: .seconds(90), mergeStderr: true)
        } catch {
            throw TestSupportError("scripts/status-screenshot: \(error)")
        }
        return (result.exitCode, result.text)
    }

    static func run(_ what: [String], url: String, budget: Duration, timeout: Duration = .seconds(60)) throws -> String {
        guard let browser = path else { throw TestSupportError("chromium is not installed (apt-get install chromium)") }
        let profile = try makeTemporaryDirectory(prefix: "bynar-chromium")
        defer { try? FileManager.default.removeItem(atPath: profile) }
        let outputPath = profile + "/stdout"
        let milliseconds = budget.components.seconds * 1000 + budget.components.attoseconds / 1_000_000_000_000_000
        var arguments = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                         "--user-data-dir=\(profile)", "--virtual-time-budget=\(milliseconds)"]
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
