public import BynarProto
import BynarConfig
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// What a deploy run is asked to do: for each host, which of its disks to turn into OSDs.
///
/// Built from a hosts file plus one device pattern (``init(hostsFileText:devices:)``) or from
/// an inventory file (``init(inventoryText:)``). Only BLANK disks that are neither system
/// disks nor excluded are ever chosen; a pattern is a choice among those.
public struct DeployPlan: Sendable, Equatable {
    /// One host and the device patterns that choose its disks.
    public struct Host: Sendable, Equatable {
        public var name: String
        public var patterns: [DevicePattern]
        public init(name: String, patterns: [DevicePattern]) {
            self.name = name
            self.patterns = patterns
        }
    }

    /// Hosts in the order given, each once.
    public private(set) var hosts: [Host]

    /// A problem in a hosts or inventory file, with its line.
    public struct FileError: Error, Equatable, Sendable, CustomStringConvertible {
        public var source: String
        /// 1-based; 0 for the whole file.
        public var line: Int
        public var problem: String
        public init(source: String, line: Int, problem: String) {
            self.source = source
            self.line = line
            self.problem = problem
        }
        public var description: String { line > 0 ? "\(source) line \(line): \(problem)" : "\(source): \(problem)" }
    }

    /// Every host in `hostsFileText` (one per line; `#` starts a comment; blank lines
    /// ignored) with the one device `pattern`.
    public init(hostsFileText: String, devices pattern: String, source: String = "hosts file") throws(FileError) {
        let devicePattern = try DevicePattern(pattern, source: "--devices")
        var hosts: [Host] = []
        var seen: [String: Int] = [:]
        for (number, fields) in Self.lines(hostsFileText) {
            guard fields.count == 1 else {
                throw FileError(source: source, line: number, problem: "expected one host name, found \(fields.count) fields")
            }
            try Self.checkHost(fields[0], source: source, line: number)
            if let first = seen[fields[0]] {
                throw FileError(source: source, line: number, problem: "host \"\(fields[0])\" already on line \(first)")
            }
            seen[fields[0]] = number
            hosts.append(Host(name: fields[0], patterns: [devicePattern]))
        }
        guard !hosts.isEmpty else { throw FileError(source: source, line: 0, problem: "no hosts") }
        self.hosts = hosts
    }

    /// Every line of `inventoryText` is `HOST DEVICE [DEVICE...]`; a device is a dev path,
    /// by-path name, disk key, serial or WWN, or a shell glob over them. A host may appear
    /// on several lines; its devices add up.
    public init(inventoryText: String, source: String = "inventory file") throws(FileError) {
        var hosts: [Host] = []
        var index: [String: Int] = [:]
        for (number, fields) in Self.lines(inventoryText) {
            guard fields.count >= 2 else {
                throw FileError(source: source, line: number, problem: "expected \"HOST DEVICE [DEVICE...]\", found \(fields.count) field")
            }
            try Self.checkHost(fields[0], source: source, line: number)
            var patterns: [DevicePattern] = []
            for text in fields.dropFirst() {
                do { patterns.append(try DevicePattern(text, source: source)) } catch {
                    throw FileError(source: source, line: number, problem: error.problem)
                }
            }
            if let at = index[fields[0]] {
                hosts[at].patterns += patterns
            } else {
                index[fields[0]] = hosts.count
                hosts.append(Host(name: fields[0], patterns: patterns))
            }
        }
        guard !hosts.isEmpty else { throw FileError(source: source, line: 0, problem: "no hosts") }
        self.hosts = hosts
    }

    /// A plan from hosts and patterns given directly.
    public init(hosts: [Host]) {
        self.hosts = hosts
    }

    /// The disks of `disks` to deploy on: BLANK, not a system disk, not excluded, and
    /// matched by one of `patterns`.
    public static func candidates(_ disks: [Bynar_V1_ManagedDisk], patterns: [DevicePattern]) -> [Bynar_V1_ManagedDisk] {
        disks.filter { disk in
            disk.status == .blank && !disk.systemDisk && !disk.excluded && patterns.contains { $0.matches(disk.disk) }
        }
    }

    /// Literal patterns (no glob characters) that name none of `candidates`, with why:
    /// the disk they name is not deployable, or no disk has that name. A glob that matches
    /// nothing is not a problem (it chooses among what is there).
    public static func unmatchedLiterals(_ disks: [Bynar_V1_ManagedDisk], patterns: [DevicePattern]) -> [(pattern: String, disk: Bynar_V1_ManagedDisk?, reason: String)] {
        let chosen = candidates(disks, patterns: patterns)
        var result: [(String, Bynar_V1_ManagedDisk?, String)] = []
        for pattern in patterns where !pattern.isGlob && !chosen.contains(where: { pattern.matches($0.disk) }) {
            if let disk = disks.first(where: { pattern.matches($0.disk) }) {
                result.append((pattern.text, disk, "not deployable: \(Self.notDeployableReason(disk))"))
            } else {
                result.append((pattern.text, nil, "no disk on the host matches \"\(pattern.text)\""))
            }
        }
        return result
    }

    static func notDeployableReason(_ disk: Bynar_V1_ManagedDisk) -> String {
        if disk.systemDisk { return "system disk" }
        if disk.excluded { return "excluded in the disk-manager's config" }
        let owner = disk.backend.isEmpty ? "" : " (\(disk.backend) \(disk.backendID))"
        return "status \(DiskStatusName.of(disk.status))\(owner), not BLANK"
    }

    static func checkHost(_ host: String, source: String, line: Int) throws(FileError) {
        if let reason = Topic.invalidSegmentReason(host) {
            throw FileError(source: source, line: line, problem: "host name \(reason)")
        }
    }

    /// Non-blank, non-comment lines as (1-based number, fields); `#` starts a comment anywhere.
    static func lines(_ text: String) -> [(Int, [String])] {
        var result: [(Int, [String])] = []
        for (index, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let content = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = content.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            if !fields.isEmpty { result.append((index + 1, fields)) }
        }
        return result
    }
}

/// A device pattern: exact, or an fnmatch(3) shell glob, over a disk's dev path
/// (`/dev/sdb`), its by-path name (with or without `/dev/disk/by-path/`), key, serial and WWN.
public struct DevicePattern: Sendable, Equatable, CustomStringConvertible {
    public let text: String

    /// Refuses an empty pattern.
    public init(_ text: String, source: String = "pattern") throws(DeployPlan.FileError) {
        guard !text.isEmpty else { throw DeployPlan.FileError(source: source, line: 0, problem: "empty device pattern") }
        self.text = text
    }

    /// Whether the pattern has shell glob characters.
    public var isGlob: Bool { text.contains { "*?[".contains($0) } }

    public var description: String { text }

    /// Whether the pattern names `disk` by any of its names.
    public func matches(_ disk: Bynar_V1_DiskIdentity) -> Bool {
        var names = [disk.devPath, disk.key, disk.serial, disk.wwn, disk.byPath]
        let prefix = "/dev/disk/by-path/"
        if disk.byPath.hasPrefix(prefix) {
            names.append(String(disk.byPath.dropFirst(prefix.count)))
        } else if !disk.byPath.isEmpty {
            names.append(prefix + disk.byPath)
        }
        return names.contains { !$0.isEmpty && ($0 == text || fnmatch(text, $0, 0) == 0) }
    }
}

/// Upper-case names of a managed disk's status, as the CLI prints them.
public enum DiskStatusName {
    public static func of(_ status: Bynar_V1_ManagedDisk.Status) -> String {
        switch status {
        case .inService: "IN_SERVICE"
        case .removed: "REMOVED"
        case .blank: "BLANK"
        case .busy: "BUSY"
        case .unspecified: "UNKNOWN"
        case .UNRECOGNIZED(let value): "UNKNOWN(\(value))"
        }
    }
}
