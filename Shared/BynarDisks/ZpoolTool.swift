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
    public static func find(_ disk: BlockDevice, in status: ZpoolStatus) -> (pool: ZFSPool, leaf: ZFSVdev)? {
        let identity = disk.identity
        var names = Set([identity.devPath] + identity.partitions.map(\.devPath))
        for link in identity.byID { names.insert(link.hasPrefix("/") ? link : "/dev/disk/by-id/\(link)") }
        if !identity.byPath.isEmpty { names.insert(identity.byPath.hasPrefix("/") ? identity.byPath : "/dev/disk/by-path/\(identity.byPath)") }
        names.remove("")
        for pool in status.pools {
            for (leaf, _) in pool.leaves {
                let candidates = candidatePaths(leaf.name)
                if candidates.contains(where: names.contains) { return (pool, leaf) }
                if !disk.absent, candidates.contains(where: { resolve($0).map(names.contains) ?? false }) { return (pool, leaf) }
            }
        }
        return nil
    }

    /// Where zpool may have found a vdev it prints as `name`.
    static func candidatePaths(_ name: String) -> [String] {
        name.hasPrefix("/") ? [name] : ["/dev/\(name)"] + ["by-id", "by-path", "by-vdev", "by-partuuid"].map { "/dev/disk/\($0)/\(name)" }
    }

    /// The full path to give zpool for a vdev: zfs-fuse matches `offline`/`replace`
    /// arguments against the path it stored, never a short name.
    public static func fullPath(_ name: String) -> String {
        let candidates = candidatePaths(name)
        return candidates.first { access($0, F_OK) == 0 } ?? candidates[0]
    }

    static func resolve(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
