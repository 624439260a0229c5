public import BynarProto

/// What the SMART rules make of one reading: a state and every rule that fired.
public struct SmartVerdict: Sendable, Equatable {
    /// `.healthy`, `.suspect`, `.failing` or `.failed`: the worst severity among `reasons`.
    public var state: Bynar_V1_DiskState
    /// Every rule that fired, in a stable order, each with its rule id and a sentence with
    /// the numbers. `observedUnixMs` is left 0: the rules have no clock; the caller stamps it.
    public var reasons: [Bynar_V1_HealthReason]

    /// Creates a verdict.
    public init(state: Bynar_V1_DiskState, reasons: [Bynar_V1_HealthReason]) {
        self.state = state
        self.reasons = reasons
    }

    /// The rule ids of `reasons`, in order.
    public var rules: [String] { reasons.map(\.rule) }
}

/// The SMART rules: a pure function of the current reading and the previous one.
///
/// | rule id | fires when | severity |
/// |---|---|---|
/// | `smart.overall_failing` | the drive's own SMART status says failing | failed |
/// | `smart.prefail_at_threshold.<id>` | a pre-failure attribute's value is at or below its threshold (1...253) | failed |
/// | `smart.attr_nonzero.<id>` | count 5, 187, 188, 197 or 198 above zero | suspect |
/// | `smart.attr_rising.<id>` | that count higher than in the previous reading | failing |
/// | `smart.oldage_at_threshold.<id>` | an old-age attribute at or below its threshold: wear, noted only | healthy |
/// | `nvme.critical_warning` | NVMe critical warning bits set | failed |
/// | `nvme.spare_below_threshold` | NVMe available spare below its threshold | failed |
/// | `nvme.media_errors` | NVMe media errors above zero | suspect |
/// | `nvme.media_errors_rising` | more media errors than in the previous reading | failing |
/// | `scsi.grown_defects` / `scsi.grown_defects_rising` | SCSI grown defect list non-empty / growing | suspect / failing |
/// | `scsi.uncorrected_errors` / `scsi.uncorrected_errors_rising` | SCSI uncorrected read+write errors / more of them | suspect / failing |
///
/// A previous reading counts as a trend only when it comes from the same source and, where
/// both know the serial number, the same drive: a replaced disk or a switch between
/// libatasmart and smartctl (which decode some raw values differently) is not "rising".
public enum SmartRules {
    /// Judges `current`, using `previous` (an earlier reading of the same drive) for trends.
    public static func judge(current: SmartReading, previous: SmartReading?) -> SmartVerdict {
        let previous = previous.flatMap { comparable($0, current) ? $0 : nil }
        var reasons: [Bynar_V1_HealthReason] = []
        func add(_ rule: String, _ severity: Bynar_V1_DiskState, _ detail: String) {
            var reason = Bynar_V1_HealthReason()
            reason.rule = rule
            reason.severity = severity
            reason.detail = detail
            reasons.append(reason)
        }

        if current.overallPassed == false {
            add("smart.overall_failing", .failed,
                "The drive's SMART self-assessment says it is failing (\(current.source.rawValue): \(current.overall)).")
        }

        for attribute in current.attributes where attribute.atOrBelowThreshold {
            let label = "attribute \(attribute.id) (\(attribute.name)) is at \(attribute.value), at or below its threshold \(attribute.threshold)"
            if attribute.prefailure {
                add("smart.prefail_at_threshold.\(attribute.id)", .failed,
                    "Pre-failure \(label) (worst \(attribute.worst)): the drive predicts its own failure.")
            } else {
                add("smart.oldage_at_threshold.\(attribute.id)", .healthy,
                    "Old-age \(label): wear past the vendor's design life, not a failure prediction.")
            }
        }

        for counted in countedAttributes {
            guard let now = count(counted.id, in: current), now > 0 else { continue }
            add("smart.attr_nonzero.\(counted.id)", .suspect, "\(counted.label) (attribute \(counted.id)): \(now).")
            if let previous, let before = count(counted.id, in: previous), now > before {
                add("smart.attr_rising.\(counted.id)", .failing,
                    "\(counted.label) (attribute \(counted.id)) rose from \(before) to \(now) since the previous reading.")
            }
        }

        if let nvme = current.nvme {
            if nvme.criticalWarning != 0 {
                add("nvme.critical_warning", .failed,
                    "NVMe critical warning 0x\(hex(nvme.criticalWarning)): \(criticalWarningText(nvme.criticalWarning)).")
            }
            if nvme.availableSpare < nvme.availableSpareThreshold {
                add("nvme.spare_below_threshold", .failed,
                    "NVMe available spare \(nvme.availableSpare)% is below its threshold \(nvme.availableSpareThreshold)%.")
            }
            if nvme.mediaErrors > 0 {
                add("nvme.media_errors", .suspect, "NVMe media errors: \(nvme.mediaErrors).")
                if let before = previous?.nvme?.mediaErrors, nvme.mediaErrors > before {
                    add("nvme.media_errors_rising", .failing,
                        "NVMe media errors rose from \(before) to \(nvme.mediaErrors) since the previous reading.")
                }
            }
        }

        if let scsi = current.scsi {
            if let defects = scsi.grownDefects, defects > 0 {
                add("scsi.grown_defects", .suspect, "SCSI grown defect list: \(defects) entries.")
                if let before = previous?.scsi?.grownDefects, defects > before {
                    add("scsi.grown_defects_rising", .failing,
                        "SCSI grown defect list grew from \(before) to \(defects) entries since the previous reading.")
                }
            }
            if let errors = scsi.uncorrected, errors > 0 {
                add("scsi.uncorrected_errors", .suspect, "SCSI uncorrected read and write errors: \(errors).")
                if let before = previous?.scsi?.uncorrected, errors > before {
                    add("scsi.uncorrected_errors_rising", .failing,
                        "SCSI uncorrected errors rose from \(before) to \(errors) since the previous reading.")
                }
            }
        }

        let state = reasons.map(\.severity).max { rank($0) < rank($1) } ?? .healthy
        return SmartVerdict(state: state, reasons: reasons)
    }

    /// The counts the rules watch, by attribute id, with their human names.
    private static let countedAttributes: [(id: Int, label: String)] = [
        (5, "Reallocated sectors"),
        (187, "Reported uncorrectable errors"),
        (188, "Command timeouts"),
        (197, "Pending sectors"),
        (198, "Offline uncorrectable sectors"),
    ]

    private static func count(_ id: Int, in reading: SmartReading) -> UInt64? {
        switch id {
        case 5: reading.reallocated
        case 187: reading.reportedUncorrectable
        case 188: reading.commandTimeouts
        case 197: reading.pending
        case 198: reading.offlineUncorrectable
        default: nil
        }
    }

    private static func comparable(_ previous: SmartReading, _ current: SmartReading) -> Bool {
        guard previous.source == current.source else { return false }
        if let before = previous.serial, let now = current.serial, !before.isEmpty, !now.isEmpty {
            return before == now
        }
        return true
    }

    private static func rank(_ state: Bynar_V1_DiskState) -> Int {
        switch state {
        case .healthy: 1
        case .suspect: 2
        case .failing: 3
        case .failed: 4
        default: 0
        }
    }

    private static func hex(_ value: UInt8) -> String {
        let digits = String(value, radix: 16)
        return digits.count < 2 ? "0" + digits : digits
    }

    /// NVMe base specification, SMART / Health Information log, byte 0.
    private static func criticalWarningText(_ bits: UInt8) -> String {
        let meanings: [(UInt8, String)] = [
            (0x01, "available spare below threshold"),
            (0x02, "temperature outside its thresholds"),
            (0x04, "reliability degraded by media or internal errors"),
            (0x08, "media placed in read-only mode"),
            (0x10, "volatile memory backup device failed"),
            (0x20, "persistent memory region read-only or unreliable"),
        ]
        let named = meanings.filter { bits & $0.0 != 0 }.map(\.1)
        return named.isEmpty ? "reserved bits" : named.joined(separator: ", ")
    }
}
