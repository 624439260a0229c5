import BynarProcess
import BynarProto
#if canImport(Glibc)
import Glibc
#endif

/// Asks `zpool` (zfs-fuse's or OpenZFS's) about this host's pools, through ``Tool`` (its own
/// process group, killed at the deadline). Read-only; shared by the detector and the
/// disk-manager's ZFS backend.
public struct ZpoolTool: Sendable {
    /// `zpool`, a path or a name looked up on PATH.
    public var path: String
    public var timeout: Duration

    public init(path: String = "zpool", timeout: Duration = .seconds(60)) {
        self.path = path
        self.timeout = timeout
    }

    /// `zpool status` (every pool, or only `pool`).
    public func status(_ pool: String? = nil) throws -> ZpoolStatus {
        ZpoolStatus(parsing: try output([path, "status"] + (pool.map { [$0] } ?? [])))
    }

    /// `zpool list -H -o name,size,allocated,free,capacity,health`.
    public func list() throws -> [ZpoolListEntry] {
        ZpoolListEntry.parse(try output([path, "list", "-H", "-o", ZpoolListEntry.columns]))
    }

    /// Runs a zpool subcommand that changes something; its output when it exits 0.
    /// - Throws: ``ZpoolFailure`` with the command's words otherwise.
    @discardableResult
    public func change(_ arguments: [String], timeout: Duration? = nil) throws -> String {
        try output([path] + arguments, timeout: timeout)
    }

    func output(_ command: [String], timeout: Duration? = nil) throws -> String {
        let run: Tool.Run
        do {
            run = try Tool.run(command, timeout: timeout ?? self.timeout, mergeStderr: true)
        } catch {
            throw ZpoolFailure(command: command, exitCode: nil, output: "\(error)")
        }
        guard run.exitCode == 0 else { throw ZpoolFailure(command: command, exitCode: run.exitCode, output: run.text.trimmed) }
        return run.text
    }
}

/// A zpool command that did not exit 0 (or could not be run).
public struct ZpoolFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public var command: [String]
    public var exitCode: Int32?
    public var output: String

    public var description: String {
        "\(command.joined(separator: " ")): \(exitCode.map { "exit \($0)" } ?? "not run")\(output.isEmpty ? "" : ": \(output.suffix(1000))")"
    }
}

extension ZpoolStatus {
    /// The pool and leaf that are `disk`, by its names (/dev path, partitions, by-id, by-path)
    /// and, for a present disk, by where the vdev's path leads.
    ///
    /// A leaf that is not ONLINE is not `disk` when `disk` carries no ZFS label that could be
    /// read (``ZFSLabel``): a blank disk put in a failed vdev's slot has that vdev's name, but
    /// is not it (it is its replacement). A disk whose labels cannot be read (a failing one)
    /// proves nothing and still matches; an ONLINE leaf is the device ZFS has open.
    public static func find(_ disk: BlockDevice, in status: ZpoolStatus, labelled: (BlockDevice) -> Bool? = ZFSLabel.present(on:)) -> (pool: ZFSPool, leaf: ZFSVdev)? {
        let identity = disk.identity
        var names = Set([identity.devPath] + identity.partitions.map(\.devPath))
        for link in identity.byID { names.insert(link.hasPrefix("/") ? link : "/dev/disk/by-id/\(link)") }
        if !identity.byPath.isEmpty { names.insert(identity.byPath.hasPrefix("/") ? identity.byPath : "/dev/disk/by-path/\(identity.byPath)") }
        names.remove("")
        for pool in status.pools {
            for (leaf, _) in pool.leaves {
                var candidates = candidatePaths(leaf.name)
                if let former = leaf.formerPath { candidates += [former, wholeDisk(former)] }
                let named = candidates.contains(where: names.contains) || (!disk.absent && candidates.contains { resolve($0).map(names.contains) ?? false })
                guard named else { continue }
                if leaf.state != "ONLINE", !disk.absent, labelled(disk) == false { continue }
                return (pool, leaf)
            }
        }
        return nil
    }

    /// Where zpool may have found a vdev it prints as `name`.
    static func candidatePaths(_ name: String) -> [String] {
        name.hasPrefix("/") ? [name] : ["/dev/\(name)"] + ["by-id", "by-path", "by-vdev", "by-partuuid"].map { "/dev/disk/\($0)/\(name)" }
    }

    /// The disk a `/dev/disk/by-*` link to its first partition names (zpool gives a whole
    /// disk a partition and notes `ata-X-part1` where it was); other paths as they are.
    public static func wholeDisk(_ path: String) -> String {
        guard path.hasPrefix("/dev/disk/"), let dash = path.range(of: "-part", options: .backwards),
              !path[dash.upperBound...].isEmpty, path[dash.upperBound...].allSatisfy(\.isNumber) else { return path }
        return String(path[..<dash.lowerBound])
    }

    /// A vdev zpool names by its GUID (one it could not find at import; see
    /// ``ZFSVdev/formerPath``): `offline` and `replace` take the GUID itself.
    public static func isGUID(_ name: String) -> Bool { !name.isEmpty && name.allSatisfy { $0.isASCII && $0.isNumber } }

    /// The full path to give zpool for a vdev: zfs-fuse matches `offline`/`replace`
    /// arguments against the path it stored, never a short name; a GUID as it is.
    public static func fullPath(_ name: String) -> String {
        if isGUID(name) { return name }
        let candidates = candidatePaths(name)
        return candidates.first { access($0, F_OK) == 0 } ?? candidates[0]
    }

    static func resolve(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// Whether a disk carries a ZFS label: an uberblock (magic 0x00bab10c, either byte order) in
/// the uberblock ring of label L0 or L1 (the first 512 KiB; each label is 256 KiB, its ring
/// the second half), on the disk itself or one of its partitions (OpenZFS labels the first
/// partition of a whole disk it was given). Read with O_DIRECT, so a disk swapped under the
/// same name is read, not the page cache.
public enum ZFSLabel {
    /// true: a label found; false: every place read and none there; nil: none found and some
    /// place could not be read (a failing disk proves nothing).
    public static func present(on disk: BlockDevice) -> Bool? {
        var unreadable = false
        for path in [disk.identity.devPath] + disk.identity.partitions.map(\.devPath) where !path.isEmpty {
            switch present(atPath: path) {
            case true?: return true
            case nil: unreadable = true
            case false?: continue
            }
        }
        return unreadable ? nil : false
    }

    static let labelBytes = 256 * 1024
    static let magic: [UInt8] = [0x0c, 0xb1, 0xba, 0x00, 0x00, 0x00, 0x00, 0x00]

    /// The same for one device or file; nil when it cannot be opened or read.
    public static func present(atPath path: String) -> Bool? {
        switch DeviceReader.read(path, offset: 0, length: 2 * labelBytes) {
        case .bytes(let bytes):
            return bytes.withUnsafeBytes(found)
        case .failed(errno: EINVAL):
            // A file on a filesystem without O_DIRECT (the tests' images): read it plainly.
            guard let file = fopen(path, "rb") else { return nil }
            defer { fclose(file) }
            var bytes = [UInt8](repeating: 0, count: 2 * labelBytes)
            let count = fread(&bytes, 1, bytes.count, file)
            guard ferror(file) == 0 else { return nil }
            return bytes.prefix(count).withUnsafeBytes(found)
        case .failed:
            return nil
        }
    }

    /// Whether `bytes` (a disk's first 512 KiB, or less of a small one) hold an uberblock. Pure.
    static func found(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let reversed = Array(magic.reversed())
        for label in [0, labelBytes] {
            var offset = label + labelBytes / 2
            while offset + 8 <= min(bytes.count, label + labelBytes) {
                let word = Array(bytes[offset..<(offset + 8)])
                if word == magic || word == reversed { return true }
                offset += 1024
            }
        }
        return false
    }
}
