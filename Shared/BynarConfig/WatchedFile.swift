import Synchronization

/// A value read from a file and read again when the file changes (its ``FileStamp``): what
/// a service takes without a restart (trusted keys, the log level). A changed file that
/// does not parse, or is missing, is refused once per version and the value read last stays
/// in force: a half-written file must not leave a service with nothing, or the wrong thing.
public final class WatchedFile<Value: Sendable>: Sendable {
    public let path: String
    private let parse: @Sendable (String) throws -> Value
    /// The value in force, the stamp of the file it came from, and the stamp of the last
    /// version refused (`.some(nil)`: the file was missing), so each version is refused once.
    private let state: Mutex<(value: Value, stamp: FileStamp?, refused: FileStamp??)>

    /// `value`: what the file held at start (the caller read it, and refused to start on a
    /// bad file); `parse` reads the file at `path` again.
    public init(path: String, value: Value, parse: @escaping @Sendable (String) throws -> Value) {
        self.path = path
        self.parse = parse
        state = Mutex((value, FileStamp(path: path), .none))
    }

    /// The value in force.
    public var value: Value { state.withLock { $0.value } }

    /// What ``reloadIfChanged()`` did.
    public enum Reload {
        case unchanged
        /// The file changed and was read: the value before it.
        case reloaded(before: Value)
        /// The file changed and does not parse (or cannot be read): the old value stays.
        case refused(String)
    }

    /// Reads the file again if it changed since it was last read (inode, size, modification
    /// or change time); refuses, once per version, a file that does not parse.
    public func reloadIfChanged() -> Reload {
        let stamp = FileStamp(path: path)
        let (changed, before) = state.withLock { state in (stamp != state.stamp && state.refused != .some(stamp), state.value) }
        guard changed else { return .unchanged }
        do {
            let value = try parse(path)
            state.withLock { $0 = (value, stamp, .none) }
            return .reloaded(before: before)
        } catch {
            state.withLock { $0.refused = .some(stamp) }
            return .refused("\(path): \(error)")
        }
    }
}
