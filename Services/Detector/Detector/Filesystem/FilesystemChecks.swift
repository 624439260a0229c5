import BynarDisks
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

/// Writes, reads back and fsyncs one 4 KiB block with O_DIRECT in a probe file on a mounted
/// filesystem, with a timeout. A probe that hangs (a dying disk can block I/O for minutes)
/// is reported as a timeout and no second probe is started on that mount until it returns.
public final class WriteProbe: Sendable {
    private let inFlight = Mutex<Set<String>>([])
    /// Name of the probe file created (and removed) in the filesystem's root; the pid keeps
    /// two probing processes from clobbering each other's block.
    public static var fileName: String { ".bynar-probe-\(getpid())" }

    public init() {}

    /// Nil when the probe passed; a reason when it failed or did not finish in `timeout`.
    public func run(mountpoint: String, timeout: Duration) async -> DiskHealthMachine.Reason? {
        let started = inFlight.withLock { $0.insert(mountpoint).inserted }
        guard started else {
            return .init(rule: "fs.probe_timeout", severity: .suspect, detail: "write probe on \(mountpoint) still has not returned")
        }
        let outcome = Outcome()
        let path = mountpoint.hasSuffix("/") ? mountpoint + Self.fileName : mountpoint + "/" + Self.fileName
        let context = Unmanaged.passRetained(ProbeJob(path: path, outcome: outcome, done: { [self] in
            _ = self.inFlight.withLock { $0.remove(mountpoint) }
        })).toOpaque()
        var thread = pthread_t()
        guard pthread_create(&thread, nil, { context in
            let job = Unmanaged<ProbeJob>.fromOpaque(context!).takeRetainedValue()
            job.outcome.finish(WriteProbe.probe(path: job.path))
            job.done()
            return nil
        }, context) == 0 else {
            Unmanaged<ProbeJob>.fromOpaque(context).release()
            _ = inFlight.withLock { $0.remove(mountpoint) }
            return nil
        }
        pthread_detach(thread)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let result = outcome.result {
                return result.map { .init(rule: "fs.probe_failed", severity: .suspect, detail: "write probe on \(mountpoint): \($0)") }
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return .init(rule: "fs.probe_timeout", severity: .suspect, detail: "write probe on \(mountpoint) took longer than \(timeout)")
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
        let fd = open(path, O_RDWR | O_CREAT | directIO | O_DSYNC | O_CLOEXEC, 0o600)
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

/// O_DIRECT, which Glibc's module does not export (it sits behind _GNU_SOURCE).
#if arch(x86_64)
private let directIO: Int32 = 0o40000
#elseif arch(arm64)
private let directIO: Int32 = 0o200000
#endif

/// Where a probe thread leaves its result.
private final class Outcome: Sendable {
    private let value = Mutex<String??>(nil)
    /// nil while running; then `.some(nil)` for success or `.some(problem)`.
    var result: String?? { value.withLock { $0 } }
    func finish(_ problem: String?) { value.withLock { $0 = .some(problem) } }
}

private final class ProbeJob: Sendable {
    let path: String
    let outcome: Outcome
    let done: @Sendable () -> Void
    init(path: String, outcome: Outcome, done: @escaping @Sendable () -> Void) {
        self.path = path
        self.outcome = outcome
        self.done = done
    }
}
