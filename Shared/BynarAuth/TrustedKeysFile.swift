public import Logging
import BynarConfig
public import BynarStore

/// A trusted-keys file that is read again when it changes (a ``WatchedFile``): a key added
/// to (or taken out of) the file on a fleet of hosts takes effect without restarting a
/// service. A file that no longer parses is refused and the keys read last stay in force.
public final class TrustedKeysFile: Sendable {
    private let file: WatchedFile<TrustedKeys>
    public var path: String { file.path }

    /// Reads the file; a file that does not parse at start is an error (bad config).
    public init(path: String) throws(KeyFileError) {
        file = WatchedFile(path: path, value: try TrustedKeys(path: path)) { try TrustedKeys(path: $0) }
    }

    /// The keys in force.
    public var keys: TrustedKeys { file.value }

    /// What ``reloadIfChanged()`` did.
    public enum Reload: Sendable, Equatable {
        case unchanged
        case reloaded(added: [String], removed: [String])
        /// The file changed and does not parse (or cannot be read): the old keys stay.
        case refused(String)
    }

    /// Reads the file again if it changed since it was last read; refuses, once per change,
    /// a file that does not parse.
    public func reloadIfChanged() -> Reload {
        switch file.reloadIfChanged() {
        case .unchanged: return .unchanged
        case .refused(let why): return .refused(why)
        case .reloaded(let before):
            let now = file.value.keyIDs
            return .reloaded(added: now.filter { !before.keyIDs.contains($0) }, removed: before.keyIDs.filter { !now.contains($0) })
        }
    }
}

extension TrustedKeysFile {
    /// ``reloadIfChanged()``, logged: what changed, or why the file was refused and which
    /// keys stay in force. `field` names the setting (`disk_manager.trusted_keys_file`).
    public func reload(field: String, why: String, logger: Logger) {
        switch reloadIfChanged() {
        case .unchanged:
            if why == "SIGHUP" { logger.info("trusted keys unchanged", metadata: ["field": "\(field)", "path": "\(path)"]) }
        case .reloaded(let added, let removed):
            logger.notice("trusted keys read again", metadata: ["field": "\(field)", "trigger": "\(why)", "added": "\(added)", "removed": "\(removed)", "keys": "\(keys.keyIDs)"])
        case .refused(let problem):
            logger.error("trusted keys file refused; the keys read before stay in force", metadata: [
                "field": "\(field)", "trigger": "\(why)", "problem": "\(problem)", "keys": "\(keys.keyIDs)"])
        }
    }
}

extension CommandVerifier {
    /// How a service trusts operators' signed commands: the keys in `path` (the setting
    /// `field`), read again on every reload `register` runs (SIGHUP, the file watch), nonces in
    /// `store`; nil, with `unset` logged as a warning, when no file is configured.
    /// - Throws: a `FieldError` naming `field` and the file when it does not load.
    public static func operatorKeys(_ path: String?, field: String, store: LocalStore, logger: Logger, unset: String,
                                    register: (@escaping @Sendable (_ why: String) -> Void) -> Void) throws -> CommandVerifier? {
        guard let path else {
            logger.warning("\(unset)")
            return nil
        }
        let keys: TrustedKeysFile
        do { keys = try TrustedKeysFile(path: path) } catch {
            throw FieldError(field: field, problem: "\(path): \(error)")
        }
        register { why in keys.reload(field: field, why: why, logger: logger) }
        logger.info("trusting operator keys", metadata: ["keys": "\(keys.keys.keyIDs)"])
        return CommandVerifier(keysFile: keys, store: store)
    }
}
