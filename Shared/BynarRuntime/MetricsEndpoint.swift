public import BynarBus
public import BynarConfig
public import BynarStore
public import Logging
import CoreMetrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Synchronization

/// A service's Prometheus endpoint: `GET /metrics` in the Prometheus text format on
/// `metrics.address` at the service's port (docs/metrics.md lists the names).
///
/// Services emit through swift-metrics (`Counter(label:dimensions:).increment()` at the
/// place the thing happens); ``start(_:service:host:bus:store:logger:)`` bootstraps the
/// process's `MetricsSystem` with a Prometheus registry, so without it (metrics off, or in
/// unit tests) every emission is a no-op. The bus's and the outbox's own figures are read
/// when a scrape arrives, so they are current and cost nothing between scrapes.
///
/// The server is SwiftNIO's HTTP/1.1 codec on one event-loop thread of its own: a scrape
/// (rendering the registry, one SQLite read for the outbox) runs there, never on the
/// cooperative pool. A service may add read-only pages beside `/metrics` (``HTTPRoutes``:
/// the orchestrator's status page); they run on the same thread. Hummingbird would add a
/// router and its dependencies for a handful of fixed GET routes.
public final class MetricsEndpoint: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    /// Where it listens (the port is the bound one).
    public let address: String

    private init(group: MultiThreadedEventLoopGroup, channel: any Channel, address: String) {
        self.group = group
        self.channel = channel
        self.address = address
    }

    /// Bootstraps metrics for this process and starts serving them; nil when
    /// `metrics.enabled` is false. Call once per process, before the service is made.
    /// - Throws: when the address cannot be bound (another process has the port): a service
    ///   whose metrics Prometheus cannot tell apart from another's must not start.
    /// `routes` are the service's own pages, served beside `/metrics` (added to at any time).
    public static func start(_ config: MetricsConfig, service: String, host: String, bus: Bus, store: LocalStore, routes: HTTPRoutes = HTTPRoutes(),
                             logger: Logger) async throws -> MetricsEndpoint? {
        guard config.enabled, let port = config.port(of: service) else { return nil }
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = durationBuckets
        MetricsSystem.bootstrap(factory)
        Gauge(label: "bynar_service_info", dimensions: [("service", service), ("host", host), ("version", bynarVersion)]).record(1)
        let figures = RuntimeFigures(bus: bus, store: store, logger: logger)
        let page: @Sendable () -> [UInt8] = {
            figures.refresh()
            var bytes: [UInt8] = []
            bytes.reserveCapacity(16 << 10)
            registry.emit(into: &bytes)
            return bytes
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            let channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 16)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(MetricsHandler(page: page, routes: routes))
                    }
                }
                .bind(host: config.address, port: port).get()
            let bound = channel.localAddress.map { "\($0.ipAddress ?? config.address):\($0.port ?? port)" } ?? "\(config.address):\(port)"
            logger.info("serving metrics", metadata: ["address": "http://\(bound)/metrics"])
            return MetricsEndpoint(group: group, channel: channel, address: bound)
        } catch {
            try? await group.shutdownGracefully()
            throw MetricsEndpointError(address: "\(config.address):\(port)", reason: "\(error)")
        }
    }

    /// Stops listening and ends the server's thread.
    public func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }

    /// Timers (job, check and request durations) in seconds, from a millisecond check of a
    /// disk to a Ceph drain of hours.
    static let durationBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(5),
        .seconds(30), .seconds(120), .seconds(600), .seconds(1800), .seconds(7200),
    ]
}

/// The metrics address could not be bound.
public struct MetricsEndpointError: Error, CustomStringConvertible {
    public var address: String
    public var reason: String
    public var description: String { "cannot serve metrics on \(address) (metrics.address and the service's port in metrics): \(reason)" }
}

/// What the runtime itself knows, turned into metrics at scrape time: the bus's counters
/// (``Bus/Stats``, exported as the growth since the last scrape) and the outbox.
private final class RuntimeFigures: Sendable {
    let bus: Bus
    let store: LocalStore
    let logger: Logger
    /// The stats at the last scrape (nil before the first).
    private let last = Mutex<Bus.Stats?>(nil)

    init(bus: Bus, store: LocalStore, logger: Logger) {
        self.bus = bus
        self.store = store
        self.logger = logger
    }

    /// The bus's counters by metric name.
    static func counters(_ stats: Bus.Stats) -> [(name: String, value: UInt64)] {
        [
            ("bynar_bus_messages_published_total", stats.published),
            ("bynar_bus_messages_received_total", stats.received),
            ("bynar_bus_messages_rejected_total", stats.rejected),
            ("bynar_bus_dead_letters_total", stats.deadLettered),
            ("bynar_bus_messages_overflowed_total", stats.overflowed),
            ("bynar_bus_messages_held_total", stats.held),
            ("bynar_bus_messages_unrouted_total", stats.unrouted),
            ("bynar_bus_messages_refused_total", stats.refusedOutgoing),
            ("bynar_bus_connects_total", stats.connects),
        ]
    }

    func refresh() {
        let now = bus.stats
        let before = last.withLock { last in
            defer { last = now }
            return last
        }
        let previous = before.map(Self.counters)
        for (index, counter) in Self.counters(now).enumerated() {
            // Stats only grow; the counter appears (at 0) from the first scrape.
            Counter(label: counter.name).increment(by: Int64(clamping: counter.value &- (previous?[index].value ?? 0)))
        }
        Gauge(label: "bynar_bus_connected").record(bus.isConnected ? 1 : 0)
        do {
            let counts = try store.outboxCounts()
            let oldest = try store.oldestPendingOutboxUnixMs()
            Gauge(label: "bynar_outbox_messages", dimensions: [("state", "pending")]).record(counts.pending)
            Gauge(label: "bynar_outbox_messages", dimensions: [("state", "refused")]).record(counts.refused)
            let age = oldest.map { Double(max(0, Bus.nowUnixMs() - $0)) / 1000 } ?? 0
            Gauge(label: "bynar_outbox_oldest_pending_age_seconds").record(age)
        } catch {
            logger.warning("cannot read the outbox for metrics", metadata: ["error": "\(error)"])
        }
    }
}

/// Answers one HTTP/1.1 connection: `GET` or `HEAD /metrics` with the page, or a service's
/// route (``HTTPRoutes``); 405 for another method on either, 404 elsewhere. Keep-alive as
/// the client asks (Prometheus keeps it).
private final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let page: @Sendable () -> [UInt8]
    let routes: HTTPRoutes
    private var head: HTTPRequestHead?

    init(page: @escaping @Sendable () -> [UInt8], routes: HTTPRoutes) {
        self.page = page
        self.routes = routes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to request: HTTPRequestHead, context: ChannelHandlerContext) {
        let parts = request.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = parts.first.map(String.init) ?? ""
        let route = path == "/metrics" ? nil : routes.handler(for: path)
        let readable = request.method == .GET || request.method == .HEAD
        var headers = HTTPHeaders()
        let status: HTTPResponseStatus
        var body: [UInt8]
        if path != "/metrics" && route == nil {
            status = .notFound
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            body = Array("not found: metrics are at /metrics\(routes.paths.map { ", \($0)" }.joined())\n".utf8)
        } else if !readable {
            status = .methodNotAllowed
            headers.add(name: "Allow", value: "GET, HEAD")
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            body = Array("only GET \(path)\n".utf8)
        } else if let route {
            var query: [String: String] = [:]
            for pair in (parts.count > 1 ? parts[1] : "").split(separator: "&") {
                let nameValue = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query[String(nameValue[0])] = nameValue.count > 1 ? String(nameValue[1]) : ""
            }
            let reply = route(HTTPRoutes.Request(path: path, query: query))
            status = HTTPResponseStatus(statusCode: reply.status)
            headers.add(name: "Content-Type", value: reply.contentType)
            headers.add(name: "Cache-Control", value: "no-store")
            body = reply.body
        } else {
            status = .ok
            headers.add(name: "Content-Type", value: "text/plain; version=0.0.4; charset=utf-8")
            body = page()
        }
        headers.add(name: "Content-Length", value: "\(body.count)")
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        body = []
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Sets the gauge `label{state=...}` (plus `dimensions`) to how many of `states` are in each
/// state, every case of `State` included: a state that empties reads 0, not its last count.
/// State names are snake_case (`waiting_for_replacement`), as Prometheus labels are written.
public func recordStateCounts<State: CaseIterable & RawRepresentable & Hashable>(
    _ label: String, of states: some Sequence<State>, dimensions: [(String, String)] = []
) where State.RawValue == String {
    var counts: [State: Int] = [:]
    for state in states { counts[state, default: 0] += 1 }
    for state in State.allCases {
        Gauge(label: label, dimensions: dimensions + [("state", snakeCase(state.rawValue))]).record(counts[state] ?? 0)
    }
}

/// A name as a metric label value: `waitingForReplacement` → `waiting_for_replacement`,
/// `SafeToRemove` → `safe_to_remove`.
public func snakeCase(_ name: String) -> String {
    var result = ""
    for character in name {
        if character.isUppercase {
            if !result.isEmpty { result += "_" }
            result += character.lowercased()
        } else {
            result.append(character)
        }
    }
    return result
}
