public import Logging
import BynarConfig
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A trusted-keys file that is read again when it changes: a key added to (or taken out
/// of) the file on a fleet of hosts takes effect without restarting a service. A file that
/// no longer parses is refused and the keys read last stay in force (a half-written file
/// must not leave a host trusting nobody, or somebody it should not).
public final class TrustedKeysFile: Sendable {
    public let path: String
    /// The keys in force, the stamp of the file they came from, and the stamp of the last
    /// version refused (`.some(nil)`: the file was missing), so each version is refused once.
    private let state: Mutex<(keys: TrustedKeys, stamp: FileStamp?, refused: FileStamp??)>

    /// Reads the file; a file that does not parse at start is an error (bad config).
    public init(path: String) throws(KeyFileError) {
        self.path = path
        let stamp = FileStamp(path: path)
        state = Mutex((try TrustedKeys(path: path), stamp, .none))
    }

    /// The keys in force.
    public var keys: TrustedKeys { state.withLock { $0.keys } }

    /// What ``reloadIfChanged()`` did.
    public enum Reload: Sendable, Equatable {
        case unchanged
        case reloaded(added: [String], removed: [String])
        /// The file changed and does not parse (or cannot be read): the old keys stay.
        case refused(String)
    }

    /// Reads the file again if it changed since it was last read (its inode, size or
    /// modification time); refuses, once per change, a file that does not parse.
    public func reloadIfChanged() -> Reload {
        let stamp = FileStamp(path: path)
        let (changed, before) = state.withLock { state in (stamp != state.stamp && state.refused != .some(stamp), state.keys.keyIDs) }
        guard changed else { return .unchanged }
        do {
            let keys = try TrustedKeys(path: path)
            state.withLock { $0 = (keys, stamp, .none) }
            return .reloaded(added: keys.keyIDs.filter { !before.contains($0) }, removed: before.filter { !keys.keyIDs.contains($0) })
        } catch {
            state.withLock { $0.refused = .some(stamp) }
            return .refused("\(path): \(error)")
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
