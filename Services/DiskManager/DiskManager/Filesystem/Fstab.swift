import BynarConfig
import BynarDisks
#if canImport(Glibc)
import Glibc
#endif

/// An fstab file, edited line by line: the backend adds and removes lines for the
/// mountpoints it manages and leaves every other line (comments, spacing) exactly as it
/// was. Writes go to a temporary file of a unique name in the same directory, are flushed,
/// and replace the old file with rename(2), so a crash leaves either the old or the new
/// file, never half. ``edit(path:_:)`` holds an exclusive lock (`<fstab>.bynar.lock`) for
/// the whole read-modify-write, so concurrent jobs never lose each other's lines. A field
/// that would not be one fstab field (whitespace, a newline, `#`, control characters; a
/// mountpoint that is not an absolute path without `..`) is refused, not escaped: fstab's
/// octal escapes exist, but a value needing them never comes from a well-formed request.
public struct Fstab: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var source: String
        public var mountpoint: String
        public var type: String
        public var options: String

        public init(source: String, mountpoint: String, type: String, options: String) {
            self.source = source
            self.mountpoint = mountpoint
            self.type = type
            self.options = options
        }

        public var line: String { "\(source) \(mountpoint) \(type) \(options) 0 2" }
    }

    public let path: String
    public private(set) var lines: [String]

    public init(path: String) throws(BackendRefusal) {
        self.path = path
        let text: [UInt8]
        switch readFile(path) {
        case .success(let bytes): text = bytes
        case .failure(let error) where error.code == ENOENT: text = []
        case .failure(let error): throw BackendRefusal("cannot read \(path): \(String(cString: strerror(error.code)))")
        }
        var all = String(decoding: text, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if all.last == "" { all.removeLast() }
        lines = all
    }

    /// The entry mounted at `mountpoint`, if any.
    public func entry(mountpoint: String) -> Entry? {
        lines.lazy.compactMap(Self.parse).first { $0.mountpoint == mountpoint }
    }

    /// Every entry whose mountpoint is under `root`.
    public func entries(under root: String) -> [Entry] {
        lines.compactMap(Self.parse).filter { $0.mountpoint.hasPrefix(root + "/") }
    }

    static func parse(_ line: String) -> Entry? {
        let trimmed = line.drop { $0 == " " || $0 == "\t" }
        guard !trimmed.isEmpty, !trimmed.hasPrefix("#") else { return nil }
        let fields = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard fields.count >= 4 else { return nil }
        return Entry(source: fields[0], mountpoint: fields[1], type: fields[2], options: fields[3])
    }

    /// Why `entry` cannot be one fstab line, naming the field and value; nil when it can.
    public static func invalidEntryReason(_ entry: Entry) -> String? {
        for (field, value) in [("source", entry.source), ("mountpoint", entry.mountpoint), ("type", entry.type), ("options", entry.options)] {
            if value.isEmpty { return "fstab \(field) is empty" }
            if let bad = value.unicodeScalars.first(where: { $0.value < 0x21 || $0.value == 0x7F || $0 == "#" || $0.properties.isWhitespace }) {
                return "fstab \(field) \"\(value.prefix(200).debugDescription.dropFirst().dropLast())\" contains \(bad.value < 0x21 || bad.value == 0x7F ? String(format: "control character or space U+%04X", bad.value) : "\"\(bad)\""), which would not stay one field"
            }
        }
        if !entry.mountpoint.hasPrefix("/") { return "fstab mountpoint \"\(entry.mountpoint.prefix(200))\" is not an absolute path" }
        if entry.mountpoint.split(separator: "/").contains("..") { return "fstab mountpoint \"\(entry.mountpoint.prefix(200))\" contains \"..\"" }
        return nil
    }

    /// Sets the one line for `entry.mountpoint` (replacing any other line for it).
    /// - Throws: ``BackendRefusal`` naming the field when `entry` is not a valid fstab line.
    public mutating func set(_ entry: Entry) throws(BackendRefusal) {
        if let why = Self.invalidEntryReason(entry) { throw BackendRefusal(why) }
        remove(mountpoint: entry.mountpoint)
        lines.append(entry.line)
    }

    /// Reads the fstab at `path`, applies `change` and saves it, all under an exclusive
    /// lock on `<path>.bynar.lock`: the one way the backend changes fstab.
    public static func edit<T>(path: String, _ change: (inout Fstab) throws(BackendRefusal) -> T) throws(BackendRefusal) -> T {
        let lockPath = path + ".bynar.lock"
        let lock = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw BackendRefusal("cannot open \(lockPath): \(String(cString: strerror(errno)))") }
        defer { close(lock) }
        while flock(lock, LOCK_EX) != 0 {
            if errno != EINTR { throw BackendRefusal("cannot lock \(lockPath): \(String(cString: strerror(errno)))") }
        }
        defer { flock(lock, LOCK_UN) }
        var fstab = try Fstab(path: path)
        let result = try change(&fstab)
        try fstab.save()
        return result
    }

    /// Removes every line for `mountpoint`; returns whether there was one.
    @discardableResult
    public mutating func remove(mountpoint: String) -> Bool {
        let before = lines.count
        lines.removeAll { Self.parse($0)?.mountpoint == mountpoint }
        return lines.count != before
    }

    /// Writes the file atomically (``AtomicFile``: temp file, fsync, rename, fsync of the directory).
    public func save() throws(BackendRefusal) {
        do {
            try AtomicFile.write(Array((lines.map { $0 + "\n" }.joined()).utf8), to: path, mode: 0o644)
        } catch {
            throw BackendRefusal(error.description)
        }
    }
}
