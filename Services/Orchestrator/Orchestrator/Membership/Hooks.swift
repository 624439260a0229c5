import BynarBus
import BynarConfig
import BynarProcess
import BynarProto
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Membership as this orchestrator sees it, fed by two streams of the same statuses: the
/// full subscription (every orchestrator sees everything, retained ones included) and the
/// shared hook subscription (each live status goes to one orchestrator). Each status is
/// applied once, whichever stream brings it first; the transitions it caused belong to the
/// orchestrator that got it on the shared subscription.
actor MembershipKeeper {
    private(set) var membership = Membership()
    /// Transitions per status message id, kept until claimed or two minutes old.
    private var applied: [String: (transitions: [Membership.Transition], atMs: Int64, claimed: Bool)] = [:]
    private var lastPrune: Int64 = 0

    /// From the full subscription: applies an application's state (`host` from its topic).
    func observe(app state: Bynar_V1_AppState, host: String, messageID: String, nowMs: Int64) {
        guard applied[messageID] == nil else { return }
        _ = record(messageID, nowMs: nowMs, claimed: false) { $0.apply(host: host, app: state.app, up: Self.up(state.health), atMs: nowMs) }
    }

    /// From the shared subscription: the application transitions this orchestrator must run hooks for.
    func claim(app state: Bynar_V1_AppState, host: String, messageID: String, nowMs: Int64) -> [Membership.Transition] {
        if let entry = applied[messageID] {
            guard !entry.claimed else { return [] }
            applied[messageID]?.claimed = true
            return entry.transitions
        }
        return record(messageID, nowMs: nowMs, claimed: true) { $0.apply(host: host, app: state.app, up: Self.up(state.health), atMs: nowMs) }
    }

    static func up(_ health: Bynar_V1_AppHealth) -> Bool? {
        switch health {
        case .up: true
        case .down: false
        default: nil
        }
    }

    /// From the full subscription: applies the status; returns the hosts whose state changed.
    func observe(_ status: Bynar_V1_ServiceStatus, messageID: String, nowMs: Int64) -> Set<String> {
        guard applied[messageID] == nil else { return [] }
        let transitions = apply(status, messageID: messageID, nowMs: nowMs, claimed: false)
        return transitions.isEmpty ? [] : [status.host]
    }

    /// From the shared subscription: the transitions this orchestrator must run hooks for.
    func claim(_ status: Bynar_V1_ServiceStatus, messageID: String, nowMs: Int64) -> (transitions: [Membership.Transition], changedHost: Bool) {
        if let entry = applied[messageID] {
            guard !entry.claimed else { return ([], false) }
            applied[messageID]?.claimed = true
            return (entry.transitions, false)
        }
        let transitions = apply(status, messageID: messageID, nowMs: nowMs, claimed: true)
        return (transitions, !transitions.isEmpty)
    }

    private func apply(_ status: Bynar_V1_ServiceStatus, messageID: String, nowMs: Int64, claimed: Bool) -> [Membership.Transition] {
        let birth = status.state == .birth
        guard birth || status.state == .death else { return [] }
        let transitions = membership.apply(host: status.host, service: status.service, birth: birth, session: status.session, atMs: nowMs,
                                           clean: status.deathCause == .cleanShutdown)
        if birth {
            // A service's will repeats its message id on every lost connection of one run:
            // once it is back, its next death is a new event.
            applied = applied.filter { _, entry in
                !entry.transitions.contains(.service(host: status.host, service: status.service, up: false))
            }
        }
        return record(messageID, nowMs: nowMs, claimed: claimed) { _ in transitions }
    }

    /// Remembers the transitions `change` made for `messageID`, claimed or not.
    private func record(_ messageID: String, nowMs: Int64, claimed: Bool, _ change: (inout Membership) -> [Membership.Transition]) -> [Membership.Transition] {
        let transitions = change(&membership)
        applied[messageID] = (transitions, nowMs, claimed)
        if nowMs - lastPrune > 30_000 {
            lastPrune = nowMs
            applied = applied.filter { nowMs - $0.value.atMs < 120_000 }
        }
        return transitions
    }

    /// Every host it knows.
    var hosts: [String] { membership.hosts.keys.sorted() }

    /// The retained HostState of `host`.
    func hostState(_ host: String) -> Bynar_V1_HostState? {
        guard let record = membership.hosts[host] else { return nil }
        var state = Bynar_V1_HostState()
        state.host = host
        state.up = record.up
        state.sinceUnixMs = record.sinceMs
        state.services = record.services.keys.sorted().map { name in
            let service = record.services[name]!
            var entry = Bynar_V1_HostState.Service()
            entry.service = name
            entry.up = service.up
            entry.session = service.session
            entry.sinceUnixMs = service.sinceMs
            return entry
        }
        return state
    }
}

/// Runs operator hooks the PicoRed way: `COMMAND <app> <ip> <up|down>`, `app` being the
/// service name or "host", with BYNAR_EVENT_ID, BYNAR_EVENT_TIME (RFC 3339, UTC),
/// BYNAR_EVENT_TIME_UNIX_MS, BYNAR_HOST, BYNAR_SERVICE (empty for a host) and BYNAR_STATE in
/// its environment. The hook runs in its own process group (as every tool: `Tool.spawn`), so a
/// timeout kills everything it started.
package enum HookRunner {
    struct Run: Sendable {
        var eventID: String
        var command: String
        var arguments: [String]
        var environment: [String: String]
        var timeout: Duration
    }


    /// What people are told about a hook that failed (non-zero exit or timeout); nil when
    /// it succeeded. The orchestrator sends it itself, until a notifier answers
    /// (``Outbox/notification(_:correlationId:)``): a hook result on `bynar/v1/hook/events`
    /// is a broadcast no reader confirms, so a notifier crash could lose it.
    static func failureNotification(_ result: Bynar_V1_HookResult, host: String) -> Bynar_V1_Notification? {
        guard result.timedOut || result.exitStatus != 0 else { return nil }
        var note = Bynar_V1_Notification()
        note.severity = .warning
        let tenths = (result.durationMs + 50) / 100
        let how = result.timedOut ? "timed out after \(tenths / 10).\(tenths % 10) s" : "exited with status \(result.exitStatus)"
        note.title = "Operator hook \(result.hook) \(how)"
        var text = "Arguments: \(result.arguments.joined(separator: " "))"
        if !result.stderrTail.isEmpty { text += "\nIt wrote: \(result.stderrTail)" }
        note.text = text
        note.host = host
        note.nextAction = "nothing automatic: the hook is not retried; check the script"
        return note
    }

    /// Runs off the cooperative pool (hooks block while they run).
    static func run(_ run: Run) async -> Bynar_V1_HookResult {
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

    static func runBlocking(_ run: Run) -> Bynar_V1_HookResult {
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
    static func address(of host: String, configured: String?) -> String {
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
