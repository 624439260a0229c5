import BynarDisks
import BynarProcess
#if canImport(Glibc)
import Glibc
#endif

/// Checks the backends share before they write to a disk.
enum DiskChecks {
    /// Why `disk` is not blank (partitions, a mounted filesystem, a filesystem or RAID/LVM
    /// signature `blkid -p` finds on the device itself), or nil when it is. Never formats
    /// over data: a disk that is not blank is refused, not wiped. `probe` is asked only when
    /// nothing else already says the disk is in use: a fresh `blkid -p` unless List passes
    /// its kept answers (``SignatureCache``); whatever formats passes none.
    static func whyNotBlank(_ disk: BlockDevice, probe: (BlockDevice) -> SignatureProbe = { SignatureProbe.run($0.identity.devPath) }) -> String? {
        let identity = disk.identity
        let mounted = identity.partitions.flatMap(\.mountpoints)
        if !mounted.isEmpty { return "\(identity.devPath) is mounted at \(mounted.joined(separator: ", "))" }
        let partitions = identity.partitions.filter { $0.devPath != identity.devPath }
        if !partitions.isEmpty { return "\(identity.devPath) has partitions (\(partitions.map(\.devPath).joined(separator: ", ")))" }
        if case let holders = holders(of: disk), !holders.isEmpty {
            return "\(identity.devPath) is held by \(holders.joined(separator: ", "))"
        }
        switch probe(disk) {
        case .none: return nil
        case .found(let fields):
            let found = ["TYPE", "PTTYPE"].compactMap { name in fields[name].map { "\(name)=\($0)" } }.joined(separator: " ")
            return "\(identity.devPath) carries data (\(found.isEmpty ? "a signature" : found)); not formatting over it"
        case .failed(let why):
            return "cannot probe \(identity.devPath) for signatures: \(why)"
        }
    }

    /// Kernel holders of the disk (device-mapper, md) from sysfs.
    static func holders(of disk: BlockDevice) -> [String] {
        listDirectory(disk.sysPath + "/holders")
    }

    /// Zeroes the first and last MiB of `device` (old labels must not confuse the next
    /// user of the disk) and flushes.
    static func wipeLabels(_ device: String) throws {
        let fd = open(device, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BackendRefusal("cannot open \(device): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        guard size >= 0 else { throw BackendRefusal("cannot size \(device): \(String(cString: strerror(errno)))") }
        let chunk = [UInt8](repeating: 0, count: 1 << 20)
        for offset in Set([0, max(0, Int(size) - chunk.count)]) {
            let length = min(chunk.count, Int(size) - offset)
            guard length > 0 else { continue }
            let written = chunk.withUnsafeBytes { pwrite(fd, $0.baseAddress, length, off_t(offset)) }
            guard written == length else { throw BackendRefusal("cannot write \(device) at \(offset): \(String(cString: strerror(errno)))") }
        }
        guard fsync(fd) == 0 else { throw BackendRefusal("cannot flush \(device): \(String(cString: strerror(errno)))") }
    }
}
