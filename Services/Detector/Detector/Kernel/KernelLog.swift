import BynarProcess
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A disk error the kernel logged.
public struct KernelDiskError: Sendable, Equatable {
    /// Kernel name of the device the line names (a partition or a whole disk: see
    /// ``KernelLog/wholeDisk(of:sysBlock:)``).
    public var device: String
    /// What kind of error: `io_error`, `medium_error`, `buffer_io_error`, `fs_error`, ...
    public var kind: String
    /// Sector, when the line gives one.
    public var sector: UInt64?
    /// The line as logged.
    public var line: String
    /// When the kernel logged it, microseconds since boot (the kmsg record's timestamp).
    public var kernelMicros: UInt64
}

/// Parses `/dev/kmsg` records into disk errors.
///
/// Formats seen on Linux 6.18 (see Tools/faultfs/README.md):
/// `I/O error, dev loop0, sector 16600 op 0x0:(READ) ...` (and `critical medium error`,
/// `device offline error`, `timeout error`, ... in the same form),
/// `Buffer I/O error on dev loop0, logical block 2075, async page read`,
/// `Buffer I/O error on device loop0, logical block 2385`,
/// `EXT4-fs error (device loop0): ...`, `XFS (loop0): log I/O error -5`,
/// `XFS (loop0): Filesystem has been shut down ...`, `loop0: writeback error on inode ...`,
/// `Aborting journal on device loop0-8.`
public enum KernelLogParser {
    /// The disk error in one kmsg record (`prio,seq,usec,flags;text` plus continuation
    /// lines), or nil when the record is about something else.
    public static func parse(record: String) -> KernelDiskError? {
        guard let semicolon = record.firstIndex(of: ";") else { return nil }
        let header = record[..<semicolon].split(separator: ",")
        let micros = header.count >= 3 ? UInt64(header[2]) ?? 0 : 0
        let text = String(record[record.index(after: semicolon)...].prefix { $0 != "\n" })
        return parse(line: text, kernelMicros: micros)
    }

    /// The disk error in one log line's text, or nil.
    public static func parse(line: String, kernelMicros: UInt64 = 0) -> KernelDiskError? {
        func error(_ device: Substring, _ kind: String, sector: UInt64? = nil) -> KernelDiskError? {
            let name = String(device.prefix { $0 != "," && $0 != ")" && $0 != ":" && $0 != " " })
            guard !name.isEmpty else { return nil }
            return KernelDiskError(device: name, kind: kind, sector: sector, line: line, kernelMicros: kernelMicros)
        }
        if let range = line.firstRange(of: " error, dev ") {
            // "<kind> error, dev X, sector N op ..."
            let kind = line[..<range.lowerBound].lowercased().replacingOccurrences(" ", "_")
            let rest = line[range.upperBound...]
            let sector = rest.firstRange(of: "sector ").flatMap { UInt64(rest[$0.upperBound...].prefix { $0.isNumber }) }
            return error(rest, kind == "i/o" ? "io_error" : kind + "_error", sector: sector)
        }
        for prefix in ["Buffer I/O error on dev ", "Buffer I/O error on device "] where line.hasPrefix(prefix) {
            return error(line.dropFirst(prefix.count), "buffer_io_error")
        }
        if let range = line.firstRange(of: "EXT4-fs error (device ") {
            return error(line[range.upperBound...], "ext4_error")
        }
        if line.hasPrefix("XFS ("), line.contains("I/O error") || line.contains("shut down") || line.contains("metadata I/O error") {
            return error(line.dropFirst("XFS (".count), line.contains("shut down") ? "xfs_shutdown" : "xfs_io_error")
        }
        if let range = line.firstRange(of: ": writeback error on inode") {
            return error(line[..<range.lowerBound], "writeback_error")
        }
        if line.hasPrefix("Aborting journal on device ") {
            // "loop0-8." names the journal device and inode.
            let device = line.dropFirst("Aborting journal on device ".count).prefix { $0 != "-" && $0 != "." }
            return error(device, "journal_aborted")
        }
        return nil
    }
}

/// Follows `/dev/kmsg` from its current end and yields disk errors as they are logged.
///
/// A dedicated thread poll()s the device (waking every 200 ms to notice ``stop()``), so an
/// error reaches the detector as soon as the kernel logs it, not at the next poll.
public final class KernelLog: Sendable {
    /// Errors as they come; ends after ``stop()``.
    public let errors: AsyncStream<KernelDiskError>
    private let continuation: AsyncStream<KernelDiskError>.Continuation
    private let state = Mutex<(stopping: Bool, dropped: Int)>((false, 0))
    private let fd: Int32

    /// Opens `/dev/kmsg` (or `path`) and positions after the last record.
    public init(path: String = "/dev/kmsg", buffer: Int = 1024) throws {
        fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw KernelLogError(path: path, errno: errno) }
        lseek(fd, 0, SEEK_END)
        (errors, continuation) = AsyncStream.makeStream(of: KernelDiskError.self, bufferingPolicy: .bufferingNewest(buffer))
    }

    /// Starts the reading thread.
    public func start() {
        do {
            try startThread { [self] in readLoop() }
        } catch {
            preconditionFailure("cannot start the kernel log thread: \(error)")
        }
    }

    /// Records lost because nobody consumed them fast enough.
    public var dropped: Int { state.withLock { $0.dropped } }

    /// Ends the thread and the stream.
    public func stop() {
        state.withLock { $0.stopping = true }
    }

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 8192)
        while !state.withLock({ $0.stopping }) {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 200) > 0 else { continue }
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 {
                    if errno == EPIPE { continue }  // records were overwritten before we read them
                    break  // EAGAIN: drained
                }
                if count == 0 { break }
                let record = String(decoding: buffer[0..<count], as: UTF8.self)
                guard let error = KernelLogParser.parse(record: record) else { continue }
                if case .dropped = continuation.yield(error) {
                    state.withLock { $0.dropped += 1 }
                }
            }
        }
        close(fd)
        continuation.finish()
    }

    /// Now on the kernel log's clock (microseconds of CLOCK_MONOTONIC, which `/dev/kmsg`
    /// timestamps use).
    public static func nowMicros() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }

    /// The whole disk a kernel device name belongs to: `sdb1` -> `sdb`, `nvme0n1p2` ->
    /// `nvme0n1`, `loop0` -> `loop0`; read from sysfs (`<sysBlock>/<name>/partition` marks
    /// a partition, whose parent directory is its disk).
    public static func wholeDisk(of name: String, sysClassBlock: String = "/sys/class/block") -> String {
        guard access("\(sysClassBlock)/\(name)/partition", F_OK) == 0 else { return name }
        var buffer = [CChar](repeating: 0, count: 4096)
        guard let resolved = realpath("\(sysClassBlock)/\(name)", &buffer) else { return name }
        let path = String(cString: resolved)
        let parts = path.split(separator: "/")
        return parts.count >= 2 ? String(parts[parts.count - 2]) : name
    }
}

/// `/dev/kmsg` could not be opened.
public struct KernelLogError: Error, CustomStringConvertible {
    public var path: String
    public var errno: Int32
    public var description: String { "cannot open \(path): \(String(cString: strerror(errno)))" }
}

extension String {
    fileprivate func replacingOccurrences(_ target: Character, _ replacement: Character) -> String {
        String(map { $0 == target ? replacement : $0 })
    }
}

extension Substring {
    fileprivate func lowercased() -> String { String(self).lowercased() }
}
