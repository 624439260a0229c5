import FoundationEssentials
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a deploy run did, one JSON object per line, so a run that was interrupted can be
/// started again with the same journal: it keeps the run id (so the same request ids),
/// skips what succeeded, follows what was sent but not finished, and tries again what
/// failed under a fresh request id.
///
/// Lines are appended with one write(2) each on an O_APPEND descriptor, so a killed process
/// loses at most the line it was writing (a torn last line is ignored on load) and lines
/// survive a crash of the process. They are fsync'ed when the run ends, not per line: a
/// line lost to a power cut costs nothing twice, because request ids are deterministic
/// and the disk-manager answers a repeated id with ALREADY_DONE.
public final class DeployJournal: Sendable {
    /// One line.
    public struct Entry: Codable, Sendable, Equatable {
        public enum Kind: String, Codable, Sendable {
            /// The first line: the run id.
            case run
            /// About to send Deploy with `requestID`.
            case sending
            /// The disk-manager accepted it as job `jobID`.
            case accepted
            case succeeded
            /// Final failure of this request id (a later run tries again under a new id).
            case failed
        }
        public var kind: Kind
        public var runID: String?
        public var host: String?
        public var disk: String?
        public var requestID: String?
        public var jobID: String?
        public var osdID: String?
        public var reason: String?
        public var failedStep: String?
        public var atUnixMs: Int64

        enum CodingKeys: String, CodingKey {
            case kind, runID = "run_id", host, disk, requestID = "request_id", jobID = "job_id"
            case osdID = "osd_id", reason, failedStep = "failed_step", atUnixMs = "at_unix_ms"
        }

        public init(kind: Kind, runID: String? = nil, host: String? = nil, disk: String? = nil, requestID: String? = nil,
                    jobID: String? = nil, osdID: String? = nil, reason: String? = nil, failedStep: String? = nil, atUnixMs: Int64) {
            self.kind = kind
            self.runID = runID
            self.host = host
            self.disk = disk
            self.requestID = requestID
            self.jobID = jobID
            self.osdID = osdID
            self.reason = reason
            self.failedStep = failedStep
            self.atUnixMs = atUnixMs
        }
    }

    /// What the journal knows about one disk of one host.
    public struct History: Sendable, Equatable {
        /// The latest entry's kind for the current request id.
        public var last: Entry.Kind?
        public var requestID: String?
        public var jobID: String?
        public var osdID: String?
        /// How many request ids for this disk ended in failure.
        public var failures = 0
        public var lastFailure: String?
    }

    /// A journal file that cannot be used, naming the line.
    public struct JournalError: Error, Sendable, CustomStringConvertible {
        public var path: String
        public var line: Int
        public var problem: String
        public var description: String { line > 0 ? "journal \(path) line \(line): \(problem)" : "journal \(path): \(problem)" }
    }

    /// The run's id: part of every request id it sends.
    public let runID: String
    /// The file, or nil for a journal kept in memory only.
    public let path: String?
    /// True when the journal was read from an existing file (the run is resumed).
    public let resumed: Bool
    private let fd: Int32
    private let state: Mutex<[Key: History]>

    struct Key: Hashable {
        var host: String
        var disk: String
    }

    /// Opens (or creates) the journal at `path`; with nil, keeps it in memory. A new
    /// journal gets `newRunID`; an existing one keeps the run id in its first line.
    public init(path: String?, newRunID: String = DeployJournal.makeRunID()) throws(JournalError) {
        self.path = path
        guard let path else {
            runID = newRunID
            resumed = false
            fd = -1
            state = Mutex([:])
            return
        }
        var existing: [UInt8] = []
        let readFD = open(path, O_RDONLY | O_CLOEXEC)
        if readFD >= 0 {
            defer { close(readFD) }
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = read(readFD, &buffer, buffer.count)
                if count < 0 { throw JournalError(path: path, line: 0, problem: "cannot read: \(String(cString: strerror(errno)))") }
                if count == 0 { break }
                existing += buffer[0..<count]
            }
        } else if errno != ENOENT {
            throw JournalError(path: path, line: 0, problem: "cannot open: \(String(cString: strerror(errno)))")
        }
        let entries = try Self.parse(existing, path: path)
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw JournalError(path: path, line: 0, problem: "cannot open for writing: \(String(cString: strerror(errno)))") }
        if let first = entries.first {
            guard first.kind == .run, let id = first.runID, !id.isEmpty else {
                close(fd)
                throw JournalError(path: path, line: 1, problem: "the first line must be the run line with a run_id")
            }
            runID = id
            resumed = true
        } else {
            runID = newRunID
            resumed = false
        }
        var histories: [Key: History] = [:]
        for entry in entries.dropFirst() { Self.apply(entry, to: &histories) }
        state = Mutex(histories)
        // A torn last line (the process died mid-write) is cut off, or the next line
        // would be glued to it.
        if let last = existing.last, last != UInt8(ascii: "\n") {
            let keep = existing.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0
            if ftruncate(fd, off_t(keep)) != 0 {
                close(fd)
                throw JournalError(path: path, line: 0, problem: "cannot cut the torn last line: \(String(cString: strerror(errno)))")
            }
        }
        if entries.isEmpty { try append(Entry(kind: .run, runID: runID, atUnixMs: Self.nowUnixMs())) }
    }

    deinit {
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }

    /// What is known about `disk` on `host`.
    public func history(host: String, disk: String) -> History {
        state.withLock { $0[Key(host: host, disk: disk)] ?? History() }
    }

    /// Every disk of `host` the journal mentions.
    public func disks(of host: String) -> [String] {
        state.withLock { histories in histories.keys.filter { $0.host == host }.map(\.disk).sorted() }
    }

    /// The request id to send Deploy for `disk` on `host` with: the one in flight if
    /// there is one, else a new one that no earlier failure used.
    public func requestID(host: String, disk: String) -> String {
        let history = history(host: host, disk: disk)
        if let id = history.requestID, history.last != .failed { return id }
        let base = "\(runID)/\(host)/\(disk)"
        return history.failures == 0 ? base : "\(base)/again-\(history.failures)"
    }

    /// Appends `entry` and updates what ``history(host:disk:)`` answers.
    public func append(_ entry: Entry) throws(JournalError) {
        state.withLock { Self.apply(entry, to: &$0) }
        guard fd >= 0, let path else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data: Data
        do { data = try encoder.encode(entry) } catch {
            throw JournalError(path: path, line: 0, problem: "cannot encode an entry: \(error)")
        }
        guard Self.write(fd, [UInt8](data) + [UInt8(ascii: "\n")]) else {
            throw JournalError(path: path, line: 0, problem: "cannot append: \(String(cString: strerror(errno)))")
        }
    }

    /// Flushes the file to disk.
    public func sync() {
        if fd >= 0 { fsync(fd) }
    }

    static func apply(_ entry: Entry, to histories: inout [Key: History]) {
        guard entry.kind != .run, let host = entry.host, let disk = entry.disk else { return }
        var history = histories[Key(host: host, disk: disk)] ?? History()
        history.last = entry.kind
        if let id = entry.requestID { history.requestID = id }
        if let job = entry.jobID { history.jobID = job }
        switch entry.kind {
        case .sending: history.jobID = nil
        case .succeeded: history.osdID = entry.osdID
        case .failed:
            history.failures += 1
            history.lastFailure = entry.reason
        case .accepted, .run: break
        }
        histories[Key(host: host, disk: disk)] = history
    }

    static func parse(_ bytes: [UInt8], path: String) throws(JournalError) -> [Entry] {
        let decoder = JSONDecoder()
        var entries: [Entry] = []
        let lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        for (index, line) in lines.enumerated() where !line.isEmpty {
            let isLast = index == lines.count - 1
            do {
                entries.append(try decoder.decode(Entry.self, from: Data(line)))
            } catch {
                // Only the last line can be torn (the process died while writing it).
                if isLast { break }
                throw JournalError(path: path, line: index + 1, problem: "not a journal entry: \(String(decoding: line.prefix(200), as: UTF8.self))")
            }
        }
        return entries
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += written
            }
            return true
        }
    }

    /// A run id: "deploy-" + unix ms + 4 random hex digits.
    public static func makeRunID() -> String {
        let random = String(UInt16.random(in: .min ... .max), radix: 16)
        return "deploy-\(nowUnixMs())-\(String(repeating: "0", count: 4 - random.count))\(random)"
    }

    static func nowUnixMs() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}
