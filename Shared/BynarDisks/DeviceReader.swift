#if canImport(Glibc)
import Glibc
#endif

/// Reads a block device directly (O_DIRECT, read-only), so the answer comes from the disk
/// and not from the page cache: the detector's read probe and the Ceph label reader use it.
/// Opening read-only takes no lock and changes nothing, so it is safe on a disk that a
/// running OSD or a mounted filesystem holds.
public enum DeviceReader {
    /// What one read gave.
    public enum Outcome: Sendable, Equatable {
        case bytes([UInt8])
        /// The device answered with an error (EIO for a dead sector or disk, ENXIO/ENODEV
        /// for a device that went away).
        case failed(errno: Int32)

        public var errnoName: String {
            guard case .failed(let code) = self else { return "ok" }
            return String(cString: strerror(code))
        }
    }

    /// O_DIRECT, which Glibc's module does not export (it sits behind _GNU_SOURCE).
    #if arch(x86_64)
    public static let directIO: Int32 = 0o40000
    #elseif arch(arm64)
    public static let directIO: Int32 = 0o200000
    #endif

    /// The alignment O_DIRECT needs on every device we meet (4 KiB logical blocks at most).
    public static let alignment = 4096

    /// `length` bytes (rounded up to ``alignment``) at `offset` (rounded down).
    public static func read(_ path: String, offset: UInt64, length: Int = 4096) -> Outcome {
        let fd = open(path, O_RDONLY | directIO | O_CLOEXEC)
        guard fd >= 0 else { return .failed(errno: errno) }
        defer { close(fd) }
        let aligned = (length + alignment - 1) / alignment * alignment
        let start = offset / UInt64(alignment) * UInt64(alignment)
        guard let buffer = UnsafeMutableRawPointer(aligned_alloc(alignment, aligned)) else { return .failed(errno: ENOMEM) }
        defer { free(buffer) }
        while true {
            let count = pread(fd, buffer, aligned, off_t(start))
            if count < 0 {
                if errno == EINTR { continue }
                return .failed(errno: errno)
            }
            return .bytes(Array(UnsafeRawBufferPointer(start: buffer, count: min(count, length))))
        }
    }

    /// The device's size in bytes, or nil when it cannot be opened.
    public static func size(_ path: String) -> UInt64? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let end = lseek(fd, 0, SEEK_END)
        return end < 0 ? nil : UInt64(end)
    }

    /// Where the read probe looks: the first block (labels live there), a third and two
    /// thirds in, and the last MiB; fewer for a tiny device.
    public static func probeOffsets(size: UInt64) -> [UInt64] {
        let block = UInt64(alignment)
        guard size >= block else { return [] }
        let last = size >= 1 << 21 ? size - (1 << 20) : size - block
        var offsets: [UInt64] = []
        for offset in [0, size / 3, size / 3 * 2, last] {
            let aligned = offset / block * block
            if aligned + block <= size && !offsets.contains(aligned) { offsets.append(aligned) }
        }
        return offsets
    }
}
