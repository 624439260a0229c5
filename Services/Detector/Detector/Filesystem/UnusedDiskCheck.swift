import BynarProcess
#if canImport(Glibc)
import BynarDisks
import Glibc
#endif

/// A read-only filesystem check (`e2fsck -n -f`, `xfs_repair -n`) for a disk that no cluster
/// is using: nothing of it is mounted, nothing holds it (sysfs `holders/` empty for the
/// disk and its partitions), and an exclusive open succeeds (a mounted filesystem, a Ceph
/// OSD or md/dm member holds it exclusively and makes that fail). Never on a disk in use:
/// the detector only looks, and a check on a busy filesystem would report errors that are
/// not there. The filesystem type comes from its superblock magic, not from udev.
public enum UnusedDiskCheck {
    public typealias Reason = DiskHealthMachine.Reason

    /// Why `devicePath` must not be checked now, or nil when it may.
    public static func busyReason(devicePath: String, kernelName: String, partitions: [String], mounts: [MountedFilesystem], sysBlock: String = "/sys/block") -> String? {
        let paths = Set([devicePath] + partitions)
        if let mount = mounts.first(where: { paths.contains($0.source) }) { return "\(mount.source) is mounted on \(mount.mountpoint)" }
        for name in [kernelName] + partitions.map({ String($0.split(separator: "/").last ?? "") }) {
            let holders = name == kernelName ? "\(sysBlock)/\(name)/holders" : "\(sysBlock)/\(kernelName)/\(name)/holders"
            if !listDirectory(holders).isEmpty { return "\(name) is held by \(listDirectory(holders).joined(separator: ", "))" }
        }
        let fd = open(devicePath, O_RDONLY | O_EXCL | O_CLOEXEC)
        guard fd >= 0 else { return "\(devicePath) cannot be opened exclusively: \(String(cString: strerror(errno)))" }
        close(fd)
        return nil
    }

    /// The filesystem on `devicePath` by its superblock magic: "ext" (ext2/3/4), "xfs", or nil.
    public static func filesystem(on devicePath: String) -> String? {
        let fd = open(devicePath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var block = [UInt8](repeating: 0, count: 2048)
        guard block.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 2048, 0) }) == 2048 else { return nil }
        if block[0...3] == [0x58, 0x46, 0x53, 0x42] { return "xfs" }  // "XFSB"
        if block[1080] == 0x53 && block[1081] == 0xEF { return "ext" }  // 0xEF53, little endian
        return nil
    }

    /// Checks the filesystem on an unused device read-only; nil when it is clean or there
    /// is no filesystem we know, a reason when the checker reports errors.
    public static func check(devicePath: String, timeout: Duration) -> Reason? {
        guard let type = filesystem(on: devicePath) else { return nil }
        let (tool, arguments) = type == "xfs"
            ? ("/sbin/xfs_repair", ["-n", devicePath])
            : ("/sbin/e2fsck", ["-n", "-f", devicePath])
        do {
            let run = try Tool.run([tool] + arguments, timeout: timeout, mergeStderr: true)
            guard let code = run.exitCode else { return nil }
            let output = run.output
            // e2fsck -n: 0 clean, 4 errors left uncorrected, 8 operational error.
            // xfs_repair -n: 0 clean, 1 corruption found.
            let corrupt = type == "xfs" ? code == 1 : (code & 4) != 0
            guard corrupt else { return nil }
            let summary = String(decoding: output.suffix(400), as: UTF8.self).split(separator: "\n").suffix(2).joined(separator: " / ")
            return Reason(rule: "fs.fsck_errors", severity: .failing, detail: "\(tool) -n on \(devicePath) (unused) found errors (exit \(code)): \(summary)")
        } catch {
            return nil  // the tool is missing or timed out: no verdict, not a failure
        }
    }
}
