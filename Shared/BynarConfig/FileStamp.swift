#if canImport(Glibc)
import Glibc
#endif

/// Identifies a version of a file without reading it: inode, size, modification and change
/// time (a file replaced by `mv` gets a new inode; one edited in place a new time).
struct FileStamp: Equatable, Sendable {
    var inode: UInt64
    var size: Int64
    var modified: Int64
    var changed: Int64

    /// The stamp of the file at `path`; nil when it cannot be stat'ed (missing).
    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        changed = Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec)
    }
}
