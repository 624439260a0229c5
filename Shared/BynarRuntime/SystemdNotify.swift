// systemd's readiness and watchdog protocol (sd_notify(3)), spoken directly: one datagram
// per message to the unix socket named by $NOTIFY_SOCKET. No libsystemd: the protocol is a
// line of text on a socket, and the hosts that run Bynar without systemd (tests, containers,
// `scripts/run-local`) have no socket and send nothing.
import Logging
import ServiceLifecycle
#if canImport(Glibc)
import Glibc
#endif

/// Sends sd_notify messages (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`) to the
/// service manager that started this process.
public struct SystemdNotifier: Sendable, Equatable {
    /// The socket path as given: a file system path, or `@name` for an abstract socket.
    public let socketPath: String
    /// How often systemd expects `WATCHDOG=1` (`WatchdogSec=`); nil when it expects none.
    public let watchdogInterval: Duration?

    /// A notifier for `socketPath`; `watchdogInterval` nil sends no watchdog.
    public init(socketPath: String, watchdogInterval: Duration? = nil) {
        self.socketPath = socketPath
        self.watchdogInterval = watchdogInterval
    }

    /// The notifier systemd asked for through the environment, or nil when this process was
    /// not started by systemd with `Type=notify` (no `NOTIFY_SOCKET`). A `WATCHDOG_PID`
    /// naming another process (the variable leaked to a child) means no watchdog for us.
    /// `pid` is this process's (tests pass another).
    public static func fromEnvironment(_ environment: [String: String], pid: Int32? = nil) -> SystemdNotifier? {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return nil }
        let pid = pid ?? getpid()
        var interval: Duration?
        if let text = environment["WATCHDOG_USEC"], let usec = UInt64(text), usec > 0,
           environment["WATCHDOG_PID"].map({ Int32($0) == pid }) ?? true {
            interval = .microseconds(usec)
        }
        return SystemdNotifier(socketPath: path, watchdogInterval: interval)
    }

    /// What went wrong sending a message; names the socket and the system's reason.
    public struct SendError: Error, CustomStringConvertible {
        public let socketPath: String
        public let operation: String
        public let errno: Int32
        public var description: String {
            "sd_notify to \(socketPath): \(operation): \(String(cString: strerror(errno)))"
        }
    }

    /// Sends `message` (newline-separated `KEY=value` lines) as one datagram.
    public func send(_ message: String) throws(SendError) {
        var bytes = Array(socketPath.utf8)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // Abstract names start with '@' in the variable and with a NUL byte on the wire;
        // they are not NUL-terminated, so the address length counts exactly their bytes.
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw SendError(socketPath: socketPath, operation: "address longer than \(capacity - 1) bytes", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SendError(socketPath: socketPath, operation: "socket", errno: errno) }
        defer { close(fd) }
        let payload = Array(message.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), socketAddress, length) }
            }
        }
        guard sent >= 0 else { throw SendError(socketPath: socketPath, operation: "sendto", errno: errno) }
        guard sent == payload.count else { throw SendError(socketPath: socketPath, operation: "sendto sent \(sent) of \(payload.count) bytes", errno: EMSGSIZE) }
    }
}

/// Decides whether the watchdog may be fed: only while the bus's network thread is seen
/// turning (its tick count grows). No I/O and no clock inside: the caller passes both in.
///
/// 1. A tick count different from the one read before is progress, noted with its time.
/// 2. Progress younger than `stallLimit`: ``Verdict/feed``.
/// 3. No progress yet, and the first read is younger than `stallLimit`: the thread may
///    not have turned yet (``Verdict/starting``): no feed, not yet a fault.
/// 4. Otherwise ``Verdict/stalled``: no feed, and systemd restarts the service once
///    `WatchdogSec` passes without one.
public struct WatchdogGate: Sendable, Equatable {
    /// What to do after a read of the tick count.
    public enum Verdict: Sendable, Equatable {
        /// Send `WATCHDOG=1`.
        case feed
        /// No progress seen yet, but the first read is recent: wait.
        case starting
        /// No progress for `stallLimit`: do not feed.
        case stalled
    }

    /// Longest time without progress that still counts as alive.
    public let stallLimit: Duration
    private var lastTicks: UInt64?
    private var firstRead: ContinuousClock.Instant?
    private var lastProgress: ContinuousClock.Instant?

    public init(stallLimit: Duration) {
        self.stallLimit = stallLimit
    }

    /// The thread's tick count was read as `ticks` at `now`.
    public mutating func tickCountRead(_ ticks: UInt64, at now: ContinuousClock.Instant) -> Verdict {
        if let lastTicks, lastTicks != ticks { lastProgress = now }
        lastTicks = ticks
        if firstRead == nil { firstRead = now }
        if let lastProgress { return now - lastProgress < stallLimit ? .feed : .stalled }
        return now - firstRead! < stallLimit ? .starting : .stalled
    }
}

/// What the service tells systemd while it runs: `READY=1` once it may be called ready (bus
/// connected, service marked itself ready), `WATCHDOG=1` at half the watchdog interval while
/// the bus's network thread turns. Runs until cancelled; no service group needed.
struct SystemdNotifications: Sendable {
    let notifier: SystemdNotifier
    let logger: Logger
    /// True once the service may be called ready.
    let isReady: @Sendable () -> Bool
    /// The bus network thread's tick count (``Bus/networkLoopTicks``).
    let ticks: @Sendable () -> UInt64
    /// How often readiness is looked at until it comes.
    var readinessPoll: Duration = .milliseconds(100)

    /// Readiness and the watchdog side by side, until cancelled.
    func run() async {
        async let watchdog: Void = feedWatchdog()
        await announceReadiness()
        await watchdog
    }

    func announceReadiness() async {
        send("STATUS=connecting to the broker")
        while !Task.isCancelled {
            if isReady() {
                send("READY=1\nSTATUS=running")
                return
            }
            try? await Task.sleep(for: readinessPoll)
        }
    }

    func feedWatchdog() async {
        guard let interval = notifier.watchdogInterval else { return }
        // Fed at half the interval, as sd_watchdog_enabled(3) advises: one late or skipped
        // turn does not get a healthy service killed.
        let period = interval / 2
        // The thread turns ten times a second: a limit under a second would call a healthy
        // thread stalled between two turns.
        var gate = WatchdogGate(stallLimit: max(period, .seconds(1)))
        var stalled = false
        while !Task.isCancelled {
            let verdict = gate.tickCountRead(ticks(), at: .now)
            switch verdict {
            case .feed:
                if stalled { logger.notice("bus network thread turns again; watchdog fed") }
                stalled = false
                send("WATCHDOG=1")
            case .starting:
                break
            case .stalled:
                if !stalled {
                    logger.error("bus network thread stopped turning; watchdog not fed: systemd restarts the service", metadata: ["watchdog": "\(interval)"])
                }
                stalled = true
            }
            // Short sleeps until the first turn is seen, so a start is fed at once.
            try? await Task.sleep(for: verdict == .starting ? .milliseconds(100) : period)
        }
    }

    func send(_ message: String) {
        do { try notifier.send(message) } catch {
            logger.warning("cannot notify systemd", metadata: ["error": "\(error)"])
        }
    }
}

/// ``SystemdNotifications`` for the life of the process, and `STOPPING=1` when a graceful
/// shutdown begins. Placed last in the service group, so it is the first told of the
/// shutdown and says `STOPPING=1` before the other services start winding down.
struct SystemdNotifyService: Service, CustomStringConvertible {
    var description: String { "systemd-notify" }
    let notifications: SystemdNotifications

    func run() async throws {
        await cancelWhenGracefulShutdown { await notifications.run() }
        try? await gracefulShutdown()
        notifications.send("STOPPING=1")
    }
}
