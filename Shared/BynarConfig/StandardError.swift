#if canImport(Glibc)
import Glibc
#endif

/// Writes `text` and a newline to standard error (unbuffered, safe from any thread).
public func writeToStandardError(_ text: String) {
    var line = Array((text + "\n").utf8)
    var offset = 0
    while offset < line.count {
        let written = line.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
        if written <= 0 { return }
        offset += written
    }
}
