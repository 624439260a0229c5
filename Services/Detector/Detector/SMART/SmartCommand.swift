import BynarProto
import FoundationEssentials

/// The offline SMART check behind `bynar-detector smart --blob FILE` and
/// `bynar-detector smart --smartctl-json FILE`: read one saved sample, judge it with
/// `SmartRules` (no previous reading), print the verdict as JSON.
public enum SmartCommand {
    /// Loads a libatasmart blob (`skdump --save`) and judges it. Throws `SmartError`
    /// naming the file when it cannot be read or libatasmart rejects it.
    public static func judgeBlob(path: String) throws -> (SmartReading, SmartVerdict) {
        let reading = try AtaSmart.read(blobFile: path)
        return (reading, SmartRules.judge(current: reading, previous: nil))
    }

    /// Parses saved `smartctl -j -a` output and judges it. The exit status recorded in the
    /// JSON is applied as a live run's would be (bit 3 means failing). Throws `SmartError`
    /// naming the file when it cannot be read or is not smartctl JSON.
    public static func judgeSmartctlJSON(path: String) throws -> (SmartReading, SmartVerdict) {
        let reading = try Smartctl.parse(json: LocalFile.read(path), path: path)
        return (reading, SmartRules.judge(current: reading, previous: nil))
    }

    /// The verdict as pretty-printed JSON with keys in sorted order: `device` (model,
    /// serial, firmware), `reasons` (rule, severity, detail), `state`, and `summary` (the
    /// `SmartSummary` wire message, proto field names).
    public static func verdictJSON(_ reading: SmartReading, _ verdict: SmartVerdict) -> String {
        let output = Output(
            device: .init(model: reading.model, serial: reading.serial, firmware: reading.firmware),
            state: stateName(verdict.state),
            reasons: verdict.reasons.map { .init(rule: $0.rule, severity: stateName($0.severity), detail: $0.detail) },
            summary: .init(reading.summary())
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            return String(decoding: try encoder.encode(output), as: UTF8.self)
        } catch {
            return #"{"error":"could not encode the verdict"}"#
        }
    }

    /// `healthy`, `suspect`, `failing`, `failed` (and the other states by the same pattern).
    static func stateName(_ state: Bynar_V1_DiskState) -> String {
        switch state {
        case .unspecified: "unspecified"
        case .UNRECOGNIZED(let value): "unrecognized(\(value))"
        default: state.readableName
        }
    }

    private struct Output: Encodable {
        struct Device: Encodable {
            var model: String?
            var serial: String?
            var firmware: String?
        }
        struct Reason: Encodable {
            var rule: String
            var severity: String
            var detail: String
        }
        var device: Device
        var state: String
        var reasons: [Reason]
        var summary: Summary
    }

    private struct Summary: Encodable {
        struct Attribute: Encodable {
            var id: UInt32
            var name: String
            var value: UInt32
            var worst: UInt32
            var threshold: UInt32
            var raw: UInt64
            var prefailure: Bool
            var failing_now: Bool
        }
        var source: String
        var available: Bool
        var overall_passed: Bool
        var overall: String
        var bad_sectors: UInt64
        var reallocated: UInt64
        var pending: UInt64
        var offline_uncorrectable: UInt64
        var reported_uncorrectable: UInt64
        var command_timeouts: UInt64
        var temperature_c: Int32
        var power_on_hours: UInt64
        var nvme_critical_warning: UInt32
        var nvme_media_errors: UInt64
        var nvme_available_spare: UInt32
        var nvme_available_spare_threshold: UInt32
        var attributes: [Attribute]

        init(_ s: Bynar_V1_SmartSummary) {
            source = s.source == .libatasmart ? "libatasmart" : s.source == .smartctl ? "smartctl" : "unspecified"
            available = s.available
            overall_passed = s.overallPassed
            overall = s.overall
            bad_sectors = s.badSectors
            reallocated = s.reallocated
            pending = s.pending
            offline_uncorrectable = s.offlineUncorrectable
            reported_uncorrectable = s.reportedUncorrectable
            command_timeouts = s.commandTimeouts
            temperature_c = s.temperatureC
            power_on_hours = s.powerOnHours
            nvme_critical_warning = s.nvmeCriticalWarning
            nvme_media_errors = s.nvmeMediaErrors
            nvme_available_spare = s.nvmeAvailableSpare
            nvme_available_spare_threshold = s.nvmeAvailableSpareThreshold
            attributes = s.attributes.map {
                Attribute(id: $0.id, name: $0.name, value: $0.value, worst: $0.worst, threshold: $0.threshold,
                          raw: $0.raw, prefailure: $0.prefailure, failing_now: $0.failingNow)
            }
        }
    }
}
