import Synchronization

/// Read-only pages a service adds to its metrics endpoint (``MetricsEndpoint``): the
/// orchestrator's status page and its JSON API. One HTTP server per process, on the
/// `metrics.address` and the service's port: a second listener would need a second address
/// setting and a second server for the same few GET routes.
///
/// A route answers `GET` and `HEAD` only (any other method is 405: nothing served here can
/// change anything). Its handler runs on the endpoint's own event-loop thread, never on the
/// cooperative pool, so it may block briefly (one SQLite read); it must not wait on the
/// service's tasks.
public final class HTTPRoutes: Sendable {
    /// A request as a route sees it.
    public struct Request: Sendable {
        /// The path without the query ("/api/status").
        public var path: String
        /// The query's `name=value` pairs, undecoded.
        public var query: [String: String]
        public init(path: String, query: [String: String]) {
            self.path = path
            self.query = query
        }
    }

    /// What a route answers.
    public struct Reply: Sendable {
        public var status: Int
        public var contentType: String
        public var body: [UInt8]
        public init(status: Int = 200, contentType: String, body: [UInt8]) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    public typealias Handler = @Sendable (Request) -> Reply

    private let handlers = Mutex<[String: Handler]>([:])

    public init() {}

    /// Serves `handler` at `path` from now on (replacing one there before). `/metrics` is
    /// the endpoint's own and cannot be taken.
    public func add(_ path: String, _ handler: @escaping Handler) {
        guard path != "/metrics" else { return }
        handlers.withLock { $0[path] = handler }
    }

    /// The handler at `path`, if any.
    func handler(for path: String) -> Handler? {
        handlers.withLock { $0[path] }
    }

    /// Every path served besides `/metrics`, sorted.
    var paths: [String] { handlers.withLock { $0.keys.sorted() } }
}
