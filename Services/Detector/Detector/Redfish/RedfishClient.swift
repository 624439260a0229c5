import AsyncHTTPClient
import BynarConfig
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Why a BMC could not be read; every case names the URL.
enum RedfishError: Error, Equatable, CustomStringConvertible {
    /// No HTTP answer: connection refused, timeout, TLS handshake (a certificate that does
    /// not chain to the configured CA lands here).
    case noAnswer(url: String, detail: String)
    /// An answer with a status that is not 2xx.
    case status(method: String, url: String, code: Int, text: String)
    /// A 2xx answer that is not the JSON Redfish promises.
    case notRedfish(url: String, detail: String)
    /// The credentials file cannot be used.
    case credentials(path: String, problem: String)

    var description: String {
        switch self {
        case .noAnswer(let url, let detail): "no answer from the BMC at \(url): \(detail)"
        case .status(let method, let url, let code, let text):
            code == 401 || code == 403
                ? "\(method) \(url) answered \(code): the BMC refused the credentials (\(text))"
                : "\(method) \(url) answered \(code): \(text)"
        case .notRedfish(let url, let detail): "\(url) did not answer Redfish JSON: \(detail)"
        case .credentials(let path, let problem): "detector.redfish.credentials_file \(path): \(problem)"
        }
    }
}

/// A read-only Redfish client for one BMC: GETs JSON under `/redfish/v1`, over TLS checked
/// against the configured CA (or, loudly, not checked at all), with HTTP basic auth or a
/// Redfish session (`X-Auth-Token`, logged in again once when the BMC forgets it).
actor RedfishClient {
    let baseURL: String
    private let client: HTTPClient
    private let loops: MultiThreadedEventLoopGroup
    private let timeout: TimeAmount
    private let user: String
    private let password: String
    private let useSession: Bool
    private var token: String?
    private var sessionURL: String?

    init(config: DetectorRedfishConfig) throws {
        let line = try Self.readCredentials(config.credentialsFile)
        user = line.user
        password = line.password
        useSession = config.auth == "session"
        baseURL = config.url.hasSuffix("/") ? String(config.url.dropLast()) : config.url
        timeout = .seconds(Int64(config.timeoutSeconds))
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(Int64(config.timeoutSeconds)), read: .seconds(Int64(config.timeoutSeconds)))
        configuration.redirectConfiguration = .disallow
        // HTTP/1.1 only: AsyncHTTPClient 1.37.0's HTTP/2 path can crash the process
        // (swift-server/async-http-client#922; EtcdClient in the orchestrator says how we met it).
        configuration.httpVersion = .http1Only
        // One read a minute: no connection is kept open between reads (its timers and TLS
        // state would keep code resident for nothing); the session token is kept.
        configuration.connectionPool = .init(idleTimeout: .seconds(1))
        var tls = TLSConfiguration.makeClientConfiguration()
        if config.insecure {
            tls.certificateVerification = .none
        } else if let ca = config.caFile {
            tls.trustRoots = .file(ca)
        }
        configuration.tlsConfiguration = tls
        // One event-loop thread of its own: a read a minute needs no more, and NIO's shared
        // group starts a thread per core (dozens on a storage server, each with its stack).
        loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        client = HTTPClient(eventLoopGroupProvider: .shared(loops), configuration: configuration)
    }

    /// `user:password` from the file's first line.
    static func readCredentials(_ path: String) throws(RedfishError) -> (user: String, password: String) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .credentials(path: path, problem: "cannot read it")
        }
        let first = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
        let line = first.hasSuffix("\r") ? String(first.dropLast()) : first
        guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else {
            throw .credentials(path: path, problem: "the first line must be user:password")
        }
        return (String(line[..<colon]), String(line[line.index(after: colon)...]))
    }

    /// The resource at `path` (`/redfish/v1/...`), decoded.
    func get(_ path: String) async throws(RedfishError) -> RedfishResource {
        let url = baseURL + path
        var reply = try await exchange(.GET, url, body: nil)
        if reply.code == 401 && useSession {
            // The BMC forgot the session (timeout, BMC reset): log in again, once.
            token = nil
            reply = try await exchange(.GET, url, body: nil)
        }
        guard (200..<300).contains(reply.code) else {
            throw .status(method: "GET", url: url, code: reply.code, text: Self.errorText(reply.body))
        }
        do {
            return try RedfishResource.decode(reply.body)
        } catch {
            throw .notRedfish(url: url, detail: "\(error)")
        }
    }

    /// Ends the session (when there is one) and the HTTP client.
    func shutdown() async {
        if let sessionURL, let token {
            var request = HTTPClientRequest(url: sessionURL.hasPrefix("http") ? sessionURL : baseURL + sessionURL)
            request.method = .DELETE
            request.headers.add(name: "X-Auth-Token", value: token)
            _ = try? await client.execute(request, timeout: timeout)
        }
        token = nil
        sessionURL = nil
        try? await client.shutdown()
        try? await loops.shutdownGracefully()
    }

    private func login() async throws(RedfishError) -> String {
        let url = baseURL + "/redfish/v1/SessionService/Sessions"
        struct Login: Encodable {
            var UserName: String
            var Password: String
        }
        let body = (try? JSONEncoder().encode(Login(UserName: user, Password: password))).map { Array($0) } ?? []
        let reply = try await send(.POST, url, body: body, authorization: nil)
        guard (200..<300).contains(reply.code) else {
            throw .status(method: "POST", url: url, code: reply.code, text: Self.errorText(reply.body))
        }
        guard let token = reply.headers.first(name: "X-Auth-Token"), !token.isEmpty else {
            throw .notRedfish(url: url, detail: "the session login answered \(reply.code) without an X-Auth-Token header")
        }
        self.token = token
        sessionURL = reply.headers.first(name: "Location")
        return token
    }

    private func exchange(_ method: HTTPMethod, _ url: String, body: [UInt8]?) async throws(RedfishError) -> (code: Int, headers: HTTPHeaders, body: [UInt8]) {
        let authorization: (String, String)
        if useSession {
            let current: String
            if let token { current = token } else { current = try await login() }
            authorization = ("X-Auth-Token", current)
        } else {
            authorization = ("Authorization", "Basic " + Data("\(user):\(password)".utf8).base64EncodedString())
        }
        return try await send(method, url, body: body, authorization: authorization)
    }

    private func send(_ method: HTTPMethod, _ url: String, body: [UInt8]?, authorization: (String, String)?) async throws(RedfishError) -> (code: Int, headers: HTTPHeaders, body: [UInt8]) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "OData-Version", value: "4.0")
        request.headers.add(name: "User-Agent", value: "bynar-detector")
        if let authorization { request.headers.add(name: authorization.0, value: authorization.1) }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        do {
            let response = try await client.execute(request, timeout: timeout)
            let buffer = try await response.body.collect(upTo: 4 << 20)
            return (Int(response.status.code), response.headers, Array(buffer.readableBytesView))
        } catch {
            throw .noAnswer(url: url, detail: "\(error)")
        }
    }

    /// A Redfish error body's messages (`{"error": {"message": ..., "@Message.ExtendedInfo":
    /// [{"Message": ...}]}}`) as one line, else the body's first 300 characters.
    static func errorText(_ body: [UInt8]) -> String {
        struct Envelope: Decodable {
            struct Inner: Decodable {
                struct Info: Decodable { var Message: String? }
                var message: String?
                var info: [Info]?
                enum CodingKeys: String, CodingKey { case message, info = "@Message.ExtendedInfo" }
            }
            var error: Inner
        }
        if let parsed = try? JSONDecoder().decode(Envelope.self, from: Data(body)) {
            let all = [parsed.error.message].compactMap { $0 } + (parsed.error.info ?? []).compactMap(\.Message)
            var unique: [String] = []
            for message in all where !unique.contains(message) { unique.append(message) }
            if !unique.isEmpty { return unique.joined(separator: "; ") }
        }
        let text = String(decoding: body.prefix(300), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "(empty body)" : text
    }
}

/// Reads every part Bynar judges from one BMC: ServiceRoot → Systems (Memory, Storage:
/// controllers and Drives) and Chassis (Power: PowerSupplies; Thermal: Fans, Temperatures).
/// A linked resource the BMC answers 404 for is a gap (listed, not fatal: emulators and
/// some BMCs link what they do not serve); any other failure fails the read.
struct RedfishReader: Sendable {
    struct Reading: Sendable, Equatable {
        var parts: [HardwarePart] = []
        /// URLs the BMC linked but answered 404 for.
        var gaps: [String] = []
    }

    let client: RedfishClient

    func read() async throws(RedfishError) -> Reading {
        var reading = Reading()
        let root = try await client.get("/redfish/v1")
        if let systems = root.systems {
            for member in try await members(systems.id, &reading) {
                let system = try await client.get(member)
                reading.parts.append(HardwarePart(.system, system, id: member))
                if let memory = system.memory {
                    for dimm in try await members(memory.id, &reading) {
                        if let resource = try await optional(dimm, &reading) { reading.parts.append(HardwarePart(.memory, resource, id: dimm)) }
                    }
                }
                if let storage = system.storage {
                    for path in try await members(storage.id, &reading) {
                        guard let storage = try await optional(path, &reading) else { continue }
                        for (index, controller) in (storage.storageControllers ?? []).enumerated() {
                            reading.parts.append(HardwarePart(.storageController, controller, id: controller.odataID ?? "\(path)#/StorageControllers/\(index)"))
                        }
                        for drive in storage.drives ?? [] {
                            if let resource = try await optional(drive.id, &reading) { reading.parts.append(HardwarePart(.drive, resource, id: drive.id)) }
                        }
                    }
                }
            }
        }
        if let chassisLink = root.chassis {
            for member in try await members(chassisLink.id, &reading) {
                let chassis = try await client.get(member)
                reading.parts.append(HardwarePart(.chassis, chassis, id: member))
                if let power = chassis.power, let resource = try await optional(power.id, &reading) {
                    for (index, supply) in (resource.powerSupplies ?? []).enumerated() {
                        reading.parts.append(HardwarePart(.powerSupply, supply, id: supply.odataID ?? "\(power.id)#/PowerSupplies/\(index)"))
                    }
                }
                if let thermal = chassis.thermal, let resource = try await optional(thermal.id, &reading) {
                    for (index, fan) in (resource.fans ?? []).enumerated() {
                        reading.parts.append(HardwarePart(.fan, fan, id: fan.odataID ?? "\(thermal.id)#/Fans/\(index)"))
                    }
                    for (index, sensor) in (resource.temperatures ?? []).enumerated() {
                        reading.parts.append(HardwarePart(.temperature, sensor, id: sensor.odataID ?? "\(thermal.id)#/Temperatures/\(index)"))
                    }
                }
            }
        }
        return reading
    }

    private func members(_ path: String, _ reading: inout Reading) async throws(RedfishError) -> [String] {
        guard let collection = try await optional(path, &reading) else { return [] }
        return (collection.members ?? []).map(\.id)
    }

    private func optional(_ path: String, _ reading: inout Reading) async throws(RedfishError) -> RedfishResource? {
        do {
            return try await client.get(path)
        } catch .status(_, let url, 404, _) {
            reading.gaps.append(url)
            return nil
        }
    }
}
