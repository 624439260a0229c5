#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The process groups of tools a service started and has not reaped yet, one small file
/// each in a directory of its own, so that the next start of a service that was killed
/// (kill -9, OOM, power) kills what it left behind before doing anything else: an orphaned
/// mkfs or ceph-volume still running would race the job the restart resumes.
///
/// A file holds the group leader's start time (field 22 of `/proc/<pid>/stat`), so a pid
/// the kernel has since given to another process is never killed, and the recording
/// process's pid and start time, so a tool whose service is still alive is never killed.
/// Off until
/// ``adopt(directory:)`` is called (services call it at start; tests and the CLI do not).
public enum ToolGroups {
    private static let directory = Mutex<String?>(nil)

    /// Starts recording in `path` (created if missing) after killing, group by group, every
    /// tool a previous run of this service recorded and left running. Returns what was
    /// killed ("pid 123 (mkfs.xfs)"), for the log.
    public static func adopt(directory path: String) -> [String] {
        mkdir(path, 0o700)
        var killed: [String] = []
        for name in listDirectory(path) {
            let file = "\(path)/\(name)"
            defer { unlink(file) }
            guard let pid = pid_t(name), pid > 1, let recorded = contents(file) else { continue }
            let fields = String(decoding: recorded, as: UTF8.self).split(separator: " ").map(String.init)
            guard fields.count == 3, let start = startTime(of: pid), fields[0] == start else { continue }
            if let owner = pid_t(fields[1]), startTime(of: owner) == fields[2] {
                continue  // its service is alive (another instance, or this one): not a leftover
            }
            let comm = contents("/proc/\(pid)/comm").map { String(decoding: $0.filter { $0 != 10 }, as: UTF8.self) } ?? "?"
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
            // Not our child any more (re-parented): wait for /proc to say it is gone.
            for _ in 0..<200 where startTime(of: pid) == start { usleep(10_000) }
            killed.append("pid \(pid) (\(comm))")
        }
        directory.withLock { $0 = path }
        return killed
    }

    /// A tool was started as the leader of process group `pid`.
    static func record(_ pid: pid_t) {
        guard let path = directory.withLock({ $0 }), let start = startTime(of: pid), let own = startTime(of: getpid()) else { return }
        let record = "\(start) \(getpid()) \(own)"
        let fd = open("\(path)/\(pid)", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = Array(record.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// The tool `pid` was reaped.
    static func forget(_ pid: pid_t) {
        guard let path = directory.withLock({ $0 }) else { return }
        unlink("\(path)/\(pid)")
    }

    /// Field 22 of /proc/<pid>/stat (clock ticks after boot), or nil when there is no such process.
    static func startTime(of pid: pid_t) -> String? {
        guard let bytes = contents("/proc/\(pid)/stat") else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        // The command name (field 2) is in parentheses and may hold spaces: count after it.
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); field 22 is fields[19].
        return fields.count > 19 ? String(fields[19]) : nil
    }

    /// A small file's bytes, or nil.
    private static func contents(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return count >= 0 ? Array(buffer[0..<count]) : nil
    }
}

/// The entry names of a directory ("." and ".." left out); empty if it cannot be read.
package func listDirectory(_ path: String) -> [String] {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}
