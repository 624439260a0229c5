import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real HTTP proxy (tinyproxy, from scripts/install-deps) on a free loopback port with
/// its own config and log, for putting a proxy in the ticketing service's path. Stopped by
/// pid on `stop()` and on deinit.
public final class TicketingProxy: @unchecked Sendable {
    public let port: Int
    public let directory: String
    private let process: ChildProcess

    public static let tinyproxyPath = "/usr/bin/tinyproxy"
    public static var available: Bool { FileManager.default.isExecutableFile(atPath: tinyproxyPath) }

    /// The proxy URL for Bynar's `proxy` field.
    public var url: String { "http://127.0.0.1:\(port)" }

    public init() throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-proxy")
        port = try freeLoopbackPort()
        // No ConnectPort line: CONNECT is allowed to any port (the stand-in's is random).
        let config = """
        Port \(port)
        Listen 127.0.0.1
        Timeout 30
        LogFile "\(directory)/tinyproxy.log"
        LogLevel Connect
        MaxClients 50
        Allow 127.0.0.1
        ViaProxyName "bynar-test-proxy"
        """
        try config.write(toFile: directory + "/tinyproxy.conf", atomically: true, encoding: .utf8)
        process = try ChildProcess(TicketingProxy.tinyproxyPath, ["-d", "-c", directory + "/tinyproxy.conf"], outputPath: directory + "/tinyproxy.out")
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if canConnect(port: port) { return }
            if !process.isRunning { break }
            usleep(20_000)
        }
        process.stop(SIGKILL)
        throw TestSupportError("tinyproxy did not listen on \(port); output:\n\((try? String(contentsOfFile: directory + "/tinyproxy.out", encoding: .utf8)) ?? "")")
    }

    /// What tinyproxy logged (connections it made, CONNECT tunnels).
    public var log: String { (try? String(contentsOfFile: directory + "/tinyproxy.log", encoding: .utf8)) ?? "" }

    public func stop() {
        process.stop(SIGTERM)
    }

    deinit {
        process.stop(SIGKILL)
        try? FileManager.default.removeItem(atPath: directory)
    }
}
