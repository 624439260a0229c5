public import BynarProto

/// One SMART sample of one drive, as either source (libatasmart or smartctl) reports it.
///
/// Every figure is optional: `nil` means "this source did not report it, or reported
/// something that cannot be that figure" (a vendor-packed raw value, a sector count larger
/// than the drive). A reading never invents a zero. It is `Codable` so the detector can keep
/// samples (as JSON) and judge the next one against the last.
public struct SmartReading: Sendable, Equatable, Codable {
    /// Which tool produced the reading.
    public enum Source: String, Sendable, Equatable, Codable {
        /// libatasmart, reading ATA drives (and saved `skdump --save` blobs) directly.
        case libatasmart
        /// smartctl's JSON output (`smartctl -j -a`): ATA, NVMe and SCSI.
        case smartctl
    }

    /// One ATA SMART attribute as the drive reports it.
    public struct Attribute: Sendable, Equatable, Codable {
        /// Attribute id (1...255).
        public var id: UInt8
        /// The source's name for it ("reallocated-sector-count", "Reallocated_Sector_Ct").
        public var name: String
        /// Normalized current value; 1...253 are valid, higher is better.
        public var value: UInt8
        /// Worst normalized value seen.
        public var worst: UInt8
        /// Normalized threshold; 0 means "always passing", 254/255 are not thresholds.
        public var threshold: UInt8
        /// The 48-bit raw value, little-endian bytes as one number (vendor-defined layout).
        public var raw: UInt64
        /// Pre-failure (a value at its threshold predicts failure) rather than old-age.
        public var prefailure: Bool

        /// Creates an attribute.
        public init(id: UInt8, name: String, value: UInt8, worst: UInt8, threshold: UInt8, raw: UInt64, prefailure: Bool) {
            self.id = id
            self.name = name
            self.value = value
            self.worst = worst
            self.threshold = threshold
            self.raw = raw
            self.prefailure = prefailure
        }

        /// The threshold can be crossed: ATA uses 0 as "always passing" and 0xFE/0xFF are
        /// not thresholds a value can meet in service; the current value must be a valid
        /// normalized value (1...0xFD) too.
        public var thresholdApplies: Bool {
            (1...0xFD).contains(threshold) && (1...0xFD).contains(value)
        }

        /// The normalized value is at or below a threshold that applies.
        public var atOrBelowThreshold: Bool {
            thresholdApplies && value <= threshold
        }
    }

    /// NVMe SMART / health information log figures.
    public struct NVMeHealth: Sendable, Equatable, Codable {
        /// Critical warning bit field (0 = no warning).
        public var criticalWarning: UInt8
        /// Unrecovered data integrity errors over the drive's life.
        public var mediaErrors: UInt64
        /// Remaining spare capacity, percent.
        public var availableSpare: UInt8
        /// The spare percentage below which the drive itself warns.
        public var availableSpareThreshold: UInt8

        /// Creates NVMe health figures.
        public init(criticalWarning: UInt8, mediaErrors: UInt64, availableSpare: UInt8, availableSpareThreshold: UInt8) {
            self.criticalWarning = criticalWarning
            self.mediaErrors = mediaErrors
            self.availableSpare = availableSpare
            self.availableSpareThreshold = availableSpareThreshold
        }
    }

    /// SCSI/SAS health figures, where smartctl reports them.
    public struct SCSIHealth: Sendable, Equatable, Codable {
        /// Entries in the grown defect list (sectors the drive has reallocated in service).
        public var grownDefects: UInt64?
        /// Total uncorrected read errors from the error counter log.
        public var readUncorrected: UInt64?
        /// Total uncorrected write errors from the error counter log.
        public var writeUncorrected: UInt64?

        /// Creates SCSI health figures.
        public init(grownDefects: UInt64? = nil, readUncorrected: UInt64? = nil, writeUncorrected: UInt64? = nil) {
            self.grownDefects = grownDefects
            self.readUncorrected = readUncorrected
            self.writeUncorrected = writeUncorrected
        }

        /// Read plus write uncorrected errors, when either is known.
        public var uncorrected: UInt64? {
            if readUncorrected == nil && writeUncorrected == nil { return nil }
            return (readUncorrected ?? 0).addingReportingOverflow(writeUncorrected ?? 0).partialValue
        }
    }

    /// Which tool produced this reading.
    public var source: Source
    /// The drive's own SMART self-assessment: `true` passed, `false` failing, `nil` unknown.
    public var overallPassed: Bool?
    /// The source's overall verdict verbatim: libatasmart's `GOOD`, `BAD_SECTOR`, ... or
    /// smartctl's `PASSED`/`FAILED`; `UNKNOWN` when there is none.
    public var overall: String
    /// ATA attributes in the drive's order (empty for NVMe and SCSI).
    public var attributes: [Attribute]
    /// Reallocated sectors (attribute 5), as a count.
    public var reallocated: UInt64?
    /// Errors the drive could not correct (attribute 187).
    public var reportedUncorrectable: UInt64?
    /// Command timeouts (attribute 188, lowest 16-bit word of the raw value; see `SmartCounts`).
    public var commandTimeouts: UInt64?
    /// Sectors waiting to be remapped (attribute 197).
    public var pending: UInt64?
    /// Sectors found unreadable by the offline scan (attribute 198).
    public var offlineUncorrectable: UInt64?
    /// Reallocated plus pending sectors (libatasmart's own figure when it is the source).
    public var badSectors: UInt64?
    /// Drive temperature in whole degrees Celsius.
    public var temperatureC: Int?
    /// Power-on time in whole hours.
    public var powerOnHours: UInt64?
    /// NVMe health, for NVMe drives.
    public var nvme: NVMeHealth?
    /// SCSI health, for SCSI/SAS drives.
    public var scsi: SCSIHealth?
    /// Model, as the drive identifies itself.
    public var model: String?
    /// Serial number, as the drive identifies itself.
    public var serial: String?
    /// Firmware revision, as the drive identifies itself.
    public var firmware: String?
    /// Addressable logical sectors, when known: the bound a sector count must stay under.
    public var capacitySectors: UInt64?

    /// Creates a reading; every figure defaults to unknown.
    public init(
        source: Source,
        overallPassed: Bool? = nil,
        overall: String = "UNKNOWN",
        attributes: [Attribute] = [],
        reallocated: UInt64? = nil,
        reportedUncorrectable: UInt64? = nil,
        commandTimeouts: UInt64? = nil,
        pending: UInt64? = nil,
        offlineUncorrectable: UInt64? = nil,
        badSectors: UInt64? = nil,
        temperatureC: Int? = nil,
        powerOnHours: UInt64? = nil,
        nvme: NVMeHealth? = nil,
        scsi: SCSIHealth? = nil,
        model: String? = nil,
        serial: String? = nil,
        firmware: String? = nil,
        capacitySectors: UInt64? = nil
    ) {
        self.source = source
        self.overallPassed = overallPassed
        self.overall = overall
        self.attributes = attributes
        self.reallocated = reallocated
        self.reportedUncorrectable = reportedUncorrectable
        self.commandTimeouts = commandTimeouts
        self.pending = pending
        self.offlineUncorrectable = offlineUncorrectable
        self.badSectors = badSectors
        self.temperatureC = temperatureC
        self.powerOnHours = powerOnHours
        self.nvme = nvme
        self.scsi = scsi
        self.model = model
        self.serial = serial
        self.firmware = firmware
        self.capacitySectors = capacitySectors
    }

    /// The attribute with this id, if the drive reports it.
    public func attribute(_ id: UInt8) -> Attribute? {
        attributes.first { $0.id == id }
    }

    /// The reading as the wire summary: unknown counts become 0, an unknown temperature -1,
    /// an unknown overall status "not passed" (with `overall` saying `UNKNOWN`).
    public func summary() -> Bynar_V1_SmartSummary {
        var summary = Bynar_V1_SmartSummary()
        summary.source = source == .libatasmart ? .libatasmart : .smartctl
        summary.available = true
        summary.overallPassed = overallPassed ?? false
        summary.overall = overall
        summary.badSectors = badSectors ?? 0
        summary.reallocated = reallocated ?? scsi?.grownDefects ?? 0
        summary.pending = pending ?? 0
        summary.offlineUncorrectable = offlineUncorrectable ?? 0
        summary.reportedUncorrectable = reportedUncorrectable ?? 0
        summary.commandTimeouts = commandTimeouts ?? 0
        summary.temperatureC = temperatureC.map { Int32(clamping: $0) } ?? -1
        summary.powerOnHours = powerOnHours ?? 0
        if let nvme {
            summary.nvmeCriticalWarning = UInt32(nvme.criticalWarning)
            summary.nvmeMediaErrors = nvme.mediaErrors
            summary.nvmeAvailableSpare = UInt32(nvme.availableSpare)
            summary.nvmeAvailableSpareThreshold = UInt32(nvme.availableSpareThreshold)
        }
        summary.attributes = attributes.map { attribute in
            var out = Bynar_V1_SmartAttribute()
            out.id = UInt32(attribute.id)
            out.name = attribute.name
            out.value = UInt32(attribute.value)
            out.worst = UInt32(attribute.worst)
            out.threshold = UInt32(attribute.threshold)
            out.raw = attribute.raw
            out.prefailure = attribute.prefailure
            out.failingNow = attribute.atOrBelowThreshold
            return out
        }
        return summary
    }
}

/// How raw attribute values become counts, shared by both sources so they agree.
enum SmartCounts {
    /// Attribute 188's count. Seagate packs three 16-bit counters into its 48-bit raw value
    /// (smartctl's drive database prints it as `raw16`: total timeouts in the low word, then
    /// commands slower than 5 s and 7.5 s), so one slow command in an upper word would read
    /// as billions of timeouts. We take the lowest 16-bit word: exact for a plain count below
    /// 65536, and the total on Seagate drives.
    static func commandTimeouts(raw: UInt64) -> UInt64 {
        raw & 0xFFFF
    }

    /// A sector count (5, 197, 198) the drive cannot have: more sectors than it has, or the
    /// all-ones "no value" patterns. Such a figure is a vendor encoding, not a count.
    static func plausibleSectors(_ count: UInt64?, capacity: UInt64?) -> UInt64? {
        guard let count else { return nil }
        if count == 0xFFFF_FFFF || count == 0xFFFF_FFFF_FFFF { return nil }
        if let capacity, capacity > 0, count > capacity { return nil }
        return count
    }

    /// Reallocated plus pending, when either is known.
    static func badSectors(reallocated: UInt64?, pending: UInt64?) -> UInt64? {
        if reallocated == nil && pending == nil { return nil }
        return (reallocated ?? 0).addingReportingOverflow(pending ?? 0).partialValue
    }
}

/// A SMART read that failed: which device or file, what was being done, and why.
public struct SmartError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure, for callers that react differently to each.
    public enum Kind: Sendable, Equatable {
        /// A system or libatasmart call failed with this errno.
        case system(errno: Int32)
        /// smartctl exited with a status whose bits 0-1 say it could not run or open the device.
        case exitStatus(Int32)
        /// smartctl was killed by this signal.
        case signaled(Int32)
        /// smartctl did not finish within its time limit and was killed.
        case timedOut
        /// The input (JSON, blob) was not what the source promises.
        case malformed
    }

    /// The device, blob or file the operation was about.
    public var path: String
    /// What was being done ("sk_disk_open", "smartctl", "read").
    public var operation: String
    /// The failure kind.
    public var kind: Kind
    /// A human sentence: errno text, smartctl's own messages, the decoding problem.
    public var reason: String

    /// Creates an error.
    public init(path: String, operation: String, kind: Kind, reason: String) {
        self.path = path
        self.operation = operation
        self.kind = kind
        self.reason = reason
    }

    /// "PATH: OPERATION: REASON"
    public var description: String { "\(path): \(operation): \(reason)" }
}
