import AsyncHTTPClient
import BynarConfig
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// etcd v3 through its JSON gateway (`/v3/kv/txn`, `/v3/lease/grant`, ...), over the HTTP
/// client the package already has: the orchestrator needs a handful of unary calls (lease,
/// keep-alive, range, transaction), which the gateway serves one request each, so no gRPC
/// stack is linked for them. Every call goes to the member that answered last and moves on
/// to the next endpoint when one does not answer. Calls block on NIO's event loops, never
/// on Swift's cooperative pool, so a store write may wait for etcd from any thread
/// (``EtcdClient/blocking(_:)``).
final class EtcdClient: Sendable {
    let endpoints: [String]
    private let client: HTTPClient
    private let timeout: TimeAmount
    private let preferred = Mutex(0)

    /// Why a call failed.
    enum Failure: Error, CustomStringConvertible {
        /// No endpoint answered (each one's error, in order).
        case unavailable([String])
        /// etcd answered with an error (the gateway's status and message).
        case refused(status: Int, message: String)
        /// The answer is not what the gateway sends.
        case malformed(String)

        var description: String {
            switch self {
            case .unavailable(let errors): "no etcd endpoint answered: \(errors.joined(separator: "; "))"
            case .refused(let status, let message): "etcd refused (HTTP \(status)): \(message)"
            case .malformed(let why): "etcd's answer is malformed: \(why)"
            }
        }
    }

    init(config: OrchestratorConfig.EtcdConfig) throws {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(Int64(config.requestTimeoutSeconds)), read: .seconds(Int64(config.requestTimeoutSeconds)))
        configuration.redirectConfiguration = .disallow
        // HTTP/1.1 only: over TLS etcd offers HTTP/2, and AsyncHTTPClient 1.37.0's HTTP/2
        // handler force-unwraps a request it already let go of when a stream error comes
        // after the response (swift-server/async-http-client#922, unfixed upstream). It
        // crashed an orchestrator in CoordinationTests' TLS test, after the test passed.
        configuration.httpVersion = .http1Only
        if config.endpoints.contains(where: { $0.hasPrefix("https://") }) {
            var tls = TLSConfiguration.makeClientConfiguration()
            if let ca = config.caFile { tls.trustRoots = .file(ca) }
            if let cert = config.certFile, let key = config.keyFile {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            configuration.tlsConfiguration = tls
        }
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        endpoints = config.endpoints.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        timeout = .seconds(Int64(config.requestTimeoutSeconds))
    }

    deinit {
        // Never on an event loop: no call of ours keeps the client past its future's wait.
        try? client.syncShutdown()
    }

    // MARK: Wire types (the gateway's JSON: bytes in base64, 64-bit integers as strings, zero values left out)

    struct Header: Decodable { var revision: String? }

    struct KeyValue: Decodable, Sendable {
        var key: String
        var value: String?
        var create_revision: String?
        var mod_revision: String?
        var lease: String?
        var keyBytes: [UInt8] { [UInt8](Data(base64Encoded: key) ?? Data()) }
        var valueBytes: [UInt8] { [UInt8](Data(base64Encoded: value ?? "") ?? Data()) }
        var keyText: String { String(decoding: keyBytes, as: UTF8.self) }
        var createRevision: Int64 { Int64(create_revision ?? "0") ?? 0 }
    }

    struct RangeResponse: Decodable {
        var header: Header?
        var kvs: [KeyValue]?
        var more: Bool?
    }

    /// A transaction's guard on one key.
    struct Compare: Encodable {
        var key: String
        var target: String
        var result: String
        var create_revision: String?
        var mod_revision: String?

        /// The key was created at `revision` (0: the key does not exist).
        static func created(_ key: String, at revision: Int64) -> Compare {
            Compare(key: base64(key), target: "CREATE", result: "EQUAL", create_revision: String(revision))
        }
    }

    struct Operation: Encodable {
        struct Put: Encodable { var key: String; var value: String; var lease: String? }
        struct Range: Encodable { var key: String; var range_end: String? }
        struct DeleteRange: Encodable { var key: String; var range_end: String? }
        var request_put: Put?
        var request_range: Range?
        var request_delete_range: DeleteRange?

        static func put(_ key: String, _ value: [UInt8], lease: Int64? = nil) -> Operation {
            Operation(request_put: Put(key: base64(key), value: Data(value).base64EncodedString(), lease: lease.map(String.init)))
        }
        static func get(_ key: String) -> Operation { Operation(request_range: Range(key: base64(key))) }
        static func deletePrefix(_ prefix: String) -> Operation {
            Operation(request_delete_range: DeleteRange(key: base64(prefix), range_end: base64(EtcdClient.prefixEnd(prefix))))
        }
        static func deleteRange(from key: String, to end: String) -> Operation {
            Operation(request_delete_range: DeleteRange(key: base64(key), range_end: base64(end)))
        }
    }

    struct TxnResult: Sendable {
        var succeeded: Bool
        var revision: Int64
        /// The keys the range operations of the branch taken found.
        var found: [KeyValue]
    }

    // MARK: Calls

    /// Grants a lease of `ttl` seconds; returns its id.
    func grantLease(ttl: Int) throws -> Int64 {
        struct Request: Encodable { var TTL: String }
        struct Response: Decodable { var ID: String?; var error: String? }
        let response: Response = try call("/v3/lease/grant", Request(TTL: String(ttl)))
        guard let id = response.ID.flatMap(Int64.init) else { throw Failure.malformed("lease grant without an ID: \(response.error ?? "")") }
        return id
    }

    /// Renews lease `id`; returns the seconds it has left (0: it is gone).
    func keepAlive(lease id: Int64) throws -> Int {
        struct Request: Encodable { var ID: String }
        struct Result: Decodable { var TTL: String? }
        struct Response: Decodable { var result: Result? }
        let response: Response = try call("/v3/lease/keepalive", Request(ID: String(id)))
        return Int(response.result?.TTL ?? "0") ?? 0
    }

    /// Ends lease `id` at once (its keys go with it).
    func revoke(lease id: Int64) throws {
        struct Request: Encodable { var ID: String }
        struct Response: Decodable {}
        let _: Response = try call("/v3/lease/revoke", Request(ID: String(id)))
    }

    /// The keys from `key` up to `end` (exclusive; nil: just `key`), in key order, at most
    /// `limit` (0: all).
    func range(_ key: String, end: String? = nil, limit: Int = 0) throws -> (kvs: [KeyValue], more: Bool, revision: Int64) {
        struct Request: Encodable { var key: String; var range_end: String?; var limit: String? }
        let response: RangeResponse = try call("/v3/kv/range", Request(key: Self.base64(key), range_end: end.map(Self.base64), limit: limit > 0 ? String(limit) : nil))
        return (response.kvs ?? [], response.more ?? false, Int64(response.header?.revision ?? "0") ?? 0)
    }

    /// One transaction: if every `compare` holds, `success` runs, otherwise `failure`.
    func txn(_ compare: [Compare], success: [Operation], failure: [Operation] = []) throws -> TxnResult {
        struct Request: Encodable { var compare: [Compare]; var success: [Operation]; var failure: [Operation] }
        struct Entry: Decodable { var response_range: RangeResponse? }
        struct Response: Decodable { var header: Header?; var succeeded: Bool?; var responses: [Entry]? }
        let response: Response = try call("/v3/kv/txn", Request(compare: compare, success: success, failure: failure))
        return TxnResult(succeeded: response.succeeded ?? false, revision: Int64(response.header?.revision ?? "0") ?? 0,
                         found: (response.responses ?? []).flatMap { $0.response_range?.kvs ?? [] })
    }

    /// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff { bytes[bytes.count - 1] = last + 1; return String(decoding: bytes, as: UTF8.self) }
            bytes.removeLast()
        }
        return "\0"
    }

    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    /// POSTs `body` as JSON to `path` on the member that answered last, else on the next
    /// ones in turn; decodes the answer. Blocks this thread (not Swift's pool) until then.
    private func call<Request: Encodable, Response: Decodable>(_ path: String, _ body: Request) throws -> Response {
        let data = try JSONEncoder().encode(body)
        let start = preferred.withLock { $0 }
        var errors: [String] = []
        for offset in 0..<endpoints.count {
            let index = (start + offset) % endpoints.count
            let endpoint = endpoints[index]
            let reply: HTTPClient.Response
            do {
                var request = try HTTPClient.Request(url: endpoint + path, method: .POST)
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(data)
                reply = try client.execute(request: request, deadline: .now() + timeout).wait()
            } catch {
                errors.append("\(endpoint): \(error)")
                continue
            }
            let bytes = reply.body.map { Array($0.readableBytesView) } ?? []
            guard reply.status == .ok else {
                let message = String(decoding: bytes.prefix(500), as: UTF8.self)
                // A member without a leader (no quorum) says so with 503: another may have one.
                if reply.status.code >= 500 { errors.append("\(endpoint): HTTP \(reply.status.code): \(message)"); continue }
                throw Failure.refused(status: Int(reply.status.code), message: message)
            }
            preferred.withLock { $0 = index }
            do {
                return try JSONDecoder().decode(Response.self, from: Data(bytes))
            } catch {
                throw Failure.malformed("\(path): \(error)")
            }
        }
        throw Failure.unavailable(errors)
    }
}

private func base64(_ text: String) -> String { EtcdClient.base64(text) }
