import BynarConfig

/// Maintenance windows: hosts, or single disks, where the orchestrator opens no repair (a
/// failure there is recorded and people are told it was not repaired). Pure: the caller
/// passes the time, persists the book (it is `Codable`) and performs what the answers say.
///
/// Rules:
/// 1. A window names a host, and optionally one disk key of it; it needs a reason, and an
///    end (`untilMs`) in the future when it has one.
/// 2. Switching on a window that exists for the same host and disk replaces it (a new end,
///    a new reason); a disk window under a host window is kept and shown, the host's covers it.
/// 3. Switching off a host ends its host window and every disk window of that host;
///    switching off a disk ends only that disk's window. Nothing to end is a refusal.
/// 4. A window whose end has passed is over (``expire(nowMs:)`` removes it; ``covering``
///    already ignores it).
/// 5. A disk is covered by its own window, else by its host's.
public struct MaintenanceBook: Codable, Sendable, Equatable {
    /// One window.
    public struct Window: Codable, Sendable, Equatable {
        /// The host it covers (all of it, or ``disk``).
        public var host: String
        /// Empty: every disk of the host.
        public var disk: String
        /// When it ends by itself (unix ms); nil: when switched off.
        public var untilMs: Int64?
        /// Why, as the operator wrote it.
        public var reason: String
        /// The operator key that switched it on.
        public var by: String
        /// When it was switched on (unix ms).
        public var sinceMs: Int64

        /// A window as switched on.
        public init(host: String, disk: String = "", untilMs: Int64? = nil, reason: String, by: String, sinceMs: Int64) {
            self.host = host
            self.disk = disk
            self.untilMs = untilMs
            self.reason = reason
            self.by = by
            self.sinceMs = sinceMs
        }

        /// "host stor1" or "disk serial-X on stor1".
        public var scope: String { disk.isEmpty ? "host \(host)" : "disk \(disk) on \(host)" }

        func isOver(nowMs: Int64) -> Bool { untilMs.map { nowMs >= $0 } ?? false }
    }

    /// The windows in force, in the order they were switched on.
    public private(set) var windows: [Window] = []

    /// An empty book.
    public init() {}

    /// The window covering `disk` on `host` at `nowMs` (the disk's own first), if any.
    public func covering(host: String, disk: String, nowMs: Int64) -> Window? {
        let live = windows.filter { $0.host == host && !$0.isOver(nowMs: nowMs) }
        return live.first { $0.disk == disk && !disk.isEmpty } ?? live.first { $0.disk.isEmpty }
    }

    /// Switches `window` on at `nowMs`: what was done, or why not (rules 1, 2).
    public mutating func switchOn(_ window: Window, nowMs: Int64) -> Result<String, MaintenanceRefusal> {
        if window.host.isEmpty { return .failure(.init("a host is required (--host)")) }
        if window.reason.allSatisfy(\.isWhitespace) { return .failure(.init("a reason is required (--reason)")) }
        if let until = window.untilMs, until <= nowMs {
            return .failure(.init("--until must be in the future (it is \((nowMs - until) / 1000) s in the past)"))
        }
        let replaced = windows.contains { $0.host == window.host && $0.disk == window.disk }
        windows.removeAll { $0.host == window.host && $0.disk == window.disk }
        windows.append(window)
        let end = window.untilMs.map { "until \(UTCTime.iso8601(unixMs: $0))" } ?? "until switched off"
        return .success("\(window.scope) in maintenance \(end)\(replaced ? " (replacing the earlier window)" : ""): \(window.reason)")
    }

    /// Switches off `disk` on `host` (or the whole host when `disk` is empty): the windows
    /// ended, or why nothing was (rule 3).
    public mutating func switchOff(host: String, disk: String) -> Result<[Window], MaintenanceRefusal> {
        let ends: (Window) -> Bool = { $0.host == host && (disk.isEmpty || $0.disk == disk) }
        let ended = windows.filter(ends)
        guard !ended.isEmpty else {
            let scope = disk.isEmpty ? "host \(host)" : "disk \(disk) on \(host)"
            let hostWide = !disk.isEmpty && windows.contains { $0.host == host && $0.disk.isEmpty }
            return .failure(.init("\(scope) is not in maintenance\(hostWide ? " by itself (its host is: switch the host off)" : "")"))
        }
        windows.removeAll(where: ends)
        return .success(ended)
    }

    /// Removes the windows over at `nowMs` and returns them (rule 4).
    public mutating func expire(nowMs: Int64) -> [Window] {
        let over = windows.filter { $0.isOver(nowMs: nowMs) }
        if !over.isEmpty { windows.removeAll { $0.isOver(nowMs: nowMs) } }
        return over
    }

    /// The earliest end of a window, if any ends by itself.
    public var nextEndMs: Int64? { windows.compactMap(\.untilMs).min() }
}

/// Why a maintenance change was not made.
public struct MaintenanceRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
