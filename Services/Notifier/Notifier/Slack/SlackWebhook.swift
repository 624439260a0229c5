import AsyncHTTPClient
import Metrics
import NIOCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Posts messages to a Slack incoming webhook (`POST` JSON `{text, channel, username}`).
///
/// Slack answers `200 ok`; `429` with `Retry-After` when posting faster than about one
/// message a second; `400` (`invalid_payload`, `no_text`, ...), `403` (`action_prohibited`,
/// `invalid_token`), `404` (`no_service`, `channel_not_found`) and `410`
/// (`channel_is_archived`) for requests that will never succeed; `5xx` when it is in
/// trouble. Each becomes a ``DeliveryOutcome``.
final class SlackWebhook: DeliveryChannel {
    let name = "slack"
    private let url: String
    private let channel: String?
    private let username: String?
    private let timeout: Duration
    private let client: HTTPClient

    init(url: String, channel: String?, username: String?, proxy: String?, timeout: Duration) throws {
        self.url = url
        self.channel = channel
        self.username = username
        self.timeout = timeout
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(Int64(timeout.components.seconds)), read: .seconds(Int64(timeout.components.seconds)))
        if let proxy { configuration.proxy = try Self.proxy(proxy) }
        // HTTP/1.1 only: AsyncHTTPClient 1.37.0's HTTP/2 path can crash the process
        // (swift-server/async-http-client#922; EtcdClient in the orchestrator says how we met it).
        configuration.httpVersion = .http1Only
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// `http://[user:password@]host[:port]` as an AsyncHTTPClient proxy (CONNECT for https).
    static func proxy(_ text: String) throws -> HTTPClient.Configuration.Proxy {
        var rest = Substring(text)
        for scheme in ["http://", "https://"] where rest.hasPrefix(scheme) { rest = rest.dropFirst(scheme.count) }
        rest = rest.prefix { $0 != "/" }
        var authorization: HTTPClient.Authorization?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at].split(separator: ":", maxSplits: 1).map(String.init)
            authorization = .basic(username: credentials[0], password: credentials.count > 1 ? credentials[1] : "")
            rest = rest[rest.index(after: at)...]
        }
        var host = String(rest)
        var port = 80
        if let colon = rest.lastIndex(of: ":"), let number = Int(rest[rest.index(after: colon)...]) {
            host = String(rest[..<colon])
            port = number
        }
        guard !host.isEmpty else { throw SlackError(text: "proxy \"\(text)\" names no host") }
        return .server(host: host, port: port, authorization: authorization)
    }

    /// The webhook's JSON body for `text`.
    func payload(_ text: String) throws -> [UInt8] {
        struct Body: Encodable {
            var text: String
            var channel: String?
            var username: String?
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]  // the same message encodes the same way on every attempt
        return Array(try encoder.encode(Body(text: text, channel: channel, username: username)))
    }

    func send(_ message: OutgoingMessage) async -> DeliveryOutcome {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json; charset=utf-8")
        do {
            request.body = .bytes(ByteBuffer(bytes: try payload(message.text)))
        } catch {
            return .rejected(reason: "cannot encode the message as JSON: \(error)")
        }
        let status: UInt
        let body: String
        let retryAfter: String?
        var code = "none"
        defer { Counter(label: "bynar_notifier_slack_requests_total", dimensions: [("code", code)]).increment() }
        do {
            let response = try await client.execute(request, timeout: .seconds(Int64(timeout.components.seconds)))
            status = response.status.code
            code = "\(status)"
            retryAfter = response.headers.first(name: "Retry-After")
            let bytes = try await response.body.collect(upTo: 64 * 1024)
            body = String(buffer: bytes).trimmed
        } catch {
            return .retry(after: nil, reason: "Slack webhook unreachable: \(error)")
        }
        return Self.outcome(status: status, body: body, retryAfter: retryAfter)
    }

    /// What an answer from Slack means for the message.
    static func outcome(status: UInt, body: String, retryAfter: String?) -> DeliveryOutcome {
        let said = body.isEmpty ? "" : " \"\(body.prefix(200))\""
        switch status {
        case 200..<300:
            return .delivered
        case 429:
            let seconds = retryAfter.flatMap { Double($0.trimmed) }.map { max(0, min($0, 3600)) } ?? 1
            return .retry(after: .milliseconds(Int64(seconds * 1000)), reason: "Slack rate limit (429\(said)), Retry-After \(retryAfter ?? "absent")")
        case 500..<600:
            return .retry(after: nil, reason: "Slack answered \(status)\(said)")
        default:
            return .rejected(reason: "Slack refused the message: \(status)\(said)")
        }
    }

    func shutdown() async {
        try? await client.shutdown()
    }
}

struct SlackError: Error, CustomStringConvertible {
    var text: String
    var description: String { text }
}
