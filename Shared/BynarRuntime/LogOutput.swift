import BynarConfig
public import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where every service's log lines go: standard error, as text (the default) or as one JSON
/// object per line (`log_format: "json"`), whose fields include the logger's metadata
/// (service, host, and per line incident, disk, request id...), so a fleet's logs can be
/// searched by incident. Under systemd (`JOURNAL_STREAM` set) text lines carry no
/// timestamp: journald stamps each line itself. The level is shared by every logger of the
/// process and can be changed while it runs (``LogOutput/setLevel(_:)``, on reload).
public final class LogOutput: Sendable {
    public enum Format: String, Sendable { case text, json }

    let format: Format
    let service: String
    let stampText: Bool
    private let level: Mutex<Logger.Level>
    private let writeLock = Mutex(())

    public init(format: Format, level: Logger.Level, service: String, underJournal: Bool) {
        self.format = format
        self.service = service
        self.level = Mutex(level)
        stampText = !underJournal
    }

    public var currentLevel: Logger.Level { level.withLock { $0 } }

    /// Changes the level of every logger of the process; returns the level before.
    @discardableResult
    public func setLevel(_ new: Logger.Level) -> Logger.Level {
        level.withLock { level in
            defer { level = new }
            return level
        }
    }

    /// A handler for `LoggingSystem.bootstrap`.
    public func handler(label: String) -> any LogHandler { Handler(output: self, label: label) }

    /// One line, written whole (lines of concurrent tasks never interleave).
    func emit(level: Logger.Level, label: String, message: String, metadata: Logger.Metadata, source: String) {
        let line: String
        switch format {
        case .text:
            let fields = metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            // swift-log's StreamLogHandler layout: "ts level label: k=v [source] message".
            line = (stampText ? Self.timestamp() + " " : "") + "\(level) \(label): " + (fields.isEmpty ? "" : fields + " ") + "[\(source)] " + message + "\n"
        case .json:
            var object: [(String, String)] = [("ts", Self.timestamp()), ("level", "\(level)"), ("service", service), ("logger", label), ("message", message), ("source", source)]
            let reserved = Set(object.map(\.0))
            for (key, value) in metadata.sorted(by: { $0.key < $1.key }) where !reserved.contains(key) { object.append((key, "\(value)")) }
            line = "{" + object.map { "\(JSONText.quoted($0.0)):\(JSONText.quoted($0.1))" }.joined(separator: ",") + "}\n"
        }
        writeLock.withLock { _ in
            var bytes = Array(line.utf8)
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
                if written <= 0 { if errno == EINTR { continue } else { break } }
                offset += written
            }
        }
    }

    /// Now, ISO 8601 UTC with milliseconds.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UTCTime.iso8601(unixMs: Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec / 1_000_000))
    }

    struct Handler: LogHandler {
        let output: LogOutput
        let label: String
        var metadata: Logger.Metadata = [:]
        var metadataProvider: Logger.MetadataProvider?

        var logLevel: Logger.Level {
            get { output.currentLevel }
            // The level is the process's (reloadable); a logger does not set its own.
            set {}
        }

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var merged = metadata
            if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
            if let extra = event.metadata { merged.merge(extra) { $1 } }
            output.emit(level: event.level, label: label, message: "\(event.message)", metadata: merged, source: event.source)
        }
    }
}
