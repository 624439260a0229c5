public import BynarCeph
import FoundationEssentials
import Glibc

/// Ceph said no: the operation would put data at risk, so nothing was changed.
public struct CephRefusal: Error, CustomStringConvertible {
    public let osd: Int
    public let reason: String
    public var description: String { "refused to remove osd.\(osd): \(reason)" }
}

/// A removal or re-add failed part-way.
public struct CephStepFailure: Error, CustomStringConvertible {
    public let osd: Int
    /// The step that failed, as it appears in the list of steps.
    public let step: String
    /// The steps done before the failure.
    public let done: [String]
    /// What was done to undo, e.g. "marked osd.3 back in", or why it could not be.
    public let rollback: String?
    public let underlying: String

    public var description: String {
        "osd.\(osd): step \"\(step)\" failed: \(underlying)" + (rollback.map { "; \($0)" } ?? "")
    }
}

/// Where an OSD stands in the osdmap.
public struct OSDState: Sendable, Equatable {
    public var exists: Bool
    public var up: Bool
    public var `in`: Bool
    public var destroyed: Bool

    public init(exists: Bool, up: Bool, in isIn: Bool, destroyed: Bool) {
        self.exists = exists
        self.up = up
        self.in = isIn
        self.destroyed = destroyed
    }
}

/// The Ceph side of the disk-manager's work: asks the cluster whether an OSD may go and
/// takes it out, destroys it (keeping its id and CRUSH position) and waits for it to come back.
public struct CephBackend: Sendable {
    public let cluster: RadosCluster
    /// How often the waits poll the cluster.
    public var pollInterval: Duration

    public init(cluster: RadosCluster, pollInterval: Duration = .milliseconds(500)) {
        self.cluster = cluster
        self.pollInterval = pollInterval
    }

    // MARK: - Questions

    /// Whether the OSD can be stopped without making any PG unavailable. Ceph answers "no"
    /// with a non-zero status; `detail` carries its status text.
    public func okToStop(_ id: Int) throws -> (ok: Bool, detail: String) {
        let reply = cluster.monCommand(#"{"prefix":"osd ok-to-stop","ids":["\#(id)"],"format":"json"}"#)
        let detail = [reply.statusText, reply.outputText].filter { !$0.isEmpty }.joined(separator: " ")
        if reply.status == -EBUSY || reply.status == -EAGAIN { return (false, detail) }
        if reply.status == -ENOENT { return (false, "osd.\(id) does not exist: \(detail)") }
        guard reply.status >= 0 else { throw RadosError(operation: "osd ok-to-stop", code: reply.status, statusText: reply.statusText) }
        return (true, detail)
    }

    struct SafeToDestroyReply: Decodable {
        var safe_to_destroy: [Int]
        var active: [Int]?
        var missing_stats: [Int]?
        var stored_pgs: [Int]?
    }

    /// Whether destroying the OSD loses no data. With JSON output Ceph returns 0 even when
    /// the answer is "not safe", so this decides by membership in its `safe_to_destroy` list.
    public func safeToDestroy(_ id: Int) throws -> (safe: Bool, detail: String) {
        let reply = cluster.monCommand(#"{"prefix":"osd safe-to-destroy","ids":["\#(id)"],"format":"json"}"#)
        // Older releases answer "not safe" with EBUSY/EAGAIN and text only.
        if reply.status == -EBUSY || reply.status == -EAGAIN { return (false, reply.statusText) }
        guard reply.status >= 0 else { throw RadosError(operation: "osd safe-to-destroy", code: reply.status, statusText: reply.statusText) }
        let parsed: SafeToDestroyReply
        do {
            parsed = try JSONDecoder().decode(SafeToDestroyReply.self, from: Data(reply.output))
        } catch {
            throw RadosError(operation: "osd safe-to-destroy", code: -EINVAL, statusText: "unreadable reply \(reply.outputText): \(error)")
        }
        let detail = "safe_to_destroy=\(parsed.safe_to_destroy) active=\(parsed.active ?? []) missing_stats=\(parsed.missing_stats ?? []) stored_pgs=\(parsed.stored_pgs ?? [])"
            + (reply.statusText.isEmpty ? "" : " (\(reply.statusText))")
        return (parsed.safe_to_destroy.contains(id), detail)
    }

    /// The OSD's state in the current osdmap; `exists` is false when the id is unknown.
    public func osdState(_ id: Int) throws -> OSDState {
        try osdDump()[id] ?? OSDState(exists: false, up: false, in: false, destroyed: false)
    }

    /// Every OSD's state in the current osdmap, by id.
    public func osdDump() throws -> [Int: OSDState] {
        var states: [Int: OSDState] = [:]
        for osd in try cluster.osds(metadata: false).osds {
            states[osd.id] = OSDState(exists: osd.exists, up: osd.up, in: osd.in, destroyed: osd.destroyed)
        }
        return states
    }

    struct Health: Decodable { var status: String }

    /// "HEALTH_OK", "HEALTH_WARN" or "HEALTH_ERR".
    public func health() throws -> String {
        let reply = try cluster.checkedMonCommand(#"{"prefix":"health","format":"json"}"#)
        do {
            return try JSONDecoder().decode(Health.self, from: Data(reply.output)).status
        } catch {
            throw RadosError(operation: "health", code: -EINVAL, statusText: "unreadable reply: \(error)")
        }
    }

    // MARK: - Changes

    public func markOut(_ id: Int) throws {
        try cluster.checkedMonCommand(#"{"prefix":"osd out","ids":["\#(id)"]}"#)
    }

    public func markIn(_ id: Int) throws {
        try cluster.checkedMonCommand(#"{"prefix":"osd in","ids":["\#(id)"]}"#)
    }

    /// `osd destroy`: forgets the OSD's keys and marks it destroyed, keeping its id and CRUSH
    /// position for a replacement. The OSD must be down.
    public func destroy(_ id: Int) throws {
        // Since Nautilus the mgr owns `osd destroy` (it checks safe-to-destroy, then sends the
        // mon `osd destroy-actual`); the mon answers a plain `osd destroy` with EINVAL.
        try cluster.checkedMgrCommand(#"{"prefix":"osd destroy","id":\#(id),"yes_i_really_mean_it":true}"#)
    }

    /// Polls `condition` every `poll` until it holds or `timeout` passes; returns whether it held.
    public func waitUntil(timeout: Duration, poll: Duration? = nil, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if try condition() { return true }
            if ContinuousClock.now >= deadline { return false }
            sleep(for: min(poll ?? pollInterval, deadline - ContinuousClock.now))
        }
    }

    private func sleep(for duration: Duration) {
        let (seconds, attoseconds) = duration.components
        guard seconds > 0 || attoseconds > 0 else { return }
        var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }

    // MARK: - Workflows

    /// Takes the OSD out of service for a disk replacement: checks ok-to-stop, marks it out,
    /// waits until safe-to-destroy, stops its daemon and destroys it, keeping the id. A real
    /// drain takes hours: the wait goes on while data moves (``drainState(_:)`` shrinking)
    /// and gives up only when nothing moved for `stallTimeout` (default: the overall limit),
    /// or after `safeToDestroyTimeout` in all (nil: no overall limit); `waiting` hears how
    /// much is left each time it shrinks. Returns the steps done; with `simulate`, checks
    /// ok-to-stop and returns the steps that would be done, changing nothing.
    ///
    /// Throws `CephRefusal` (nothing changed) when Ceph says the OSD may not stop, and
    /// `CephStepFailure` when a later step fails; the OSD is then left out, never marked
    /// back in by Bynar (no out-in-out churn): the failure says so.
    public func remove(
        osd id: Int, stopDaemon: () throws -> Void, simulate: Bool = false, safeToDestroyTimeout: Duration? = .seconds(600),
        stallTimeout: Duration? = nil, progress: (String) -> Void = { _ in }, waiting: (String) -> Void = { _ in }
    ) throws -> [String] {
        let state = try osdState(id)
        guard state.exists else { throw CephRefusal(osd: id, reason: "osd.\(id) does not exist") }
        guard !state.destroyed else { throw CephRefusal(osd: id, reason: "osd.\(id) is already destroyed") }
        // ok-to-stop asks whether stopping loses availability; an OSD already down and out
        // (a removal resumed after its stop) has nothing left to stop, and safe-to-destroy
        // below still guards its data.
        let check = state.up || state.in ? try okToStop(id) : (ok: true, detail: "osd.\(id) is already down and out")
        guard check.ok else { throw CephRefusal(osd: id, reason: "ok-to-stop says no: \(check.detail)") }

        let outStep = "mark osd.\(id) out"
        let safeStep = "wait until osd.\(id) is safe to destroy"
        let stopStep = "stop the daemon of osd.\(id)"
        let destroyStep = "destroy osd.\(id) (id and CRUSH position kept)"
        var done = [state.up || state.in ? "osd.\(id) is ok to stop" : check.detail]
        if simulate {
            return done + [state.in ? outStep : "osd.\(id) is already out", safeStep, stopStep, destroyStep]
        }

        // A failure after `out` leaves the OSD out: marking it back in would move its data back
        // onto a failing disk, and the retry would move it off again (out-in-out churn). Only
        // a person puts it back (`ceph osd in`), having judged the disk sound.
        func failure(_ step: String, _ error: any Error, rollBack: Bool) -> CephStepFailure {
            let rollback = rollBack && state.in
                ? "osd.\(id) left out (its data keeps moving off the failing disk); `ceph osd in \(id)` puts it back if a person judges the disk sound" : nil
            return CephStepFailure(osd: id, step: step, done: done, rollback: rollback, underlying: "\(error)")
        }

        do {
            if state.in {
                progress(outStep)
                try markOut(id)
                done.append(outStep)
            }
        } catch {
            throw failure(outStep, error, rollBack: false)
        }

        progress(safeStep)
        do {
            try waitForDrain(id, overall: safeToDestroyTimeout, stall: stallTimeout ?? safeToDestroyTimeout, waiting: { waiting("\(safeStep): \($0)") })
            done.append(safeStep)
        } catch {
            throw failure(safeStep, error, rollBack: true)
        }

        progress(stopStep)
        do {
            try stopDaemon()
            done.append(stopStep)
        } catch {
            throw failure(stopStep, error, rollBack: true)
        }

        progress(destroyStep)
        do {
            try destroy(id)
            done.append(destroyStep)
        } catch {
            // The daemon is stopped and the data drained: leave it out, the operator restarts it.
            throw failure(destroyStep, error, rollBack: false)
        }
        return done
    }

    /// What still ties an OSD's data to it: the PGs that list it (up or acting) and, in
    /// them, the objects not yet where they belong (degraded + misplaced).
    public struct DrainState: Sendable, Equatable, CustomStringConvertible {
        public var pgs: Int
        public var objectsToMove: Int
        public var description: String { "\(pgs) PGs still on it, \(objectsToMove) objects to move" }

        public init(pgs: Int, objectsToMove: Int) {
            self.pgs = pgs
            self.objectsToMove = objectsToMove
        }
    }

    struct PGsByOSD: Decodable {
        struct PG: Decodable {
            struct Sum: Decodable {
                var num_objects_degraded: Int?
                var num_objects_misplaced: Int?
            }
            var stat_sum: Sum?
        }
        var pg_stats: [PG]?
    }

    /// `pg ls-by-osd` (a mgr command since Luminous): how much of the OSD's data has yet to move.
    public func drainState(_ id: Int) throws -> DrainState {
        let reply = try cluster.checkedMgrCommand(#"{"prefix":"pg ls-by-osd","osd":\#(id),"format":"json"}"#)
        let pgs: [PGsByOSD.PG]
        do {
            // Pacific and later wrap the list; older releases return it bare.
            if let wrapped = try? JSONDecoder().decode(PGsByOSD.self, from: Data(reply.output)), let list = wrapped.pg_stats {
                pgs = list
            } else {
                pgs = try JSONDecoder().decode([PGsByOSD.PG].self, from: Data(reply.output))
            }
        } catch {
            throw RadosError(operation: "pg ls-by-osd", code: -EINVAL, statusText: "unreadable reply: \(error)")
        }
        let objects = pgs.reduce(0) { $0 + ($1.stat_sum?.num_objects_degraded ?? 0) + ($1.stat_sum?.num_objects_misplaced ?? 0) }
        return DrainState(pgs: pgs.count, objectsToMove: objects)
    }

    /// Waits until safe-to-destroy says yes, as long as the drain moves (``DrainWatch``).
    func waitForDrain(_ id: Int, overall: Duration?, stall: Duration?, waiting: (String) -> Void) throws {
        let clock = ContinuousClock()
        let began = clock.now
        func ms(_ duration: Duration?) -> Int64? {
            duration.map { $0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000 }
        }
        var watch = DrainWatch(osd: id, overallMs: ms(overall), stallMs: ms(stall))
        while true {
            let answer = try safeToDestroy(id)
            switch watch.observe(safe: answer.safe, detail: answer.detail, drain: try? drainState(id), atMs: ms(clock.now - began)!) {
            case .done:
                return
            case .giveUp(let why):
                throw TimedOut(what: why)
            case .wait(let news, let upToMs):
                if let news { waiting(news) }
                sleep(for: min(pollInterval, .milliseconds(upToMs)))
            }
        }
    }

    /// Brings a destroyed OSD back with the same id: `startDaemon` prepares the new device
    /// under that id and starts it (production: `ceph-volume lvm create --osd-id ID`); then
    /// this waits, up to `timeout`, until the OSD is up and in, marking it in if the mon
    /// does not. Returns the steps done. Without `startDaemon` (a resumed job whose OSD was
    /// already re-created) only the waits run, and the OSD must exist, not destroyed.
    public func readd(osd id: Int, startDaemon: (() throws -> Void)?, timeout: Duration = .seconds(120), progress: (String) -> Void = { _ in }) throws -> [String] {
        let state = try osdState(id)
        var done: [String] = []
        if let startDaemon {
            guard state.exists, state.destroyed else {
                throw CephRefusal(osd: id, reason: "osd.\(id) is not destroyed (exists: \(state.exists)); only a destroyed id can be re-used")
            }
            let startStep = "prepare and start osd.\(id)"
            progress(startStep)
            do {
                try startDaemon()
                done.append(startStep)
            } catch {
                throw CephStepFailure(osd: id, step: startStep, done: done, rollback: nil, underlying: "\(error)")
            }
        } else {
            guard state.exists, !state.destroyed else {
                throw CephRefusal(osd: id, reason: "osd.\(id) was not re-created (exists: \(state.exists), destroyed: \(state.destroyed)); nothing to wait for")
            }
        }

        let upStep = "wait until osd.\(id) is up"
        progress(upStep)
        let deadline = ContinuousClock.now + timeout
        var current = state
        do {
            let up = try waitUntil(timeout: timeout) {
                current = try osdState(id)
                return current.up && !current.destroyed
            }
            guard up else { throw TimedOut(what: "osd.\(id) up after \(timeout), last state \(current)") }
            done.append(upStep)
        } catch {
            throw CephStepFailure(osd: id, step: upStep, done: done, rollback: nil, underlying: "\(error)")
        }

        let inStep = "wait until osd.\(id) is in"
        progress(inStep)
        do {
            // The mon marks a new OSD in when it boots (mon_osd_auto_mark_new_in); give it a moment.
            var isIn = try waitUntil(timeout: min(.seconds(5), max(.zero, deadline - ContinuousClock.now))) { try osdState(id).in }
            if !isIn {
                try markIn(id)
                done.append("mark osd.\(id) in")
                isIn = try waitUntil(timeout: max(.seconds(1), deadline - ContinuousClock.now)) { try osdState(id).in }
            }
            guard isIn else { throw TimedOut(what: "osd.\(id) in after \(timeout)") }
            done.append(inStep)
        } catch {
            throw CephStepFailure(osd: id, step: inStep, done: done, rollback: nil, underlying: "\(error)")
        }
        return done
    }
}

/// Follows an OSD's drain after `out`: a pure decision (time passed in) on each look at
/// the cluster. Rules:
/// 1. safe-to-destroy says yes: done.
/// 2. Progress is fewer PGs on the OSD, or fewer objects to move, than ever seen before;
///    each is news for the job's progress.
/// 3. No progress for `stallMs` (counted from the start until the first progress): give up.
/// 4. `overallMs` since the start (nil: never): give up, however it moves.
public struct DrainWatch: Sendable, Equatable {
    public enum Decision: Sendable, Equatable {
        case done
        /// Look again within `upToMs`; `news` when the drain moved.
        case wait(news: String?, upToMs: Int64)
        case giveUp(String)
    }

    public let osd: Int
    public let overallMs: Int64?
    public let stallMs: Int64?
    public private(set) var best: CephBackend.DrainState?
    public private(set) var lastMoveMs: Int64 = 0

    public init(osd: Int, overallMs: Int64?, stallMs: Int64?) {
        self.osd = osd
        self.overallMs = overallMs
        self.stallMs = stallMs
    }

    /// One look, `atMs` after the wait began.
    public mutating func observe(safe: Bool, detail: String, drain: CephBackend.DrainState?, atMs: Int64) -> Decision {
        if safe { return .done }
        var news: String?
        if let drain {
            if let best, drain.pgs < best.pgs || drain.objectsToMove < best.objectsToMove {
                lastMoveMs = atMs
                news = "\(drain)"
            } else if best == nil {
                news = "\(drain)"
            }
            best = CephBackend.DrainState(pgs: min(drain.pgs, best?.pgs ?? drain.pgs), objectsToMove: min(drain.objectsToMove, best?.objectsToMove ?? drain.objectsToMove))
        }
        let left = best.map { "\($0)" } ?? "no PG listing"
        if let stallMs, atMs - lastMoveMs >= stallMs {
            return .giveUp("safe-to-destroy: no data moved off osd.\(osd) for \(stallMs / 1000) s (\(left)); last answer: \(detail)")
        }
        if let overallMs, atMs >= overallMs {
            return .giveUp("safe-to-destroy after \(overallMs / 1000) s in all (\(left)); last answer: \(detail)")
        }
        let until = [stallMs.map { lastMoveMs + $0 - atMs }, overallMs.map { $0 - atMs }].compactMap { $0 }.min() ?? Int64.max
        return .wait(news: news, upToMs: max(0, until))
    }
}

/// A bounded wait ran out.
struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}
