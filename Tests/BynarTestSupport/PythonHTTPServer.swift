import Foundation

/// Python's `http.server` serving `directory` on 127.0.0.1:`port` (a real HTTP server for
/// the application checks), started and waited for until it answers; stopped by the caller
/// (SIGKILL is what a crashed application server looks like).
public func startPythonHTTPServer(directory: String, port: Int, log: String) throws -> ChildProcess {
    let server = try ChildProcess("/usr/bin/python3", ["-m", "http.server", "--bind", "127.0.0.1", "--directory", directory, "\(port)"], outputPath: log)
    for _ in 0..<100 {
        if (try? plainHTTP(port: port, method: "GET", path: "/"))?.0 == 200 { break }
        usleep(50_000)
    }
    return server
}
