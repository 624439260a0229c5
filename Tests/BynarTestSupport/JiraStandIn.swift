public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The STAND-IN JIRA (`Tests/StandIns/jira/jira_standin.py`): no real JIRA can run on a
/// test machine, so this Python server answers JIRA REST v2 as Atlassian documents it, and
/// takes faults and inspections through its `/_standin/` control channel. Started on a free
/// loopback port; stopped by pid on `stop()` and on deinit.
public final class JiraStandIn: @unchecked Sendable {
    public let port: Int
    public let directory: String
    private let process: ChildProcess

    /// Where bynar-ticketing should send its requests.
    public var baseURL: String { "http://127.0.0.1:\(port)" }

    /// Starts the stand-in, accepting basic auth `user`:`token`, or only `Bearer <bearer>`
    /// when `bearer` is given.
    public init(user: String = "bynar-bot", token: String = "api-token-1", bearer: String? = nil, project: String = "BYN") throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-jira")
        let portFile = directory + "/port"
        var arguments = ["\(packageRoot)/Tests/StandIns/jira/jira_standin.py", "--port-file", portFile, "--project", project]
        if let bearer { arguments += ["--bearer", bearer] } else { arguments += ["--user", user, "--token", token] }
        process = try ChildProcess("/usr/bin/python3", arguments, outputPath: directory + "/standin.log")
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let text = try? String(contentsOfFile: portFile, encoding: .utf8), let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                self.port = port
                return
            }
            if !process.isRunning { break }
            usleep(20_000)
        }
        let log = (try? String(contentsOfFile: directory + "/standin.log", encoding: .utf8)) ?? ""
        process.stop(SIGKILL)
        throw TestSupportError("the stand-in JIRA did not start; log:\n\(log)")
    }

    public func stop() {
        process.stop(SIGTERM)
    }

    deinit {
        process.stop(SIGKILL)
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: Control channel

    /// The next `count` JIRA requests answer `status` (with `Retry-After` when given, and
    /// JIRA's error body, or `body` as JSON text).
    public func failNext(_ count: Int, status: Int, retryAfter: String? = nil, body: String? = nil) throws {
        var fields = ["\"count\": \(count)", "\"status\": \(status)"]
        if let retryAfter { fields.append("\"retry_after\": \"\(retryAfter)\"") }
        if let body { fields.append("\"body\": \(body)") }
        try control("POST", "fail", "{\(fields.joined(separator: ", "))}")
    }

    /// While down, every JIRA request's connection is closed without an answer.
    public func setDown(_ down: Bool) throws { try control("POST", "down", "{\"down\": \(down)}") }

    /// Each created issue is stored, then its 201 is held back this long.
    public func setCreateDelay(seconds: Double) throws { try control("POST", "create-delay", "{\"seconds\": \(seconds)}") }

    /// Searches miss issues created less than `seconds` ago (JIRA's asynchronous index).
    public func setIndexLag(seconds: Double) throws { try control("POST", "index-lag", "{\"seconds\": \(seconds)}") }

    /// DELETE answers 403 (the user lacks the "Delete issues" permission).
    public func forbidDelete(_ forbid: Bool) throws { try control("POST", "forbid-delete", "{\"forbid\": \(forbid)}") }

    /// A technician resolved the issue: status Done, resolution Fixed.
    public func resolve(_ key: String) throws { try control("POST", "resolve", "{\"key\": \"\(key)\"}") }

    /// One issue as the stand-in holds it.
    public struct Issue: Sendable {
        public var key: String
        public var id: Int
        public var deleted: Bool
        public var status: String
        public var resolved: Bool
        public var summary: String
        public var description: String
        public var labels: [String]
        public var comments: [String]
        /// The `fields` object bynar-ticketing sent, as JSON text.
        public var fieldsJSON: String
    }

    /// Every issue ever created, deleted ones flagged.
    public func issues() throws -> [Issue] {
        let object = try json(try control("GET", "issues", nil))
        return (object["issues"] as? [[String: Any]] ?? []).map { issue in
            let fields = issue["fields"] as? [String: Any] ?? [:]
            let fieldsData = (try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])) ?? Data()
            return Issue(
                key: issue["key"] as? String ?? "", id: Int(issue["id"] as? String ?? "") ?? 0, deleted: issue["deleted"] as? Bool ?? false,
                status: issue["status"] as? String ?? "", resolved: !(issue["resolution"] is NSNull) && issue["resolution"] != nil,
                summary: fields["summary"] as? String ?? "", description: fields["description"] as? String ?? "",
                labels: fields["labels"] as? [String] ?? [], comments: (issue["comments"] as? [[String: Any]] ?? []).compactMap { $0["body"] as? String },
                fieldsJSON: String(decoding: fieldsData, as: UTF8.self)
            )
        }
    }

    /// Issues that exist (not deleted).
    public func liveIssues() throws -> [Issue] { try issues().filter { !$0.deleted } }

    /// One JIRA request the stand-in received.
    public struct Request: Sendable {
        public var method: String
        public var path: String
        public var authorization: String
        /// The `Via` header a forwarding proxy adds.
        public var via: String
        /// The status answered (0: the connection was closed without an answer).
        public var status: Int
        public var time: Double
    }

    /// Every JIRA request so far, in order.
    public func requests() throws -> [Request] {
        let object = try json(try control("GET", "requests", nil))
        return (object["requests"] as? [[String: Any]] ?? []).map { request in
            Request(method: request["method"] as? String ?? "", path: request["path"] as? String ?? "",
                    authorization: request["authorization"] as? String ?? "", via: request["via"] as? String ?? "",
                    status: request["status"] as? Int ?? -1, time: request["time"] as? Double ?? 0)
        }
    }

    /// One POST to the stand-in's webhook receiver (`/hooks/tickets`).
    public struct Webhook: @unchecked Sendable {
        public var body: [String: Any]
        public var idempotencyKey: String
    }

    /// Every webhook POST so far, in order.
    public func webhooks() throws -> [Webhook] {
        let object = try json(try control("GET", "webhooks", nil))
        return (object["webhooks"] as? [[String: Any]] ?? []).map {
            Webhook(body: $0["body"] as? [String: Any] ?? [:], idempotencyKey: $0["idempotency_key"] as? String ?? "")
        }
    }

    private func json(_ data: Data) throws -> [String: Any] {
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TestSupportError("the stand-in JIRA answered something that is not a JSON object")
        }
        return object
    }

    @discardableResult
    private func control(_ method: String, _ what: String, _ body: String?) throws -> Data {
        let (status, data) = try plainHTTP(port: port, method: method, path: "/_standin/" + what, body: body)
        guard status == 200 else { throw TestSupportError("stand-in control \(what) answered \(status): \(String(decoding: data, as: UTF8.self))") }
        return data
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` over a fresh connection; returns status and body.
public func plainHTTP(port: Int, method: String, path: String, body: String? = nil, headers: [String: String] = [:]) throws -> (Int, Data) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSupportError("socket failed") }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard connected else { throw TestSupportError("cannot connect to 127.0.0.1:\(port)") }
    let payload = Array((body ?? "").utf8)
    var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\nContent-Length: \(payload.count)\r\n"
    if body != nil { head += "Content-Type: application/json\r\n" }
    for (name, value) in headers { head += "\(name): \(value)\r\n" }
    let request = Array((head + "\r\n").utf8) + payload
    var sent = 0
    while sent < request.count {
        let count = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard count > 0 else { throw TestSupportError("send to 127.0.0.1:\(port) failed") }
        sent += count
    }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = recv(fd, &buffer, buffer.count, 0)
        if count <= 0 { break }
        response += buffer[0..<count]
    }
    let separator: [UInt8] = [13, 10, 13, 10]
    guard let split = (0..<max(0, response.count - 3)).first(where: { Array(response[$0..<$0 + 4]) == separator }) else {
        throw TestSupportError("no HTTP answer from 127.0.0.1:\(port)")
    }
    let statusLine = String(decoding: response[..<split], as: UTF8.self).split(separator: "\r\n").first ?? ""
    let parts = statusLine.split(separator: " ")
    guard parts.count >= 2, let status = Int(parts[1]) else { throw TestSupportError("bad status line: \(statusLine)") }
    return (status, Data(response[(split + 4)...]))
}
