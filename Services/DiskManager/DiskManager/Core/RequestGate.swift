/// Decides, for each disk-manager request, whether it may start: a pure state machine
/// (events in, decisions out; no I/O, no clock, no threads). The service performs the
/// decisions, runs the operation, and reports its end with ``finished(requestID:outcome:)``.
///
/// Rules, in order:
/// 1. A request id seen before gets the first outcome again (ALREADY_DONE), never a second
///    run; one still running is refused as in progress.
/// 2. A request past its deadline is refused: its caller has stopped waiting.
/// 3. A system disk or an excluded disk is never touched.
/// 4. One operation at a time per disk.
/// 5. A Remove is refused when this host would have more than `maxDisksOut` disks out.
/// Simulated requests pass the same checks (so a simulation says what would happen) but
/// never hold a disk or count as out.
public struct RequestGate: Sendable, Equatable {
    /// What the service needs to know about the request.
    public struct Request: Sendable, Equatable {
        public var requestID: String
        /// The resolved disk key (empty for List / JobStatus).
        public var diskKey: String
        public var kind: Kind
        public var simulate: Bool
        public var deadlineUnixMs: Int64
        public var systemDisk: Bool
        public var excluded: Bool
        /// What counts as out for the host's limit: the backend's id of the disk's place
        /// ("ceph:3", "filesystem:/srv/bynar/d1"), so a Remove of one disk and the Add of
        /// its replacement (another disk) balance. Default: the disk key.
        public var outKey: String

        public enum Kind: String, Sendable, Equatable, Codable {
            case list, safeToRemove, remove, add, deploy, jobStatus
            /// Changes a disk (needs the disk to itself).
            var changesDisk: Bool { self == .remove || self == .add || self == .deploy }
        }

        public init(
            requestID: String, diskKey: String, kind: Kind, simulate: Bool, deadlineUnixMs: Int64, systemDisk: Bool = false, excluded: Bool = false,
            outKey: String? = nil
        ) {
            self.outKey = outKey ?? diskKey
            self.requestID = requestID
            self.diskKey = diskKey
            self.kind = kind
            self.simulate = simulate
            self.deadlineUnixMs = deadlineUnixMs
            self.systemDisk = systemDisk
            self.excluded = excluded
        }
    }

    /// How a finished operation ended (kept per request id).
    public enum Outcome: String, Sendable, Equatable, Codable {
        case success, skipped, refused, failed
    }

    public enum Decision: Sendable, Equatable {
        /// Run it.
        case start
        /// Seen before: answer with the first outcome.
        case alreadyDone(Outcome)
        /// Do not run it, for this reason.
        case refuse(String)
    }

    public let maxDisksOut: Int
    /// Disks of this host that are out (removed, not yet added back).
    public private(set) var disksOut: Set<String>
    /// Disk -> request id currently working on it.
    public private(set) var busy: [String: String] = [:]
    /// Request id -> first outcome (nil while running).
    public private(set) var seen: [String: Outcome?] = [:]
    private var running: [String: Request] = [:]

    /// How far past its deadline (by this host's clock) a request is still started: the
    /// sender's clock may be behind.
    public let allowedSkewMs: Int64

    public init(maxDisksOut: Int, disksOut: Set<String> = [], allowedSkewMs: Int64 = 0) {
        self.maxDisksOut = maxDisksOut
        self.allowedSkewMs = allowedSkewMs
        self.disksOut = disksOut
    }

    /// A request arrived at `nowMs`.
    public mutating func received(_ request: Request, nowMs: Int64) -> Decision {
        if let first = seen[request.requestID] {
            if let first { return .alreadyDone(first) }
            return .refuse("request \(request.requestID) is still in progress")
        }
        if request.deadlineUnixMs > 0 && nowMs > request.deadlineUnixMs + allowedSkewMs {
            return remember(request, .refuse(
                "deadline passed \(nowMs - request.deadlineUnixMs) ms ago by this host's clock (allowed clock skew \(allowedSkewMs) ms); not started"))
        }
        guard request.kind.changesDisk || request.kind == .safeToRemove else {
            return admit(request)
        }
        if request.systemDisk { return remember(request, .refuse("\(request.diskKey) is a system disk; it is never touched")) }
        if request.excluded { return remember(request, .refuse("\(request.diskKey) is excluded by configuration")) }
        if let other = busy[request.diskKey] {
            // Not remembered: the same request may be sent again once the disk is free.
            return .refuse("\(request.diskKey) is busy with request \(other)")
        }
        if request.kind == .remove && !disksOut.contains(request.outKey) && disksOut.count + 1 > maxDisksOut {
            return remember(request, .refuse("\(disksOut.count) of this host's disks are out already; the limit is \(maxDisksOut)"))
        }
        return admit(request)
    }

    /// The operation of `requestID` ended with `outcome`.
    public mutating func finished(requestID: String, outcome: Outcome) {
        guard let request = running.removeValue(forKey: requestID) else { return }
        seen[requestID] = .some(outcome)
        if busy[request.diskKey] == requestID { busy[request.diskKey] = nil }
        guard !request.simulate, outcome == .success || outcome == .skipped else { return }
        switch request.kind {
        case .remove: disksOut.insert(request.outKey)
        case .add, .deploy: disksOut.remove(request.outKey)
        default: break
        }
    }

    /// The place `outKey` is in service again although no Add of this host's put it back
    /// (an operator re-added it): it no longer counts as out.
    public mutating func backInService(_ outKey: String) {
        disksOut.remove(outKey)
    }

    /// A job that was running when the service stopped is running again: it holds its disk
    /// and its request id without passing the checks a second time.
    public mutating func resumed(_ request: Request) {
        _ = admit(request)
    }

    private mutating func admit(_ request: Request) -> Decision {
        seen[request.requestID] = .some(nil)
        running[request.requestID] = request
        if request.kind.changesDisk && !request.simulate { busy[request.diskKey] = request.requestID }
        return .start
    }

    private mutating func remember(_ request: Request, _ decision: Decision) -> Decision {
        seen[request.requestID] = .some(.refused)
        return decision
    }
}
