import BynarProto

/// One application's health on this host, PicoRed's way. Pure: facts in (each with its
/// time), whether what it reads changed out.
///
/// Rules:
/// 1. Until a check has answered it reads UNKNOWN.
/// 2. `tolerance` failed checks in a row make it DOWN; fewer leave it as it was (a blip is
///    not an outage).
/// 3. `recover` good checks in a row make it UP (from UNKNOWN at once when `recover` is 1).
/// 4. A host that reaches neither the broker nor any peer is isolated: it does not declare
///    its apps up. While isolated an app that checks UP reads UNKNOWN ("isolated"); DOWN
///    stays DOWN (what fails locally fails anyway). The counts go on meanwhile.
/// 5. An operator's override (PicoRed's `appstate`): `ok` reads UP, `ng` reads DOWN, whatever
///    the checks say (and isolation), until `auto`.
/// 6. A clean shutdown of the agent reads STOPPED ("nice quit"): not a failure, and no
///    handler treats it as one.
/// 7. The app's local handler is due when it reads UP or DOWN and the last handler run was
///    told otherwise (or none ran yet): once per change, never for UNKNOWN or STOPPED, and
///    not again after UP, UNKNOWN (isolated), UP.
struct AppHealthMachine: Equatable {
    let tolerance: Int
    let recover: Int
    /// What the checks alone say.
    private(set) var checked = Bynar_V1_AppHealth.unknown
    private(set) var failures = 0
    private(set) var successes = 0
    private(set) var override = Bynar_V1_AppOverrideMode.appOverrideAuto
    private(set) var isolated = false
    private(set) var stopped = false
    /// The last check's outcome in words.
    private(set) var lastDetail = ""
    /// Since when ``health`` reads as it does.
    private(set) var sinceMs: Int64
    /// What the last local handler run was told (UP or DOWN), nil before the first.
    private(set) var handled: Bynar_V1_AppHealth?

    init(tolerance: Int, recover: Int, nowMs: Int64) {
        self.tolerance = max(1, tolerance)
        self.recover = max(1, recover)
        sinceMs = nowMs
    }

    enum Fact: Equatable {
        case checkPassed(detail: String)
        case checkFailed(detail: String)
        case reachability(isolated: Bool)
        case overridden(Bynar_V1_AppOverrideMode)
        case shutDown
    }

    /// What it reads now (rules 4-6 over rules 1-3).
    var health: Bynar_V1_AppHealth {
        if stopped { return .stopped }
        switch override {
        case .appOverrideOk: return .up
        case .appOverrideNg: return .down
        default: break
        }
        if isolated && checked != .down { return .unknown }
        return checked
    }

    /// Why it reads as it does, in words.
    var reason: String {
        if stopped { return "the host agent shut down cleanly" }
        switch override {
        case .appOverrideOk: return "set ok by an operator (checks say \(Self.name(checked)): \(lastDetail))"
        case .appOverrideNg: return "set ng by an operator (checks say \(Self.name(checked)): \(lastDetail))"
        default: break
        }
        if isolated && checked != .down { return "isolated: this host reaches neither the broker nor a peer" + (lastDetail.isEmpty ? "" : " (last check: \(lastDetail))") }
        if checked == .unknown && lastDetail.isEmpty { return "not checked yet" }
        return lastDetail + (failures > 0 && checked != .down ? " (\(failures) of \(tolerance) failures in a row)" : "")
    }

    /// Takes a fact; true when ``health`` changed.
    mutating func handle(_ fact: Fact, nowMs: Int64) -> Bool {
        let before = health
        switch fact {
        case .checkPassed(let detail):
            lastDetail = detail
            failures = 0
            successes += 1
            if checked != .up && successes >= recover { checked = .up }
        case .checkFailed(let detail):
            lastDetail = detail
            successes = 0
            failures += 1
            if checked != .down && failures >= tolerance { checked = .down }
        case .reachability(let isolated):
            self.isolated = isolated
        case .overridden(let mode):
            override = mode
        case .shutDown:
            stopped = true
        }
        guard health != before else { return false }
        sinceMs = nowMs
        return true
    }

    /// Rule 7: the handler run now due, `true` for up and `false` for down, taken as run;
    /// nil when none is.
    mutating func takeDueHandler() -> Bool? {
        let now = health
        guard now == .up || now == .down, now != handled else { return nil }
        handled = now
        return now == .up
    }

    static func name(_ health: Bynar_V1_AppHealth) -> String {
        switch health {
        case .up: "up"
        case .down: "down"
        case .stopped: "stopped"
        default: "unknown"
        }
    }
}
