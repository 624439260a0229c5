public import BynarBus
public import BynarConfig
import Foundation
import Logging
import Synchronization

/// A connected bus for a test, on `broker`.
public func connectedBus(
    _ broker: TestBroker, service: String = "test", host: String = "h1", clientId: String? = nil,
    announce: Bool = false, session: UInt64 = 1, configure: (inout BrokerConfig) -> Void = { _ in }
) async throws -> Bus {
    var config = BrokerConfig()
    config.port = broker.port
    config.clientId = clientId ?? "\(service)-\(host)-\(UUID().uuidString.prefix(8))"
    config.publishTimeoutMs = 5000
    configure(&config)
    var logger = Logger(label: "test.\(service)")
    logger.logLevel = .warning
    let bus = try Bus(config: config, identity: .init(service: service, host: host, session: session), logger: logger, announce: announce)
    bus.start()
    do {
        try await bus.waitUntilConnected(timeout: .seconds(5))
    } catch {
        await bus.shutdown()
        throw error
    }
    return bus
}

/// Consumes a sequence in the background and keeps what arrived, so a test can wait for
/// a count or a condition with a timeout without cancelling the subscription.
public final class Collector<Element: Sendable>: Sendable {
    private let items = Mutex<[Element]>([])
    private let task = Mutex<Task<Void, Never>?>(nil)

    public init<S: AsyncSequence & Sendable>(_ sequence: S) where S.Element == Element {
        let consumer = Task { [weak self] in
            do {
                for try await item in sequence {
                    guard let self else { return }
                    self.items.withLock { $0.append(item) }
                }
            } catch {}
        }
        task.withLock { $0 = consumer }
    }

    /// Everything received so far.
    public var all: [Element] { items.withLock { $0 } }

    /// Waits until `predicate` holds for what arrived, or `timeout`; returns whether it held.
    @discardableResult
    public func wait(timeout: Duration, until predicate: ([Element]) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if predicate(all) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return predicate(all)
    }

    /// Waits for at least `count` items (or `timeout`) and returns what arrived.
    @discardableResult
    public func wait(for count: Int, timeout: Duration) async -> [Element] {
        await wait(timeout: timeout) { $0.count >= count }
        return all
    }

    public func cancel() { task.withLock { $0?.cancel() } }

    /// Polls `condition` every 10 ms until it holds or `timeout` passes.
    public static func poll(timeout: Duration, _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    deinit { cancel() }
}

/// The package root (for built executables and scripts).
public let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// A product built by `swift build` in the package's debug build folder.
public func builtExecutable(_ name: String) -> String {
    "\(packageRoot)/.build/debug/\(name)"
}
