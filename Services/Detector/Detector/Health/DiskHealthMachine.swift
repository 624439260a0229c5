/// The health of the disk in one slot, as a pure state machine: facts go in as ``Event``s,
/// what to do comes out as ``Action``s. No I/O, no clock, no threads inside; the detector
/// service performs the actions. Every state and transition is drawn in
/// `docs/detector-states.md`.
///
/// The machine belongs to a *slot* (a physical position), not to a serial number, so that a
/// new disk where an old one was is seen as a replacement.
///
/// Damping ("never cry wolf"): durable evidence (SMART rules, a read-only or shut-down
/// filesystem) applies at once; transient evidence escalates in steps (one kernel I/O error
/// makes a disk suspect, repeated errors make it failing, kernel errors alone never make it
/// failed; one failed write probe makes it suspect, consecutive failures make it failed);
/// and a disk only gets better after several consecutive better checks spanning at least
/// ``Policy/recoveryMs``.
public struct DiskHealthMachine: Sendable, Equatable, Codable {
    public enum State: String, Sendable, Codable, CaseIterable, Comparable {
        /// Never checked yet.
        case unknown
        case healthy
        case suspect
        case failing
        case failed
        /// Was in this slot, is gone.
        case missing
        /// A different disk (new key) now sits in this slot; the next check judges it.
        case replaced

        /// Badness order of the states a check can produce.
        var rank: Int {
            switch self {
            case .unknown, .replaced: 0
            case .healthy: 1
            case .suspect: 2
            case .failing: 3
            case .failed: 4
            case .missing: 5
            }
        }

        public static func < (lhs: State, rhs: State) -> Bool { lhs.rank < rhs.rank }
    }

    /// Why a disk is in its state; `rule` names the rule that fired.
    public struct Reason: Sendable, Equatable, Codable {
        public var rule: String
        public var severity: State
        public var detail: String
        public init(rule: String, severity: State, detail: String) {
            self.rule = rule
            self.severity = severity
            self.detail = detail
        }
    }

    /// What the Ceph cluster says about the OSD this disk serves (when the detector watches
    /// a cluster and the disk serves a live OSD).
    public struct CephFacts: Sendable, Equatable, Codable {
        public var osd: Int
        /// Up in the osdmap.
        public var up: Bool
        /// PGs that scrub found inconsistent with this OSD in their acting set.
        public var inconsistentPGs: [String]
        public init(osd: Int, up: Bool, inconsistentPGs: [String] = []) {
            self.osd = osd
            self.up = up
            self.inconsistentPGs = inconsistentPGs
        }
    }

    /// Result of one full check of the disk (SMART, filesystems, write probe).
    public struct Check: Sendable, Equatable {
        /// Reasons from durable evidence (SMART rules, filesystem state). Their worst
        /// severity applies at once.
        public var durable: [Reason]
        /// Whether the direct-I/O write/read/fsync probe ran and failed (or timed out);
        /// nil when no probe ran (disk not mounted, or probing not allowed).
        public var probeFailed: Reason?
        /// The cluster's view of the OSD on this disk; nil when none is known.
        public var ceph: CephFacts?
        public var atMs: Int64
        public init(durable: [Reason], probeFailed: Reason? = nil, ceph: CephFacts? = nil, atMs: Int64) {
            self.durable = durable
            self.probeFailed = probeFailed
            self.ceph = ceph
            self.atMs = atMs
        }
    }

    /// Facts, named as what happened.
    public enum Event: Sendable, Equatable {
        /// A full check finished.
        case checked(Check)
        /// The kernel logged an I/O error for this disk.
        case kernelIOError(detail: String, atMs: Int64)
        /// The device is gone.
        case vanished(atMs: Int64)
        /// A device appeared in this slot (first sight, the same disk back, or a new one).
        case appeared(key: String, atMs: Int64)
    }

    /// Commands for the service.
    public enum Action: Sendable, Equatable {
        /// Run a full check now instead of waiting for the next poll.
        case recheck(because: String)
        /// Run a full check after `afterMs` (a failed probe is tried again soon, not at once
        /// and not only at the next poll).
        case recheckLater(afterMs: Int64, because: String)
        /// The state changed: publish the transition event (through the outbox) and the
        /// new retained health. `previousKey` is set for a replacement.
        case announce(from: State, to: State, reasons: [Reason], previousKey: String?)
        /// Same state, different reasons: refresh the retained health only.
        case refresh
        /// Save the machine (after every event that changed it).
        case persist
    }

    /// Tunables of the damping, with their defaults.
    public struct Policy: Sendable, Equatable, Codable {
        /// Kernel I/O errors are remembered this long.
        public var errorWindowMs: Int64 = 10 * 60 * 1000
        /// This many kernel I/O errors inside the window make a disk failing.
        public var errorsForFailing = 3
        /// This many consecutive failed probes, each at least ``DiskHealthMachine/probeRetryMs``
        /// after the one before, make a disk failed.
        public var probeFailuresForFailed = 2
        /// This many consecutive checks better than the current state make it better...
        public var checksToRecover = 3
        /// ...and the better evidence must have lasted this long (a burst of re-checks
        /// triggered by errors must not walk a disk back).
        public var recoveryMs: Int64 = 10 * 60 * 1000
        public init() {}
    }

    public private(set) var state: State = .unknown
    /// Key of the disk in the slot (WWN or serial based).
    public private(set) var key: String?
    /// Key of the disk that was here before a replacement.
    public private(set) var previousKey: String?
    public private(set) var reasons: [Reason] = []
    public private(set) var sinceMs: Int64 = 0
    public let policy: Policy
    private var errorTimesMs: [Int64] = []
    private var lastErrorDetail = ""
    private var probeFailureStreak = 0
    private var betterStreak = 0
    private var betterSinceMs: Int64 = 0
    private var lastDurable: [Reason] = []
    private var lastProbe: Reason?
    private var lastCeph: CephFacts?
    private var lastCountedProbeMs: Int64?

    /// A failed probe is tried again this soon.
    public static let probeRetryMs: Int64 = 3000

    public init(policy: Policy = Policy()) {
        self.policy = policy
    }

    /// Applies one fact and returns what to do, in order.
    public mutating func handle(_ event: Event) -> [Action] {
        let before = self
        var actions: [Action] = []
        switch event {
        case .checked(let check):
            guard state != .missing else { return [] }  // a stale check of a gone device
            expireErrors(nowMs: check.atMs)
            lastDurable = check.durable
            lastCeph = check.ceph
            if let probe = check.probeFailed {
                // Failures count only when they are at least `probeRetryMs` apart: a burst of
                // re-checks set off by a flood of kernel errors is one observation, not several.
                if probeFailureStreak == 0 || check.atMs - (lastCountedProbeMs ?? 0) >= Self.probeRetryMs {
                    probeFailureStreak += 1
                    lastCountedProbeMs = check.atMs
                }
                lastProbe = probe
            } else {
                probeFailureStreak = 0
                lastProbe = nil
                lastCountedProbeMs = nil
            }
            actions += settle(nowMs: check.atMs, fromCheck: true)
            if let probe = check.probeFailed, probeFailureStreak < policy.probeFailuresForFailed {
                actions.append(.recheckLater(afterMs: Self.probeRetryMs, because: "probe failed: \(probe.detail)"))
            }

        case .kernelIOError(let detail, let atMs):
            guard state != .missing else { return [] }
            expireErrors(nowMs: atMs)
            errorTimesMs.append(atMs)
            if errorTimesMs.count > policy.errorsForFailing * 4 { errorTimesMs.removeFirst(errorTimesMs.count - policy.errorsForFailing * 4) }
            lastErrorDetail = detail
            // Escalate at once on the error itself; the full check follows.
            actions += settle(nowMs: atMs, fromCheck: false)
            actions.append(.recheck(because: detail))

        case .vanished(let atMs):
            guard state != .missing, state != .unknown, key != nil else { break }
            let from = state
            reasons = [Reason(rule: "disk.missing", severity: .missing, detail: "the device is gone from this slot")]
            state = .missing
            sinceMs = atMs
            betterStreak = 0
            actions.append(.announce(from: from, to: .missing, reasons: reasons, previousKey: nil))

        case .appeared(let newKey, let atMs):
            if key == nil || state == .unknown {
                key = newKey
                actions.append(.recheck(because: "disk appeared"))
            } else if newKey == key {
                guard state == .missing else { break }
                // The same disk back: worth watching (cable, backplane, controller reset).
                reasons = [Reason(rule: "disk.reappeared", severity: .suspect, detail: "the disk vanished and came back")]
                state = .suspect
                sinceMs = atMs
                betterStreak = 0
                actions.append(.announce(from: .missing, to: .suspect, reasons: reasons, previousKey: nil))
                actions.append(.recheck(because: "disk reappeared"))
            } else {
                let from = state
                previousKey = key
                key = newKey
                resetEvidence()
                reasons = [Reason(rule: "disk.replaced", severity: .replaced, detail: "a disk with key \(newKey) replaced \(previousKey ?? "?")")]
                state = .replaced
                sinceMs = atMs
                actions.append(.announce(from: from, to: .replaced, reasons: reasons, previousKey: previousKey))
                actions.append(.recheck(because: "new disk in slot"))
            }
        }
        if self != before { actions.append(.persist) }
        return actions
    }

    /// Moves to the state the current evidence calls for, with damping.
    private mutating func settle(nowMs: Int64, fromCheck: Bool) -> [Action] {
        let evidence = currentEvidence()
        let target = evidence.map(\.severity).max() ?? .healthy
        let from = state
        if from == .unknown || from == .replaced || target > from {
            // First judgement, or worse: at once.
            betterStreak = 0
            return move(to: target, reasons: evidence, nowMs: nowMs)
        }
        if target == from {
            betterStreak = 0
            if evidence != reasons {
                reasons = evidence
                return [.refresh]
            }
            return []
        }
        // Better: only after enough consecutive better checks over enough time (errors alone
        // do not count).
        guard fromCheck else { return [] }
        if betterStreak == 0 { betterSinceMs = nowMs }
        betterStreak += 1
        guard betterStreak >= policy.checksToRecover, nowMs - betterSinceMs >= policy.recoveryMs else { return [] }
        betterStreak = 0
        return move(to: target, reasons: evidence, nowMs: nowMs)
    }

    private mutating func move(to target: State, reasons evidence: [Reason], nowMs: Int64) -> [Action] {
        let from = state
        reasons = evidence
        guard target != from else { return [] }
        state = target
        sinceMs = nowMs
        let previous = from == .replaced ? previousKey : nil
        return [.announce(from: from, to: target, reasons: evidence, previousKey: previous)]
    }

    /// Every reason the remembered evidence gives, worst first.
    private func currentEvidence() -> [Reason] {
        var evidence = lastDurable
        if !errorTimesMs.isEmpty {
            let failing = errorTimesMs.count >= policy.errorsForFailing
            evidence.append(Reason(
                rule: failing ? "kernel.io_errors_repeated" : "kernel.io_error",
                severity: failing ? .failing : .suspect,
                detail: "\(errorTimesMs.count) kernel I/O error(s) in the last \(policy.errorWindowMs / 60000) min; last: \(lastErrorDetail)"
            ))
        }
        if let probe = lastProbe {
            let failed = probeFailureStreak >= policy.probeFailuresForFailed
            evidence.append(Reason(rule: probe.rule, severity: failed ? .failed : .suspect,
                                   detail: "\(probe.detail) (\(probeFailureStreak) time(s) in a row)"))
        }
        if let ceph = lastCeph {
            // Ceph's own view is evidence about the disk only together with the disk's own
            // errors: a daemon stopped by hand or a scrub mismatch alone is no dead disk.
            let diskErrors = !errorTimesMs.isEmpty || lastProbe != nil || lastDurable.contains { $0.rule == "disk.read_errors" }
            if !ceph.up {
                evidence.append(diskErrors
                    ? Reason(rule: "ceph.osd_down_io_errors", severity: .failed,
                             detail: "osd.\(ceph.osd) is down in the osdmap and its disk has I/O errors")
                    : Reason(rule: "ceph.osd_down", severity: .suspect, detail: "osd.\(ceph.osd) is down in the osdmap (no disk error seen)"))
            }
            if !ceph.inconsistentPGs.isEmpty {
                evidence.append(Reason(rule: "ceph.scrub_errors", severity: diskErrors ? .failing : .suspect,
                                       detail: "scrub found PG(s) \(ceph.inconsistentPGs.joined(separator: ", ")) of osd.\(ceph.osd) inconsistent"
                                           + (diskErrors ? " and its disk has read errors" : "")))
            }
        }
        return evidence.sorted { $0.severity > $1.severity }
    }

    private mutating func expireErrors(nowMs: Int64) {
        errorTimesMs.removeAll { nowMs - $0 > policy.errorWindowMs }
    }

    private mutating func resetEvidence() {
        errorTimesMs = []
        lastErrorDetail = ""
        probeFailureStreak = 0
        lastCountedProbeMs = nil
        betterStreak = 0
        lastDurable = []
        lastProbe = nil
        lastCeph = nil
    }
}
