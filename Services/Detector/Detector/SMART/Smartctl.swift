import BynarProcess
import FoundationEssentials
import Glibc

/// smartctl's exit status: a bit mask (smartctl(8), "EXIT STATUS").
package struct SmartctlExitStatus: OptionSet, Sendable, Hashable {
    /// The exit code (0...255).
    package let rawValue: Int32
    /// The status for an exit code.
    package init(rawValue: Int32) { self.rawValue = rawValue }

    /// Bit 0: the command line did not parse.
    package static let commandLineError = SmartctlExitStatus(rawValue: 1 << 0)
    /// Bit 1: the device could not be opened or identified (or was asleep with `-n`).
    package static let deviceOpenFailed = SmartctlExitStatus(rawValue: 1 << 1)
    /// Bit 2: some SMART or other command failed, or a SMART structure had a bad checksum.
    /// The output is still usable, possibly partial (e.g. no logs).
    package static let smartCommandFailed = SmartctlExitStatus(rawValue: 1 << 2)
    /// Bit 3: the SMART status check returned "DISK FAILING".
    package static let diskFailing = SmartctlExitStatus(rawValue: 1 << 3)
    /// Bit 4: pre-failure attributes at or below threshold now.
    package static let prefailBelowThreshold = SmartctlExitStatus(rawValue: 1 << 4)
    /// Bit 5: status OK, but some attribute was at or below threshold in the past.
    package static let belowThresholdInPast = SmartctlExitStatus(rawValue: 1 << 5)
    /// Bit 6: the device error log has records.
    package static let errorLogHasErrors = SmartctlExitStatus(rawValue: 1 << 6)
    /// Bit 7: the self-test log has records of errors.
    package static let selfTestLogHasErrors = SmartctlExitStatus(rawValue: 1 << 7)

    /// smartctl produced no reading worth judging: it could not parse its command line or
    /// could not open the device (bits 0-1).
    package var isFatal: Bool { !isDisjoint(with: [.commandLineError, .deviceOpenFailed]) }

    /// The bits' names, lowest first, for messages.
    package var names: [String] {
        let all: [(SmartctlExitStatus, String)] = [
            (.commandLineError, "command line error"), (.deviceOpenFailed, "device open failed"),
            (.smartCommandFailed, "a SMART command failed"), (.diskFailing, "disk failing"),
            (.prefailBelowThreshold, "pre-failure attribute at or below threshold"),
            (.belowThresholdInPast, "attribute at or below threshold in the past"),
            (.errorLogHasErrors, "error log has errors"), (.selfTestLogHasErrors, "self-test log has errors"),
        ]
        return all.filter { contains($0.0) }.map(\.1)
    }
}

/// smartctl, run as a child process and read as JSON (`smartctl -j -a DEVICE`).
///
/// Covers what libatasmart cannot: NVMe and SCSI/SAS drives, and ATA behind controllers
/// smartctl knows how to reach.
package struct Smartctl: Sendable {
    /// The smartctl binary to run.
    package var executable: String
    /// How long one run may take before it is killed and reported as timed out.
    package var timeout: Duration

    /// A runner for `executable`, killed after `timeout`.
    package init(executable: String = "/usr/sbin/smartctl", timeout: Duration = .seconds(60)) {
        self.executable = executable
        self.timeout = timeout
    }

    /// What one run produced.
    package struct Output: Sendable, Equatable {
        /// The exit status bits.
        package var status: SmartctlExitStatus
        /// Everything smartctl wrote to standard output.
        package var stdout: [UInt8]
    }

    /// Runs smartctl for `device` and interprets the result: bits 0-1 (cannot run / cannot
    /// open) throw naming the device and smartctl's own messages; bit 2 (some command
    /// failed) is tolerated; bit 3 (disk failing) makes the reading's overall status
    /// failing; bits 4-7 are left to the rules, which read the same facts from the data.
    /// Blocks the calling thread for up to `timeout`.
    package func read(device: String) throws(SmartError) -> SmartReading {
        let output = try run(device: device)
        if output.status.isFatal {
            let messages = (try? Self.decode(output.stdout, path: device))?.smartctl?.messages?.map(\.string) ?? []
            let detail = messages.isEmpty ? output.status.names.joined(separator: ", ") : messages.joined(separator: "; ")
            throw SmartError(path: device, operation: "smartctl", kind: .exitStatus(output.status.rawValue),
                             reason: "exit status \(output.status.rawValue): \(detail)")
        }
        return try Self.parse(json: output.stdout, exitStatus: output.status, path: device)
    }

    /// Runs `smartctl -j -a device` with posix_spawn, standard output through a pipe,
    /// standard input and error on /dev/null. Kills it and throws `.timedOut` after `timeout`.
    package func run(device: String) throws(SmartError) -> Output {
        let run: Tool.Run
        do {
            run = try Tool.run([executable, "-j", "-a", device], timeout: timeout, environment: ["LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
        } catch {
            switch error.problem {
            case .cannotStart(let why, let code):
                throw SmartError(path: device, operation: "spawn \(executable)", kind: .system(errno: code), reason: why)
            case .timedOut:
                throw SmartError(path: device, operation: "smartctl", kind: .timedOut, reason: "did not finish in time; killed")
            case .failed(let why):
                throw SmartError(path: device, operation: "smartctl", kind: .malformed, reason: why)
            }
        }
        if let signal = run.signal {
            throw SmartError(path: device, operation: "smartctl", kind: .signaled(signal),
                             reason: "\(executable) was killed by signal \(signal)")
        }
        return Output(status: SmartctlExitStatus(rawValue: run.exitCode ?? 0), stdout: run.output)
    }

    /// Parses `smartctl -j -a` output into a reading. `exitStatus`, when given, adds what
    /// only the exit status says (bit 3, "disk failing"). `path` names the input in errors.
    package static func parse(json: [UInt8], exitStatus: SmartctlExitStatus? = nil, path: String) throws(SmartError) -> SmartReading {
        let report = try decode(json, path: path)
        return reading(from: report, exitStatus: exitStatus ?? report.smartctl?.exitStatus.map(SmartctlExitStatus.init(rawValue:)))
    }

    static func decode(_ json: [UInt8], path: String) throws(SmartError) -> SmartctlReport {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(SmartctlReport.self, from: Data(json))
        } catch {
            throw SmartError(path: path, operation: "parse smartctl JSON", kind: .malformed, reason: "\(error)")
        }
    }

    static func reading(from report: SmartctlReport, exitStatus: SmartctlExitStatus?) -> SmartReading {
        let capacity = report.userCapacity?.blocks
        let rows = report.ataSmartAttributes?.table ?? []
        func row(_ id: Int) -> SmartctlReport.AttributeRow? { rows.first { $0.id == id } }

        var passed = report.smartStatus?.passed
        if exitStatus?.contains(.diskFailing) == true { passed = false }

        let reallocated = SmartCounts.plausibleSectors(row(5)?.count, capacity: capacity)
        let pending = SmartCounts.plausibleSectors(row(197)?.count, capacity: capacity)

        var nvme: SmartReading.NVMeHealth?
        if let log = report.nvmeSmartHealthInformationLog {
            nvme = SmartReading.NVMeHealth(
                criticalWarning: UInt8(clamping: log.criticalWarning ?? 0),
                mediaErrors: log.mediaErrors ?? 0,
                availableSpare: UInt8(clamping: log.availableSpare ?? 100),
                availableSpareThreshold: UInt8(clamping: log.availableSpareThreshold ?? 0)
            )
        }

        var scsi: SmartReading.SCSIHealth?
        let counters = report.scsiErrorCounterLog
        if report.scsiGrownDefectList != nil || counters != nil {
            scsi = SmartReading.SCSIHealth(
                grownDefects: report.scsiGrownDefectList,
                readUncorrected: counters?.read?.totalUncorrectedErrors,
                writeUncorrected: counters?.write?.totalUncorrectedErrors
            )
        }

        let vendorProduct = [report.scsiVendor, report.scsiProduct].compactMap { $0 }.joined(separator: " ")
        return SmartReading(
            source: .smartctl,
            overallPassed: passed,
            overall: passed.map { $0 ? "PASSED" : "FAILED" } ?? "UNKNOWN",
            attributes: rows.compactMap(\.attribute),
            reallocated: reallocated,
            reportedUncorrectable: row(187)?.count,
            commandTimeouts: row(188).map { SmartCounts.commandTimeouts(raw: $0.raw.value) },
            pending: pending,
            offlineUncorrectable: SmartCounts.plausibleSectors(row(198)?.count, capacity: capacity),
            badSectors: SmartCounts.badSectors(reallocated: reallocated, pending: pending),
            temperatureC: report.temperature?.current ?? report.nvmeSmartHealthInformationLog?.temperature,
            powerOnHours: report.powerOnTime?.hours ?? report.nvmeSmartHealthInformationLog?.powerOnHours,
            nvme: nvme,
            scsi: scsi,
            model: report.modelName ?? report.scsiModelName ?? (vendorProduct.isEmpty ? nil : vendorProduct),
            serial: report.serialNumber,
            firmware: report.firmwareVersion ?? report.scsiRevision,
            capacitySectors: capacity
        )
    }
}

/// The parts of `smartctl -j -a` output (smartctl 7.x, JSON format 1.0) the detector reads.
/// Keys are decoded from snake_case; everything is optional because which sections appear
/// depends on the transport (ATA, NVMe, SCSI) and on what the drive answered.
struct SmartctlReport: Decodable {
    struct Meta: Decodable {
        var version: [Int]?
        var exitStatus: Int32?
        var messages: [Message]?
    }
    struct Message: Decodable {
        var string: String
        var severity: String?
    }
    struct Capacity: Decodable {
        var blocks: UInt64?
        var bytes: UInt64?
    }
    struct Status: Decodable {
        var passed: Bool?
    }
    struct Temperature: Decodable {
        var current: Int?
    }
    struct PowerOnTime: Decodable {
        var hours: UInt64?
    }
    struct AttributeTable: Decodable {
        var table: [AttributeRow]?
    }
    struct AttributeRow: Decodable {
        struct Flags: Decodable {
            var prefailure: Bool?
        }
        struct Raw: Decodable {
            var value: UInt64
            var string: String?
        }
        var id: Int
        var name: String?
        var value: Int
        var worst: Int
        var thresh: Int
        var flags: Flags?
        var raw: Raw

        /// The count smartctl shows: the leading number of its formatted raw value, which
        /// applies its drive database (e.g. "0 (2000 0)" is 0: the attribute-5 default
        /// format `raw16(raw16)` shows the low word first); the plain raw value otherwise.
        var count: UInt64 {
            if let string = raw.string {
                let digits = string.prefix { $0.isASCII && $0.isNumber }
                if !digits.isEmpty, let number = UInt64(digits) { return number }
            }
            return raw.value
        }

        var attribute: SmartReading.Attribute? {
            guard let id = UInt8(exactly: id) else { return nil }
            return SmartReading.Attribute(
                id: id, name: name ?? "Unknown_Attribute",
                value: UInt8(clamping: value), worst: UInt8(clamping: worst), threshold: UInt8(clamping: thresh),
                raw: raw.value, prefailure: flags?.prefailure ?? false)
        }
    }
    struct NVMeLog: Decodable {
        var criticalWarning: Int?
        var temperature: Int?
        var availableSpare: Int?
        var availableSpareThreshold: Int?
        var mediaErrors: UInt64?
        var powerOnHours: UInt64?
    }
    struct ErrorCounters: Decodable {
        var totalUncorrectedErrors: UInt64?
    }
    struct ErrorCounterLog: Decodable {
        var read: ErrorCounters?
        var write: ErrorCounters?
    }

    var smartctl: Meta?
    var modelName: String?
    var scsiModelName: String?
    var scsiVendor: String?
    var scsiProduct: String?
    var scsiRevision: String?
    var serialNumber: String?
    var firmwareVersion: String?
    var userCapacity: Capacity?
    var smartStatus: Status?
    var temperature: Temperature?
    var powerOnTime: PowerOnTime?
    var ataSmartAttributes: AttributeTable?
    var nvmeSmartHealthInformationLog: NVMeLog?
    var scsiGrownDefectList: UInt64?
    var scsiErrorCounterLog: ErrorCounterLog?
}
