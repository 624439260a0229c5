#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A configuration that failed to load, with every problem found and where it came from.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    /// The file (or "environment") the problems are in.
    public var source: String
    public var problems: [FieldError]

    public var description: String {
        if problems.count == 1 { return "config \(source): \(problems[0])" }
        return "config \(source): \(problems.count) problems:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// Loads and validates ``BynarConfig``.
public enum ConfigLoader {
    /// Where the config is read from unless `BYNAR_CONFIG` or `--config` says otherwise.
    public static let defaultPath = "/etc/bynar/bynar.json"

    /// The loaded configuration and what it was made of.
    public struct Loaded: Sendable {
        public var config: BynarConfig
        /// The file read, or nil when none existed at the default path.
        public var path: String?
        /// Environment variables that overrode the file.
        public var overrides: [String]
    }

    /// Reads `path` (or `BYNAR_CONFIG`, or the default path), lays it over the defaults,
    /// applies `BYNAR_*` environment overrides and validates the result.
    ///
    /// Environment overrides name a field by its path with `__` between sections:
    /// `BYNAR_BROKER__PORT=8883`, `BYNAR_DB_LOCATION=/tmp/bynar`. Only a missing file at the
    /// default path is tolerated (defaults are used); an explicit path must exist.
    public static func load(path explicitPath: String? = nil, environment: [String: String] = currentEnvironment()) throws -> Loaded {
        let chosen = explicitPath ?? environment["BYNAR_CONFIG"]
        let path = chosen ?? defaultPath
        var fileTree = JSONValue.object([:])
        var readPath: String? = path
        switch readFile(path) {
        case .success(let bytes):
            do {
                fileTree = try JSONValue.parse(bytes)
            } catch {
                throw ConfigError(source: path, problems: [FieldError(field: "", problem: "not valid JSON: \(describeJSONError(error))")])
            }
        case .failure(let error) where error.code == ENOENT && chosen == nil:
            readPath = nil
        case .failure(let error):
            throw ConfigError(source: path, problems: [FieldError(field: "", problem: "cannot read: \(String(cString: strerror(error.code)))")])
        }
        var (config, overrides) = try build(fileTree, environment: environment, source: readPath ?? "defaults")
        // Bynar's ceph.json sits next to its bynar.json.
        let cephPath = (path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")) + "/ceph.json"
        var cephJSON: JSONValue?
        if config.backend == "ceph", case .success(let bytes) = readFile(cephPath) {
            do { cephJSON = try JSONValue.parse(bytes) } catch {
                throw ConfigError(source: cephPath, problems: [FieldError(field: "", problem: "not valid JSON: \(describeJSONError(error))")])
            }
        }
        let problems = config.mapLegacyBackend(cephJSON: cephJSON, cephJSONPath: cephPath)
        guard problems.isEmpty else { throw ConfigError(source: readPath ?? "defaults", problems: problems) }
        return Loaded(config: config, path: readPath, overrides: overrides)
    }

    /// Decodes and validates a config from JSON text laid over the defaults (for tests and
    /// tools); `environment` overrides apply as in ``load(path:environment:)``.
    public static func parse(_ text: String, environment: [String: String] = [:]) throws -> BynarConfig {
        let tree: JSONValue
        do { tree = try JSONValue.parse(Array(text.utf8)) } catch {
            throw ConfigError(source: "text", problems: [FieldError(field: "", problem: "not valid JSON: \(describeJSONError(error))")])
        }
        var config = try build(tree, environment: environment, source: "text").config
        let problems = config.mapLegacyBackend(cephJSON: nil, cephJSONPath: "ceph.json")
        guard problems.isEmpty else { throw ConfigError(source: "text", problems: problems) }
        return config
    }

    /// Defaults, then `fileTree`, then the environment; decoded, checked for unknown keys
    /// and validated.
    private static func build(_ fileTree: JSONValue, environment: [String: String], source: String) throws -> (config: BynarConfig, overrides: [String]) {
        guard case .object = fileTree else {
            throw ConfigError(source: source, problems: [FieldError(field: "", problem: "expected a JSON object, found \(fileTree.typeName)")])
        }
        let (envTree, overrides) = environmentOverrides(environment)
        var merged = try defaultTree().merging(fileTree).merging(envTree)
        // An optional section the file turns on gets its own defaults under what it says.
        var sectionDefaults = try defaultTree()
        var anySection = false
        for (path, defaults) in optionalSections where merged.value(at: path).map({ if case .object = $0 { true } else { false } }) == true {
            var leaf = snakeKeys(try JSONValue.encode(defaults))
            for key in path.reversed() { leaf = .object([key: leaf]) }
            sectionDefaults = sectionDefaults.merging(leaf)
            anySection = true
        }
        if anySection { merged = sectionDefaults.merging(fileTree).merging(envTree) }

        let config: BynarConfig
        let visited: TreeDecoder.Visited
        do {
            (config, visited) = try TreeDecoder.decode(BynarConfig.self, from: merged)
        } catch let error as FieldError {
            throw ConfigError(source: source, problems: [error])
        }

        var problems: [FieldError] = []
        for keyPath in fileTree.keyPaths() where !visited.contains(keyPath) {
            problems.append(FieldError(field: keyPath.joined(separator: "."), problem: "unknown field"))
        }
        let reported = Set(problems.map(\.field))
        for keyPath in envTree.keyPaths() where !visited.contains(keyPath) && !reported.contains(keyPath.joined(separator: ".")) {
            let name = "BYNAR_" + keyPath.map { $0.uppercased() }.joined(separator: "__")
            problems.append(FieldError(field: keyPath.joined(separator: "."), problem: "unknown field (set by \(name))"))
        }
        problems += config.validate()
        guard problems.isEmpty else { throw ConfigError(source: source, problems: problems) }
        return (config, overrides)
    }

    /// The process environment.
    public static func currentEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var cursor = environ
        while let entry = cursor.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            cursor += 1
        }
        return result
    }

    static func environmentOverrides(_ environment: [String: String]) -> (JSONValue, [String]) {
        var tree = JSONValue.object([:])
        var names: [String] = []
        for (name, value) in environment.sorted(by: { $0.key < $1.key }) where name.hasPrefix("BYNAR_") && name != "BYNAR_CONFIG" {
            let path = name.dropFirst("BYNAR_".count).lowercased().split(separator: "__", omittingEmptySubsequences: false).map(String.init)
            guard !path.contains(where: \.isEmpty) else { continue }
            var leaf = JSONValue.string(value)
            for key in path.reversed() { leaf = .object([key: leaf]) }
            tree = tree.merging(leaf)
            names.append(name)
        }
        return (tree, names)
    }

    /// Sections that are off unless present, with the defaults for the fields a present
    /// section leaves out.
    static let optionalSections: [([String], any Encodable & Sendable)] = [
        (["disk_manager", "ceph"], CephBackendConfig()),
        (["disk_manager", "filesystem"], FilesystemBackendConfig()),
        (["disk_manager", "gluster"], GlusterBackendConfig()),
        (["disk_manager", "zfs"], ZFSBackendConfig()),
        (["detector", "zfs"], DetectorZFSConfig()),
        (["detector", "ceph"], DetectorCephConfig()),
        (["detector", "redfish"], DetectorRedfishConfig()),
    ]

    static func defaultTree() throws -> JSONValue {
        snakeKeys(try JSONValue.encode(BynarConfig()))
    }

    private static func snakeKeys(_ value: JSONValue) -> JSONValue {
        switch value {
        case .object(let members):
            return .object(Dictionary(uniqueKeysWithValues: members.map { (TreeDecoder.snakeCase($0.key), snakeKeys($0.value)) }))
        case .array(let items):
            return .array(items.map(snakeKeys))
        default:
            return value
        }
    }

    private static func readFile(_ path: String) -> Result<[UInt8], Errno> {
        guard let file = fopen(path, "rb") else { return .failure(Errno(code: errno)) }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count > 0 { bytes += buffer[0..<count] }
            if count < buffer.count {
                if ferror(file) != 0 { return .failure(Errno(code: errno == 0 ? EIO : errno)) }
                break
            }
        }
        return .success(bytes)
    }

    private static func describeJSONError(_ error: any Error) -> String {
        if case DecodingError.dataCorrupted(let context) = error {
            let underlying = context.underlyingError.map { " (\($0))" } ?? ""
            return context.debugDescription + underlying
        }
        return "\(error)"
    }
}

/// An errno value as an Error.
struct Errno: Error {
    var code: Int32
}
