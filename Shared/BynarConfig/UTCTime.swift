#if canImport(Glibc)
import Glibc
#endif

/// Times as this package writes them for people and machines alike.
public enum UTCTime {
    /// `2026-12-04T10:36:55.711Z`: ISO 8601, UTC, milliseconds.
    public static func iso8601(unixMs: Int64) -> String {
        var seconds = time_t(unixMs / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let text = String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let millis = Int(unixMs % 1000)
        return text + "." + String(repeating: "0", count: 3 - String(millis).count) + String(millis) + "Z"
    }
}
