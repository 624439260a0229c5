package import BynarProto
import BynarBus
import BynarConfig
import BynarProcess
#if canImport(Glibc)
import Glibc
#endif

/// Runs handlers the PicoRed way: `COMMAND <app> <ip> <up|down>`, `app` being the
/// service or application name or "host", with the event's environment (``environment(eventID:nowMs:host:service:up:)``).
/// The hook runs in its own process group (as every tool: `Tool.spawn`), so a timeout kills
/// everything it started. The one runner for the orchestrator's cluster-wide hooks and the
/// detector's local handlers.
package enum HookRunner {
    package struct Run: Sendable {
        package var eventID: String
        package var command: String
        package var arguments: [String]
        package var environment: [String: String]
        package var timeout: Duration

        package init(eventID: String, command: String, arguments: [String], environment: [String: String], timeout: Duration) {
            self.eventID = eventID
            self.command = command
            self.arguments = arguments
            self.environment = environment
            self.timeout = timeout
        }
    }

    /// PicoRed's arguments: `<app> <ip> <up|down>`.
    package static func arguments(app: String, ip: String, up: Bool) -> [String] { [app, ip, up ? "up" : "down"] }

    /// The event's environment: BYNAR_EVENT_ID, BYNAR_EVENT_TIME (RFC 3339, UTC),
    /// BYNAR_EVENT_TIME_UNIX_MS, BYNAR_HOST, BYNAR_SERVICE (empty for a host) and BYNAR_STATE.
    package static func environment(eventID: String, nowMs: Int64, host: String, service: String, up: Bool) -> [String: String] {
        ["BYNAR_EVENT_ID": eventID, "BYNAR_EVENT_TIME": UTCTime.iso8601(unixMs: nowMs), "BYNAR_EVENT_TIME_UNIX_MS": "\(nowMs)",
         "BYNAR_HOST": host, "BYNAR_SERVICE": service, "BYNAR_STATE": up ? "up" : "down"]
    }

    /// How a run ended, for logs and metrics: `timeout`, or the exit status (-1: killed or not started).
    package static func outcome(_ result: Bynar_V1_HookResult) -> String { result.timedOut ? "timeout" : "\(result.exitStatus)" }

    /// Runs off the cooperative pool (hooks block while they run).
    package static func run(_ run: Run) async -> Bynar_V1_HookResult {
        do {
            return try await offThread { runBlocking(run) }
        } catch {
            var result = Bynar_V1_HookResult()
            result.eventID = run.eventID
            result.hook = run.command
            result.arguments = run.arguments
            result.exitStatus = -1
            result.stderrTail = "\(error)"
            return result
        }
    }

    package static func runBlocking(_ run: Run) -> Bynar_V1_HookResult {
        var result = Bynar_V1_HookResult()
        result.eventID = run.eventID
        result.hook = run.command
        result.arguments = run.arguments
        result.startedUnixMs = Bus.nowUnixMs()
        let started = ContinuousClock.now
        func finished() -> Bynar_V1_HookResult {
            result.durationMs = milliseconds(ContinuousClock.now - started)
            return result
        }
        var environment = inheritedEnvironment()
        for (key, value) in run.environment { environment[key] = value }
        let spawned: (pid: pid_t, output: Int32?)
        do {
            spawned = try Tool.spawn([run.command] + run.arguments, output: .pipe, mergeStderr: true,
                                     environment: environment.map { "\($0.key)=\($0.value)" }.sorted())
        } catch {
            result.exitStatus = -1
            result.stderrTail = "\(error)"
            return finished()
        }
        guard let fd = spawned.output else {
            Tool.reap(spawned.pid, kill: true)
            result.exitStatus = -1
            return finished()
        }
        defer { close(fd) }
        let deadline = started + run.timeout
        var tail: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        var timedOut = false
        reading: while true {
            let remaining = deadline - .now
            if remaining <= .zero { timedOut = true; break }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Int32(clamping: max(1, milliseconds(remaining))))
            if ready <= 0 { continue }
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if count <= 0 { break reading }
            tail += chunk[0..<count]
            if tail.count > 4096 { tail.removeFirst(tail.count - 4096) }
        }
        var status: Int32 = 0
        while !timedOut {
            let reaped = waitpid(spawned.pid, &status, WNOHANG)
            if reaped == spawned.pid { break }
            if reaped < 0 && errno != EINTR { break }
            if ContinuousClock.now >= deadline { timedOut = true; break }
            usleep(2_000)
        }
        if timedOut {
            // The whole group: the hook and whatever it started.
            kill(-spawned.pid, SIGKILL)
            Tool.reap(spawned.pid, kill: true)
            result.timedOut = true
            result.exitStatus = -1
        } else {
            result.exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : -1
        }
        result.stderrTail = String(decoding: tail, as: UTF8.self)
        return finished()
    }

    /// The hook's `<ip>`: the configured address, else the host name resolved, else the name.
    package static func address(of host: String, configured: String?) -> String {
        if let configured, !configured.isEmpty { return configured }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return host }
        defer { freeaddrinfo(list) }
        var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        guard getnameinfo(first.pointee.ai_addr, first.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 else { return host }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Why `value` may not be a hook argument (it becomes argv of an operator's script:
    /// `-oProxyCommand=...` must never get there), or nil. Host names, IPv4/IPv6 addresses
    /// and service names only: letters, digits, `.`, `-`, `_`, `:`, at most 253 characters,
    /// not starting with `-`.
    package static func unsafeArgument(_ value: String, _ what: String) -> String? {
        if value.isEmpty { return "\(what) is empty" }
        if value.count > 253 { return "\(what) is \(value.count) characters long" }
        if value.hasPrefix("-") { return "\(what) \"\(value.prefix(64))\" starts with \"-\"" }
        let allowed = value.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || ".-_:".unicodeScalars.contains($0)) }
        return allowed ? nil : "\(what) \"\(value.prefix(64))\" holds characters a host name, address or service name does not"
    }

    /// A hook's environment starts minimal: PATH, HOME, LANG, LC_ALL and TZ from the
    /// orchestrator's (never its BYNAR_* settings, which may carry secrets), then the event's.
    static func inheritedEnvironment() -> [String: String] {
        var result: [String: String] = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        for name in ["PATH", "HOME", "LANG", "LC_ALL", "TZ"] {
            if let value = getenv(name) { result[name] = String(cString: value) }
        }
        return result
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
