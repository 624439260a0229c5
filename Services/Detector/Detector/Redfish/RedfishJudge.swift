/// What is wrong with one part, and which rule said so.
struct HardwareFinding: Sendable, Equatable {
    enum Severity: String, Sendable, Equatable, Comparable {
        case warning, failed
        static func < (a: Severity, b: Severity) -> Bool { a == .warning && b == .failed }
    }
    var part: HardwarePart
    var severity: Severity
    /// The numbered rule of ``RedfishJudge`` that decided (`R2`).
    var rule: String
    /// Machine-readable reason (`redfish.drive_failed`, `redfish.failure_predicted`, ...).
    var reason: String
    /// One line for a technician.
    var detail: String
}

/// Judges the parts read from a BMC: which are failed, which need attention. Pure: the
/// same parts give the same findings. Rules, first match per part wins:
///
/// - R1 A part whose `Status.State` is `Absent`, `Disabled`, `StandbyOffline` or
///   `UnavailableOffline` is not judged (an empty bay or a switched-off part is no fault).
/// - R2 `Status.Health` `Critical` → failed (`redfish.<kind>_failed`).
/// - R3 A temperature at or above its critical (else fatal) upper threshold, or a fan at or
///   below its critical (else fatal) lower threshold → failed (`redfish.<kind>_out_of_range`),
///   whatever the BMC's health says (some BMCs report thresholds but never set Health).
/// - R4 A drive with `FailurePredicted: true` → failed (`redfish.failure_predicted`): a
///   disk its own firmware expects to die is replaced before it does.
/// - R5 `Status.Health` `Warning` → warning (`redfish.<kind>_warning`).
/// - R6 A temperature at or above its non-critical upper threshold, or a fan at or below
///   its non-critical lower threshold → warning (`redfish.<kind>_out_of_range`).
/// - R7 A drive with `PredictedMediaLifeLeftPercent` at or below `lifeLeftWarningPercent`
///   → warning (`redfish.media_life_low`).
/// - Otherwise (Health `OK`, or no health at all) the part is fine.
///
/// - R8 A system's or chassis' own health rolls up its parts' health: their R2/R5
///   findings are kept only when no other part of the reading has a finding (a BMC may
///   know of a fault in a part it does not list), so one failed part is reported once.
struct RedfishJudge: Sendable {
    var lifeLeftWarningPercent: Double

    static let notJudgedStates: Set<String> = ["Absent", "Disabled", "StandbyOffline", "UnavailableOffline"]

    func judge(_ parts: [HardwarePart]) -> [HardwareFinding] {
        let all = parts.compactMap(judge)
        let rollups: Set<HardwarePartKind> = [.system, .chassis]
        let partFindings = all.filter { !rollups.contains($0.part.kind) }
        return partFindings.isEmpty ? all : partFindings
    }

    func judge(_ part: HardwarePart) -> HardwareFinding? {
        if let state = part.state, Self.notJudgedStates.contains(state) { return nil }
        let kind = part.kind.rawValue
        if part.health == "Critical" {
            return finding(part, .failed, "R2", "redfish.\(kind)_failed", "\(describe(part)) reports health Critical")
        }
        if let outside = outOfRange(part, critical: true) {
            return finding(part, .failed, "R3", "redfish.\(kind)_out_of_range", outside)
        }
        if part.kind == .drive, part.failurePredicted == true {
            return finding(part, .failed, "R4", "redfish.failure_predicted", "\(describe(part)): the drive predicts its own failure")
        }
        if part.health == "Warning" {
            return finding(part, .warning, "R5", "redfish.\(kind)_warning", "\(describe(part)) reports health Warning")
        }
        if let outside = outOfRange(part, critical: false) {
            return finding(part, .warning, "R6", "redfish.\(kind)_out_of_range", outside)
        }
        if part.kind == .drive, let left = part.lifeLeftPercent, left <= lifeLeftWarningPercent {
            return finding(part, .warning, "R7", "redfish.media_life_low",
                           "\(describe(part)): \(formatted(left))% of its media life left (warning at \(formatted(lifeLeftWarningPercent))%)")
        }
        return nil
    }

    private func outOfRange(_ part: HardwarePart, critical: Bool) -> String? {
        guard let reading = part.reading else { return nil }
        let which = critical ? "critical" : "non-critical"
        switch part.kind {
        case .temperature:
            if let limit = critical ? part.upperCritical : part.upperNonCritical, reading >= limit {
                return "\(describe(part)) reads \(formatted(reading)) °C, at or above its \(which) limit \(formatted(limit)) °C"
            }
        case .fan:
            if let limit = critical ? part.lowerCritical : part.lowerNonCritical, reading <= limit {
                return "\(describe(part)) reads \(formatted(reading)), at or below its \(which) limit \(formatted(limit))"
            }
        default:
            break
        }
        return nil
    }

    private func finding(_ part: HardwarePart, _ severity: HardwareFinding.Severity, _ rule: String, _ reason: String, _ detail: String) -> HardwareFinding {
        HardwareFinding(part: part, severity: severity, rule: rule, reason: reason, detail: detail)
    }

    /// "drive Disk Bay 3 (Drive 3, serial S3X)": name, location and serial, as a technician needs.
    func describe(_ part: HardwarePart) -> String {
        var extras: [String] = []
        if let location = part.location { extras.append("at \(location)") }
        if let serial = part.serial { extras.append("serial \(serial)") }
        let kind = part.kind.rawValue.split(separator: "_").joined(separator: " ")
        return extras.isEmpty ? "\(kind) \(part.name)" : "\(kind) \(part.name) (\(extras.joined(separator: ", ")))"
    }

    private func formatted(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }
}
