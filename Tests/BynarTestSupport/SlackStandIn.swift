import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A STAND-IN for Slack's incoming webhooks (no real Slack can run in a test):
/// `Tests/StandIns/slack/slack_standin.py` run by /usr/bin/python3 on a free loopback port,
/// stopped by pid on `stop()` and on deinit. It answers as Slack documents (200 "ok";
/// 400 invalid_payload / no_text; 404 no_service / channel_not_found; 429 with
/// Retry-After; 500) and records every post for the test.
public final class SlackStandIn: @unchecked Sendable {
    public let port: Int
    public let directory: String
    private let process: ChildProcess

    public init() throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-slack")
        process = try ChildProcess("/usr/bin/python3", [packageRoot + "/Tests/StandIns/slack/slack_standin.py", directory + "/port"],
                                   outputPath: directory + "/standin.log")
        port = try portWrittenBy(process, to: directory + "/port", name: "Slack stand-in", log: directory + "/standin.log")
    }

    /// The webhook URL to configure.
    public var webhookURL: String { "http://127.0.0.1:\(port)/services/T0000/B0000/standin" }

    /// One answer the stand-in gives instead of its default.
    public struct Response: Encodable, Sendable {
        public var status: Int
        public var body: String
        public var retry_after: String?
        public init(status: Int, body: String, retryAfter: String? = nil) {
            self.status = status
            self.body = body
            self.retry_after = retryAfter
        }
    }

    /// The next webhook posts get these answers, in order.
    public func script(_ responses: [Response]) throws {
        struct Body: Encodable { var responses: [Response] }
        _ = try request("POST", "/_control/next", body: String(decoding: try JSONEncoder().encode(Body(responses: responses)), as: UTF8.self))
    }

    /// Forgets the posts received and the answers scripted.
    public func reset() throws {
        _ = try request("POST", "/_control/reset")
    }

    /// One webhook post as the stand-in saw it.
    public struct Post: Decodable, Sendable {
        public struct Payload: Decodable, Sendable {
            public var text: String?
            public var channel: String?
            public var username: String?
        }
        /// Unix seconds.
        public var at: Double
        /// What the stand-in answered.
        public var status: Int
        public var payload: Payload?
        public var raw: String
    }

    /// Every webhook post so far, in order.
    public func received() throws -> [Post] {
        try JSONDecoder().decode([Post].self, from: Data(try request("GET", "/_control/received").utf8))
    }

    /// Posts that were answered 200.
    public func delivered() throws -> [Post] { try received().filter { $0.status == 200 } }

    public func stop() {
        process.stop(SIGTERM)
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A minimal blocking HTTP/1.1 exchange (the test support has no HTTP client).
    private func request(_ method: String, _ path: String, body: String = "") throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw TestSupportError("cannot reach the Slack stand-in: \(String(cString: strerror(errno)))") }
        let bodyBytes = Array(body.utf8)
        let head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(bodyBytes.count)\r\n\r\n"
        let bytes = Array(head.utf8) + bodyBytes
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw TestSupportError("write to the Slack stand-in failed") }
            sent += n
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw TestSupportError("bad answer from the Slack stand-in: \(text)") }
        guard text.hasPrefix("HTTP/1.1 200") || text.hasPrefix("HTTP/1.0 200") else { throw TestSupportError("Slack stand-in control said: \(text)") }
        return String(text[split.upperBound...])
    }
}

/// The port a test server `process` writes to `portFile` once it listens (within 15 s);
/// throws with its log when it exits or takes longer.
func portWrittenBy(_ process: ChildProcess, to portFile: String, name: String, log: String) throws -> Int {
    let deadline = ContinuousClock.now + .seconds(15)
    while ContinuousClock.now < deadline {
        if let text = try? String(contentsOfFile: portFile, encoding: .utf8), let port = Int(text) { return port }
        if !process.isRunning { break }
        usleep(20_000)
    }
    process.stop(SIGKILL)
    throw TestSupportError("\(name) did not start; log:\n\((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
}
