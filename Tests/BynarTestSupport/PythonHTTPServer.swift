import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An application for the checks to watch: Python's `http.server` answering `/health` with
/// `body` on a free 127.0.0.1 port, started and waited for until it answers. ``crash()``
/// kills it with SIGKILL (what a crashed application server looks like), ``restart()``
/// brings it back on the same port; killed on deinit.
public final class WebApp: @unchecked Sendable {
    public let port: Int
    private let directory: String
    private var server: ChildProcess?

    /// Serves `directory`/www (made here) and logs to `directory`/web.log.
    public init(directory: String, body: String = "ok\n") throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory + "/www", withIntermediateDirectories: true)
        try body.write(toFile: directory + "/www/health", atomically: true, encoding: .utf8)
        port = try freeLoopbackPort()
        try restart()
    }

    public func restart() throws {
        let server = try ChildProcess("/usr/bin/python3", ["-m", "http.server", "--bind", "127.0.0.1", "--directory", directory + "/www", "\(port)"],
                                      outputPath: directory + "/web.log")
        self.server = server
        for _ in 0..<100 {
            if (try? plainHTTP(port: port, method: "GET", path: "/"))?.0 == 200 { break }
            usleep(50_000)
        }
    }

    public func crash() { _ = server?.stop(SIGKILL) }

    deinit { crash() }
}
