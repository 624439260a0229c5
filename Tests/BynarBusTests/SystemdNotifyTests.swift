import BynarBus
import BynarConfig
@testable import BynarRuntime
import BynarTestSupport
import Foundation
import Logging
import Testing

/// sd_notify against a real unix datagram socket the test binds (as systemd does), and the
/// watchdog against a real bus whose network thread runs, never ran, or stopped.
struct SystemdNotifyTests {
    @Test func environmentWithoutNotifySocketMeansNoNotifier() {
        #expect(SystemdNotifier.fromEnvironment([:]) == nil)
        #expect(SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": ""]) == nil)
        #expect(SystemdNotifier.fromEnvironment(["WATCHDOG_USEC": "1000000"]) == nil)
    }

    @Test func watchdogIntervalComesFromWatchdogUsecForThisProcessOnly() {
        let socket = "/run/systemd/notify"
        #expect(SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": socket], pid: 42) == SystemdNotifier(socketPath: socket))
        #expect(SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": socket, "WATCHDOG_USEC": "30000000"], pid: 42)?.watchdogInterval == .seconds(30))
        #expect(SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": socket, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"], pid: 42)?.watchdogInterval == .seconds(30))
        // The variables leaked to a child: the watchdog is someone else's.
        #expect(SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": socket, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"], pid: 42)?.watchdogInterval == nil)
        #expect(SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": socket, "WATCHDOG_USEC": "0"], pid: 42)?.watchdogInterval == nil)
        #expect(SystemdNotifier.fromEnvironment(["NOTIFY_SOCKET": socket, "WATCHDOG_USEC": "soon"], pid: 42)?.watchdogInterval == nil)
    }

    @Test func sendsOneDatagramToAPathSocket() async throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let receiver = try NotifySocket(directory + "/notify")
        let notifier = SystemdNotifier(socketPath: receiver.name)
        try notifier.send("READY=1\nSTATUS=running")
        try notifier.send("WATCHDOG=1")
        #expect(await receiver.receive(timeout: .seconds(2)) == "READY=1\nSTATUS=running")
        #expect(await receiver.receive(timeout: .seconds(2)) == "WATCHDOG=1")
        #expect(await receiver.receive(timeout: .milliseconds(100)) == nil)
    }

    @Test func sendsToAnAbstractSocketNamedWithAnAt() async throws {
        let receiver = try NotifySocket("@bynar-test-notify-\(getpid())-\(UUID().uuidString.prefix(8))")
        try SystemdNotifier(socketPath: receiver.name).send("STOPPING=1")
        #expect(await receiver.receive(timeout: .seconds(2)) == "STOPPING=1")
    }

    @Test func aMissingSocketIsAnErrorNamingIt() throws {
        let path = "/tmp/bynar-no-such-notify-socket-\(getpid())"
        let error = #expect(throws: SystemdNotifier.SendError.self) { try SystemdNotifier(socketPath: path).send("READY=1") }
        #expect(error?.description.contains(path) == true)
        #expect(error?.description.contains("No such file") == true)
        let long = "/tmp/" + String(repeating: "x", count: 200)
        let tooLong = #expect(throws: SystemdNotifier.SendError.self) { try SystemdNotifier(socketPath: long).send("READY=1") }
        #expect(tooLong?.description.contains("address longer than") == true)
    }

    // MARK: WatchdogGate, rule by rule

    /// The verdicts for `reads` (tick count, seconds since the start) in order.
    private func verdicts(_ reads: [(UInt64, Double)], stallLimit: Duration = .seconds(2)) -> [WatchdogGate.Verdict] {
        let start = ContinuousClock.now
        var gate = WatchdogGate(stallLimit: stallLimit)
        return reads.map { gate.tickCountRead($0.0, at: start + .milliseconds(Int64($0.1 * 1000))) }
    }

    @Test func gateWaitsForTheFirstTurnThenCallsItStalled() {
        // Rule 3 twice, then rule 4: it never turned.
        #expect(verdicts([(7, 0), (7, 1), (7, 2)]) == [.starting, .starting, .stalled])
    }

    @Test func gateFeedsWhileTheCountGrowsAndStopsWhenItStops() {
        #expect(verdicts([
            (0, 0),      // rule 3
            (5, 1),      // rules 1, 2: progress
            (5, 2.9),    // 1.9 s since progress
            (5, 3),      // rule 4: 2 s without
            (6, 10),     // it turns again
            (0, 11),     // any change is progress, also a count that wrapped around
        ]) == [.starting, .feed, .feed, .stalled, .feed, .feed])
    }

    // MARK: The watchdog against a real bus

    /// A bus to a port nobody listens on: its network thread turns in the reconnect backoff.
    private func busToNowhere() throws -> Bus {
        var config = BrokerConfig()
        config.port = try freeLoopbackPort()
        config.reconnectMinSeconds = 1
        config.reconnectMaxSeconds = 1
        var logger = Logger(label: "test.notify")
        logger.logLevel = .critical
        return try Bus(config: config, identity: .init(service: "notify", host: "h1", session: 1), logger: logger, announce: false)
    }

    /// Runs the notifications for `bus` with a 1 s watchdog for `duration`, then cancels
    /// them; every message the socket received, in order.
    private func notifications(from bus: Bus, for duration: Duration) async throws -> [String] {
        let receiver = try NotifySocket("@bynar-test-watchdog-\(getpid())-\(UUID().uuidString.prefix(8))")
        var logger = Logger(label: "test.notify")
        logger.logLevel = .critical
        let notifications = SystemdNotifications(
            notifier: SystemdNotifier(socketPath: receiver.name, watchdogInterval: .seconds(1)), logger: logger,
            isReady: { bus.isConnected && bus.isMarkedReady }, ticks: { bus.networkLoopTicks }
        )
        let running = Task { await notifications.run() }
        try await Task.sleep(for: duration)
        running.cancel()
        _ = await running.value
        var messages: [String] = []
        while let message = await receiver.receive(timeout: .milliseconds(200)) { messages.append(message) }
        return messages
    }

    @Test func aTurningBusThreadFeedsTheWatchdogEvenWithoutABroker() async throws {
        let bus = try busToNowhere()
        bus.start()
        let messages = try await notifications(from: bus, for: .milliseconds(2500))
        await bus.shutdown()
        // Fed at half the interval from the first turn on: 4 or 5 in 2.5 s on an idle machine
        // (2 seen with two other builds on both cores); never-turned gets none (below). Not ready (no broker).
        #expect(messages.filter { $0 == "WATCHDOG=1" }.count >= 2, "\(messages)")
        #expect(!messages.contains { $0.hasPrefix("READY=1") }, "\(messages)")
        #expect(messages.first == "STATUS=connecting to the broker")
    }

    @Test func aBusThreadThatNeverTurnedGetsNoWatchdog() async throws {
        let bus = try busToNowhere()   // never started: its thread does not exist
        let messages = try await notifications(from: bus, for: .milliseconds(2500))
        #expect(!messages.contains("WATCHDOG=1"), "\(messages)")
    }

    @Test func aBusThreadThatStoppedTurningStopsTheWatchdog() async throws {
        let bus = try busToNowhere()
        bus.start()
        let stopper = Task {
            try await Task.sleep(for: .seconds(1))
            await bus.shutdown()   // the network thread ends: ticks stop growing
        }
        let messages = try await notifications(from: bus, for: .seconds(4))
        try await stopper.value
        let fed = messages.filter { $0 == "WATCHDOG=1" }.count
        // Fed while it turned (the first second and the 1 s stall limit after), then no more:
        // 4 s at 0.5 s would be 8 feeds.
        #expect(fed >= 1 && fed <= 5, "\(messages)")
    }

    @Test(.enabled(if: TestBroker.available, "mosquitto is not installed"))
    func readyOnlyOnceConnectedAndMarkedReady() async throws {
        let broker = try TestBroker()
        let bus = try await connectedBus(broker, service: "notify")
        let receiver = try NotifySocket("@bynar-test-ready-\(getpid())-\(UUID().uuidString.prefix(8))")
        var logger = Logger(label: "test.notify")
        logger.logLevel = .critical
        let notifications = SystemdNotifications(
            notifier: SystemdNotifier(socketPath: receiver.name), logger: logger,
            isReady: { bus.isConnected && bus.isMarkedReady }, ticks: { bus.networkLoopTicks }
        )
        let running = Task { await notifications.run() }
        #expect(await receiver.receive(timeout: .seconds(2)) == "STATUS=connecting to the broker")
        // Connected but the service has not said it is ready: no READY.
        #expect(await receiver.receive(timeout: .milliseconds(500)) == nil)
        await bus.markReady()
        #expect(await receiver.receive(timeout: .seconds(2)) == "READY=1\nSTATUS=running")
        // No watchdog asked for: nothing more (STOPPING=1 on SIGTERM: SystemdProtocolTests).
        #expect(await receiver.receive(timeout: .milliseconds(500)) == nil)
        running.cancel()
        _ = await running.value
        await bus.shutdown()
    }
}
