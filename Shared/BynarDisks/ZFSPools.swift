#if canImport(Glibc)
import Glibc
#endif

/// What `zpool status` (or `zpool status -x`) says about this host's ZFS pools, parsed from
/// its text. Both dialects are read: zfs-fuse 0.7 prints the scan as `scrub: ...` on one
/// line, OpenZFS as `scan: ...` with continuation lines (`Tests/Fixtures/zfs` holds a
/// capture of each of zfs-fuse's states and a hand-written OpenZFS sample). Pure: no I/O.
public struct ZpoolStatus: Sendable, Equatable {
    public var pools: [ZFSPool]

    public init(pools: [ZFSPool]) {
        self.pools = pools
    }

    /// Parses the whole output: one block per pool, each starting with `pool:`. Text that
    /// names no pool ("all pools are healthy", "no pools available") is no pool.
    public init(parsing text: String) {
        var pools: [ZFSPool] = []
        var block: [Substring] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.trimmingLeadingSpaces().hasPrefix("pool:"), !block.isEmpty {
                pools.append(ZFSPool(parsing: block))
                block = []
            }
            if !block.isEmpty || line.trimmingLeadingSpaces().hasPrefix("pool:") { block.append(line) }
        }
        if !block.isEmpty { pools.append(ZFSPool(parsing: block)) }
        self.pools = pools
    }

    public func pool(_ name: String) -> ZFSPool? { pools.first { $0.name == name } }
}

/// One pool of `zpool status`.
public struct ZFSPool: Sendable, Equatable {
    public var name = ""
    /// ONLINE, DEGRADED, FAULTED, UNAVAIL, ...
    public var state = ""
    /// The `status:` paragraph, joined on one line; empty when healthy.
    public var status = ""
    public var scan = ZFSScan.none
    /// The pool's own row of the config tree, its top-level vdevs as children (log, cache
    /// and spare sections too, marked by ``ZFSVdev/section``).
    public var root = ZFSVdev(name: "", state: "")
    /// The `errors:` line ("No known data errors").
    public var errors = ""

    public init() {}

    init(parsing lines: [Substring]) {
        var field = ""
        var inConfig = false
        var stack: [(depth: Int, path: [Int])] = []
        var section = ""
        var scanText = ""
        for line in lines {
            let trimmed = String(line.trimmingLeadingSpaces())
            if inConfig {
                if trimmed.hasPrefix("errors:") {
                    inConfig = false
                    errors = String(trimmed.dropFirst("errors:".count)).trimmed
                    continue
                }
                guard !trimmed.isEmpty else { continue }
                let columns = trimmed.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
                if columns.first == "NAME" && columns.dropFirst().first == "STATE" { continue }
                // Depth from the spaces after the leading tab: the pool at 0, its top-level
                // vdevs at 2, their members at 4, a replacing group's members at 6.
                let depth = line.drop { $0 == "\t" }.prefix { $0 == " " }.count
                if columns.count == 1 {
                    // "logs", "cache", "spares": a section header at the top level.
                    section = columns[0]
                    continue
                }
                var vdev = ZFSVdev(name: columns[0], state: columns[1])
                if columns.count >= 5 {
                    vdev.readErrors = ZFSVdev.count(columns[2])
                    vdev.writeErrors = ZFSVdev.count(columns[3])
                    vdev.checksumErrors = ZFSVdev.count(columns[4])
                    vdev.note = columns.dropFirst(5).joined(separator: " ")
                }
                if depth == 0 && root.name.isEmpty {
                    root = vdev
                    stack = [(0, [])]
                    continue
                }
                vdev.section = section
                while let last = stack.last, last.depth >= depth { stack.removeLast() }
                guard let parent = stack.last else { continue }
                let index = root.insert(vdev, at: parent.path)
                stack.append((depth, parent.path + [index]))
                continue
            }
            if let colon = trimmed.firstIndex(of: ":"), !line.hasPrefix("\t"), trimmed[..<colon].allSatisfy({ $0.isLetter }) {
                field = String(trimmed[..<colon])
                let value = String(trimmed[trimmed.index(after: colon)...]).trimmed
                switch field {
                case "pool": name = value
                case "state": state = value
                case "status": status = value
                case "scan", "scrub": scanText = value
                case "config": inConfig = true
                case "errors": errors = value
                default: break
                }
            } else if line.hasPrefix("\t") || line.hasPrefix("        ") {
                // A continuation of the field above (OpenZFS's scan progress lines).
                switch field {
                case "status": status += " " + trimmed.trimmed
                case "scan", "scrub": scanText += " " + trimmed.trimmed
                default: break
                }
            }
        }
        scan = ZFSScan(parsing: scanText)
    }

    /// The leaves (disks) of the pool, with the top-level vdev each belongs to.
    public var leaves: [(vdev: ZFSVdev, topLevel: ZFSVdev)] {
        root.children.flatMap { top in
            top.children.isEmpty ? [(top, top)] : top.allLeaves.map { ($0, top) }
        }
    }

    /// The leaf named `name` (as zpool prints it) and its top-level vdev.
    public func leaf(_ name: String) -> (vdev: ZFSVdev, topLevel: ZFSVdev)? {
        leaves.first { $0.vdev.name == name }
    }

    /// A resilver is running, or a replacement has not finished (a `replacing-N` group).
    public var resilvering: Bool {
        if case .resilverRunning = scan { return true }
        return root.children.contains { $0.containsReplacing }
    }
}

/// One row of the config tree: the pool, a top-level vdev (`raidz1-0`, `mirror-0`, a single
/// disk), a group (`replacing-1`, `spare-0`) or a disk.
public struct ZFSVdev: Sendable, Equatable {
    public var name: String
    public var state: String
    public var readErrors: UInt64 = 0
    public var writeErrors: UInt64 = 0
    public var checksumErrors: UInt64 = 0
    /// What follows the counts ("experienced I/O failures", "16.6M resilvered", "(resilvering)").
    public var note = ""
    /// "" for data vdevs; "logs", "cache" or "spares" for those sections.
    public var section = ""
    public var children: [ZFSVdev] = []

    public init(name: String, state: String, readErrors: UInt64 = 0, writeErrors: UInt64 = 0, checksumErrors: UInt64 = 0, note: String = "", children: [ZFSVdev] = []) {
        self.name = name
        self.state = state
        self.readErrors = readErrors
        self.writeErrors = writeErrors
        self.checksumErrors = checksumErrors
        self.note = note
        self.children = children
    }

    public var errorCount: UInt64 { readErrors + writeErrors + checksumErrors }

    /// The path of a vdev zpool could not find when the pool was imported: zpool then names
    /// it by its GUID and notes where it was (`9017512507357970393  UNAVAIL  0 0 0  was
    /// /dev/disk/by-id/ata-X-part1`), e.g. after a reboot with the disk pulled.
    public var formerPath: String? {
        guard note.hasPrefix("was ") else { return nil }
        return note.dropFirst("was ".count).split(separator: " ").first.map(String.init)
    }

    /// Disks below this row (itself when it is one).
    public var allLeaves: [ZFSVdev] { children.isEmpty ? [self] : children.flatMap(\.allLeaves) }

    var containsReplacing: Bool { name.hasPrefix("replacing") || children.contains { $0.containsReplacing } }

    /// How many of its members this top-level vdev can lose and keep its data: a mirror
    /// all but one, raidzN N (`raidz-0` and `raidz1-0` are single parity), a single disk none.
    public var redundancy: Int {
        if name.hasPrefix("mirror") { return max(0, children.count - 1) }
        if name.hasPrefix("raidz") {
            let level = name.dropFirst("raidz".count).prefix { $0.isNumber }
            return Int(level) ?? 1
        }
        return 0
    }

    /// A member counts as working when it, or (for a replacing/spare group) one of its
    /// disks, is ONLINE.
    public var working: Bool {
        children.isEmpty ? state == "ONLINE" : children.contains(where: \.working)
    }

    /// Inserts `vdev` under the row at `path` (child indexes from here); returns its index.
    mutating func insert(_ vdev: ZFSVdev, at path: [Int]) -> Int {
        guard let first = path.first else {
            children.append(vdev)
            return children.count - 1
        }
        return children[first].insert(vdev, at: Array(path.dropFirst()))
    }

    /// An error count as printed: "0", "122", "1.02K" (zpool rounds large counts).
    static func count(_ text: String) -> UInt64 {
        let multipliers: [Character: Double] = ["K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12]
        if let last = text.last, let multiplier = multipliers[last], let value = Double(text.dropLast()) {
            return UInt64(value * multiplier)
        }
        return UInt64(text) ?? 0
    }
}

/// The pool's last or running scrub or resilver.
public enum ZFSScan: Sendable, Equatable {
    case none
    case scrubRunning(percent: Double?)
    case resilverRunning(percent: Double?)
    /// `errors` found; `finished` the local time it ended, in Unix seconds.
    case scrubFinished(errors: Int, finished: Int64?)
    case resilverFinished(errors: Int, finished: Int64?)
    /// Anything else ("scrub canceled ..."), as printed.
    case other(String)

    /// zfs-fuse: `none requested`, `scrub completed after 0h0m with 0 errors on DATE`,
    /// `resilver completed after ...`, `resilver in progress for 0h0m, 24.92% done, 0h0m to go`.
    /// OpenZFS: `scrub repaired 0B in 00:00:05 with 0 errors on DATE`, `resilvered 2.4G in ...
    /// with 0 errors on DATE`, `resilver in progress since DATE ... 14.97% done, ...`.
    public init(parsing text: String) {
        let text = text.trimmed
        if text.isEmpty || text.hasPrefix("none requested") {
            self = .none
        } else if text.contains("in progress") {
            let percent = Self.percentDone(text)
            self = text.hasPrefix("resilver") ? .resilverRunning(percent: percent) : .scrubRunning(percent: percent)
        } else if text.hasPrefix("scrub completed") || text.hasPrefix("scrub repaired") {
            self = .scrubFinished(errors: Self.errorCount(text), finished: Self.endTime(text))
        } else if text.hasPrefix("resilver completed") || text.hasPrefix("resilvered") {
            self = .resilverFinished(errors: Self.errorCount(text), finished: Self.endTime(text))
        } else {
            self = .other(text)
        }
    }

    /// "24.92" from "..., 24.92% done, ...".
    static func percentDone(_ text: String) -> Double? {
        let words = text.split(separator: " ")
        for (index, word) in words.enumerated() where word.hasSuffix("%") || word.hasSuffix("%,") {
            guard index + 1 < words.count, words[index + 1].hasPrefix("done") else { continue }
            return Double(word.prefix { $0 != "%" })
        }
        return nil
    }

    /// N from "with N errors".
    static func errorCount(_ text: String) -> Int {
        let words = text.split(separator: " ")
        guard let with = words.firstIndex(of: "with"), with + 1 < words.count else { return 0 }
        return Int(words[with + 1]) ?? 0
    }

    /// The date after the last " on " ("Sat Dec  5 03:22:35 2026"), read as this host's
    /// local time (zpool prints ctime's layout), as Unix seconds.
    static func endTime(_ text: String) -> Int64? {
        guard let on = text.ranges(of: " on ").last else { return nil }
        let words = text[on.upperBound...].split(separator: " ")
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard words.count >= 5, let month = months.firstIndex(of: String(words[1])), let day = Int32(words[2]), let year = Int32(words[4]) else { return nil }
        let clock = words[3].split(separator: ":").compactMap { Int32($0) }
        guard clock.count == 3 else { return nil }
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = Int32(month)
        parts.tm_mday = day
        parts.tm_hour = clock[0]
        parts.tm_min = clock[1]
        parts.tm_sec = clock[2]
        parts.tm_isdst = -1
        let seconds = mktime(&parts)
        return seconds == -1 ? nil : Int64(seconds)
    }

    /// Whether a resilver or a scrub is running.
    public var running: Bool {
        switch self {
        case .scrubRunning, .resilverRunning: true
        default: false
        }
    }
}

/// One line of `zpool list -H -o name,size,allocated,free,capacity,health` (with or
/// without OpenZFS's `-p`: sizes as printed, capacity "70%" or "70").
public struct ZpoolListEntry: Sendable, Equatable {
    public var name: String
    public var size: String
    public var allocated: String
    public var free: String
    /// Percent of the pool in use.
    public var capacityPercent: Int
    public var health: String

    public init(name: String, size: String, allocated: String, free: String, capacityPercent: Int, health: String) {
        self.name = name
        self.size = size
        self.allocated = allocated
        self.free = free
        self.capacityPercent = capacityPercent
        self.health = health
    }

    /// The columns ``ZpoolTool/list(timeout:)`` asks for, in this order.
    public static let columns = "name,size,allocated,free,capacity,health"

    /// Every well-formed line (tab-separated, six columns); others are skipped.
    public static func parse(_ text: String) -> [ZpoolListEntry] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map { String($0).trimmed }
            guard fields.count == 6, let capacity = Int(fields[4].hasSuffix("%") ? String(fields[4].dropLast()) : fields[4]) else { return nil }
            return ZpoolListEntry(name: fields[0], size: fields[1], allocated: fields[2], free: fields[3], capacityPercent: capacity, health: fields[5])
        }
    }
}

extension Substring {
    func trimmingLeadingSpaces() -> Substring { drop { $0 == " " || $0 == "\t" } }
}

extension String {
    var trimmed: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
    }
}

extension ZFSScan {
    /// One line for steps and logs.
    public var summary: String {
        switch self {
        case .none: "no scrub or resilver yet"
        case .scrubRunning(let percent): "scrub running\(percent.map { ", \($0)% done" } ?? "")"
        case .resilverRunning(let percent): "resilver running\(percent.map { ", \($0)% done" } ?? "")"
        case .scrubFinished(let errors, _): "last scrub found \(errors) error\(errors == 1 ? "" : "s")"
        case .resilverFinished(let errors, _): "resilver finished with \(errors) error\(errors == 1 ? "" : "s")"
        case .other(let text): text
        }
    }
}
