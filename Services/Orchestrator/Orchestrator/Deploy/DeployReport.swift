import FoundationEssentials

/// What a deploy run did, one row per disk (or per host when the host itself failed or
/// had nothing to deploy), and the figures of the run.
public struct DeployReport: Sendable, Codable, Equatable {
    /// How one disk (or host) ended.
    public enum Result: String, Sendable, Codable {
        /// Deployed in this run; `osdID` is the new OSD.
        case succeeded
        /// Not deployed; `reason` (and `failedStep`) say why.
        case failed
        /// Deployed by an earlier run with the same journal; not touched.
        case doneEarlier = "done-earlier"
        /// Named by the inventory but not deployable (in service, system disk, ...).
        case skipped
        /// `--simulate`: the disk-manager said what it would do; nothing changed.
        case simulated
        /// The host has no blank disk the pattern chooses (a host row).
        case nothingToDo = "nothing-to-do"
    }

    public struct Row: Sendable, Codable, Equatable {
        public var host: String
        /// Disk key; empty for a row about the whole host.
        public var disk: String
        public var devPath: String
        public var result: Result
        public var osdID: String
        public var requestID: String
        public var reason: String
        public var failedStep: String
        /// Times the request was sent again after a transient failure.
        public var retries: Int

        public init(host: String, disk: String = "", devPath: String = "", result: Result, osdID: String = "",
                    requestID: String = "", reason: String = "", failedStep: String = "", retries: Int = 0) {
            self.host = host
            self.disk = disk
            self.devPath = devPath
            self.result = result
            self.osdID = osdID
            self.requestID = requestID
            self.reason = reason
            self.failedStep = failedStep
            self.retries = retries
        }

        enum CodingKeys: String, CodingKey {
            case host, disk, devPath = "dev_path", result, osdID = "osd_id", requestID = "request_id"
            case reason, failedStep = "failed_step", retries
        }
    }

    /// Request/response round trips to the disk-managers measured during the run (List and
    /// Deploy, from send to answer), in milliseconds.
    public struct RoundTrips: Sendable, Codable, Equatable {
        public var samples: Int
        public var p50Ms: Double
        public var p99Ms: Double
        public var maxMs: Double

        enum CodingKeys: String, CodingKey {
            case samples, p50Ms = "p50_ms", p99Ms = "p99_ms", maxMs = "max_ms"
        }

        /// Figures over `values` (milliseconds).
        public init(_ values: [Double]) {
            let sorted = values.sorted()
            samples = sorted.count
            func percentile(_ p: Double) -> Double {
                sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, max(0, Int((Double(sorted.count) * p).rounded(.up)) - 1))]
            }
            p50Ms = percentile(0.5)
            p99Ms = percentile(0.99)
            maxMs = sorted.last ?? 0
        }
    }

    public var runID: String
    public var journal: String?
    public var resumed: Bool
    public var hosts: Int
    public var elapsedMs: Double
    public var roundTrips: RoundTrips
    public var rows: [Row]

    public init(runID: String, journal: String?, resumed: Bool, hosts: Int, elapsedMs: Double, roundTrips: RoundTrips, rows: [Row]) {
        self.runID = runID
        self.journal = journal
        self.resumed = resumed
        self.hosts = hosts
        self.elapsedMs = elapsedMs
        self.roundTrips = roundTrips
        self.rows = rows
    }

    enum CodingKeys: String, CodingKey {
        case runID = "run_id", journal, resumed, hosts, elapsedMs = "elapsed_ms", roundTrips = "round_trips", rows
    }

    /// Rows with `result`.
    public func count(_ result: Result) -> Int { rows.filter { $0.result == result }.count }

    /// True when nothing failed.
    public var succeeded: Bool { count(.failed) == 0 }

    /// The report as one JSON document.
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    /// The final table: one row per disk, failures last, then a summary line.
    public func table() -> String {
        let sorted = rows.sorted { ($0.result == .failed ? 1 : 0, $0.host, $0.disk) < ($1.result == .failed ? 1 : 0, $1.host, $1.disk) }
        let header = ["HOST", "DISK", "DEVICE", "RESULT", "OSD", "DETAIL"]
        let cells = sorted.map { row -> [String] in
            var detail = row.reason
            if !row.failedStep.isEmpty { detail = "step \(row.failedStep): " + detail }
            if row.retries > 0 { detail += (detail.isEmpty ? "" : " ") + "(\(row.retries) retr\(row.retries == 1 ? "y" : "ies"))" }
            return [row.host, row.disk.isEmpty ? "-" : row.disk, row.devPath.isEmpty ? "-" : row.devPath,
                    row.result.rawValue, row.osdID.isEmpty ? "-" : row.osdID, detail]
        }
        var out = TextTable.render(header: header, rows: cells)
        let summary = [Result.succeeded, .failed, .doneEarlier, .skipped, .simulated, .nothingToDo]
            .filter { count($0) > 0 }
            .map { "\(count($0)) \($0.rawValue)" }
            .joined(separator: ", ")
        out += "\n\(hosts) host\(hosts == 1 ? "" : "s"): \(summary.isEmpty ? "nothing" : summary) in \(Self.seconds(elapsedMs)) (run \(runID))"
        return out
    }

    static func seconds(_ ms: Double) -> String {
        let tenths = Int((ms / 100).rounded())
        return "\(tenths / 10).\(tenths % 10) s"
    }
}

/// A plain text table: columns as wide as their widest cell, two spaces apart, the last
/// column not padded.
public enum TextTable {
    public static func render(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            var text = ""
            for (index, cell) in cells.enumerated() {
                if index == cells.count - 1 {
                    text += cell
                } else {
                    text += cell + String(repeating: " ", count: widths[index] - cell.count + 2)
                }
            }
            while text.hasSuffix(" ") { text.removeLast() }
            return text
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}

/// Counters of a running deploy, for the progress bar.
public struct DeployProgress: Sendable, Equatable {
    public var hostsTotal = 0
    public var hostsDone = 0
    /// Disks chosen so far (grows as hosts are listed).
    public var disksChosen = 0
    /// Deploy jobs accepted and not finished.
    public var running = 0
    public var succeeded = 0
    public var failed = 0
    /// Requests sent again after a transient failure.
    public var retries = 0

    public init() {}

    /// Disks finished (either way).
    public var finished: Int { succeeded + failed }

    /// One line: a bar over the chosen disks and the counters.
    public func line(elapsed: Duration, barWidth: Int = 30) -> String {
        let fraction = disksChosen == 0 ? 0 : Double(finished) / Double(disksChosen)
        let filled = min(barWidth, Int((fraction * Double(barWidth)).rounded(.down)))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: barWidth - filled)
        let ms = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
        return "[\(bar)] \(finished)/\(disksChosen) disks, \(running) running, \(succeeded) ok, \(failed) failed, "
            + "\(retries) retries, hosts \(hostsDone)/\(hostsTotal), \(DeployReport.seconds(ms))"
    }
}
