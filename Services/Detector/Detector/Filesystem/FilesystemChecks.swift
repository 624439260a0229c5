import BynarDisks
import BynarProcess
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One mounted filesystem, from `/proc/self/mountinfo`.
public struct MountedFilesystem: Sendable, Equatable {
    public var mountpoint: String
    public var fsType: String
    /// Mount source as the kernel shows it (`/dev/loop0`).
    public var source: String
    /// `major:minor` of the device: reliable where the source name is not (`/dev/root`).
    public var majorMinor: String
    /// Per-mount options (`rw`, `ro`, `relatime`, ...).
    public var mountOptions: [String]
    /// Filesystem (super block) options (`errors=remount-ro`, `emergency_ro`, ...).
    public var superOptions: [String]

    public var isReadOnly: Bool { mountOptions.contains("ro") || superOptions.contains("ro") }
    /// ext4 aborted by errors on Linux 6.x shows `emergency_ro` and may still say `rw`.
    public var isEmergencyReadOnly: Bool { superOptions.contains("emergency_ro") || mountOptions.contains("emergency_ro") }
}

/// Reads `/proc/self/mountinfo`.
public enum MountTable {
    /// Every mount in `text` (mountinfo format); paths have `\040`-style escapes decoded.
    public static func parse(_ text: String) -> [MountedFilesystem] {
        MountInfoEntry.parse(text).map { entry in
            MountedFilesystem(mountpoint: entry.mountPoint, fsType: entry.fsType, source: entry.source,
                              majorMinor: entry.devNumber.description, mountOptions: entry.mountOptions, superOptions: entry.superOptions)
        }
    }

    /// The current mounts of this process's namespace.
    public static func current(path: String = "/proc/self/mountinfo") -> [MountedFilesystem] {
        parse(readText(path) ?? "")
    }
}

/// Reads a small text file (sysfs, procfs); nil when it cannot be read.
func readText(_ path: String) -> String? {
    guard case .success(let bytes) = readFile(path) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}

/// Checks of mounted filesystems. Each finding is a reason for the disk's state machine.
/// Nothing here changes a disk: the detector never repairs, formats or unmounts.
public enum FilesystemChecks {
    public typealias Reason = DiskHealthMachine.Reason

    /// Durable findings for one mounted filesystem: an `emergency_ro` or read-only remount
    /// (`wasReadWrite`: this mount was seen read-write before, so read-only is not how it
    /// was configured), ext4's recorded error count, an XFS shutdown (its root no longer stats).
    public static func inspect(_ filesystem: MountedFilesystem, wasReadWrite: Bool, sysFs: String = "/sys/fs") -> [Reason] {
        var reasons: [Reason] = []
        let at = "\(filesystem.fsType) on \(filesystem.mountpoint)"
        if filesystem.isEmergencyReadOnly {
            reasons.append(Reason(rule: "fs.emergency_ro", severity: .failed, detail: "\(at) was forced read-only after errors (emergency_ro)"))
        } else if filesystem.isReadOnly && wasReadWrite {
            reasons.append(Reason(rule: "fs.read_only_remount", severity: .failed, detail: "\(at) went from read-write to read-only"))
        }
        let device = filesystem.source.split(separator: "/").last.map(String.init) ?? filesystem.source
        if filesystem.fsType == "ext4", let text = readText("\(sysFs)/ext4/\(device)/errors_count"),
           let count = Int(text.trimmingWhitespace()), count > 0 {
            let function = readText("\(sysFs)/ext4/\(device)/first_error_func")?.trimmingWhitespace() ?? ""
            reasons.append(Reason(rule: "fs.ext4_errors", severity: .failing,
                                  detail: "\(at) recorded \(count) error(s)\(function.isEmpty ? "" : ", first in \(function)")"))
        }
        if filesystem.fsType == "xfs" {
            // A shut-down XFS still answers statvfs, but stat of its root fails with EIO.
            var info = stat()
            if stat(filesystem.mountpoint, &info) != 0 && errno == EIO {
                reasons.append(Reason(rule: "fs.xfs_shutdown", severity: .failed, detail: "\(at) is shut down (stat of its root: I/O error)"))
            }
        }
        return reasons
    }
}

/// The detector's I/O probes: each runs on a thread of its own with a timeout, because a
/// dying disk can block I/O for minutes. A probe that hangs is reported as a timeout and no
/// second probe of the same target is started until it returns.
///
/// - ``run(mountpoint:timeout:)``: writes, reads back and fsyncs one 4 KiB block with
///   O_DIRECT in a probe file on a mounted filesystem.
/// - ``read(device:timeout:)``: reads 4 KiB with O_DIRECT at a few places across a whole
///   device (read-only: safe under a running OSD), for disks with no filesystem to probe.
public final class WriteProbe: Sendable {
    private let inFlight = Mutex<Set<String>>([])
    /// Name of the probe file created (and removed) in the filesystem's root; the pid keeps
    /// two probing processes from clobbering each other's block.
    public static var fileName: String { ".bynar-probe-\(getpid())" }

    public init() {}

    /// How a blocking probe ended.
    enum Ending: Equatable {
        case passed
        case failed(String)
        /// Did not finish in time (it goes on in its thread).
        case timedOut
        /// The previous probe of this target has not returned yet.
        case stillRunning
    }

    /// Nil when the probe passed; a reason when it failed or did not finish in `timeout`.
    public func run(mountpoint: String, timeout: Duration) async -> DiskHealthMachine.Reason? {
        let path = mountpoint.hasSuffix("/") ? mountpoint + Self.fileName : mountpoint + "/" + Self.fileName
        switch await runBlocking(key: "fs:" + mountpoint, timeout: timeout, { WriteProbe.probe(path: path) }) {
        case .passed: return nil
        case .failed(let problem): return .init(rule: "fs.probe_failed", severity: .suspect, detail: "write probe on \(mountpoint): \(problem)")
        case .timedOut: return .init(rule: "fs.probe_timeout", severity: .suspect, detail: "write probe on \(mountpoint) took longer than \(timeout)")
        case .stillRunning: return .init(rule: "fs.probe_timeout", severity: .suspect, detail: "write probe on \(mountpoint) still has not returned")
        }
    }

    /// What reading a whole device found.
    public struct ReadResult: Sendable, Equatable {
        /// Every place failed (or the device did not answer): the disk cannot be read.
        public var unreadable: DiskHealthMachine.Reason?
        /// Some places failed: unreadable sectors.
        public var readErrors: DiskHealthMachine.Reason?
    }

    /// Reads 4 KiB at each of ``DeviceReader/probeOffsets(size:)`` of `device`.
    public func read(device: String, timeout: Duration) async -> ReadResult {
        let ending = await runBlocking(key: "dev:" + device, timeout: timeout) {
            guard let size = DeviceReader.size(device) else { return "open: \(String(cString: strerror(errno)))" }
            let offsets = DeviceReader.probeOffsets(size: size)
            var failures: [String] = []
            for offset in offsets {
                if case .failed(let code) = DeviceReader.read(device, offset: offset) {
                    failures.append("at \(offset / 1_048_576) MiB: \(String(cString: strerror(code)))")
                }
            }
            if failures.isEmpty { return nil }
            return (failures.count == offsets.count ? "ALL " : "") + "\(failures.count) of \(offsets.count) reads failed (\(failures.joined(separator: "; ")))"
        }
        switch ending {
        case .passed:
            return ReadResult()
        case .failed(let problem) where problem.hasPrefix("ALL ") || problem.hasPrefix("open: "):
            let text = problem.hasPrefix("ALL ") ? String(problem.dropFirst(4)) : problem
            return ReadResult(unreadable: .init(rule: "disk.unreadable", severity: .suspect, detail: "read probe of \(device): \(text)"))
        case .failed(let problem):
            return ReadResult(readErrors: .init(rule: "disk.read_errors", severity: .failing, detail: "read probe of \(device): \(problem)"))
        case .timedOut:
            return ReadResult(unreadable: .init(rule: "disk.read_timeout", severity: .suspect, detail: "read probe of \(device) took longer than \(timeout)"))
        case .stillRunning:
            return ReadResult(unreadable: .init(rule: "disk.read_timeout", severity: .suspect, detail: "read probe of \(device) still has not returned"))
        }
    }

    /// Runs `body` (nil: passed, else what failed) on its own thread and waits up to `timeout`.
    func runBlocking(key: String, timeout: Duration, _ body: @escaping @Sendable () -> String?) async -> Ending {
        let started = inFlight.withLock { $0.insert(key).inserted }
        guard started else { return .stillRunning }
        let outcome = Outcome()
        do {
            // Not awaited: a probe stuck in the kernel (D state) keeps its thread, never ours.
            try startThread { [self] in
                outcome.finish(body())
                _ = inFlight.withLock { $0.remove(key) }
            }
        } catch {
            _ = inFlight.withLock { $0.remove(key) }
            return .passed
        }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let result = outcome.result { return result.map(Ending.failed) ?? .passed }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return .timedOut
    }

    /// The blocking probe; returns nil on success or what failed.
    static func probe(path: String) -> String? {
        let size = 4096
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, size, size) == 0, let buffer = raw else { return "cannot allocate an aligned buffer" }
        defer { free(buffer) }
        var pattern = UInt64(getpid()) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(bitPattern: Int64(clock()))
        let words = buffer.bindMemory(to: UInt64.self, capacity: size / 8)
        for index in 0..<(size / 8) {
            pattern = pattern &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            words[index] = pattern
        }
        let fd = open(path, O_RDWR | O_CREAT | DeviceReader.directIO | O_DSYNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return "open \(path): \(String(cString: strerror(errno)))" }
        defer {
            close(fd)
            unlink(path)
        }
        guard pwrite(fd, buffer, size, 0) == size else { return "write: \(String(cString: strerror(errno)))" }
        guard fsync(fd) == 0 else { return "fsync: \(String(cString: strerror(errno)))" }
        var back: UnsafeMutableRawPointer?
        guard posix_memalign(&back, size, size) == 0, let readBack = back else { return "cannot allocate an aligned buffer" }
        defer { free(readBack) }
        guard pread(fd, readBack, size, 0) == size else { return "read: \(String(cString: strerror(errno)))" }
        guard memcmp(buffer, readBack, size) == 0 else { return "read back differs from what was written" }
        return nil
    }
}

/// Where a probe thread leaves its result.
private final class Outcome: Sendable {
    private let value = Mutex<String??>(nil)
    /// nil while running; then `.some(nil)` for success or `.some(problem)`.
    var result: String?? { value.withLock { $0 } }
    func finish(_ problem: String?) { value.withLock { $0 = .some(problem) } }
}
