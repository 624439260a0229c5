#if canImport(Glibc)
public import Glibc
#endif

/// Replacing a file so that a reader (or a crash) sees the old content or the new, never
/// half of either: a unique temporary file next to it, written, fsynced, given `mode`,
/// renamed over the file, and the directory fsynced. The disk-manager's fstab and the CLI's
/// enrolment files (host lists, bundles) are written this way.
public enum AtomicFile {
    /// Why a file could not be replaced; the old content is still there.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t) throws(Failure) {
        // A unique name: two writers never share (and truncate) one temporary file.
        var template = Array((path + ".bynar-new.XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        let temp = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard fd >= 0 else { throw Failure(description: "cannot write \(temp): \(String(cString: strerror(errno)))") }
        fchmod(fd, mode)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                let reason = String(cString: strerror(errno))
                close(fd)
                unlink(temp)
                throw Failure(description: "cannot write \(temp): \(reason)")
            }
            offset += written
        }
        let synced = fsync(fd) == 0
        close(fd)
        guard synced, rename(temp, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temp)
            throw Failure(description: "cannot replace \(path): \(reason)")
        }
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let dirfd = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirfd >= 0 { fsync(dirfd); close(dirfd) }
    }
}
