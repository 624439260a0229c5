import AsyncHTTPClient
import BynarConfig
import Metrics
import NIOCore
import NIOHTTP1
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// JSON over HTTP(S) to one backend, through the configured proxy, with a deadline per
/// request; answers are sorted into ``TicketBackendError`` cases by status code.
struct HTTPTransport: Sendable {
    /// A response that came back, whatever its status.
    struct Reply: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    let client: HTTPClient
    let timeout: TimeAmount
    let authorization: String?
    /// Backend name for messages ("JIRA").
    let what: String
    /// The backend's name for metrics ("jira").
    let backend: String

    init(settings: TicketingSettings, credentials: TicketingSettings.Credentials?, what: String, backend: String) {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(Int64(min(settings.requestTimeoutSeconds, 10))), read: .seconds(Int64(settings.requestTimeoutSeconds)))
        configuration.redirectConfiguration = .disallow
        // HTTP/1.1 only: AsyncHTTPClient 1.37.0's HTTP/2 path can crash the process
        // (swift-server/async-http-client#922; EtcdClient says how we met it).
        configuration.httpVersion = .http1Only
        if let proxy = settings.proxy {
            let authorization = proxy.user.map { HTTPClient.Authorization.basic(username: $0, password: proxy.password ?? "") }
            configuration.proxy = .server(host: proxy.host, port: proxy.port, authorization: authorization)
        }
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        timeout = .seconds(Int64(settings.requestTimeoutSeconds))
        authorization = credentials.map(HTTPTransport.authorizationHeader)
        self.what = what
        self.backend = backend
    }

    static func authorizationHeader(_ credentials: TicketingSettings.Credentials) -> String {
        switch credentials {
        case .basic(let user, let token): "Basic " + Data("\(user):\(token)".utf8).base64EncodedString()
        case .bearer(let token): "Bearer " + token
        }
    }

    /// Sends one request and returns the reply when its status is 2xx.
    /// - Throws: the ``TicketBackendError`` the status (or the failure to get one) means.
    func send(_ method: HTTPMethod, _ url: String, json body: [UInt8]? = nil, extraHeaders: [(String, String)] = []) async throws(TicketBackendError) -> Reply {
        let reply = try await exchange(method, url, json: body, extraHeaders: extraHeaders)
        if (200..<300).contains(reply.status) { return reply }
        throw classify(reply, method: method, url: url)
    }

    /// Sends one request and returns whatever status came back; throws only when no
    /// answer came (``TicketBackendError/unavailable(detail:)``).
    func exchange(_ method: HTTPMethod, _ url: String, json body: [UInt8]? = nil, extraHeaders: [(String, String)] = []) async throws(TicketBackendError) -> Reply {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "bynar-ticketing")
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        for (name, value) in extraHeaders { request.headers.add(name: name, value: value) }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        var status = "none"
        defer { Counter(label: "bynar_ticketing_requests_total", dimensions: [("backend", backend), ("code", status)]).increment() }
        do {
            let response = try await client.execute(request, timeout: timeout)
            status = "\(response.status.code)"
            let buffer = try await response.body.collect(upTo: 8 << 20)
            return Reply(status: Int(response.status.code), headers: response.headers, body: Array(buffer.readableBytesView))
        } catch {
            throw .unavailable(detail: "\(method) \(url): no answer from \(what): \(error)")
        }
    }

    /// The error a non-2xx reply means.
    func classify(_ reply: Reply, method: HTTPMethod, url: String) -> TicketBackendError {
        let detail = "\(method) \(url) answered \(reply.status): \(HTTPTransport.errorText(reply))"
        switch reply.status {
        case 401, 403: return .notAuthorized(status: reply.status, detail: detail)
        case 429: return .rateLimited(retryAfter: reply.headers.first(name: "Retry-After").flatMap(HTTPTransport.retryAfter), detail: detail)
        case 500...: return .unavailable(detail: detail)
        default: return .rejected(status: reply.status, detail: detail)
        }
    }

    /// JIRA's error body (`{"errorMessages": [...], "errors": {"field": "message"}}`) as
    /// one line, else the body's first 500 characters.
    static func errorText(_ reply: Reply) -> String {
        struct JiraErrors: Decodable {
            var errorMessages: [String]?
            var errors: [String: String]?
        }
        if let parsed = try? JSONDecoder().decode(JiraErrors.self, from: Data(reply.body)), parsed.errorMessages != nil || parsed.errors != nil {
            let messages = parsed.errorMessages ?? []
            let fields = (parsed.errors ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
            let all = messages + fields
            return all.isEmpty ? "(no error messages)" : all.joined(separator: "; ")
        }
        let text = reply.text.trimmedWhitespace
        return text.isEmpty ? "(empty body)" : String(text.prefix(500))
    }

    /// A Retry-After value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
    static func retryAfter(_ value: String) -> Duration? {
        let text = value.trimmedWhitespace
        if let seconds = Int(text), seconds >= 0 { return .seconds(seconds) }
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
        let fields = text.split(separator: " ")
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard fields.count == 6, fields[5] == "GMT", let day = Int32(fields[1]), let month = months.firstIndex(of: String(fields[2])),
              let year = Int32(fields[3]) else { return nil }
        let clock = fields[4].split(separator: ":").compactMap { Int32($0) }
        guard clock.count == 3 else { return nil }
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = Int32(month)
        parts.tm_mday = day
        parts.tm_hour = clock[0]
        parts.tm_min = clock[1]
        parts.tm_sec = clock[2]
        let when = timegm(&parts)
        return .seconds(max(0, Int(when - time(nil))))
    }

    func shutdown() async {
        try? await client.shutdown()
    }
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved characters).
func queryEncoded(_ text: String) -> String {
    var out = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
        }
    }
    return out
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
